"""The reward worker process: runs reward components on samples sent over a pipe.

Protocol (tuples over a multiprocessing Connection):
  parent -> worker  ("job", job_id, SampleView, reference, [component, ...]) | ("stop",)
  worker -> parent  ("ready",) once the components are built, or ("fatal", traceback) if they
                    cannot be; then per job: ("part", job_id, component, values) or
                    ("error", job_id, component, traceback) for each component in order, then
                    ("done", job_id). A MemoryError (the address-space limit was hit) is reported
                    as ("oom", job_id, component) and the worker exits: its heap may be unusable.
This module is what the forkserver preloads, so it imports the slow dependencies (sympy through
math-verify) once, and each new worker starts in milliseconds.
"""

from __future__ import annotations

import signal
import traceback
from typing import Any, Optional

from r1mega.rewards.config import RewardConfig
from r1mega.rewards.suite import RewardSuite

try:  # warm the forkserver: workers forked from it start with these already imported
    import math_verify  # noqa: F401
    import sympy  # noqa: F401
except ImportError:  # pragma: no cover - both are install requirements
    pass

__all__ = ["worker_main"]


def _limit_memory(memory_mb: Optional[int]) -> None:
    if memory_mb is None:
        return
    import resource

    limit = int(memory_mb) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def worker_main(conn: Any, cfg: RewardConfig, memory_mb: Optional[int]) -> None:
    # Ctrl-C goes to the whole process group; the parent decides what happens to the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _limit_memory(memory_mb)
        suite = RewardSuite(cfg)
    except BaseException:
        conn.send(("fatal", traceback.format_exc()))
        return
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent went away
        if msg[0] == "stop":
            return
        _, job_id, sample, reference, names = msg
        for name in names:
            try:
                values = suite.run(name, sample, reference)
            except MemoryError:
                conn.send(("oom", job_id, name))
                return
            except Exception:
                conn.send(("error", job_id, name, traceback.format_exc()))
            else:
                conn.send(("part", job_id, name, values))
        conn.send(("done", job_id))
