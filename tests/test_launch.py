"""The local multi-process launcher: results per rank, and failures surfaced, not hung."""

import time

import pytest

from r1mega.parallel.launch import DistributedRunError, run_distributed
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
