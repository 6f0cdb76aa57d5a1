"""Run a function on N local processes, torchrun-style, and collect what each rank returns.

Used by the multi-rank CPU tests (gloo) and by small local jobs: each rank gets the environment
torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and calls
`fn(*args, **kwargs)`; the function initialises torch.distributed itself (usually through
`r1mega.parallel`), exactly as a real launch would. Processes start with the "spawn" method: a
forked child would inherit torch's thread pools mid-state.
"""

from __future__ import annotations

import os
import random
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import multiprocessing as mp

__all__ = ["run_distributed", "find_free_port", "DistributedRunError"]


class DistributedRunError(RuntimeError):
    """One or more ranks failed or timed out; the message carries each failing rank's traceback."""


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def find_free_port() -> int:
    """A port that is free now and outside the kernel's ephemeral range.

    A port the kernel hands out for `bind(0)` comes from the ephemeral range, which every outgoing
    connection (gloo opens many) draws from too: between choosing it and the rank's store
    listening on it, another connection can take it (EADDRINUSE). Ports outside that range are
    only taken by an explicit bind, so a random one that binds now is far less likely to clash.
    The range 20000-30000 is left to SLURM jobs (see r1mega.parallel.distributed).
    """
    lo, hi = _ephemeral_range()
    spans = [(a, b) for a, b in ((30000, lo - 1), (hi + 1, 65535)) if b - a > 100]
    rng = random.SystemRandom()
    for _ in range(50) if spans else ():
        a, b = rng.choice(spans)
        port = rng.randint(a, b)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_port_clash(error: str) -> bool:
    """The rank's store could not listen on the agreed port: nothing ran yet, a new port helps."""
    clash = "EADDRINUSE" in error or "address already in use" in error.lower()
    return clash and ("TCPStore" in error or "rendezvous" in error)


def _rank_main(
    fn: Callable, rank: int, world_size: int, port: int, out_dir: str, threads: int,
    extra_env: dict, args: tuple, kwargs: dict,
) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": str(threads),
        }
    )
    os.environ.update(extra_env)
    import torch

    torch.set_num_threads(threads)
    out = Path(out_dir) / f"rank{rank}.pt"
    try:
        result = fn(*args, **kwargs)
        torch.save({"ok": True, "result": result}, out)
    except BaseException:  # report everything, including SystemExit from a failing rank
        torch.save({"ok": False, "error": traceback.format_exc()}, out)
    finally:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass


def run_distributed(
    fn: Callable,
    world_size: int,
    *args: Any,
    timeout: float = 600.0,
    threads_per_rank: int = 1,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> list[Any]:
    """Run `fn(*args, **kwargs)` on `world_size` spawned processes; return the per-rank results.

    `fn` must be importable by module path (a top-level function). Results travel through
    `torch.save`, so tensors, dicts and lists come back as they were. Raises DistributedRunError
    with every failing rank's traceback, or on timeout (all ranks are killed).
    """
    for attempt in range(_PORT_ATTEMPTS):
        try:
            return _run_once(fn, world_size, args, kwargs, timeout, threads_per_rank, env)
        except _PortClash as clash:
            if attempt == _PORT_ATTEMPTS - 1:
                raise DistributedRunError(
                    f"{clash} (the master port was taken {_PORT_ATTEMPTS} times in a row)"
                ) from None
    raise AssertionError("unreachable")


_PORT_ATTEMPTS = 3


class _PortClash(Exception):
    """Rank 0 could not listen on the chosen port; the launch is retried on a new one."""


def _run_once(fn, world_size, args, kwargs, timeout, threads_per_rank, env) -> list[Any]:
    import torch

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="r1mega-dist-") as out_dir:
        port = find_free_port()
        procs = [
            ctx.Process(
                target=_rank_main,
                args=(fn, rank, world_size, port, out_dir, threads_per_rank, dict(env or {}), args, kwargs),
                daemon=False,
            )
            for rank in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        failed_early = False
        checked: set[int] = set()
        while any(p.is_alive() for p in procs):
            if time.monotonic() > deadline:
                break
            # a rank that failed usually leaves the others blocked in a collective: stop them all
            for rank, p in enumerate(procs):
                if rank not in checked and not p.is_alive():
                    checked.add(rank)
                    failed_early |= _reported_failure(Path(out_dir) / f"rank{rank}.pt")
            if failed_early:
                time.sleep(2.0)  # give the others a moment to report their own errors
                break
            time.sleep(0.05)
        timed_out = any(p.is_alive() for p in procs) and not failed_early
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()

        results, errors = [], []
        for rank in range(world_size):
            path = Path(out_dir) / f"rank{rank}.pt"
            if not path.exists():
                code = procs[rank].exitcode
                why = "timed out" if timed_out else f"exited with code {code} without reporting"
                errors.append(f"rank {rank}: {why}")
                results.append(None)
                continue
            record = torch.load(path, weights_only=False)
            if record["ok"]:
                results.append(record["result"])
            else:
                errors.append(f"rank {rank} raised:\n{record['error']}")
                results.append(None)
        if errors:
            head = f"{getattr(fn, '__qualname__', fn)} on {world_size} ranks failed"
            if timed_out:
                head += f" (timeout {timeout:.0f}s)"
            message = head + "\n" + "\n".join(errors)
            if errors[0].startswith("rank 0 raised") and _is_port_clash(errors[0]):
                raise _PortClash(message)
            raise DistributedRunError(message)
        return results


def _reported_failure(path: Path) -> bool:
    """True when an exited rank left an error record, or no record at all (it crashed)."""
    if not path.exists():
        return True
    import torch

    return not torch.load(path, weights_only=False)["ok"]
