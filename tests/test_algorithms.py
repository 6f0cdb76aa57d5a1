"""RL algorithm presets against their papers' formulas, shaping functions, and the config section.

The oracle (`paper_advantage_rows`, `paper_loss`) is written here from the papers, per response and per token in
float64 with Python-level loops; it never calls the kernels. `PAPER` restates each paper's
constants independently of `r1mega.algorithms.config.PRESETS`, so a wrong preset value, a wrong
aggregation or a wrong clip bound fails the comparison. A negative control (`MUTANTS`) proves the
inputs are sharp enough for that: each plausible mistake moves the gradient far beyond tolerance.

Tolerances: float32 inputs through the preset vs the float64 oracle, rtol 1e-5; float64 inputs,
rtol 1e-10. Both are relative to the tensor's scale (gradient: its largest magnitude; loss: the
same aggregation of |per-token terms|), because the loss of mean-zero advantages can be near 0.
The float64 tier feeds both sides the preset's advantages (the advantage kernels return float32 by
contract); the advantages themselves are checked against the oracle separately and end to end in
the float32 tier.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from r1mega.algorithms import (
    ALGORITHMS,
    AlgorithmConfig,
    compute_advantages,
    informative_groups,
    kl_reward_penalty,
    overlong_penalty,
)
from r1mega.config import load_config, save_config
from r1mega.configlib import ConfigError
from r1mega.kernels.policy_loss import policy_loss

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "examples/configs/tiny.yaml")

G = 4  # responses per prompt
PROMPTS = 5  # group 0 all-equal, groups 1-4 mixed
L = 10  # padded response length = max_new_tokens

# Each paper's choices, restated here (not read from PRESETS). lo=None: no lower clip (CISPO).
PAPER = {
    # DeepSeekMath eq. 3 (1/G sum_i 1/|o_i| sum_t), k3 KL in the loss, R1-Zero's beta 0.001
    "grpo": dict(adv="grpo", loss="ppo", ratio="token", lo=0.2, hi=0.2, agg="seq-mean-token-mean",
                 kl=("k3", 0.001)),
    # Dr. GRPO: no std, sum over tokens divided by the constant max generation length, no KL
    "dr_grpo": dict(adv="dr_grpo", loss="ppo", ratio="token", lo=0.2, hi=0.2, agg="seq-mean-token-sum-norm",
                    kl=None),
    # DAPO: clip-higher, token-level mean, no KL, dynamic sampling, 4096-token buffer of 20480
    "dapo": dict(adv="grpo", loss="ppo", ratio="token", lo=0.2, hi=0.28, agg="token-mean", kl=None,
                 dynamic=True, buffer=(4096, 20480)),
    # GSPO: sequence objective 1/G sum_i min(s_i A_i, clip(s_i) A_i), s_i = (pi/pi_old)^(1/|y_i|)
    "gspo": dict(adv="grpo", loss="ppo", ratio="sequence", lo=3e-4, hi=4e-4, agg="seq-mean-token-mean", kl=None),
    # CISPO: sum_{i,t} sg(min(r, 1 + eps_high)) A log pi / sum_i |o_i|
    "cispo": dict(adv="grpo", loss="cispo", ratio="token", lo=None, hi=0.28, agg="token-mean", kl=None),
    # RLOO: leave-one-out baseline, whole response as one action (sum of token log-probs)
    "rloo": dict(adv="rloo", loss="ppo", ratio="token", lo=0.2, hi=0.2, agg="seq-mean-token-sum", kl=None),
    # REINFORCE++: global batch normalisation, PPO clip, token mean, k2 KL in the loss
    "reinforce++": dict(adv="reinforce++", loss="ppo", ratio="token", lo=0.2, hi=0.2, agg="token-mean",
                        kl=("k2", 0.001)),
}
ADV_EPS = 1e-6


@pytest.fixture
def seed():
    return random.SystemRandom().randrange(2**31)


# ------------------------------------------------------------------------------------------------
# The float64 oracle, from the papers
# ------------------------------------------------------------------------------------------------


def paper_advantages(rewards: list[float], mode: str) -> list[float]:
    """Per-group (or per-batch) statistics with Python's `statistics` (unbiased std)."""
    if mode == "reinforce++":
        if max(rewards) == min(rewards):
            return [0.0] * len(rewards)
        mean, std = statistics.fmean(rewards), statistics.stdev(rewards)
        return [(r - mean) / (std + ADV_EPS) for r in rewards]
    out = []
    for g in range(0, len(rewards), G):
        grp = rewards[g:g + G]
        if max(grp) == min(grp):
            out += [0.0] * G
            continue
        mean = statistics.fmean(grp)
        for j, r in enumerate(grp):
            if mode == "grpo":
                out.append((r - mean) / (statistics.stdev(grp) + ADV_EPS))
            elif mode == "dr_grpo":
                out.append(r - mean)
            elif mode == "rloo":
                others = grp[:j] + grp[j + 1:]
                out.append(r - sum(others) / len(others))
            else:
                raise AssertionError(mode)
    return out


