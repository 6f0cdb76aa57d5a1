"""The reward worker pool: hard timeouts that stop hung checks, crash recovery, order, parallelism."""

import os
import time

import pytest

from r1mega.rewards.config import RewardConfig
from r1mega.rewards.pool import RewardError, RewardPool
from r1mega.rewards.types import SampleView


def S(text):
    return SampleView(prompt_token_ids=[1, 2], response_token_ids=[3], response_logprobs=[-0.1],
                      finish_reason="stop", response_text=text)


def ref(answer, task="math", **metadata):
    return {"answer": answer, "task": task, "metadata": metadata, "response_prefix": "", "source": "t.jsonl:1"}


def _pool(**kw):
    kw.setdefault("num_workers", 2)
    return RewardPool(RewardConfig(**kw))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child that was reaped is gone; a zombie would still answer kill(0), so check its state
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[1].split()[0] != "Z"


def test_hung_check_is_killed_scored_zero_and_the_pool_keeps_working():
    # The hanging function blocks every catchable signal before sleeping: an alarm or a thread could
    # never stop it; only killing its process can.
    with _pool(
        weights={"accuracy": 1.0, "format": 1.0, "hang": 1.0},
        custom={"hang": "tests._reward_fns:hang_unless_normal"},
        timeout_s=1.0,
    ) as pool:
        good = "<think>t</think> <answer>4</answer>"
        samples = [S(good), S(good + " HANG"), S(good)]
        pool.start()  # workers up and ready, so the timing below is the checks' alone
        pids_before = {w.proc.pid for w in pool._workers}
        t0 = time.monotonic()
        out = pool.score(samples, [ref("4")] * 3)
        elapsed = time.monotonic() - t0
        assert 1.0 <= elapsed < 10.0
        assert [o["hang"] for o in out] == [1.0, 0.0, 1.0]
        assert pool.last_stats["timeouts/hang"] == 1 and pool.last_stats["worker_restarts"] == 1
        # the hung sample's other components still ran (on a fresh worker): accuracy comes after
        # custom components, format before them
        assert out[1]["accuracy"] == 1.0 and out[1]["format"] == 0.0  # (trailing text breaks format)
        assert out[1]["reward"] == 1.0
        killed = pids_before - {w.proc.pid for w in pool._workers}
        assert len(killed) == 1 and not _alive(killed.pop())
        # the pool goes on working, at full size, with no timeouts
        again = pool.score([S(good)] * 4, [ref("4")] * 4)
        assert [o["reward"] for o in again] == [3.0] * 4
        assert pool.last_stats["timeouts/hang"] == 0 and len(pool._workers) == 2


def test_sympy_hang_on_a_tower_of_powers_is_cut_off():
    # math-verify hands 9^(9^(9^9)) to sympy, which grinds in C big-integer code holding the GIL
    # (observed: > 25 s without returning). The pool's timeout ends it; the answer scores 0.
    with _pool(timeout_s=2.0) as pool:
        samples = [S(r"<think>t</think> <answer>$9^{9^{9^{9}}}$</answer>"), S("<think>t</think> <answer>2</answer>")]
        t0 = time.monotonic()
        out = pool.score(samples, [ref("2")] * 2)
        assert time.monotonic() - t0 < 15.0
        assert out[0]["accuracy"] == 0.0 and out[0]["format"] == 1.0
        assert out[1]["accuracy"] == 1.0
        assert pool.last_stats["timeouts/accuracy"] == 1


def test_crashed_worker_is_replaced_and_counted():
    with _pool(weights={"crash": 1.0, "format": 1.0}, custom={"crash": "tests._reward_fns:crash_on_request"}) as pool:
        out = pool.score([S("a"), S("CRASH"), S("b"), S("CRASH")], [ref("4")] * 4)
        assert [o["crash"] for o in out] == [1.0, 0.0, 1.0, 0.0]
        assert pool.last_stats["crashes/crash"] == 2 and pool.last_stats["worker_restarts"] == 2
        assert pool.score([S("c")], [ref("4")])[0]["crash"] == 1.0


def test_memory_limit_turns_a_giant_allocation_into_a_counted_zero():
    with _pool(
        weights={"alloc": 1.0}, custom={"alloc": "tests._reward_fns:allocate_on_request"}, worker_memory_mb=1024
    ) as pool:
        out = pool.score([S("ALLOC"), S("fine")], [ref("4")] * 2)
        assert [o["alloc"] for o in out] == [0.0, 1.0]
        assert pool.last_stats["crashes/alloc"] == 1


def test_error_in_a_worker_raises_with_its_traceback_then_the_pool_recovers():
    kw = dict(weights={"bad": 1.0}, custom={"bad": "tests._reward_fns:raise_on_request"})
    with _pool(**kw) as pool:
        with pytest.raises(RewardError, match=r"(?s)reward 'bad' raised on sample 2 \(row t.jsonl:1\).*ValueError"):
            pool.score([S("a"), S("b"), S("RAISE"), S("c")], [ref("4")] * 4)
        assert [o["bad"] for o in pool.score([S("a")] * 3, [ref("4")] * 3)] == [1.0] * 3
    with _pool(on_error="zero", **kw) as pool:
        out = pool.score([S("a"), S("RAISE")], [ref("4")] * 2)
        assert [o["bad"] for o in out] == [1.0, 0.0] and pool.last_stats["errors/bad"] == 1


def test_pool_matches_in_process_scoring_on_a_mixed_batch():
    samples, refs = [], []
    texts = [
        ("<think>half</think> <answer>0.5</answer>", ref(r"\frac{1}{2}")),
        (r"<think>t</think> \boxed{3}", ref("3")),
        ("<think>Let me 想</think> <answer>7*5-3*2</answer>", ref("29", "countdown", numbers=[2, 3, 5, 7])),
        ("<think>t</think> <answer>7*5</answer>", ref("29", "countdown", numbers=[2, 3, 5, 7])),
        ("<think>1+2=3</think> <answer>1,281</answer>", ref("1281", "arithmetic")),
        ("nothing", ref("1")),
    ]
    for _ in range(4):  # a batch bigger than the pool, so workers take several jobs each
        for text, r in texts:
            samples.append(S(text))
            refs.append(r)
    with RewardPool(RewardConfig(num_workers=0)) as inline, _pool(num_workers=3) as pool:
        expected = inline.score(samples, refs)
        got = pool.score(samples, refs)
        got_async = pool.score_async(samples, refs).result()
    assert got == expected == got_async
    assert [o["reward"] for o in got[:6]] == [2.0, 1.0, 2.0, 1.0, 2.0, 0.0]


def test_batch_is_scored_in_parallel_and_in_order():
    # Each check sleeps 0.2 s without using CPU, so the speed-up shows even on a busy 2-core machine.
    n, workers, per_check = 16, 4, 0.2
    with _pool(
        num_workers=workers, weights={"idx": 1.0}, custom={"idx": "tests._reward_fns:sleepy_index"}
    ) as pool:
        pool.start()
        t0 = time.monotonic()
        out = pool.score([S(f"sample {i}") for i in range(n)], [ref("0")] * n)
        elapsed = time.monotonic() - t0
    assert [o["idx"] for o in out] == [float(i) for i in range(n)]
    serial = n * per_check
    assert elapsed < 0.6 * serial, f"{elapsed:.2f}s for {n} checks of {per_check}s on {workers} workers"
