"""Vocab-parallel fused_logprob over gloo: TP=2 and TP=4 equal TP=1, with the collectives counted.

Each rank holds a megatron-style shard of one weight. Outputs and grad_hidden must match the
single-process float64 reference on every rank, the concatenated weight-grad shards must match the
full weight grad, and the ranks must issue exactly: forward one MAX all-reduce over [N] and one SUM
all-reduce of the packed [3, N] statistics; backward one SUM all-reduce of grad_hidden [N, H].
Tolerance: fp32 kernels vs float64, 2e-5 relative to the largest magnitude of each tensor.
"""

import pytest
import torch

from r1mega.kernels.naive import naive_logprob
from r1mega.parallel.launch import run_distributed
from tests.kernels import _tp_fns
from tests.kernels.conftest import TRITON_ENV

RTOL = 2e-5


def _reference(seed, n, hdim, v_padded, vocab_size, temperature):
    hidden, weight, targets, g_lp, g_ent = _tp_fns.make_problem(seed, n, hdim, v_padded, vocab_size)
    h = hidden.double().requires_grad_()
    w = weight.double().requires_grad_()
    lp, ent = naive_logprob(h, w, targets, temperature=temperature, return_entropy=True, vocab_size=vocab_size)
    (lp * g_lp.double() + ent * g_ent.double()).sum().backward()
    return lp.detach(), ent.detach(), h.grad, w.grad


def _close(actual, expected, what):
    scale = expected.abs().max().clamp_min(1e-12)
    err = ((actual.double() - expected).abs().max() / scale).item()
    assert err < RTOL, f"{what}: max error {err:.2e} relative to max |ref| exceeds {RTOL:.0e}"


# (tp, backend, N, H, V_local, vocab_size, T): odd sizes, padded vocab rows on the last rank(s)
CASES = [
    pytest.param(2, "torch", 29, 24, 40, 75, 0.8, id="tp2-torch"),
    pytest.param(4, "torch", 23, 20, 24, 90, 1.3, id="tp4-torch-padded"),
    pytest.param(2, "triton", 29, 24, 40, 75, 0.8, id="tp2-triton"),
    pytest.param(4, "triton", 23, 20, 24, 70, 1.3, id="tp4-triton-rank-all-padding"),
]


@pytest.mark.dist
@pytest.mark.parametrize("tp,backend,n,hdim,v_local,vocab_size,temperature", CASES)
def test_vocab_parallel_equals_single_process(tp, backend, n, hdim, v_local, vocab_size, temperature):
    seed = 11
    outs = run_distributed(
        _tp_fns.vocab_parallel_rank, tp, backend, seed, n, hdim, v_local, vocab_size, temperature,
        env=TRITON_ENV, timeout=600,
    )
    lp, ent, gh, gw = _reference(seed, n, hdim, v_local * tp, vocab_size, temperature)
    for o in outs:
        r = o["rank"]
        _close(o["logprob"], lp, f"rank {r} logprob")
        _close(o["entropy"], ent, f"rank {r} entropy")
        _close(o["grad_hidden"], gh, f"rank {r} grad_hidden")
    grad_w = torch.cat([o["grad_weight_shard"] for o in outs])  # [V_local * tp, H]
    _close(grad_w, gw, "grad_weight (shards concatenated)")
    assert torch.all(grad_w[vocab_size:] == 0), "padded vocabulary rows must get exactly zero gradient"
    for o in outs:
        assert o["fwd_collectives"] == [("all_reduce", "MAX", (n,)), ("all_reduce", "SUM", (3, n))], o
        assert o["bwd_collectives"] == [("all_reduce", "SUM", (n, hdim))], o


@pytest.mark.dist
def test_sequence_parallel_returns_partial_grad_hidden():
    """With sequence_parallel the caller reduce-scatters: per-rank partials must sum to the TP=1 grad."""
    seed, n, hdim, v_local, vocab_size, temperature = 5, 21, 16, 30, 57, 1.0
    outs = run_distributed(
        _tp_fns.vocab_parallel_rank, 2, "torch", seed, n, hdim, v_local, vocab_size, temperature, True,
        env=TRITON_ENV, timeout=300,
    )
    _, _, gh, _ = _reference(seed, n, hdim, v_local * 2, vocab_size, temperature)
    _close(sum(o["grad_hidden"].double() for o in outs), gh, "sum of partial grad_hidden")
    assert (outs[0]["grad_hidden"] - outs[1]["grad_hidden"]).abs().max() > 1e-3  # really partial
    for o in outs:
        assert o["bwd_collectives"] == [], o