def dapo_length_penalty(length: int, l_max: int, l_cache: int) -> float:
    """DAPO eq. 13 with a penalty of 1 at L_max."""
    if length <= l_max - l_cache:
        return 0.0
    if length <= l_max:
        return ((l_max - l_cache) - length) / l_cache
    return -1.0


def kl_estimate(kind: str, lp, ref):
    """Schulman's estimators of KL(pi || pi_ref) from one sample, as in DeepSeekMath / REINFORCE++."""
    d = lp - ref
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    if kind in ("k3", "low_var_kl"):
        v = torch.exp(-d) + d - 1.0
        return v.clamp(-10.0, 10.0) if kind == "low_var_kl" else v
    raise AssertionError(kind)


def paper_advantage_rows(spec: dict, batch: dict) -> tuple[list[int], list[float]]:
    """(kept rows, their advantages), in the RL loop's order: dynamic sampling on the raw rewards,
    the DAPO length penalty, then the advantage estimator."""
    rewards, lengths = batch["rewards"].tolist(), batch["lengths"].tolist()
    rows = list(range(len(rewards)))
    if spec.get("dynamic"):
        rows = [i for i in rows if max(rewards[i // G * G:i // G * G + G]) != min(rewards[i // G * G:i // G * G + G])]
    shaped = [rewards[i] for i in rows]
    if "buffer" in spec:
        cache = L * spec["buffer"][0] // spec["buffer"][1]
        shaped = [r + dapo_length_penalty(lengths[i], L, cache) for r, i in zip(shaped, rows)]
    return rows, paper_advantages(shaped, spec["adv"])


def paper_loss(spec: dict, batch: dict, logp: torch.Tensor, rows: list[int], adv: list[float]):
    """(loss, loss scale) in float64; `logp` [len(rows), L] requires grad."""
    lengths = batch["lengths"].tolist()
    old, ref = batch["old"], batch["ref"]
    lo = 0.0 if spec["lo"] is None else 1.0 - spec["lo"]
    hi = 1.0 + spec["hi"]
    per_resp, per_resp_abs = [], []  # per response: list of per-token terms (or one sequence term)
    for k, i in enumerate(rows):
        n = lengths[i]
        a = adv[k]
        if spec["ratio"] == "sequence":
            s = torch.exp(sum(logp[k, t] - old[i, t] for t in range(n)) / n)
            term = -torch.minimum(s * a, s.clamp(lo, hi) * a)
            if spec["kl"] is not None:  # the per-token KL, averaged over the response
                kl_type, beta = spec["kl"]
                term = term + beta * sum(kl_estimate(kl_type, logp[k, t], ref[i, t]) for t in range(n)) / n
            per_resp.append(term)
            per_resp_abs.append(term.detach().abs())
            continue
        terms = []
        for t in range(n):
            lp = logp[k, t]
            r = torch.exp(lp - old[i, t])
            if spec["loss"] == "ppo":
                term = -torch.minimum(r * a, r.clamp(lo, hi) * a)
            else:  # cispo: the clipped weight is a constant
                term = -r.detach().clamp(lo, hi) * a * lp
            if spec["kl"] is not None:
                term = term + spec["kl"][1] * kl_estimate(spec["kl"][0], lp, ref[i, t])
            terms.append(term)
        per_resp.append(terms)
        per_resp_abs.append([x.detach().abs() for x in terms])

    def aggregate(values):
        n_resp = len(rows)
        counts = [lengths[i] for i in rows]
        if spec["ratio"] == "sequence":
            if spec["agg"] == "token-mean":
                return sum(v * c for v, c in zip(values, counts)) / sum(counts)
            return sum(values) / n_resp  # every seq-mean mode: 1/G sum_i
        if spec["agg"] == "token-mean":
            return sum(sum(v) for v in values) / sum(counts)
        if spec["agg"] == "seq-mean-token-mean":
            return sum(sum(v) / c for v, c in zip(values, counts)) / n_resp
        if spec["agg"] == "seq-mean-token-sum":
            return sum(sum(v) for v in values) / n_resp
        if spec["agg"] == "seq-mean-token-sum-norm":
            return sum(sum(v) for v in values) / (L * n_resp)
        raise AssertionError(spec["agg"])

    return aggregate(per_resp), float(aggregate(per_resp_abs))


# ------------------------------------------------------------------------------------------------
# Inputs: ragged responses whose ratios land on both sides of each clip bound
# ------------------------------------------------------------------------------------------------


def _probes(spec: dict) -> list[float]:
    """Ratios at 0.5, 0.85, 1.15, 1.6 x each clip distance (so a bound off by >15% changes which
    side they fall on), 1, and 0.3 (clipped by any usual lower bound, not by CISPO's)."""
    hi = spec["hi"]
    lo = 1.0 if spec["lo"] is None else spec["lo"]
    out = [1.0, 0.3]
    for f in (0.5, 0.85, 1.15, 1.6):
        out.append(1.0 + f * hi)
        if f * lo < 0.9:
            out.append(1.0 - f * lo)
    return out


def make_batch(spec: dict, gen: torch.Generator) -> dict:
    n = PROMPTS * G
    lengths = torch.randint(1, L + 1, (n,), generator=gen)
    lengths[torch.randperm(n, generator=gen)[:3]] = torch.tensor([L, L - 1, 1])  # buffer edge, full, 1
    mask = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float64)  # [N, L]
    rewards = torch.randn(n, generator=gen, dtype=torch.float64)
    rewards[:G] = 1.0  # an all-equal group
    rewards[G:2 * G] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # a binary (accuracy-like) group
    probes = torch.tensor(_probes(spec), dtype=torch.float64)

    def jittered(idx):  # probe ratios with their distance to 1 scaled by 1 +- 5%
        p = probes[idx]
        return 1.0 + (p - 1.0) * (1.0 + 0.1 * (torch.rand(idx.shape, generator=gen, dtype=torch.float64) - 0.5))

    old = -4.0 * torch.rand(n, L, generator=gen, dtype=torch.float64) - 0.05  # [N, L]
    if spec["ratio"] == "sequence":
        seq_ratio = jittered(torch.randint(0, len(probes), (n,), generator=gen))  # [N]
        noise = 0.05 * torch.randn(n, L, generator=gen, dtype=torch.float64)
        noise = noise - (noise * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)  # zero masked mean
        log_ratio = seq_ratio.log().unsqueeze(1) + noise  # [N, L]
    else:
        log_ratio = jittered(torch.randint(0, len(probes), (n, L), generator=gen)).log()
    logp = old + log_ratio
    ref = old + 0.3 * torch.randn(n, L, generator=gen, dtype=torch.float64)
    return dict(rewards=rewards, lengths=lengths, mask=mask, old=old, ref=ref, logp=logp)


def covers_clip_cases(spec: dict, batch: dict, adv: list[float], rows: list[int]) -> bool:
    """The batch has tokens (GSPO: responses) just inside and just outside each bound that applies
    to their advantage's sign, so a bound off by 30% or more moves the gradient."""
    eps_lo = 1.0 if spec["lo"] is None else spec["lo"]
    eps_hi = spec["hi"]
    seen = set()
    for k, i in enumerate(rows):
        n = int(batch["lengths"][i])
        lr = (batch["logp"][i, :n] - batch["old"][i, :n])
        ratios = [math.exp(float(lr.mean()))] if spec["ratio"] == "sequence" else torch.exp(lr).tolist()
        for r in ratios:
            sign = "any" if spec["loss"] == "cispo" else "pos" if adv[k] > 0 else "neg" if adv[k] < 0 else None
            if sign in ("any", "pos"):
                if 1 + 0.7 * eps_hi < r <= 1 + eps_hi:
                    seen.add("high-inside")
                if 1 + eps_hi < r <= 1 + 2 * eps_hi:
                    seen.add("high-clipped")
            if sign in ("any", "neg"):
                if 1 - eps_lo <= r < 1 - 0.7 * eps_lo:
                    seen.add("low-inside")
                if 1 - 2 * eps_lo <= r < 1 - eps_lo:
                    seen.add("low-clipped")
                if r < 0.8:
                    seen.add("below-0.8")
    need = {"high-inside", "high-clipped", "below-0.8"}
    if spec["lo"] is not None:
        need |= {"low-inside", "low-clipped"}
    return need <= seen


def draw_batch(spec: dict, seed: int) -> dict:
    """A fresh batch that exercises every clip case of `spec` (redrawn until it does)."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(200):
        batch = make_batch(spec, gen)
        rows, adv = paper_advantage_rows(spec, batch)
        if covers_clip_cases(spec, batch, adv, rows):
            return batch
    raise AssertionError(f"no batch covering every clip case in 200 draws (seed {seed})")


# ------------------------------------------------------------------------------------------------
# The presets through the project's code vs the oracle
# ------------------------------------------------------------------------------------------------


def run_preset(name: str, batch: dict, dtype: torch.dtype, adv_override=None):
    """The RL loop's path for one batch: (kept rows, advantages, loss, d loss / d logp)."""
    res = AlgorithmConfig(name=name, group_size=G).resolved(L)
    rewards = batch["rewards"].to(dtype)
    rows = torch.arange(rewards.numel())
    if res.dynamic_sampling:
        rows = torch.nonzero(informative_groups(rewards, G).repeat_interleave(G)).squeeze(1)
    r = rewards[rows]
    mask, old, ref = (batch[k][rows].to(dtype) for k in ("mask", "old", "ref"))
    if res.overlong_shaping:
        r = r + overlong_penalty(batch["lengths"][rows], L, res.overlong_buffer, res.overlong_penalty).to(dtype)
    if res.kl_in_reward:
        r = r - kl_reward_penalty(old, ref, mask, res.kl_type, res.kl_coef).to(dtype)
    adv = compute_advantages(r, res)
    logp = batch["logp"][rows].to(dtype).requires_grad_()
    loss, _ = policy_loss(logp, adv if adv_override is None else adv_override, mask, old_logp=old,
                          ref_logp=ref, options=res.loss_options())
    (grad,) = torch.autograd.grad(loss, logp)
    return rows.tolist(), adv, loss.detach().double(), grad.double()


def run_oracle(spec: dict, batch: dict, adv: list[float] | None = None):
    rows, adv_ref = paper_advantage_rows(spec, batch)
    if adv is not None:
        adv_ref = adv
    logp = batch["logp"][rows].clone().requires_grad_()
    loss, scale = paper_loss(spec, batch, logp, rows, adv_ref)
    (grad,) = torch.autograd.grad(loss, logp)
    return rows, torch.tensor(adv_ref, dtype=torch.float64), loss.detach(), scale, grad


def rounded(batch: dict, dtype: torch.dtype) -> dict:
    """The batch as the preset sees it in `dtype`, back in float64 for the oracle."""
    return {k: (v.to(dtype).double() if v.is_floating_point() else v) for k, v in batch.items()}


def check(name, seed, what, actual, expected, rtol, scale):
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, f"{name} {what}: max error {err:.3e} > {rtol} x scale {scale:.3e} (seed {seed})"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_preset_matches_paper_float32(name, seed):
    spec = PAPER[name]
    batch = draw_batch(spec, seed)
    rows, adv, loss, grad = run_preset(name, batch, torch.float32)
    ref_rows, ref_adv, ref_loss, scale, ref_grad = run_oracle(spec, rounded(batch, torch.float32))
    assert rows == ref_rows, f"{name}: kept rows differ (seed {seed})"
    assert float(ref_grad.abs().max()) > 0
    check(name, seed, "advantages", adv.double(), ref_adv, 1e-5, float(ref_adv.abs().max()))
    check(name, seed, "loss", loss, ref_loss, 1e-5, abs(float(ref_loss)) + scale)
    check(name, seed, "d loss / d logp", grad, ref_grad, 1e-5, float(ref_grad.abs().max()))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_preset_matches_paper_float64(name, seed):
    spec = PAPER[name]
    batch = draw_batch(spec, seed)
    rows, adv, loss, grad = run_preset(name, batch, torch.float64)
    ref_rows, ref_adv, _, _, _ = run_oracle(spec, batch)
    assert rows == ref_rows, f"{name}: kept rows differ (seed {seed})"
    # advantages are float32 by the kernels' contract: float32 rounding of the float64 values
    check(name, seed, "advantages", adv.double(), ref_adv, 1e-6, float(ref_adv.abs().max()))
    _, _, ref_loss, scale, ref_grad = run_oracle(spec, batch, adv=adv.double().tolist())
    check(name, seed, "loss", loss, ref_loss, 1e-10, abs(float(ref_loss)) + scale)
    check(name, seed, "d loss / d logp", grad, ref_grad, 1e-10, float(ref_grad.abs().max()))


def mutants(spec: dict) -> dict[str, dict]:
    """Plausible mistakes in a preset: each must move the oracle's gradient."""
    alt_agg = {"token-mean": "seq-mean-token-mean", "seq-mean-token-mean": "token-mean",
               "seq-mean-token-sum": "token-mean", "seq-mean-token-sum-norm": "seq-mean-token-mean"}
    alt_adv = {"grpo": "dr_grpo", "dr_grpo": "grpo", "rloo": "dr_grpo", "reinforce++": "grpo"}
    out = {
        "aggregation": dict(spec, agg=alt_agg[spec["agg"]]),
        "clip high x2": dict(spec, hi=2 * spec["hi"]),
        "clip low": dict(spec, lo=0.2 if spec["lo"] is None else 2 * spec["lo"]),
        "advantage": dict(spec, adv=alt_adv[spec["adv"]]),
        "kl": dict(spec, kl=None) if spec["kl"] else dict(spec, kl=("k3", 0.001)),
        "ratio level": dict(spec, ratio="token" if spec["ratio"] == "sequence" else "sequence"),
    }
    if spec["kl"]:
        out["kl estimator"] = dict(spec, kl=("k1", spec["kl"][1]))
    if "buffer" in spec:
        out["no overlong shaping"] = {k: v for k, v in spec.items() if k != "buffer"}
    if spec["loss"] == "cispo":
        out["ppo loss"] = dict(spec, loss="ppo", lo=0.2)
    if spec["lo"] is not None and spec["lo"] != spec["hi"]:
        out["symmetric clip"] = dict(spec, hi=spec["lo"])
    return out


@pytest.mark.parametrize("name", ALGORITHMS)
def test_inputs_catch_plausible_mistakes(name, seed):
    """Negative control: every mutant's gradient is > 10x the float32 tolerance away."""
    spec = PAPER[name]
    batch = draw_batch(spec, seed)
    _, _, _, _, grad = run_oracle(spec, batch)
    scale = float(grad.abs().max())
    for what, mspec in mutants(spec).items():
        _, _, _, _, mgrad = run_oracle(mspec, batch)
        diff = float((mgrad - grad).abs().max())
        assert diff > 10 * 1e-5 * scale, f"{name}: mutant '{what}' moves the gradient only {diff:.2e} (seed {seed})"


def test_kl_in_reward_subtracts_summed_kl_before_advantages(seed):
    spec = dict(PAPER["grpo"], kl=None)
    batch = draw_batch(spec, seed)
    cfg = AlgorithmConfig(name="grpo", group_size=G, kl_in="reward")
    res = cfg.resolved(L)
    assert res.kl_in_reward and not res.kl_in_loss and res.needs_reference
    assert cfg.loss_options(L).kl_type is None and cfg.loss_options(L).kl_coef == 0.0
    mask, old, ref = batch["mask"], batch["old"], batch["ref"]
    penalty = kl_reward_penalty(old, ref, mask, res.kl_type, res.kl_coef)
    adv = compute_advantages(batch["rewards"] - penalty, res)
    # oracle: R1's k3 estimator of pi_old vs pi_ref, summed over each response, weight 0.001
    shaped = []
    for i, r in enumerate(batch["rewards"].tolist()):
        n = int(batch["lengths"][i])
        kl = sum(float(kl_estimate("k3", old[i, t], ref[i, t])) for t in range(n))
        shaped.append(r - 0.001 * kl)
    ref_adv = torch.tensor(paper_advantages(shaped, "grpo"), dtype=torch.float64)
    assert float(ref_adv[:G].abs().max()) > 0  # the penalty breaks the all-equal group's tie
    check("grpo kl_in=reward", seed, "advantages", adv.double(), ref_adv, 1e-6, float(ref_adv.abs().max()))


# ------------------------------------------------------------------------------------------------
# Advantages: edge cases
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALGORITHMS)
def test_all_equal_groups_give_zero(name, seed):
    gen = torch.Generator().manual_seed(seed)
    res = AlgorithmConfig(name=name, group_size=G).resolved(L)
    rewards = torch.randn(3, 1, generator=gen).expand(3, G).reshape(-1)  # every group constant
    adv = compute_advantages(rewards, res)
    if res.advantage_mode == "reinforce++":  # batch-normalised: groups differ, so not zero
        assert torch.isfinite(adv).all()
        rewards = torch.full((3 * G,), float(rewards[0]))
        adv = compute_advantages(rewards, res)
    assert torch.equal(adv, torch.zeros_like(adv)), f"{name}: {adv} (seed {seed})"


def test_group_of_one():
    res = AlgorithmConfig(name="grpo", group_size=1).resolved(L)
    adv = compute_advantages(torch.randn(6), res)
    assert torch.equal(adv, torch.zeros(6))
    with pytest.raises(ConfigError, match=r"group_size: rloo"):
        AlgorithmConfig(name="rloo", group_size=1).validate()
    # a ResolvedAlgorithm built around the config check is still refused at use
    res = dataclasses.replace(AlgorithmConfig(name="rloo", group_size=2).resolved(L), group_size=1)
    with pytest.raises(ValueError, match=r"rloo needs group_size >= 2"):
        compute_advantages(torch.randn(6), res)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo", "reinforce++"])
def test_huge_rewards(name, seed):
    gen = torch.Generator().manual_seed(seed)
    res = AlgorithmConfig(name=name, group_size=G).resolved(L)
    small = torch.randint(0, 5, (4 * G,), generator=gen).to(torch.float64)
    small[:G] = torch.tensor([0.0, 1.0, 2.0, 3.0])  # at least one mixed group
    expected = torch.tensor(paper_advantages(small.tolist(), res.advantage_mode), dtype=torch.float64)
    # a large offset (exact in float64) leaves every centred estimator unchanged
    shifted = compute_advantages(small + 2.0**20, res).double()
    check(name, seed, "advantages(r + 2^20)", shifted, expected, 1e-6, float(expected.abs().max()))
    # huge scales: the normalised estimators are scale-free; the centred ones scale with the rewards
    # (their float32 output bounds them to ~3e38, so they stop at 1e30)
    for scale, dtype in ((1e30, torch.float32), (1e150, torch.float64)):
        if name in ("dr_grpo", "rloo") and scale > 1e30:
            continue
        big = compute_advantages((small * scale).to(dtype), res).double()
        want = expected if name in ("grpo", "reinforce++") else expected * scale
        assert torch.isfinite(big).all()
        check(name, seed, f"advantages({scale:g} r)", big, want, 1e-5, float(want.abs().max()))


# ------------------------------------------------------------------------------------------------
# Shaping functions
# ------------------------------------------------------------------------------------------------


def test_overlong_penalty_boundaries():
    lengths = torch.tensor([0, 15, 16, 17, 18, 19, 20, 21])
    out = overlong_penalty(lengths, 20, 4, 0.7)
    assert out.dtype == torch.float32
    expected = [0.0, 0.0, 0.0, -0.7 * 1 / 4, -0.7 * 2 / 4, -0.7 * 3 / 4, -0.7, -0.7]
    assert out[:3].tolist() == [0.0, 0.0, 0.0]  # up to and at L_max - buffer: exactly none
    assert out[6].item() == out[7].item() == torch.tensor(-0.7).item()  # at and past L_max: exactly -factor
    torch.testing.assert_close(out, torch.tensor(expected), rtol=0, atol=1e-7)
    for i, n in enumerate(lengths.tolist()):  # the oracle, length by length
        assert out[i].item() == pytest.approx(0.7 * dapo_length_penalty(n, 20, 4), abs=1e-7)
    assert torch.equal(overlong_penalty(lengths, 20, 0, 1.0), torch.zeros(8))  # buffer 0 = off
    full = overlong_penalty(torch.tensor([0, 10, 20]), 20, 20, 1.0)  # buffer = whole length
    assert full.tolist() == [0.0, -0.5, -1.0]


@pytest.mark.parametrize("bad, match", [
    (dict(buffer=21), "buffer must be an integer in"),
    (dict(buffer=-1), "buffer must be an integer in"),
    (dict(max_new_tokens=0), "max_new_tokens must be"),
    (dict(factor=-1.0), "factor must be >= 0"),
    (dict(response_lengths=torch.tensor([[3]])), "response_lengths must be"),
])
def test_overlong_penalty_rejects_bad_input(bad, match):
    args = dict(response_lengths=torch.tensor([3, 19]), max_new_tokens=20, buffer=4, factor=1.0)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        overlong_penalty(**args)


@pytest.mark.parametrize("kl_type", ["k1", "k2", "k3", "low_var_kl"])
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_kl_reward_penalty_matches_float64(kl_type, dtype, rtol, seed):
    gen = torch.Generator().manual_seed(seed)
    b, n = 6, 9
    old = -3.0 * torch.rand(b, n, generator=gen, dtype=torch.float64)
    ref = old + torch.randn(b, n, generator=gen, dtype=torch.float64)
    ref[0, :3] = old[0, :3] + 3.5  # k3 > 10 here: low_var_kl's clamp binds
    lengths = torch.randint(1, n + 1, (b,), generator=gen)
    lengths[0] = n
    mask = (torch.arange(n).unsqueeze(0) < lengths.unsqueeze(1)).to(dtype)
    coef = 0.37
    out = kl_reward_penalty(old.to(dtype), ref.to(dtype), mask, kl_type, coef)
    assert out.shape == (b,)
    o64, r64 = old.to(dtype).double(), ref.to(dtype).double()
    expected = torch.tensor([
        coef * sum(float(kl_estimate(kl_type, o64[i, t], r64[i, t])) for t in range(int(lengths[i])))
        for i in range(b)
    ], dtype=torch.float64)
    check(kl_type, seed, "kl penalty", out.double(), expected, rtol, float(expected.abs().max()))
    if kl_type == "low_var_kl":
        k3 = kl_reward_penalty(old, ref, mask.double(), "k3", coef)
        assert float(k3[0] - out[0]) > 1.0  # the clamp changed row 0


def test_kl_reward_penalty_rejects_bad_input():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="kl_type must be one of"):
        kl_reward_penalty(x, x, x, "k4", 0.1)
    with pytest.raises(ValueError, match="ref_logp must have old_logp's shape"):
        kl_reward_penalty(x, torch.zeros(2, 4), x, "k1", 0.1)
    with pytest.raises(ValueError, match="coef must be >= 0"):
        kl_reward_penalty(x, x, x, "k1", -0.1)


