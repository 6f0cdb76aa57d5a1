"""Peak memory a call allocates, measured (never estimated).

CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was allocated
before the call.

CPU: torch's CPU allocator has no peak counter, so the call runs once under `torch.profiler` with
`profile_memory=True`, which records every allocation and free through torch's allocator as a
"[memory]" event (address, signed size). The peak is that of the running sum over allocations made
inside the window (a free counts only if its block was allocated in the window). The events' own
"Total Allocated" field is not used: it keeps blocks allocated under an earlier profiler and freed
outside one, so it drifts upward across measurements in one process. Scratch memory that
libraries allocate outside torch (oneDNN/MKL workspaces) is not seen; tensors, which is what a
[tokens, vocab] buffer would be, all are.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Callable

import torch

__all__ = ["cpu_peak_bytes", "cuda_peak_bytes", "peak_bytes"]


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes allocated by torch's CPU allocator while `fn()` runs (0 = nothing allocated)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    fd, path = tempfile.mkstemp(suffix=".json", prefix="r1mega-mem-")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.unlink(path)
    mem = [e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0]
    mem.sort(key=lambda e: (e["ts"], e["args"].get("Ev Idx", 0)))
    live: dict[int, int] = {}
    current = peak = 0
    for e in mem:
        size, addr = int(e["args"]["Bytes"]), int(e["args"]["Addr"])
        if size > 0:
            live[addr] = live.get(addr, 0) + size
            current += size
            peak = max(peak, current)
        elif addr in live:
            current -= live.pop(addr)
    return peak


def cuda_peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated on `device` during `fn()` beyond what was allocated before it."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def peak_bytes(fn: Callable[[], object], device: torch.device) -> tuple[int, str]:
    """(peak bytes, how it was measured) for `fn()` on `device`."""
    if device.type == "cuda":
        return cuda_peak_bytes(fn, device), "torch.cuda.max_memory_allocated"
    return cpu_peak_bytes(fn), "torch.profiler CPU allocator events (peak Total Allocated)"
