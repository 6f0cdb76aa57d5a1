"""Run logging: per-step metrics to jsonl (always), tensorboard and wandb (when enabled), a progress
bar, and PNG plots of chosen metrics, all under the run directory.

One process writes: the trainers compute their metrics on the last pipeline stage, reduce them over
data-parallel ranks, and hand them to global rank 0 with `share_metrics`; `MetricsLogger` is a no-op
on every other rank (`enabled=False`), so the trainer loop calls it unconditionally.

    with MetricsLogger(run_dir, cfg.logging, total_steps=cfg.train.steps, start_step=step) as log:
        for step in ...:
            log.log(step, {"loss": 2.3, "lr": 1e-4})
        log.plot()

Files in the run directory:
- `metrics.jsonl`: one JSON object per `log()` call, `{"step": s, "time": unix seconds, **metrics}`,
  flushed at once (a killed run keeps every logged step). A non-finite value is written as NaN or
  Infinity (Python's json reads them back). A run resumed at step s first drops rows after s, the
  work the checkpoint does not contain, so the file stays one consistent history.
- `tensorboard/`: event files (scalars under their metric names; resumed runs purge later steps).
- `wandb/`: the wandb run (offline by default: no network is ever required).
- `metrics.png`: one panel per plotted metric over steps (matplotlib's Agg canvas).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

from r1mega.configlib import ConfigError

__all__ = [
    "LoggingConfig",
    "MetricsLogger",
    "plot_metrics",
    "plot_profile",
    "read_metrics",
    "share_metrics",
    "is_logging_rank",
    "METRICS_FILE",
    "PLOT_FILE",
]

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "metrics.png"


@dataclass(kw_only=True)
class LoggingConfig:
    tensorboard: bool = True
    """Write tensorboard event files to run_dir/tensorboard (tensorboard is a dependency)."""
    wandb: bool = False
    """Also log to Weights & Biases (needs `pip install wandb`; an error at start-up if missing)."""
    wandb_project: str = "r1mega"
    """wandb project name."""
    wandb_entity: Optional[str] = None
    """wandb entity (team or user); None = wandb's default."""
    wandb_mode: Literal["offline", "online"] = "offline"
    """offline writes run_dir/wandb for a later `wandb sync`; online needs the network."""
    progress_bar: bool = True
    """A tqdm bar on rank 0 (only when stdout is a terminal; SLURM logs get `print_every` lines)."""
    print_every: int = 10
    """Print one line of metrics every this many steps on rank 0 (0 = never)."""
    plot_every: int = 0
    """Redraw the PNG plot every this many steps (0 = only when the trainer finishes)."""
    plot_metrics: list[str] = field(default_factory=lambda: ["loss", "eval/loss", "lr", "grad_norm"])
    """Metrics drawn in run_dir/metrics.png, one panel each; names never logged are left out."""

    def validate(self) -> None:
        if self.print_every < 0:
            raise ConfigError(f"print_every: must be >= 0, got {self.print_every}")
        if self.plot_every < 0:
            raise ConfigError(f"plot_every: must be >= 0, got {self.plot_every}")
        if not self.wandb_project:
            raise ConfigError("wandb_project: must be a non-empty name")
        if any(not m for m in self.plot_metrics):
            raise ConfigError("plot_metrics: metric names must be non-empty")


