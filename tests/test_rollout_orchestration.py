"""Rollout across the job (r1mega/rollout/orchestration.py), with built-in engines on gloo ranks:
two engines on two ranks return exactly what one engine returns for the same prompts and seed, and
every rank receives every sample in prompt order."""

from __future__ import annotations

import pytest

from r1mega.rollout.orchestration import RolloutGroups, split_evenly
from r1mega.rollout.types import SamplingParams
from tests._orchestration_fns import generate_on_ranks, make_engine
from tests.rollout_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10], [11, 12], [13, 14, 15], [16]]
SAMPLING = dict(max_new_tokens=6, temperature=1.0, seed=2024)


def _tuples(samples):
    return [(s.response_token_ids, s.response_logprobs, s.finish_reason) for s in samples]


def test_split_and_groups():
    assert split_evenly(7, 2) == [(0, 4), (4, 7)]
    assert split_evenly(1, 3) == [(0, 1), (1, 1), (1, 1)]
    g = RolloutGroups(world_size=8, tp=4, rank=6)
    assert (g.num_engines, g.engine, g.tp_rank, g.owner, g.is_owner, list(g.ranks_of(1))) == (2, 1, 2, 4, False, [4, 5, 6, 7])
    with pytest.raises(ValueError, match=r"rollout\.tp: 3 must be >= 1 and divide the job's 8 ranks"):
        RolloutGroups(world_size=8, tp=3, rank=0)


@pytest.mark.dist
def test_two_engines_on_two_ranks_equal_one_engine():
    from r1mega.parallel.launch import run_distributed

    reference = _tuples(make_engine().generate(PROMPTS, SamplingParams(**SAMPLING)))
    two_engines = run_distributed(generate_on_ranks, 2, 1, PROMPTS, SAMPLING, timeout=300)
    one_engine_two_ranks = run_distributed(generate_on_ranks, 2, 2, PROMPTS, SAMPLING, timeout=300)
    assert [r["engines"] for r in two_engines] == [2, 2] and [r["owner"] for r in two_engines] == [True, True]
    assert [r["owner"] for r in one_engine_two_ranks] == [True, False]
    for r in two_engines + one_engine_two_ranks:
        assert r["samples"] == reference, f"rank {r['rank']}"
    # negative control: the second engine's slice drawn without its place in the step differs
    start = split_evenly(len(PROMPTS), 2)[1][0]
    unplaced = _tuples(make_engine().generate(PROMPTS[start:], SamplingParams(**SAMPLING)))
    assert unplaced != reference[start:]
