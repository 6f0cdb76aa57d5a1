"""`RewardPool.score(samples, references)`: rewards for a batch, in worker processes, with hard timeouts.

Why processes: a reward check can hang where no signal or thread can stop it (sympy simplifying a
pathological expression inside a C big-integer routine, holding the GIL). A worker process can
always be killed. So every check (one component of one sample) has a deadline; when it passes,
the worker is killed (SIGKILL), the check scores 0 and is counted under `timeouts/<component>`, the
sample's remaining components go to another worker, and a fresh worker replaces the dead one. A
worker that dies on its own (a crash, or MemoryError under `worker_memory_mb`) is handled the same
way and counted under `crashes/<component>`.

Workers are forked from a forkserver that has already imported the reward code (sympy, math-verify),
so replacing a killed worker costs milliseconds, and they never import torch (samples travel as
`SampleView`). With `num_workers: 0` everything runs in the calling process, without timeouts.

Counters: `stats` (since creation) and `last_stats` (the latest `score` call) hold `checks`,
`timeouts/<c>`, `crashes/<c>`, `errors/<c>` (only with on_error: zero) and `worker_restarts`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing as mp
import multiprocessing.connection as mpc
import threading
import time
import traceback
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from r1mega.rewards.config import RewardConfig
from r1mega.rewards.suite import TOTAL_KEY, RewardSuite
from r1mega.rewards.types import SampleView

__all__ = ["RewardPool", "RewardError"]

_STARTUP_TIMEOUT_S = 120.0  # first start imports sympy/math-verify; slow on a loaded 2-core machine


class RewardError(RuntimeError):
    """A reward function raised (with on_error: raise), or the workers could not start."""


@dataclass
class _Job:
    index: int
    sample: SampleView
    reference: dict[str, Any]
    pending: list[str] = field(default_factory=list)
    """Components still to compute, in order; pending[0] is the one running."""


class _Worker:
    def __init__(self, ctx: Any, cfg: RewardConfig):
        from r1mega.rewards.worker import worker_main

        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=worker_main, args=(child, cfg, cfg.worker_memory_mb), daemon=True, name="r1mega-reward"
        )
        self.proc.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False
        self.job: Optional[_Job] = None
        self.deadline = float("inf")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=10)
        self.conn.close()


def _context() -> Any:
    """forkserver (preloading the reward code) where available, else spawn; never plain fork, which
    would copy a trainer's threads and CUDA state into the workers."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["r1mega.rewards.worker"])
        return ctx
    return mp.get_context("spawn")


def _shutdown(workers: list[_Worker]) -> None:
    for w in workers:
        try:
            w.conn.send(("stop",))
        except (OSError, ValueError):
            pass
    for w in workers:
        w.proc.join(timeout=2)
        w.kill()
    workers.clear()


