"""Shared benchmark plumbing: timing, reference rates of the device, provenance, the JSON schema.

Every benchmark writes one JSON document:

    {"schema": "r1mega.kernels.bench/1", "op": ..., "device": ..., "commit": ..., "date": ...,
     "reference": {"matmul_tflops": ..., "matmul": "...", "copy_gbps": ..., "copy": "..."},
     "results": [Record, ...]}

and each `Record` (with the device name, commit and date repeated in it) names the op,
implementation, mode, shape, dtype, device, backend, time statistics (ms), FLOP/s and bytes/s with
their percentage of the device's *measured* matmul and copy rates (never a datasheet number), and
the peak extra memory with how it was measured.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

SCHEMA = "r1mega.kernels.bench/1"

__all__ = [
    "SCHEMA",
    "Record",
    "TimeStats",
    "time_call",
    "device_name",
    "git_commit",
    "utc_date",
    "matmul_rate",
    "copy_bandwidth",
    "write_report",
    "tensor_bytes",
]


@dataclass
class TimeStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    n: int
    timer: str


@dataclass
class Record:
    op: str
    impl: str
    mode: str
    shape: dict[str, int]
    dtype: str
    device: str
    backend: str
    time: Optional[TimeStats] = None
    flops: Optional[float] = None
    """Model FLOPs of the op (the same count for every implementation of it)."""
    tflops: Optional[float] = None
    pct_of_matmul: Optional[float] = None
    bytes: Optional[float] = None
    """Bytes the op must move at minimum (inputs read once, gradients written once)."""
    gbps: Optional[float] = None
    pct_of_copy: Optional[float] = None
    peak_extra_bytes: Optional[int] = None
    """Peak allocation during the call minus the call's own results (outputs / gradients)."""
    peak_extra_pct_of_logits: Optional[float] = None
    memory_method: Optional[str] = None
    notes: list[str] = field(default_factory=list)
    error: Optional[str] = None

    def fill_rates(self, reference: dict[str, Any]) -> None:
        if self.time is None:
            return
        seconds = self.time.median_ms / 1e3
        if self.flops:
            self.tflops = self.flops / seconds / 1e12
            if reference.get("matmul_tflops"):
                self.pct_of_matmul = 100.0 * self.tflops / reference["matmul_tflops"]
        if self.bytes:
            self.gbps = self.bytes / seconds / 1e9
            if reference.get("copy_gbps"):
                self.pct_of_copy = 100.0 * self.gbps / reference["copy_gbps"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> TimeStats:
    """Median of `repeats` timed calls after `warmup` untimed ones (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times: list[float] = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        timer = "cuda_events"
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        timer = "perf_counter"
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * (len(times) - 1) + 0.5))]  # noqa: E731
    return TimeStats(statistics.median(times), q(0.1), q(0.9), statistics.fmean(times), len(times), timer)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"cpu: {model} ({torch.get_num_threads()} torch threads)"


def git_commit() -> str:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("R1MEGA_COMMIT", "unknown")


def utc_date() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def matmul_rate(device: torch.device, *, warmup: int = 3, repeats: int = 10) -> tuple[float, str]:
    """Measured dense matmul TFLOP/s: bf16 8192^3 on GPU (what the kernels' GEMMs run), fp32 1024^3
    on CPU (what the CPU path runs)."""
    if device.type == "cuda":
        n, dtype = 8192, torch.bfloat16
    else:
        n, dtype = 1024, torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)
    stats = time_call(lambda: torch.mm(a, b, out=c), device, warmup=warmup, repeats=repeats)
    return 2 * n**3 / (stats.median_ms / 1e3) / 1e12, f"torch.mm {n}x{n}x{n} {str(dtype).replace('torch.', '')}"


def copy_bandwidth(device: torch.device, *, warmup: int = 3, repeats: int = 10) -> tuple[float, str]:
    """Measured copy bandwidth (bytes read + written per second) of a 1 GiB (GPU) / 256 MiB (CPU) copy."""
    nbytes = (1 << 30) if device.type == "cuda" else (1 << 28)
    src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    stats = time_call(lambda: dst.copy_(src), device, warmup=warmup, repeats=repeats)
    return 2 * nbytes / (stats.median_ms / 1e3) / 1e9, f"Tensor.copy_ of {nbytes >> 20} MiB fp32"


def tensor_bytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def write_report(path: str, op: str, device: torch.device, reference: dict[str, Any], records: list[Record]) -> dict:
    doc = {
        "schema": SCHEMA,
        "op": op,
        "device": device_name(device),
        "commit": git_commit(),
        "date": utc_date(),
        "torch": torch.__version__,
        "reference": reference,
        "results": [],
    }
    for r in records:  # each record also carries its provenance, so it stands alone when extracted
        row = dataclasses.asdict(r)
        row.update(device_name=doc["device"], commit=doc["commit"], date=doc["date"])
        doc["results"].append(row)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2)
    return doc
