"""Rank functions for tests/test_uneven_pipeline.py: a checkpoint saved under one pipeline split
and resumed under another."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests import _checkpoint_fns as ck
from tests._sft_fns import _reference_weights, sft_config


def _config(out_dir: str, layout: dict):
    from r1mega.parallel.config import ParallelConfig

    cfg = sft_config(out_dir, ["model.num_layers=5", f"sft.steps={ck.STEPS_BEFORE + ck.STEPS_AFTER}",
                               "optimizer.lr_warmup_steps=1", "optimizer.lr_decay_style=cosine"])
    return dataclasses.replace(cfg, parallel=ParallelConfig(**layout))


def save_then_resume_at_other_splits(out_dir: str, saving: dict, resuming: list[dict]) -> dict:
    """Train STEPS_BEFORE steps under `saving`, checkpoint, train STEPS_AFTER more (its own
    continuation); then, per layout in `resuming`, a fresh model loads the checkpoint and trains
    STEPS_AFTER steps. Losses come from the last pipeline stage (None elsewhere)."""
    from megatron.core import parallel_state

    from r1mega.parallel.distributed import destroy_distributed
    from r1mega.training.checkpoint import load_checkpoint, save_checkpoint

    cfg = _config(out_dir, saving)
    reference = _reference_weights(cfg.model, ck.SEED)
    trainer = ck._trainer(cfg, reference)
    ck._steps(trainer, ck.STEPS_BEFORE)
    path = save_checkpoint(Path(out_dir) / "ckpt", trainer.step, trainer.model, trainer.optimizer,
                           trainer.scheduler, {"sampler": trainer.sampler.state_dict()}, model_config=cfg.model)
    own = ck._steps(trainer, ck.STEPS_AFTER)
    parallel_state.destroy_model_parallel()
    resumed = []
    for layout in resuming:
        cfg = _config(out_dir, layout)
        trainer = ck._trainer(cfg)  # megatron's own random init: everything must come from the checkpoint
        loaded = load_checkpoint(path, trainer.model, trainer.optimizer, trainer.scheduler, model_config=cfg.model)
        trainer.step = loaded.step
        trainer.sampler.load_state_dict(loaded.extra_state["sampler"])
        resumed.append({"layout": layout, "step": loaded.step, "after": ck._steps(trainer, ck.STEPS_AFTER)})
        parallel_state.destroy_model_parallel()
    destroy_distributed()
    return {"own": own, "resumed": resumed}