class RewardPool:
    """Scores batches with the components of a RewardConfig. Use as a context manager, or close()."""

    def __init__(self, cfg: RewardConfig):
        self.cfg = cfg
        # Built here too: a bad import path fails in the trainer at start-up, not in a worker later.
        self.suite = RewardSuite(cfg)
        self.stats: Counter = Counter()
        self.last_stats: Counter = Counter()
        self._workers: list[_Worker] = []
        self._ctx = _context() if cfg.num_workers > 0 else None
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._lock = threading.Lock()  # one batch at a time (score_async runs score in a thread)

    def start(self) -> "RewardPool":
        """Start the workers now and wait until they are ready (otherwise the first `score` does)."""
        if self.cfg.num_workers == 0:
            return self
        with self._lock:
            while len(self._workers) < self.cfg.num_workers:
                self._spawn()
            try:
                while not all(w.ready for w in self._workers):
                    self._wait_and_handle(deque(), [])
            except BaseException:
                _shutdown(self._workers)
                raise
        return self

    # ------------------------------------------------------------------------------------------
    def score(self, samples: Sequence[Any], references: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
        """One dict per sample, in order: `reward` (the weighted total) and every component's value."""
        if len(samples) != len(references):
            raise ValueError(f"score: {len(samples)} samples but {len(references)} references")
        with self._lock:
            return self._score(samples, references)

    def _score(self, samples: Sequence[Any], references: Sequence[dict[str, Any]]) -> list[dict[str, float]]:
        self.last_stats = Counter()
        views = [SampleView.of(s) for s in samples]
        if self.cfg.num_workers == 0:
            pairs = enumerate(zip(views, references, strict=True))
            values = [self._score_inline(i, v, r) for i, (v, r) in pairs]
        else:
            values = self._score_in_workers(views, list(references))
        self.stats.update(self.last_stats)
        for v in values:
            v[TOTAL_KEY] = self.suite.total(v)
        return values

    def score_async(self, samples: Sequence[Any], references: Sequence[dict[str, Any]]) -> concurrent.futures.Future:
        """`score` in a background thread (calls queue up in order); `.result()` gives its list."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="r1mega-reward")
        return self._executor.submit(self.score, list(samples), list(references))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._finalizer()

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------
    def _fail(self, index: int, name: str, reference: dict[str, Any], tb: str) -> None:
        where = reference.get("source", "?")
        raise RewardError(f"reward {name!r} raised on sample {index} (row {where}):\n{tb}")

    def _score_inline(self, index: int, sample: SampleView, reference: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in self.suite.names_for(reference):
            self.last_stats["checks"] += 1
            try:
                out.update(self.suite.run(name, sample, reference))
            except Exception:
                if self.cfg.on_error == "raise":
                    self._fail(index, name, reference, traceback.format_exc())
                out[name] = 0.0
                self.last_stats[f"errors/{name}"] += 1
        return out

    def _spawn(self) -> _Worker:
        w = _Worker(self._ctx, self.cfg)
        self._workers.append(w)
        return w

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self._spawn()
        self.last_stats["worker_restarts"] += 1

    def _score_in_workers(self, views: list[SampleView], references: list[dict[str, Any]]) -> list[dict[str, float]]:
        while len(self._workers) < self.cfg.num_workers:
            self._spawn()
        results: list[dict[str, float]] = [{} for _ in views]
        pairs = enumerate(zip(views, references, strict=True))
        queue = deque(_Job(i, v, r, self.suite.names_for(r)) for i, (v, r) in pairs)
        try:
            while queue or any(w.job is not None for w in self._workers):
                self._assign(queue)
                self._wait_and_handle(queue, results)
        except BaseException:
            # Jobs still running would answer into the next call: start over with fresh workers.
            _shutdown(self._workers)
            raise
        return results

    def _assign(self, queue: deque) -> None:
        now = time.monotonic()
        for w in self._workers:
            if w.ready and w.job is None and queue:
                job = queue.popleft()
                w.conn.send(("job", job.index, job.sample, job.reference, job.pending))
                w.job, w.deadline = job, now + self.cfg.timeout_s

    def _wait_and_handle(self, queue: deque, results: list[dict[str, float]]) -> None:
        now = time.monotonic()
        deadlines = [w.deadline for w in self._workers if w.job is not None]
        deadlines += [w.started + _STARTUP_TIMEOUT_S for w in self._workers if not w.ready]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        by_conn = {w.conn: w for w in self._workers}
        for conn in mpc.wait(list(by_conn), timeout=timeout):
            w = by_conn[conn]
            try:
                while w in self._workers and conn.poll():
                    self._handle(w, conn.recv(), queue, results)
            except (EOFError, OSError):
                self._lost(w, queue, results, "crashes")
        now = time.monotonic()
        for w in list(self._workers):
            if w.job is not None and now > w.deadline:
                self._lost(w, queue, results, "timeouts")
            elif not w.ready and now > w.started + _STARTUP_TIMEOUT_S:
                raise RewardError(f"a reward worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")

    def _handle(self, w: _Worker, msg: tuple, queue: deque, results: list[dict[str, float]]) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            return
        if kind == "fatal":
            raise RewardError(f"a reward worker could not build the reward functions:\n{msg[1]}")
        job = w.job
        assert job is not None and msg[1] == job.index, f"reward worker protocol: unexpected {msg[:2]}"
        if kind == "done":
            assert not job.pending, f"reward worker finished job {job.index} with {job.pending} pending"
            w.job, w.deadline = None, float("inf")
            return
        name = msg[2]
        assert job.pending and job.pending[0] == name, f"reward worker protocol: {name} != {job.pending[:1]}"
        self.last_stats["checks"] += 1
        if kind == "part":
            results[job.index].update(msg[3])
        elif kind == "error":
            if self.cfg.on_error == "raise":
                self._fail(job.index, name, job.reference, msg[3])
            results[job.index][name] = 0.0
            self.last_stats[f"errors/{name}"] += 1
        elif kind == "oom":
            job.pending.pop(0)
            results[job.index][name] = 0.0
            self.last_stats[f"crashes/{name}"] += 1
            self._requeue_and_replace(w, queue)
            return
        else:
            raise AssertionError(f"reward worker protocol: unknown message {kind!r}")
        job.pending.pop(0)
        w.deadline = time.monotonic() + self.cfg.timeout_s  # the next check gets its full time

    def _lost(self, w: _Worker, queue: deque, results: list[dict[str, float]], counter: str) -> None:
        """The worker timed out or died: its running check scores 0; the rest of the job moves on."""
        job = w.job
        if job is None:
            if not w.ready:
                raise RewardError("a reward worker died while starting (see its stderr above)")
            self._replace(w)
            return
        name = job.pending.pop(0)
        self.last_stats["checks"] += 1
        results[job.index][name] = 0.0
        self.last_stats[f"{counter}/{name}"] += 1
        self._requeue_and_replace(w, queue)

    def _requeue_and_replace(self, w: _Worker, queue: deque) -> None:
        job = w.job
        w.job = None
        if job is not None and job.pending:
            queue.appendleft(job)
        self._replace(w)
