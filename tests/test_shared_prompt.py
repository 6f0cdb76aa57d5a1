"""Shared-prompt rows (r1mega/training/shared_prompt.py) give the padded layout's log-probs,
entropies and gradients, on one process and under tensor parallelism."""

from __future__ import annotations

import pytest
import torch

from r1mega.parallel.launch import run_distributed
from r1mega.training.rl_batch import Trajectory
from r1mega.training.shared_prompt import make_shared_prompt_microbatch, plan_shared_prompt
from tests import _rl_fns, _shared_prompt_fns


def _t(prompt, response, index):
    return Trajectory(prompt_token_ids=prompt, response_token_ids=response, rollout_logprobs=[0.0] * len(response),
                      index=index)


def test_rows_positions_and_mask():
    items = [_t([5, 6, 7], [8, 9], 0), _t([1, 2], [3], 1), _t([5, 6, 7], [10, 11, 12], 2), _t([5, 6, 7], [], 3)]
    plan = plan_shared_prompt(items, micro_batch_size=8)
    assert plan == [[[0, 2, 3], [1]]]  # the longer row (3 + 2 + 3 + 0 tokens) first
    b = make_shared_prompt_microbatch(items, plan[0], pad_id=0)
    assert b["tokens"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12], [1, 2, 3, 0, 0, 0, 0, 0]]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]
    assert b["index"].tolist() == [0, 2, 3, 1] and b["resp_row"].tolist() == [0, 0, 0, 1]
    # response 2 ([10, 11, 12]): token 0 predicted by the prompt's last position, then by its own
    assert b["resp_pos"][1].tolist() == [2, 5, 6] and b["resp_targets"][1].tolist() == [10, 11, 12]
    masked = b["attention_mask"][0, 0]  # [S, S], True = masked
    seen = [[k for k in range(8) if not masked[q, k]] for q in range(8)]
    assert seen[4] == [0, 1, 2, 3, 4]  # response 0's second token: prompt + itself
    assert seen[6] == [0, 1, 2, 5, 6]  # response 2's second token: prompt + itself, not response 0
    assert seen[2] == [0, 1, 2]
    assert b["resp_mask"][2].sum() == 0  # the empty response


def test_a_group_larger_than_the_microbatch_is_split():
    items = [_t([1, 2], [3 + i], i) for i in range(5)]
    plan = plan_shared_prompt(items, micro_batch_size=2)
    assert sorted(i for mb in plan for row in mb for i in row) == list(range(5))
    assert all(sum(len(r) for r in mb) <= 2 for mb in plan)


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("shared_start"))
    run_distributed(_rl_fns.save_random_start, 1, out, timeout=300)
    return out


def _compare(res, tol):
    assert set(res["padded"]) == set(res["shared"]) == set(range(res["n_items"]))
    for idx, (lp, ent) in res["padded"].items():
        lp2, ent2 = res["shared"][idx]
        assert lp.shape == lp2.shape
        assert torch.allclose(lp, lp2, atol=tol, rtol=0), (idx, (lp - lp2).abs().max())
        assert torch.allclose(ent, ent2, atol=tol, rtol=0), (idx, (ent - ent2).abs().max())
    assert res["grad_err"] < 1e-4, res["grad_err"]


def test_shared_rows_match_padded_rows(start_weights):
    (res,) = run_distributed(_shared_prompt_fns.padded_vs_shared, 1, start_weights, {}, timeout=300)
    _compare(res, 2e-5)
    padded_tokens, shared_tokens = res["tokens"]
    assert shared_tokens < padded_tokens  # prompts go through once per group


@pytest.mark.dist
@pytest.mark.parametrize("layout", [dict(tp=2), dict(tp=2, sequence_parallel=True)], ids=["tp2", "tp2-sp"])
def test_shared_rows_match_padded_rows_under_tensor_parallel(start_weights, layout):
    per_rank = run_distributed(_shared_prompt_fns.padded_vs_shared, 2, start_weights, layout, timeout=600)
    _compare(per_rank[0], 2e-5)
