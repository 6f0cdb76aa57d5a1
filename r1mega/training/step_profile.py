"""Where one RL step's wall time goes, phase by phase, on every rank: a profile that adds up.

    profile = StepProfile()
    profile.begin()                       # the step's window opens
    with profile.phase("generate"):       # main-thread wall time of each phase
        ...
    times = profile.end()                 # {"time/generate": ..., "time/other": ..., "time/step": ...}

A window runs from the end of the previous window to the end of this step's, so windows tile the
loop and everything it does is inside exactly one window: the step itself, the evaluation, writing
the previous step's metrics row (bookkeeping), and the checkpoint save
of the previous step (`on_step_end` runs after a row is logged). Phases never nest (a nested one is
a bug: its time would count twice), so their sum never exceeds the window; what no phase claims is
`time/other` (untimed Python, waiting on other ranks outside a named phase). Hence

    sum(time/<phase>) + time/other == time/step      (to float rounding)

Work that runs beside the main thread (rewards scored while the engine generates, a checkpoint
written in the background) shows up only as the time the main thread waits for it: the profile is
the step's critical path.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

__all__ = ["StepProfile", "PHASES", "NULL_PROFILE", "profile_keys"]

PHASES = (
    "generate",     # rollout engine generation (collection)
    "reward",       # reward scoring and shaping, dynamic-sampling decisions
    "logprob",      # old / reference log-prob forward passes
    "fwd_bwd",      # policy forward + backward (megatron schedule, grads finalized)
    "optimizer",    # optimizer step + LR schedule
    "sync",         # weight export and load into the rollout engines
    "eval",         # held-out evaluation
    "checkpoint",   # checkpoint saves (the previous step's on_step_end)
    "bookkeeping",  # batch assembly, advantages, metric reductions, rollout logs, sharing metrics
)
"""The named phases, in the order the plot stacks them; `other` is the remainder."""


def profile_keys() -> list[str]:
    """The metric names a profile row has: time/<phase>..., time/other, time/step."""
    return [f"time/{p}" for p in PHASES] + ["time/other", "time/step"]


class StepProfile:
    """Accumulates non-overlapping phase times inside one window (see the module docstring)."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._start: Optional[float] = None
        self._open: Optional[str] = None
        self._times: dict[str, float] = {}

    def begin(self) -> None:
        """Open a new window (dropping any unfinished one)."""
        self._start = self._clock()
        self._open = None
        self._times = {p: 0.0 for p in PHASES}

    @property
    def active(self) -> bool:
        return self._start is not None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the body as phase `name` (added to earlier time of the same phase in this window)."""
        if name not in PHASES:
            raise ValueError(f"StepProfile: unknown phase {name!r} (known: {', '.join(PHASES)})")
        if self._start is None:  # outside a window (set-up, a bare train_step call): not recorded
            yield
            return
        if self._open is not None:
            raise RuntimeError(f"StepProfile: phase {name!r} started inside phase {self._open!r}; phases never nest")
        self._open = name
        t0 = self._clock()
        try:
            yield
        finally:
            self._times[name] += self._clock() - t0
            self._open = None

    def end(self) -> dict[str, float]:
        """Close the window: time/<phase> for every phase, time/other (the remainder), time/step."""
        if self._start is None:
            raise RuntimeError("StepProfile.end without begin")
        if self._open is not None:
            raise RuntimeError(f"StepProfile.end inside phase {self._open!r}")
        total = self._clock() - self._start
        out = {f"time/{p}": t for p, t in self._times.items()}
        out["time/other"] = max(total - sum(self._times.values()), 0.0)  # >= 0 as phases never nest
        out["time/step"] = total
        self._start = None
        return out


class _NullProfile(StepProfile):
    """A profile that records nothing (modules used outside the trainer)."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield


NULL_PROFILE = _NullProfile()


class ProfileLog:
    """Every rank's profile of each step: gathered (a collective), written by rank 0 to
    run_dir/profile.jsonl (one row per step and rank), drawn into run_dir/profile.png."""

    FILE = "profile.jsonl"
    PLOT = "profile.png"

    def __init__(self, run_dir, *, start_step: int = 0, enabled: bool = True):
        """`enabled`: this process writes (global rank 0); rows after `start_step` left by an earlier
        attempt of a resumed run are dropped."""
        import json
        from pathlib import Path

        self.path = Path(run_dir) / self.FILE
        self.enabled = enabled
        self.rows: list[dict] = []
        if enabled and self.path.exists():
            from r1mega.training.logging import read_metrics

            self.rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= start_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.rows), encoding="utf-8")

    def record(self, step: int, times: dict[str, float]) -> dict[str, float]:
        """Gather `times` of every rank; returns rank 0's with `time/step_max` (the slowest rank)."""
        import json

        import torch.distributed as dist

        gathered = [times]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, times)
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                for rank, t in enumerate(gathered):
                    row = {"step": int(step), "rank": rank, **{k: round(v, 6) for k, v in t.items()}}
                    self.rows.append(row)
                    f.write(json.dumps(row) + "\n")
        return {**gathered[0], "time/step_max": max(t["time/step"] for t in gathered)}

    def plot(self):
        """profile.png: rank 0's phases stacked per step, and each rank's mean step split by phase."""
        if not self.enabled or not self.rows:
            return None
        from r1mega.training.logging import plot_profile

        return plot_profile(self.rows, self.path.with_name(self.PLOT), phases=[*PHASES, "other"])
