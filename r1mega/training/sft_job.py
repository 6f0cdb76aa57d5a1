"""One supervised job (`r1mega sft` / `r1mega pretrain`): data, trainer, resume, loop, checkpoints.

Start-up order: distributed groups; tokenizer and datasets (every rank builds the same ones;
they are small or generated); where to start from (`checkpoint.resume`, else
`checkpoint.init_from` weights, else a fresh init); the loop, saving every `checkpoint.save_every`
steps and on SIGTERM/SIGUSR1; a final save; for `pretrain` (pretrain.export_hf), an HF export
in run_dir/hf.
Files go to the run directory `run.output_dir/run.name`: `<stage>_config.yaml` (the resolved
config), metrics.jsonl, metrics.png, tensorboard/, eval_samples_step*.jsonl, checkpoints/.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from r1mega.config import Config, save_config
from r1mega.training.job_loop import report_io, resume_trainer, say as _say

__all__ = ["run_supervised", "JobResult", "load_datasets"]

logger = logging.getLogger(__name__)

Stage = Literal["sft", "pretrain"]


@dataclass
class JobResult:
    step: int
    metrics: dict
    checkpoint: Optional[Path]
    preempted: bool


def load_datasets(cfg: Config, stage: Stage, tokenizer):
    """(train SFT examples, held-out SFT examples or None, held-out prompts for accuracy or None)."""
    from r1mega.data.prompts import load_prompt_dataset
    from r1mega.data.sft import load_sft_dataset
    from r1mega.training.pretrain_data import load_pretrain_dataset

    has_test = cfg.data.source == "procedural" or bool(cfg.data.test_files)
    if stage == "pretrain":
        train = load_pretrain_dataset(cfg.data, cfg.pretrain, "train", tokenizer)
        held_out = load_pretrain_dataset(cfg.data, cfg.pretrain, "test", tokenizer) if has_test else None
    else:
        train = load_sft_dataset(cfg.data, "train", tokenizer)
        held_out = load_sft_dataset(cfg.data, "test", tokenizer) if has_test else None
    prompts = None
    if cfg.sft.accuracy_every != 0:
        if not has_test:
            raise ValueError("sft.accuracy_every: the accuracy evaluation needs held-out prompts (data.test_files)")
        prompts = load_prompt_dataset(cfg.data, "test", tokenizer)
    return train, held_out, prompts


def run_supervised(cfg: Config, stage: Stage) -> JobResult:
    """Run the whole job on this rank (every rank of the launch calls it)."""
    import torch.distributed as dist

    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training import checkpoint as ckpt
    from r1mega.training.job_loop import train_with_saves
    from r1mega.training.sft import SupervisedTrainer

    # before any group or tensor exists: refuse a layout the planner predicts will not fit
    from r1mega.parallel.distributed import launch_env
    from r1mega.plan.report import check_plan_at_startup

    check_plan_at_startup(cfg, world_size=launch_env().world_size, stage="sft")
    init_distributed(cfg.parallel, seed=cfg.run.seed, model_cfg=cfg.model)
    try:
        tokenizer = load_tokenizer(cfg.data.tokenizer)
        if len(tokenizer) > cfg.model.vocab_size:
            raise ValueError(
                f"model.vocab_size: {cfg.model.vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens"
            )
        if stage == "pretrain" and cfg.pretrain.export_hf:
            from r1mega.training.hf_export import check_exportable

            check_exportable(cfg.model, tokenizer)  # at start, not after training
        train, held_out, prompts = load_datasets(cfg, stage, tokenizer)
        trainer = SupervisedTrainer(cfg, train, held_out, tokenizer=tokenizer, accuracy_prompts=prompts, stage=stage)
        root = cfg.checkpoint.root(cfg.run.run_dir)
        resume_path = ckpt.resolve_resume(cfg.checkpoint.resume, root)
        init_fn = None
        if resume_path is None and cfg.checkpoint.init_from:
            def init_fn(chunks):
                used = ckpt.load_model_weights(cfg.checkpoint.init_from, chunks, model_config=cfg.model)
                logger.info("initial weights from %s", used)
                report_io(cfg)
        trainer.build(init_fn)
        if resume_path is not None:
            resume_trainer(cfg, trainer, resume_path)
        if dist.get_rank() == 0:
            save_config(cfg, cfg.run.run_dir / f"{stage}_config.yaml")

        outcome = train_with_saves(
            cfg, trainer, root, resumed=resume_path is not None,
            extra_state=lambda t: {"sampler": t.sampler.state_dict(), "stage": stage},
        )
        preempted = outcome.preempted
        if stage == "pretrain" and not preempted and cfg.pretrain.export_hf:
            _export_hf(cfg, trainer, tokenizer)
        return JobResult(step=trainer.step, metrics=outcome.metrics, checkpoint=outcome.checkpoint, preempted=preempted)
    finally:
        destroy_distributed()


def _export_hf(cfg: Config, trainer, tokenizer) -> None:
    """HF safetensors + config.json + generation_config.json + tokenizer of the final model in
    run_dir/hf (a collective; replaces an earlier export once the new one is complete)."""
    from r1mega.training.checkpoint import metered_io
    from r1mega.training.hf_export import write_hf_export

    out = cfg.run.run_dir / "hf"
    with metered_io("exported", out, trainer.model, trainer.optimizer):
        write_hf_export(trainer.model, cfg.model, tokenizer, out)
    report_io(cfg)
    _say(f"HF export written to {out}")