def is_logging_rank() -> bool:
    """Global rank 0 (or a process without torch.distributed) is the one that writes logs."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a dependency
        return True
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def share_metrics(metrics: Optional[Mapping[str, float]], src: int) -> dict[str, float]:
    """Every rank gets the metrics dict that global rank `src` holds (others pass None).

    The trainers compute metrics on the last pipeline stage; this hands them to rank 0, which writes
    the logs. A collective over the whole world: every rank must call it, with the same `src`.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return {k: float(v) for k, v in (metrics or {}).items()}
    box = [dict(metrics) if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    if box[0] is None:
        raise RuntimeError(f"share_metrics: rank {src} passed no metrics")
    return {k: float(v) for k, v in box[0].items()}


def _scalar(name: str, value: Any) -> float:
    """float(value) for Python numbers and one-element tensors/arrays; ValueError otherwise."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"metric {name!r}: expected a number, got {type(value).__name__} {value!r}")
    return float(value)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file (an unfinished last line, from a killed writer, is ignored)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # the file did not end with "\n": a write cut short
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object") from None
    return rows


class MetricsLogger:
    """Writes per-step metrics of one run (see the module docstring); a no-op when not enabled."""

    def __init__(
        self,
        run_dir: str | os.PathLike,
        cfg: LoggingConfig,
        *,
        total_steps: Optional[int] = None,
        start_step: int = 0,
        run_name: Optional[str] = None,
        config: Optional[Mapping[str, Any]] = None,
        enabled: Optional[bool] = None,
    ):
        """`start_step`: the step a resumed run continues from (0 for a fresh run); rows logged
        after it by an earlier attempt are dropped. `config`: the resolved job config, recorded in
        wandb. `enabled`: defaults to `is_logging_rank()`."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.enabled = is_logging_rank() if enabled is None else enabled
        self.total_steps = total_steps
        self._history: dict[str, list[tuple[int, float]]] = {}
        self._file = None
        self._tb = None
        self._wandb_run = None
        self._bar = None
        self._closed = False
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        self._open_jsonl(start_step)
        if cfg.tensorboard:
            self._tb = self._open_tensorboard(start_step)
        if cfg.wandb:
            self._wandb_run = self._open_wandb(run_name or self.run_dir.name, config)
        if cfg.progress_bar and total_steps and sys.stdout.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc=self.run_dir.name)

    # -- sinks ------------------------------------------------------------------------------------

    def _open_jsonl(self, start_step: int) -> None:
        if self.metrics_path.exists():
            kept = [r for r in read_metrics(self.metrics_path) if r.get("step", 0) <= start_step]
            tmp = self.metrics_path.with_suffix(".jsonl.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for row in kept:
                    f.write(json.dumps(row) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.metrics_path)
            for row in kept:
                self._remember(row["step"], {k: v for k, v in row.items() if k not in ("step", "time")})
        self._file = open(self.metrics_path, "a", encoding="utf-8")

    def _open_tensorboard(self, start_step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ConfigError(
                f"logging.tensorboard: tensorboard is not importable ({e}); install it or set "
                "logging.tensorboard=false"
            ) from None
        # purge_step drops events after the resume point left by an earlier attempt of this run
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)

    def _open_wandb(self, name: str, config: Optional[Mapping[str, Any]]):
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "logging.wandb: wandb is not installed; `pip install wandb` or set logging.wandb=false"
            ) from None
        wandb_dir = self.run_dir / "wandb"
        wandb_dir.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=self.cfg.wandb_project,
            entity=self.cfg.wandb_entity,
            name=name,
            dir=str(wandb_dir),
            mode=self.cfg.wandb_mode,
            config=dict(config or {}),
            resume="allow",
        )

    # -- API --------------------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record `metrics` (numbers or one-element tensors) for `step` in every enabled sink."""
        if not self.enabled:
            return
        if self._closed:
            raise RuntimeError("MetricsLogger.log after close()")
        values = {name: _scalar(name, v) for name, v in metrics.items()}
        if "step" in values or "time" in values:
            raise ValueError("metric names 'step' and 'time' are reserved for the jsonl row")
        row = {"step": int(step), "time": round(time.time(), 3), **values}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        self._remember(step, values)
        if self._tb is not None:
            for name, v in values.items():
                self._tb.add_scalar(name, v, global_step=step)
            self._tb.flush()
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=step)
        if self._bar is not None:
            self._bar.update(max(0, step - self._bar.n))
            shown = {k: f"{v:.4g}" for k, v in values.items() if k in ("loss", "lr", "eval/loss")}
            self._bar.set_postfix(shown, refresh=False)
        elif self.cfg.print_every and step % self.cfg.print_every == 0:
            text = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            total = f"/{self.total_steps}" if self.total_steps else ""
            print(f"[{self.run_dir.name}] step {step}{total} {text}", flush=True)
        if self.cfg.plot_every and step % self.cfg.plot_every == 0:
            self.plot()

    def _remember(self, step: int, values: Mapping[str, Any]) -> None:
        for name in self.cfg.plot_metrics:
            if name in values and isinstance(values[name], (int, float)):
                self._history.setdefault(name, []).append((int(step), float(values[name])))

    def plot(self, path: Optional[str | os.PathLike] = None) -> Optional[Path]:
        """Draw `cfg.plot_metrics` over steps into run_dir/metrics.png; None if nothing to draw."""
        if not self.enabled:
            return None
        series = {name: self._history[name] for name in self.cfg.plot_metrics if self._history.get(name)}
        return plot_metrics(series, path or self.run_dir / PLOT_FILE, title=self.run_dir.name)

    def close(self) -> None:
        if self._closed or not self.enabled:
            self._closed = True
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def plot_metrics(
    series: Mapping[str, list[tuple[int, float]]], path: str | os.PathLike, *, title: str = ""
) -> Optional[Path]:
    """One panel per metric (steps on x); written atomically to `path`. None if `series` is empty."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    # The Agg canvas directly, not pyplot: no display on training nodes, no global backend state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(series)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.5 * cols, 3.2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, points) in zip(axes.flat, series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)  # a reader never sees a half-written image
    return path


def plot_profile(rows: list[Mapping[str, Any]], path: str | os.PathLike, *, phases: list[str]) -> Optional[Path]:
    """Step-time profile (rows of profile.jsonl: step, rank, time/<phase>): rank 0's phases stacked
    per step, and each rank's mean seconds per phase. Written atomically; None without rows."""
    if not rows:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranks = sorted({int(r["rank"]) for r in rows})
    first = [r for r in rows if int(r["rank"]) == ranks[0]]
    steps = [int(r["step"]) for r in first]
    fig = Figure(figsize=(12, 4.2))
    FigureCanvasAgg(fig)
    ax_steps, ax_ranks = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    colors = {p: f"C{i % 10}" for i, p in enumerate(phases)}
    ax_steps.stackplot(steps, [[float(r.get(f"time/{p}", 0.0)) for r in first] for p in phases],
                       labels=phases, colors=[colors[p] for p in phases], alpha=0.85)
    ax_steps.set_title(f"seconds per step, rank {ranks[0]} (phases stacked)")
    ax_steps.set_xlabel("step")
    ax_steps.grid(alpha=0.3)
    ax_steps.legend(loc="upper left", fontsize=7, ncol=3)
    bottoms = [0.0] * len(ranks)
    for p in phases:
        means = []
        for rank in ranks:
            mine = [float(r.get(f"time/{p}", 0.0)) for r in rows if int(r["rank"]) == rank]
            means.append(sum(mine) / max(len(mine), 1))
        ax_ranks.bar([str(r) for r in ranks], means, bottom=bottoms, color=colors[p], label=p)
        bottoms = [b + m for b, m in zip(bottoms, means)]
    ax_ranks.set_title("mean seconds per step, by rank")
    ax_ranks.set_xlabel("rank")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
    return path
