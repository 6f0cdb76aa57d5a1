"""One `r1mega rm` job: data, trainer, resume, loop, checkpoints, HF export.

Start-up order (as `r1mega sft`): the memory planner's check; distributed groups; tokenizer and
preference data (every rank reads the same rows); where to start from (`checkpoint.resume`, else
`checkpoint.init_from` through r1mega/rm/init.py, else a fresh init); the loop, saving every
`checkpoint.save_every` steps and on SIGTERM/SIGUSR1; a final save; with rm.export_hf, an HF
`...ForSequenceClassification` export in run_dir/hf.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from r1mega.config import Config, save_config
from r1mega.training.job_loop import report_io, resume_trainer, say

__all__ = ["run_reward_model", "RMJobResult", "reward_model_config", "load_units"]

logger = logging.getLogger(__name__)

RM_INFO = "r1mega_rm.json"
"""Beside an exported RM's config.json: the template its inputs were rendered with."""


@dataclass
class RMJobResult:
    step: int
    metrics: dict
    checkpoint: Optional[Path]
    preempted: bool


def reward_model_config(cfg: Config) -> Config:
    """The job's config with `model.head: score` (an RM config may name the policy's model file)."""
    if cfg.model.head == "score":
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head="score"))


def load_units(cfg: Config, tokenizer):
    """(train units, held-out units or None) of rm.source."""
    from r1mega.rm.data import read_preference_rows, tokenize_rows
    from r1mega.rm.tiny_data import tiny_rows

    rm = cfg.rm
    if rm.source == "tiny":
        t = rm.tiny
        train = tiny_rows("train", t.train_size, t.seed, t.kind, t.problems, t.wrong_answer_share)
        test = tiny_rows("test", t.test_size, t.seed, t.kind, t.problems, t.wrong_answer_share)
    else:
        train = read_preference_rows(rm.train_files)
        test = read_preference_rows(rm.test_files) if rm.test_files else None
    to_units = lambda rows: tokenize_rows(rows, tokenizer, rm.template, rm.max_tokens)  # noqa: E731
    return to_units(train), (to_units(test) if test else None)


def _planner_view(cfg: Config) -> Config:
    """The SFT-shaped config the memory planner knows: an RM step is a forward/backward like SFT's
    (its LM head is smaller), with rm's batch sizes."""
    sft = dataclasses.replace(
        cfg.sft, global_batch_size=cfg.rm.global_batch_size, micro_batch_size=cfg.rm.micro_batch_size,
        micro_batch_tokens=cfg.rm.micro_batch_tokens, params_dtype=cfg.rm.params_dtype,
    )
    return dataclasses.replace(cfg, sft=sft)


def run_reward_model(cfg: Config) -> RMJobResult:
    """Run the whole job on this rank (every rank of the launch calls it)."""
    import torch.distributed as dist

    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.parallel.distributed import destroy_distributed, init_distributed, launch_env
    from r1mega.plan.report import check_plan_at_startup
    from r1mega.rm.init import init_reward_model
    from r1mega.rm.trainer import RewardModelTrainer
    from r1mega.training import checkpoint as ckpt
    from r1mega.training.job_loop import train_with_saves

    cfg = reward_model_config(cfg)
    cfg.rm.check_for_job()
    check_plan_at_startup(_planner_view(cfg), world_size=launch_env().world_size, stage="sft")
    init_distributed(cfg.parallel, seed=cfg.run.seed, model_cfg=cfg.model)
    try:
        tokenizer = load_tokenizer(cfg.data.tokenizer)
        if len(tokenizer) > cfg.model.vocab_size:
            raise ValueError(f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"data.tokenizer: {cfg.data.tokenizer} has no pad token; a reward model needs one (HF reads the score at the last non-pad token)")
        if cfg.rm.export_hf:
            from r1mega.training.hf_export import check_exportable

            check_exportable(cfg.model, tokenizer)
        train, held_out = load_units(cfg, tokenizer)
        trainer = RewardModelTrainer(cfg, train, held_out, pad_id=tokenizer.pad_token_id)
        root = cfg.checkpoint.root(cfg.run.run_dir)
        resume_path = ckpt.resolve_resume(cfg.checkpoint.resume, root)
        init_fn = None
        if resume_path is None and cfg.checkpoint.init_from:
            def init_fn(chunks):
                say(f"initial weights from {init_reward_model(cfg.checkpoint.init_from, chunks, cfg.model)}")
                report_io(cfg)
        trainer.build(init_fn)
        if resume_path is not None:
            resume_trainer(cfg, trainer, resume_path)
        if dist.get_rank() == 0:
            save_config(cfg, cfg.run.run_dir / "rm_config.yaml")
        outcome = train_with_saves(
            cfg, trainer, root, resumed=resume_path is not None,
            extra_state=lambda t: {"sampler": t.sampler.state_dict(), "stage": "rm", "rm_template": cfg.rm.template},
        )
        if not outcome.preempted and cfg.rm.export_hf:
            export_reward_model(cfg, trainer.model, tokenizer, cfg.run.run_dir / "hf")
        return RMJobResult(step=trainer.step, metrics=outcome.metrics, checkpoint=outcome.checkpoint, preempted=outcome.preempted)
    finally:
        destroy_distributed()


def export_reward_model(cfg: Config, model_chunks, tokenizer, out: Path) -> Path:
    """The HF ...ForSequenceClassification export (a collective) plus RM_INFO (the template)."""
    import torch.distributed as dist

    from r1mega.training.checkpoint import metered_io
    from r1mega.training.hf_export import write_hf_export

    with metered_io("exported", out, model_chunks):
        write_hf_export(model_chunks, cfg.model, tokenizer, out)
    if not dist.is_initialized() or dist.get_rank() == 0:
        (Path(out) / RM_INFO).write_text(json.dumps({"template": cfg.rm.template}, indent=1) + "\n", encoding="utf-8")
    report_io(cfg)
    say(f"HF reward model written to {out}")
    return Path(out)
