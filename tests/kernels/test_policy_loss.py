"""policy_loss (Triton kernel and torch reference) against a per-token float64 loop oracle.

Inputs are random and spread so that every branch is taken: ratios on both sides of both clip
bounds and past the dual-clip cap, TIS weights above and below the cap, positive and negative
advantages, responses of different lengths and one fully masked response. Checked: the loss, the
gradients wrt logp and entropy (from loss.backward()), and every metric. Tolerances: the fp32
Triton kernel 1e-5 relative to the largest magnitude; the torch path in float64 1e-10.
"""

import dataclasses

import pytest
import torch

from r1mega.configlib import ConfigError
from r1mega.kernels import METRIC_NAMES, PolicyLossOptions, policy_loss
from tests.kernels._policy_oracle import oracle_loss

B, L = 6, 37  # 37 is not a multiple of the interpreter's 16-token blocks


def _batch(seed: int, per_token_adv: bool = False):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, L, generator=g, dtype=torch.float64) * 3.0
    old = logp + torch.randn(B, L, generator=g, dtype=torch.float64) * 0.35
    ref = logp + torch.randn(B, L, generator=g, dtype=torch.float64) * 0.8
    rollout = old + torch.randn(B, L, generator=g, dtype=torch.float64) * 0.9
    entropy = torch.rand(B, L, generator=g, dtype=torch.float64) * 2.0
    shape = (B, L) if per_token_adv else (B,)
    adv = torch.randn(*shape, generator=g, dtype=torch.float64) * 1.5
    lengths = [L, 20, 1, 0, 33, 12]  # one empty response
    mask = torch.zeros(B, L, dtype=torch.float64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1.0
    return dict(logp=logp, old_logp=old, ref_logp=ref, rollout_logp=rollout, entropy=entropy,
                advantages=adv, mask=mask)


CONFIGS = {
    "grpo-k3": PolicyLossOptions(kl_type="k3", kl_coef=0.04, agg_mode="seq-mean-token-mean"),
    "dapo": PolicyLossOptions(clip_eps_low=0.2, clip_eps_high=0.28, agg_mode="token-mean"),
    "dr_grpo": PolicyLossOptions(agg_mode="seq-mean-token-sum-norm", norm_length=48),
    "dual-clip-k1-entropy": PolicyLossOptions(dual_clip_c=1.5, kl_type="k1", kl_coef=0.1, entropy_coef=0.01,
                                              agg_mode="seq-mean-token-sum"),
    "k2-tis": PolicyLossOptions(kl_type="k2", kl_coef=0.2, tis_cap=2.0),
    "low_var_kl-clamped": PolicyLossOptions(kl_type="low_var_kl", kl_coef=0.3, kl_clamp=0.5, log_ratio_clamp=1.5,
                                            agg_mode="seq-mean-token-mean"),
    "gspo": PolicyLossOptions(ratio_level="sequence", clip_eps_low=0.03, clip_eps_high=0.04,
                              agg_mode="seq-mean-token-mean"),
    "cispo-tis-entropy": PolicyLossOptions(loss_type="cispo", clip_eps_low=1.0, clip_eps_high=0.28, tis_cap=1.5,
                                           entropy_coef=0.02),
}


def _inputs_for(opts, data, dtype):
    kw = {k: v.detach().to(dtype) for k, v in data.items()}
    if opts.kl_type is None:
        kw.pop("ref_logp")
    if opts.tis_cap is None:
        kw.pop("rollout_logp")
    kw["logp"].requires_grad_()
    kw["entropy"].requires_grad_()
    return kw


def _run(opts, data, dtype, backend, device="cpu", global_denominator=None):
    kw = _inputs_for(opts, data, dtype)
    kw = {k: v.to(device).detach().requires_grad_(v.requires_grad) for k, v in kw.items()}
    loss, metrics = policy_loss(options=opts, global_denominator=global_denominator, backend=backend, **kw)
    loss.backward()
    return loss.detach().cpu(), {k: v.cpu() for k, v in metrics.items()}, kw["logp"].grad.cpu(), kw["entropy"].grad


def _oracle(opts, data, global_denominator=None):
    logp = data["logp"].clone().requires_grad_()
    ent = data["entropy"].clone().requires_grad_()
    loss, metrics = oracle_loss(
        logp, data["advantages"], data["mask"], data["old_logp"],
        data["ref_logp"] if opts.kl_type else None, data["rollout_logp"] if opts.tis_cap else None,
        ent, opts, global_denominator,
    )
    loss.backward()
    return float(loss.detach()), metrics, logp.grad, ent.grad


def _check(got, want, rtol, label):
    loss, metrics, g_logp, g_ent = got
    w_loss, w_metrics, w_glogp, w_gent = want
    assert abs(float(loss) - w_loss) <= rtol * max(1.0, abs(w_loss)), f"{label} loss {float(loss)} vs {w_loss}"
    gscale = w_glogp.abs().max().item()
    assert (g_logp.double() - w_glogp).abs().max().item() <= rtol * gscale, f"{label} grad logp"
    assert (g_ent.double().cpu() - w_gent).abs().max().item() <= rtol * max(w_gent.abs().max().item(), 1e-30), \
        f"{label} grad entropy"
    assert set(metrics) == set(METRIC_NAMES)
    for name, value in metrics.items():
        if name in w_metrics:
            mtol = max(10 * rtol, 1e-6)  # metrics are reported in float32
            assert abs(float(value) - w_metrics[name]) <= mtol * max(1.0, abs(w_metrics[name])), \
                f"{label} metric {name}: {float(value)} vs {w_metrics[name]}"
        else:
            assert torch.isnan(value), f"{label} metric {name} should be NaN (not computed)"


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("per_token_adv", [False, True], ids=["adv[B]", "adv[B,L]"])
def test_torch_reference_matches_oracle(name, per_token_adv):
    data = _batch(seed=sum(map(ord, name)), per_token_adv=per_token_adv)
    opts = CONFIGS[name]
    _check(_run(opts, data, torch.float64, "torch"), _oracle(opts, data), 1e-10, f"torch {name}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_triton_kernel_matches_oracle(device, name):
    data = _batch(seed=len(name) * 7)
    opts = CONFIGS[name]
    _check(_run(opts, data, torch.float32, "triton", device), _oracle(opts, data), 1e-5, f"triton {name}")


def test_triton_per_token_advantages_and_global_denominator(device):
    data = _batch(seed=5, per_token_adv=True)
    opts = PolicyLossOptions(kl_type="k3", kl_coef=0.05, dual_clip_c=2.0, agg_mode="seq-mean-token-mean")
    got = _run(opts, data, torch.float32, "triton", device, global_denominator=8.0)
    _check(got, _oracle(opts, data, global_denominator=8.0), 1e-5, "triton adv[B,L] / global denominator")


def test_test_data_takes_every_branch():
    """Guard on the inputs above: clipping, dual clip and TIS capping all actually happen."""
    data = _batch(seed=3)
    opts = PolicyLossOptions(dual_clip_c=1.5, tis_cap=2.0, kl_type="k1", kl_coef=0.1)
    _, metrics = policy_loss(options=opts, backend="torch", **{k: v for k, v in data.items()})
    for name in ("clip_frac_low", "clip_frac_high", "dual_clip_frac", "tis_clip_frac"):
        assert 0.0 < float(metrics[name]) < 1.0, (name, float(metrics[name]))


def test_on_policy_ratio_is_one_and_gradient_is_minus_advantage():
    """old_logp=None: r = 1, so under token-mean d loss / d logp_t = -A_i m_t / sum(m)."""
    data = _batch(seed=9)
    logp = data["logp"].clone().requires_grad_()
    loss, metrics = policy_loss(logp, data["advantages"], data["mask"], backend="torch")
    loss.backward()
    expected = -data["advantages"].unsqueeze(1) * data["mask"] / data["mask"].sum()
    assert torch.allclose(logp.grad, expected, atol=1e-12)
    assert float(metrics["ratio_mean"]) == pytest.approx(1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 log-prob inputs on the CUDA Triton kernel")
def test_bf16_logp_on_gpu():
    data = _batch(seed=4)
    opts = CONFIGS["grpo-k3"]
    got = _run(opts, data, torch.bfloat16, "triton", "cuda")
    bf = {k: v.to(torch.bfloat16).double() for k, v in data.items()}  # the oracle sees the same rounding
    _check(got, _oracle(opts, bf), 2e-2, "bf16")
    assert got[2].dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------
# Contract
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value,match", [
    ("clip_eps_low", -0.1, "policy_loss.clip_eps_low: must be >= 0"),
    ("dual_clip_c", 0.9, "policy_loss.dual_clip_c: must be > 1"),
    ("kl_coef", 0.1, "policy_loss.kl_coef: is 0.1 but kl_type is None"),
    ("agg_mode", "mean", "policy_loss.agg_mode: expected one of"),
    ("tis_cap", 0.0, "policy_loss.tis_cap: must be > 0"),
    ("ratio_level", "seq", "policy_loss.ratio_level"),
])
def test_options_are_validated_with_the_field_named(field, value, match):
    opts = dataclasses.replace(PolicyLossOptions(), **{field: value})
    with pytest.raises(ConfigError, match=match):
        opts.validate()


def test_missing_inputs_are_named():
    data = _batch(seed=1)
    lp, adv, mask = data["logp"], data["advantages"], data["mask"]
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(lp, adv, mask, options=PolicyLossOptions(kl_type="k3", kl_coef=0.1))
    with pytest.raises(ValueError, match="rollout_logp was not given"):
        policy_loss(lp, adv, mask, options=PolicyLossOptions(tis_cap=2.0))
    with pytest.raises(ValueError, match="needs the entropy input"):
        policy_loss(lp, adv, mask, options=PolicyLossOptions(entropy_coef=0.01))
    with pytest.raises(ValueError, match="advantages must be"):
        policy_loss(lp, adv[:3], mask)
    with pytest.raises(ValueError, match="mask must have logp's shape"):
        policy_loss(lp, adv, mask[:, :5])
    with pytest.raises(ConfigError, match="dual_clip_c: only applies"):
        policy_loss(lp, adv, mask, options=PolicyLossOptions(loss_type="cispo", dual_clip_c=2.0))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_backward_can_run_twice(device, backend):
    """retain_graph: a second backward adds the same gradient again (nothing saved is consumed)."""
    dev = device if backend == "triton" else "cpu"
    data = {k: v.float().to(dev) for k, v in _batch(seed=2).items()}
    logp = data.pop("logp").requires_grad_()
    loss, _ = policy_loss(logp, options=CONFIGS["dapo"], backend=backend,
                          **{k: data[k] for k in ("advantages", "mask", "old_logp")})
    loss.backward(retain_graph=True)
    first = logp.grad.clone()
    loss.backward()
    assert torch.allclose(logp.grad, 2 * first)
