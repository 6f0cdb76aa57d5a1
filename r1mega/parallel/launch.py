"""Run a function on N local processes, torchrun-style, and collect what each rank returns.

Used by the multi-rank CPU tests (gloo) and by small local jobs: each rank gets the environment
torchrun would give it (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and calls
`fn(*args, **kwargs)`; the function initialises torch.distributed itself (usually through
`r1mega.parallel`), exactly as a real launch would. Processes start with the "spawn" method: a
forked child would inherit torch's thread pools mid-state.
"""

from __future__ import annotations

import os
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


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
            raise DistributedRunError(head + "\n" + "\n".join(errors))
        return results


def _reported_failure(path: Path) -> bool:
    """True when an exited rank left an error record, or no record at all (it crashed)."""
    if not path.exists():
        return True
    import torch

    return not torch.load(path, weights_only=False)["ok"]
