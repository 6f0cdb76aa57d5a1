"""group_advantages (Triton kernel and torch reference) against per-group Python arithmetic.

The oracle is written with the statistics module on Python floats (float64), one group at a time.
Tolerance: 1e-5 relative to max |A| for the fp32 Triton kernel, 1e-6 for the torch path (float64
inside, float32 out). Degenerate groups (one response, all-equal rewards) must give exactly 0.
"""

import statistics

import pytest
import torch

from r1mega.kernels import ADVANTAGE_MODES, group_advantages


def _oracle(rewards: list[float], g: int, mode: str, eps: float) -> list[float]:
    groups = [rewards[i : i + g] for i in range(0, len(rewards), g)]
    out: list[float] = []
    if mode == "reinforce++":
        if max(rewards) == min(rewards):
            return [0.0] * len(rewards)
        mu, sd = statistics.fmean(rewards), statistics.stdev(rewards)
        return [(r - mu) / (sd + eps) for r in rewards]
    for grp in groups:
        mu = statistics.fmean(grp)
        flat = max(grp) == min(grp)
        for r in grp:
            if flat:
                out.append(0.0)
            elif mode == "grpo":
                out.append((r - mu) / (statistics.stdev(grp) + eps))
            elif mode == "rloo":
                out.append(r - (sum(grp) - r) / (g - 1))  # leave-one-out baseline
            else:  # dr_grpo, and the centred values of reinforce++_baseline
                out.append(r - mu)
    if mode == "reinforce++_baseline":
        if max(abs(x) for x in out) == 0:
            return [0.0] * len(out)
        sd = statistics.stdev(out)
        return [x / (sd + eps) for x in out]
    return out


def _rewards(n_groups: int, g: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(n_groups * g, generator=gen)
    r[: 2 * g] = (r[: 2 * g] > 0).float()  # binary (verifier-style) rewards in two groups
    if n_groups > 3:
        r[2 * g : 3 * g] = 0.7  # one all-equal group
    return r


CASES = [(7, 5), (4, 16), (9, 1), (3, 2), (130, 9)]  # 130 x 9 > one 1024 batch block


@pytest.mark.parametrize("mode", ADVANTAGE_MODES)
@pytest.mark.parametrize("n_groups,g", CASES, ids=[f"B{b}xG{g}" for b, g in CASES])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_matches_per_group_arithmetic(device, backend, mode, n_groups, g):
    r = _rewards(n_groups, g, seed=n_groups * 31 + g)
    dev = device if backend == "triton" else "cpu"
    got = group_advantages(r.to(dev), g, mode=mode, eps=1e-6, backend=backend).cpu()
    want = torch.tensor(_oracle(r.double().tolist(), g, mode, 1e-6), dtype=torch.float64)
    assert got.dtype == torch.float32 and got.shape == r.shape
    scale = max(want.abs().max().item(), 1e-12)
    tol = 1e-5 if backend == "triton" else 1e-6
    assert (got.double() - want).abs().max().item() / scale < tol
    if g == 1 and mode != "reinforce++":
        assert torch.all(got == 0)  # a group of one carries no signal
    if n_groups > 3 and mode in ("grpo", "dr_grpo", "rloo"):
        assert torch.all(got[2 * g : 3 * g] == 0)  # the all-equal group, exactly


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode", ADVANTAGE_MODES)
def test_constant_batch_is_zero_not_nan(device, backend, mode):
    dev = device if backend == "triton" else "cpu"
    got = group_advantages(torch.full((12,), 0.1, device=dev), 4, mode=mode, backend=backend)
    assert torch.all(got == 0)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        group_advantages(torch.zeros(10), 4)
    with pytest.raises(ValueError, match="unknown mode 'ppo'"):
        group_advantages(torch.zeros(8), 4, mode="ppo")
    with pytest.raises(ValueError, match="NaN or inf"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        group_advantages(torch.zeros(8), 0)
