"""The `checkpoint:` config section: when to save, what to keep, how to resume.

Kept apart from checkpoint.py so that loading a config never imports torch or megatron.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from r1mega.configlib import ConfigError


@dataclass(kw_only=True)
class CheckpointConfig:
    dir: Optional[str] = None
    """Checkpoint root; None = <run.output_dir>/<run.name>/checkpoints."""
    save_every: int = 0
    """Save every this many steps (0: only at the end, and on preemption)."""
    save_at_end: bool = True
    """Save when training finishes."""
    keep_last: int = 2
    """Complete checkpoints to keep; older ones are deleted after each successful save (0 = all)."""
    resume: str = "auto"
    """`auto`: continue from the latest complete checkpoint in `dir` if there is one; `none`: start
    fresh; or a path (a checkpoint directory, or a root whose latest complete one is used)."""
    init_from: Optional[str] = None
    """Initial model weights (only) from this checkpoint, e.g. the base model for SFT or RL, when not
    resuming. Any layout; optimizer, schedule and step start fresh."""
    save_optimizer: bool = True
    """Include the optimizer state (needed for an exact resume; half or less of the size without)."""
    load_optimizer: bool = True
    """Restore the optimizer state on resume (false: fresh moments, e.g. after changing optimizers)."""
    load_rng: bool = True
    """Restore RNG states on resume (only possible in the same parallel layout)."""
    optimizer_format: Literal["fully_reshardable", "dp_reshardable"] = "fully_reshardable"
    """How megatron's distributed optimizer stores its state. fully_reshardable: per-parameter
    tensors in global coordinates (gathered over DP while saving), loadable under any TP/PP/EP/DP;
    dp_reshardable: its flat buffers as they are (no gather, faster), loadable only under the same
    TP/PP/EP layout (DP may change). The non-distributed optimizer is always fully reshardable."""
    exit_on_signal: bool = True
    """SIGTERM / SIGUSR1 (SLURM preemption, `scancel --signal`): save at the next step boundary and
    exit 0. False leaves the signals' default behaviour alone."""

    def validate(self) -> None:
        if self.save_every < 0:
            raise ConfigError(f"save_every: must be >= 0, got {self.save_every}")
        if self.keep_last < 0:
            raise ConfigError(f"keep_last: must be >= 0 (0 = keep all), got {self.keep_last}")
        if not self.resume:
            raise ConfigError("resume: must be 'auto', 'none' or a checkpoint path")
        if self.dir is not None and not self.dir:
            raise ConfigError("dir: must be a directory path or null")

    def root(self, run_dir: Path) -> Path:
        return Path(self.dir) if self.dir is not None else Path(run_dir) / "checkpoints"
