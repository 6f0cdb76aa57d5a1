"""Peak extra host memory of a piece of work (a checkpoint save or load, an HF export), measured.

    with HostMemoryMeter() as meter:
        save(...)
    meter.peak_extra_bytes, meter.seconds

What is counted: this process's resident memory above its level at the start (its exact peak from
the kernel's high-water mark, VmHWM, reset at the start through /proc/self/clear_refs; sampled
when that file is not writable) plus the private memory (pages they own alone, so shared
copy-on-write pages of a forked parent are not counted twice) of every child process alive during
the work (megatron's checkpoint writers are forked children), sampled every `interval` seconds.
Free heap pages are returned to the kernel first (malloc_trim), so that the work cannot hide
its allocations in memory freed earlier but still resident.
The two peaks are added, an upper bound when they do not coincide. The page cache is not counted:
the kernel reclaims it. Linux only; elsewhere the meter reports None.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Optional

__all__ = ["HostMemoryMeter", "rss_bytes", "state_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes(pid: int | str = "self") -> Optional[int]:
    """Resident set size of a process (cheap: /proc/PID/statm), None where /proc is unavailable."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _status_kib(field: str) -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _private_bytes(pid: int) -> int:
    """Memory a process owns alone (Private_Clean + Private_Dirty + its swap), 0 if it is gone."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:", "Swap:")):
                total += int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return total


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (through /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                kids = Path(f"/proc/{parent}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for kid in kids:
                out.append(int(kid))
                todo.append(int(kid))
    return out


def _trim_heap() -> None:
    """Hand the C heap's free pages back to the kernel (glibc's malloc_trim), so that memory
    freed before the measured work and reused by it shows up as growth instead of hiding in
    pages that were already resident."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS ("5" in clear_refs); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def state_bytes(*tensor_collections) -> int:
    """Bytes of the distinct storages behind the tensors (nested dicts/lists; shared storages,
    e.g. a parameter and a view of it, counted once)."""
    import torch

    seen: dict[int, int] = {}

    def visit(obj) -> None:
        if torch.is_tensor(obj):
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    for c in tensor_collections:
        visit(c)
    return sum(seen.values())


class HostMemoryMeter:
    """Context manager measuring the peak extra host memory and the duration of its body."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak_extra_bytes: Optional[int] = None
        self.seconds: float = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._base = 0
        self._peak_rss = 0
        self._peak_children = 0
        self._exact = False
        self.own_extra_bytes: Optional[int] = None
        """This process's part of peak_extra_bytes."""
        self.children_bytes: Optional[int] = None
        """The child processes' part (their private memory, at its sampled peak)."""

    def _sample(self) -> None:
        rss = rss_bytes()
        if rss is not None:
            self._peak_rss = max(self._peak_rss, rss)
        kids = _children(os.getpid())
        if kids:
            self._peak_children = max(self._peak_children, sum(_private_bytes(k) for k in kids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "HostMemoryMeter":
        _trim_heap()
        self._base = rss_bytes() or 0
        self._peak_rss = self._base
        self._exact = _reset_peak() and _status_kib("VmHWM") is not None
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="host-memory-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self._start
        if rss_bytes() is None:  # no /proc: nothing was measured
            return
        peak = _status_kib("VmHWM") if self._exact else None
        peak_rss = max(self._peak_rss, peak or 0)
        self.own_extra_bytes = max(0, peak_rss - self._base)
        self.children_bytes = self._peak_children
        self.peak_extra_bytes = self.own_extra_bytes + self.children_bytes
