"""One RL job (`r1mega train`): base model, prompts, trainer, resume, loop, checkpoints, summary.

Start-up order: distributed groups; tokenizer and prompt splits (every rank builds the same ones);
the starting weights: `checkpoint.resume` (a run of this job), else `checkpoint.init_from` (the base
or SFT model), which `rl.base_config` first trains with `r1mega pretrain` when it has no checkpoint
yet (the tiny default). Then the loop, saving every `checkpoint.save_every` steps and on
SIGTERM/SIGUSR1, a final save, and run_dir/summary.json with the starting and final evaluation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from r1mega.config import Config, save_config
from r1mega.training.job_loop import report_io, say as _say

__all__ = ["run_rl", "RLJobResult", "ensure_base"]

logger = logging.getLogger(__name__)


@dataclass
class RLJobResult:
    step: int
    metrics: dict
    checkpoint: Optional[Path]
    preempted: bool
    summary: Optional[Path]


def ensure_base(cfg: Config) -> None:
    """Train the base model with `rl.base_config` when `checkpoint.init_from` has no checkpoint.

    Runs before torch.distributed is set up for the RL job (the pretrain stage sets up and tears
    down its own), on every rank of the launch, so all ranks agree on the result.
    """
    from r1mega.config import load_config
    from r1mega.training.checkpoint import find_latest_checkpoint, is_complete
    from r1mega.training.sft_job import run_supervised

    if cfg.rl.base_config is None or not cfg.checkpoint.init_from:
        return
    init_from = Path(cfg.checkpoint.init_from)
    if is_complete(init_from) or (init_from.is_dir() and find_latest_checkpoint(init_from) is not None):
        return
    base_cfg = load_config(cfg.rl.base_config)
    expected = base_cfg.checkpoint.root(base_cfg.run.run_dir).resolve()
    if expected != Path(cfg.checkpoint.init_from).resolve():
        raise ValueError(
            f"rl.base_config: {cfg.rl.base_config} saves to {expected}, but checkpoint.init_from is "
            f"{cfg.checkpoint.init_from}; point init_from at the base run's checkpoints"
        )
    _say(f"no base checkpoint under {cfg.checkpoint.init_from}: training it first with {cfg.rl.base_config}")
    base_cfg.parallel = cfg.parallel  # same launch, same layout
    result = run_supervised(base_cfg, "pretrain")
    if result.preempted:
        raise SystemExit(0)


def check_rollout_engine(cfg: Config) -> None:
    """Refuse, before any work, an engine this machine cannot run (one line: the CLI prints it)."""
    from r1mega.configlib import ConfigError

    if cfg.rollout.engine == "sglang":
        from r1mega.rollout.sglang_engine import check_sglang_available

        try:
            check_sglang_available()
        except RuntimeError as e:
            raise ConfigError(str(e)) from None


def run_rl(cfg: Config) -> RLJobResult:
    """Run the whole job on this rank (every rank of the launch calls it)."""
    import torch.distributed as dist

    from r1mega.data.prompts import load_prompt_dataset
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training import checkpoint as ckpt
    from r1mega.training.job_loop import train_with_saves
    from r1mega.training.rl import RLTrainer

    check_rollout_engine(cfg)
    cfg.check_sequence_budget()
    ensure_base(cfg)
    # before any group or tensor exists: refuse a layout the planner predicts will not fit
    from r1mega.parallel.distributed import launch_env
    from r1mega.plan.report import check_plan_at_startup

    check_plan_at_startup(cfg, world_size=launch_env().world_size, stage="rl")
    init_distributed(cfg.parallel, seed=cfg.run.seed, model_cfg=cfg.model)
    trainer = None
    try:
        tokenizer = load_tokenizer(cfg.data.tokenizer)
        if len(tokenizer) > cfg.model.vocab_size:
            raise ValueError(
                f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens"
            )
        train = load_prompt_dataset(cfg.data, "train", tokenizer)
        has_test = cfg.data.source == "procedural" or bool(cfg.data.test_files)
        held_out = load_prompt_dataset(cfg.data, "test", tokenizer) if has_test else None
        if held_out is None and cfg.rl.eval_every >= 0:
            raise ValueError("rl.eval_every: evaluation needs held-out prompts (data.test_files), or set rl.eval_every=-1")
        cfg.rewards.check_tasks(train.tasks)
        if cfg.rewards.models:  # before anything is built: each RM exists, is one, shares the vocabulary
            from r1mega.rm.scoring import check_reward_models

            check_reward_models(cfg.rewards.models, cfg.model, tokenizer)
        trainer = RLTrainer(cfg, train, held_out, tokenizer=tokenizer)
        root = cfg.checkpoint.root(cfg.run.run_dir)
        resume_path = ckpt.resolve_resume(cfg.checkpoint.resume, root)
        init_fn = None
        if resume_path is None and cfg.checkpoint.init_from:
            def init_fn(chunks):
                used = ckpt.load_model_weights(cfg.checkpoint.init_from, chunks, model_config=cfg.model)
                report_io(cfg)
                _say(f"initial weights from {used}")
        elif resume_path is None:
            _say("no checkpoint.init_from: the policy starts from a random initialisation")
        trainer.build(init_fn)
        if resume_path is not None:
            _resume(cfg, trainer, resume_path, root)
        if dist.get_rank() == 0:
            save_config(cfg, cfg.run.run_dir / "train_config.yaml")

        def also_save(t: RLTrainer) -> None:
            if t.ref_model is not None and t.ref_refreshed_at == t.step and t.step > 0:
                ckpt.save_checkpoint(Path(f"{root}_reference"), t.step, t.ref_model, model_config=cfg.model, keep_last=1)
                report_io(cfg)

        outcome = train_with_saves(
            cfg, trainer, root, resumed=resume_path is not None, also_save=also_save,
            extra_state=lambda t: {"sampler": t.sampler.state_dict(), "stage": "rl", "ref_refreshed_at": t.ref_refreshed_at},
        )
        metrics, preempted = outcome.metrics, outcome.preempted
        summary = None if preempted else trainer.write_summary(metrics)
        if summary is not None:
            _say(_summary_line(metrics))
        return RLJobResult(step=trainer.step, metrics=metrics, checkpoint=outcome.checkpoint, preempted=preempted,
                           summary=summary)
    finally:
        if trainer is not None:
            trainer.close()
        destroy_distributed()


def _resume(cfg: Config, trainer, path: Path, root: Path) -> None:
    from r1mega.training import checkpoint as ckpt

    loaded = ckpt.load_checkpoint(
        path, trainer.model, trainer.optimizer, trainer.scheduler, model_config=cfg.model,
        load_optimizer=cfg.checkpoint.load_optimizer, load_rng=cfg.checkpoint.load_rng,
    )
    report_io(cfg)
    if loaded.extra_state.get("stage") != "rl":
        raise ValueError(f"{path}: a {loaded.extra_state.get('stage')!r} checkpoint, not an RL one; "
                         "use checkpoint.init_from to start RL from it")
    trainer.step = loaded.step
    trainer.sampler.load_state_dict(loaded.extra_state["sampler"])
    trainer.ref_refreshed_at = int(loaded.extra_state.get("ref_refreshed_at", 0))
    if trainer.ref_model is not None:
        if trainer.ref_refreshed_at > 0:
            ckpt.load_model_weights(Path(f"{root}_reference"), trainer.ref_model, model_config=cfg.model)
        elif cfg.checkpoint.init_from:
            ckpt.load_model_weights(cfg.checkpoint.init_from, trainer.ref_model, model_config=cfg.model)
        else:
            raise ValueError(f"{path}: resuming with a reference model needs checkpoint.init_from (its weights)")
    trainer.sync_weights(version=trainer.step)
    _say(f"resumed from {path} at step {loaded.step}")


def _summary_line(metrics: dict) -> str:
    def pct(key: str) -> str:
        v = metrics.get(key)
        return "n/a" if v is None else f"{100 * v:.1f}%"

    return (
        "held-out: greedy accuracy {} -> {}, pass@1 {} -> {}, format {} -> {}".format(
            pct("start/eval/greedy_accuracy"), pct("eval/greedy_accuracy"),
            pct("start/eval/pass@1"), pct("eval/pass@1"),
            pct("start/eval/format"), pct("eval/format"),
        )
    )