def test_informative_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, 1.0,
                            0.0, 1.0, 0.0, 0.0,
                            0.5, 0.5, 0.5, 0.5,
                            2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    assert informative_groups(rewards, 4).tolist() == [False, True, False, True]
    tiny = torch.tensor([1.0, 1.0 + 1e-12], dtype=torch.float64)  # any difference counts
    assert informative_groups(tiny, 2).tolist() == [True]
    assert informative_groups(rewards, 1).tolist() == [False] * 16
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        informative_groups(rewards, 3)
    with pytest.raises(ValueError, match=r"rewards must be \[B \* G\]"):
        informative_groups(rewards.view(4, 4), 4)


# ------------------------------------------------------------------------------------------------
# The config section
# ------------------------------------------------------------------------------------------------


# name -> (advantage mode, loss type, ratio level, eps low, eps high, agg, kl type, kl coef,
#          dynamic sampling, overlong buffer at max_new_tokens=20480): the papers' values
PRESET_TABLE = {
    "grpo": ("grpo", "ppo_clip", "token", 0.2, 0.2, "seq-mean-token-mean", "k3", 0.001, False, 0),
    "dr_grpo": ("dr_grpo", "ppo_clip", "token", 0.2, 0.2, "seq-mean-token-sum-norm", None, 0.0, False, 0),
    "dapo": ("grpo", "ppo_clip", "token", 0.2, 0.28, "token-mean", None, 0.0, True, 4096),
    "gspo": ("grpo", "ppo_clip", "sequence", 3e-4, 4e-4, "seq-mean-token-mean", None, 0.0, False, 0),
    "cispo": ("grpo", "cispo", "token", 1.0, 0.28, "token-mean", None, 0.0, False, 0),
    "rloo": ("rloo", "ppo_clip", "token", 0.2, 0.2, "seq-mean-token-sum", None, 0.0, False, 0),
    "reinforce++": ("reinforce++", "ppo_clip", "token", 0.2, 0.2, "token-mean", "k2", 0.001, False, 0),
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_resolved_presets(name):
    cfg = AlgorithmConfig(name=name)
    res = cfg.resolved(20480)
    got = (res.advantage_mode, res.loss_type, res.ratio_level, res.clip_eps_low, res.clip_eps_high,
           res.agg_mode, res.kl_type, res.kl_coef, res.dynamic_sampling, res.overlong_buffer)
    assert got == PRESET_TABLE[name]
    assert cfg.advantage_mode == res.advantage_mode
    assert cfg.needs_reference == res.needs_reference == (PRESET_TABLE[name][7] > 0)
    assert res.norm_length == 20480 and res.kl_in == "loss"
    opts = cfg.loss_options(20480)
    assert (opts.loss_type, opts.ratio_level, opts.clip_eps_low, opts.clip_eps_high, opts.agg_mode,
            opts.kl_type, opts.kl_coef, opts.norm_length) == (
        res.loss_type, res.ratio_level, res.clip_eps_low, res.clip_eps_high, res.agg_mode,
        res.kl_type, res.kl_coef, 20480)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.kl_coef = 1.0


@pytest.mark.parametrize("name", ALGORITHMS)
def test_overrides_replace_presets(name):
    over = dict(clip_eps_low=0.1, clip_eps_high=0.15, agg_mode="seq-mean-token-sum", kl_type="k1",
                kl_coef=0.05, dynamic_sampling=not PRESET_TABLE[name][8], overlong_buffer=7, norm_length=33,
                entropy_coef=0.01, tis_cap=2.0, adv_eps=1e-3, overlong_penalty=0.5)
    if name != "cispo":
        over["dual_clip_c"] = 3.0
    cfg = AlgorithmConfig(name=name, group_size=4, **over)
    res = cfg.resolved(100)
    for key, value in over.items():
        assert getattr(res, key) == value, key
    # what no field overrides stays the preset's
    assert (res.advantage_mode, res.loss_type, res.ratio_level) == PRESET_TABLE[name][:3]
    opts = cfg.loss_options(100)
    assert (opts.clip_eps_low, opts.clip_eps_high, opts.agg_mode, opts.kl_type, opts.kl_coef, opts.norm_length,
            opts.entropy_coef, opts.tis_cap, opts.dual_clip_c) == (
        0.1, 0.15, "seq-mean-token-sum", "k1", 0.05, 33, 0.01, 2.0, over.get("dual_clip_c"))
    # KL off by override; overlong shaping off by override
    res = AlgorithmConfig(name=name, kl_coef=0.0, overlong_buffer=0).resolved(100)
    assert not res.needs_reference and not res.overlong_shaping and cfg.loss_options(100).kl_type == "k1"
    assert AlgorithmConfig(name=name, kl_coef=0.0).loss_options(100).kl_coef == 0.0


def test_token_counted_presets_need_max_new_tokens():
    with pytest.raises(ConfigError, match=r"overlong_buffer: the dapo preset sizes it from max_new_tokens"):
        AlgorithmConfig(name="dapo").resolved()
    with pytest.raises(ConfigError, match=r"norm_length: seq-mean-token-sum-norm"):
        AlgorithmConfig(name="dr_grpo").resolved()
    assert AlgorithmConfig(name="dapo", overlong_buffer=16).resolved().overlong_buffer == 16
    assert AlgorithmConfig(name="dr_grpo", norm_length=64).resolved().norm_length == 64
    assert AlgorithmConfig(name="grpo").resolved().overlong_buffer == 0
    with pytest.raises(ConfigError, match=r"overlong_buffer: 300 tokens exceeds rollout.max_new_tokens=200"):
        AlgorithmConfig(name="dapo", overlong_buffer=300).resolved(200)


@pytest.mark.parametrize("override, match", [
    ("algorithm.name=ppo", r"algorithm\.name: 'ppo' is not one of"),
    ("algorithm.group_size=0", r"algorithm\.group_size: must be an integer >= 1"),
    ("algorithm.group_size=1.5", r"algorithm\.group_size: expected an integer"),
    ("algorithm.clip_eps_low=1.5", r"algorithm\.clip_eps_low: must be in \[0, 1\]"),
    ("algorithm.clip_eps_high=-0.1", r"algorithm\.clip_eps_high: must be >= 0"),
    ("algorithm.agg_mode=token-sum", r"algorithm\.agg_mode: 'token-sum' is not one of"),
    ("algorithm.kl_type=k4", r"algorithm\.kl_type: 'k4' is not one of"),
    ("algorithm.kl_in=advantage", r"algorithm\.kl_in: 'advantage' is not one of"),
    ("algorithm.kl_coef=-1", r"algorithm\.kl_coef: must be >= 0"),
    ("algorithm.dual_clip_c=0.5", r"algorithm\.dual_clip_c: must be > 1"),
    ("algorithm.entropy_coef=-0.1", r"algorithm\.entropy_coef: must be >= 0"),
    ("algorithm.tis_cap=0", r"algorithm\.tis_cap: must be > 0"),
    ("algorithm.norm_length=0", r"algorithm\.norm_length: must be >= 1"),
    ("algorithm.adv_eps=-1e-6", r"algorithm\.adv_eps: must be >= 0"),
    ("algorithm.overlong_buffer=-1", r"algorithm\.overlong_buffer: must be >= 0"),
    ("algorithm.overlong_penalty=-1", r"algorithm\.overlong_penalty: must be >= 0"),
    ("algorithm.max_resample_rounds=-1", r"algorithm\.max_resample_rounds: must be >= 0"),
    ("algorithm.ref_refresh_every=-5", r"algorithm\.ref_refresh_every: must be >= 0"),
    ("algorithm.updates_per_batch=0", r"algorithm\.updates_per_batch: must be >= 1"),
    ("algorithm.dynamic_sampling=3", r"algorithm\.dynamic_sampling: expected true/false"),
    ("algorithm.clip_eps_hi=0.3", r"algorithm\.clip_eps_hi: unknown key \(did you mean algorithm\.clip_eps_high\?\)"),
])
def test_bad_values_name_the_field(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TINY, [override])


@pytest.mark.parametrize("overrides, match", [
    (["algorithm.name=rloo", "algorithm.group_size=1"], r"algorithm\.group_size: rloo's leave-one-out"),
    (["algorithm.name=dapo", "algorithm.kl_coef=0.01"], r"algorithm\.kl_type: kl_coef=0\.01 needs an estimator"),
    (["algorithm.name=cispo", "algorithm.dual_clip_c=3"], r"algorithm\.dual_clip_c: applies to ppo_clip"),
    (["algorithm.name=dapo", "algorithm.group_size=1"], r"algorithm\.dynamic_sampling: every group"),
])
def test_inconsistent_values_name_the_field(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TINY, overrides)


def test_config_yaml_algorithm_section(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(f"""\
        extends: {TINY}
        algorithm:
          name: gspo
          group_size: 16
          kl_type: k1
          kl_coef: 1e-3
          kl_in: reward
          updates_per_batch: 2
        """))
    cfg = load_config(path)
    alg = cfg.algorithm
    assert (alg.name, alg.group_size, alg.kl_type, alg.kl_coef, alg.kl_in, alg.updates_per_batch) == (
        "gspo", 16, "k1", 1e-3, "reward", 2)
    res = alg.resolved(cfg.rollout.max_new_tokens)
    assert res.kl_in_reward and res.ratio_level == "sequence" and res.clip_eps_high == 4e-4
    save_config(cfg, tmp_path / "saved.yaml")  # every default spelled out, and it loads back the same
    assert load_config(tmp_path / "saved.yaml").algorithm == alg
    assert load_config(TINY).algorithm == AlgorithmConfig()  # the section is optional


def test_algorithm_config_imports_without_torch():
    code = ("import sys; from r1mega.algorithms import AlgorithmConfig; "
            "r = AlgorithmConfig(name='dapo').resolved(1024); assert r.overlong_buffer == 204; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
