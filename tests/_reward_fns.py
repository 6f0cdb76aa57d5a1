"""Reward functions for the reward tests, imported by path inside the worker processes."""

import os
import signal
import time


def hang_unless_normal(sample, reference):
    """On "HANG": block every catchable signal, then sleep for an hour. Only SIGKILL can stop it."""
    if "HANG" in sample.response_text:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})
        time.sleep(3600)
    return 1.0


def crash_on_request(sample, reference):
    """On "CRASH": the process dies at once, as after a segfault in an extension."""
    if "CRASH" in sample.response_text:
        os._exit(3)
    return 1.0


def allocate_on_request(sample, reference):
    """On "ALLOC": try to allocate 16 GiB (fails under the worker's address-space limit)."""
    if "ALLOC" in sample.response_text:
        block = bytearray(16 << 30)
        return float(len(block))
    return 1.0


def raise_on_request(sample, reference):
    if "RAISE" in sample.response_text:
        raise ValueError("this reward function is broken on purpose")
    return 1.0


def sleepy_index(sample, reference):
    """Sleeps 0.2 s (no CPU), returns the sample's index: shows parallelism and order."""
    time.sleep(0.2)
    return float(sample.response_text.split()[-1])


def length_with_details(sample, reference):
    n = len(sample.response_text)
    return {"score": -0.001 * n, "chars": float(n)}


def echo_task_accuracy(sample, reference):
    """A custom task's accuracy: the answer is right if the response contains it verbatim."""
    return 1.0 if reference["answer"] in sample.response_text else 0.0


def returns_nan(sample, reference):
    return float("nan")


def even_length_is_right(sample, reference):
    """An accuracy that varies within a group even for a random model (DAPO's filter needs that)."""
    return 1.0 if len(sample.response_text) % 2 == 0 else 0.0
