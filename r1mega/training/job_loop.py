"""The save/preemption loop that both job drivers (pretrain/SFT and RL) wrap around `trainer.train`.

Saves every `checkpoint.save_every` steps, on SIGTERM/SIGUSR1 (then stops the loop) and once at
the end unless that step is already on disk. The trainers differ only in what goes into the
checkpoint's extra state and in what else is saved with it (the RL reference model).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from r1mega.config import Config

__all__ = ["TrainOutcome", "train_with_saves", "resume_trainer", "say", "report_io", "IO_LOG"]

IO_LOG = "checkpoint_io.jsonl"
"""In the run directory: one JSON line per checkpoint save/load and HF export (seconds, peak extra
host memory, the rank's training state), as `report_io` writes them."""


@dataclass
class TrainOutcome:
    metrics: dict
    checkpoint: Optional[Path]
    """The last checkpoint written by this run (None when it wrote none)."""
    preempted: bool


def train_with_saves(
    cfg: Config,
    trainer: Any,
    root: Path,
    *,
    resumed: bool,
    extra_state: Callable[[Any], dict],
    also_save: Optional[Callable[[Any], None]] = None,
) -> TrainOutcome:
    """Run `trainer.train(on_step_end)` with checkpoints under `root`.

    `trainer` has step, model, optimizer, scheduler and train(on_step_end); `extra_state(trainer)`
    is stored with each checkpoint; `also_save(trainer)` runs after each save. A resumed run does
    not save again at the end when it ran no step.
    """
    from r1mega.training import checkpoint as ckpt

    last_path: Optional[Path] = None
    saved_step = trainer.step if resumed else None

    def save(t: Any) -> None:
        nonlocal last_path, saved_step
        last_path = ckpt.save_checkpoint(
            root,
            t.step,
            t.model,
            t.optimizer if cfg.checkpoint.save_optimizer else None,
            t.scheduler,
            extra_state(t),
            model_config=cfg.model,
            keep_last=cfg.checkpoint.keep_last,
            optimizer_format=cfg.checkpoint.optimizer_format,
        )
        report_io(cfg)
        if also_save is not None:
            also_save(t)
        saved_step = t.step

    preempted = False
    with ckpt.PreemptionWatcher(cfg.checkpoint.exit_on_signal) as watcher:

        def on_step_end(t: Any) -> bool:
            nonlocal preempted
            preempted = cfg.checkpoint.exit_on_signal and watcher.should_stop()
            every = cfg.checkpoint.save_every
            if preempted or (every > 0 and t.step % every == 0):
                save(t)
            if preempted:
                say(f"signal received: saved step {t.step} to {last_path}; exiting")
            return preempted

        metrics = trainer.train(on_step_end)
    if not preempted and cfg.checkpoint.save_at_end and saved_step != trainer.step:
        save(trainer)
    return TrainOutcome(metrics=metrics, checkpoint=last_path, preempted=preempted)


def resume_trainer(cfg: Config, trainer: Any, path) -> None:
    """Load a training checkpoint into a built trainer (model, optimizer, scheduler, step and the
    data sampler's position): what every supervised job (sft, pretrain, rm) does on resume."""
    from r1mega.training import checkpoint as ckpt

    loaded = ckpt.load_checkpoint(
        path, trainer.model, trainer.optimizer, trainer.scheduler, model_config=cfg.model,
        load_optimizer=cfg.checkpoint.load_optimizer, load_rng=cfg.checkpoint.load_rng,
    )
    report_io(cfg)
    trainer.step = loaded.step
    if "sampler" in loaded.extra_state:
        trainer.sampler.load_state_dict(loaded.extra_state["sampler"])
    say(f"resumed from {path} at step {loaded.step}")


def report_io(cfg: Config) -> None:
    """Print the latest save/load/export's cost (rank 0) and append it to run_dir/checkpoint_io.jsonl."""
    import json
    import time

    import torch.distributed as dist

    from r1mega.training.checkpoint import last_io_stats

    stats = last_io_stats()
    if stats is None or (dist.is_initialized() and dist.get_rank() != 0):
        return
    say(stats.line())
    cfg.run.run_dir.mkdir(parents=True, exist_ok=True)
    with open(cfg.run.run_dir / IO_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"time": time.time(), **stats.record()}) + "\n")


def say(text: str) -> None:
    """Print once per job (rank 0, or the lone process before torch.distributed is up)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(text, flush=True)
