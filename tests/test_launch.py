"""The local multi-process launcher: results per rank, and failures surfaced, not hung."""

import socket
import time

import pytest

from r1mega.parallel import launch
from r1mega.parallel.launch import DistributedRunError, _ephemeral_range, find_free_port, run_distributed
from tests import _dist_fns


@pytest.mark.dist
def test_results_come_back_per_rank():
    out = run_distributed(_dist_fns.allreduce_rank_sum, 3, timeout=120)
    assert [o["rank"] for o in out] == [0, 1, 2]
    assert all(o["sum"] == 6.0 and o["env_world"] == 3 for o in out)


@pytest.mark.dist
def test_failing_rank_reports_traceback_and_does_not_hang():
    t0 = time.monotonic()
    with pytest.raises(DistributedRunError, match="rank one is broken on purpose"):
        run_distributed(_dist_fns.fail_on_rank_one, 2, timeout=120)
    assert time.monotonic() - t0 < 60  # the blocked rank 0 was killed, not waited for


def _listening_socket() -> socket.socket:
    """A socket that holds a port the way a stray process would (listening, so binds fail)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", find_free_port()))
    s.listen(1)
    return s


def test_free_port_is_outside_the_ephemeral_range_and_binds():
    lo, hi = _ephemeral_range()
    for _ in range(20):
        port = find_free_port()
        assert not lo <= port <= hi, (port, lo, hi)  # outgoing connections draw from lo..hi
        assert not 20000 <= port < 30000  # SLURM jobs' range
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.dist
def test_taken_master_port_is_retried_on_a_new_one(monkeypatch):
    held = _listening_socket()
    taken = held.getsockname()[1]
    ports = iter([taken, find_free_port()])
    calls = []

    def next_port():
        calls.append(1)
        return next(ports)

    monkeypatch.setattr(launch, "find_free_port", next_port)
    try:
        out = run_distributed(_dist_fns.allreduce_rank_sum, 2, timeout=120)
    finally:
        held.close()
    assert len(calls) == 2  # the first launch met the taken port, the second ran
    assert [o["sum"] for o in out] == [3.0, 3.0]


@pytest.mark.dist
def test_port_clash_every_time_is_reported_not_looped(monkeypatch):
    held = _listening_socket()
    monkeypatch.setattr(launch, "find_free_port", lambda: held.getsockname()[1])
    try:
        with pytest.raises(DistributedRunError, match="master port was taken 3 times"):
            run_distributed(_dist_fns.allreduce_rank_sum, 2, timeout=120)
    finally:
        held.close()


@pytest.mark.dist
def test_single_rank_job_starts_even_when_its_master_port_is_taken():
    held = _listening_socket()
    try:
        [out] = run_distributed(_dist_fns.init_single_rank_with_taken_port, 1, held.getsockname()[1], timeout=120)
    finally:
        held.close()
    assert out == {"world": 1, "sum": 3.0}
