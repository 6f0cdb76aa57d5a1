"""megatron DDP + optimizer under DP=2 takes the same step as DP=1 on the concatenated batch.

Adam's first step is about lr * sign(g): gradients that are zero in theory but ~1e-11 in float32
would turn into full-size parameter differences with eps=1e-8, so Adam is compared at eps=1e-4, and
SGD (linear in the gradient) is compared too. Gradient clipping is active (the clip threshold is
below the gradient norm), so the global norm over DP ranks is checked as well.
"""

import pytest
import torch

from r1mega.parallel.launch import run_distributed
from r1mega.training.optimizer import OptimizerConfig
from r1mega.configlib import ConfigError
from tests import _optimizer_fns

ADAM = dict(name="adam", lr=1e-2, adam_eps=1e-4, weight_decay=0.01, clip_grad=0.5)
SGD = dict(name="sgd", lr=0.1, sgd_momentum=0.9, weight_decay=0.0, clip_grad=0.5)
TOL = 1e-5  # relative to the largest parameter update


def _max_rel_step_diff(a: dict, b: dict) -> float:
    """Largest parameter difference relative to the tensor's largest update, after forgiving one
    float32 rounding of the parameter itself (norm weights near 1 have an ulp of 1.2e-7)."""
    worst = 0.0
    for name, before in a["before"].items():
        assert torch.equal(before, b["before"][name]), f"{name}: runs started from different weights"
        after_a, after_b = a["after"][name], b["after"][name]
        step = (after_a - before).abs().max().clamp_min(1e-12)
        ulp = torch.finfo(torch.float32).eps * after_a.abs().max()
        diff = ((after_a - after_b).abs().max() - ulp).clamp_min(0.0)
        worst = max(worst, (diff / step).item())
    return worst


@pytest.mark.dist
def test_dp2_step_equals_dp1_step_on_concatenated_batch():
    cases_dp1 = [dict(use_distributed_optimizer=False, **ADAM), dict(use_distributed_optimizer=False, **SGD)]
    cases_dp2 = [
        dict(use_distributed_optimizer=False, **ADAM),
        dict(use_distributed_optimizer=True, **ADAM),
        dict(use_distributed_optimizer=False, **SGD),  # megatron's distributed optimizer is Adam-only
    ]
    (dp1,) = run_distributed(_optimizer_fns.optimizer_steps, 1, "tiny_qwen2", cases_dp1, timeout=600)
    dp2 = run_distributed(_optimizer_fns.optimizer_steps, 2, "tiny_qwen2", cases_dp2, timeout=600)
    adam1, sgd1 = dp1
    for rank_results in dp2:
        adam_plain, adam_dist, sgd_plain = rank_results
        for got, want, what in ((adam_plain, adam1, "adam"), (adam_dist, adam1, "adam, distributed"), (sgd_plain, sgd1, "sgd")):
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5), what
            assert want["grad_norm"] > 0.5, "clipping should be active in this test"
            assert _max_rel_step_diff(got, want) <= TOL, what
        # the update is real: every parameter moved
        for name, before in adam1["before"].items():
            assert not torch.equal(before, adam1["after"][name]), name
        # the distributed optimizer reproduces the plain one
        assert _max_rel_step_diff(adam_dist, adam_plain) <= TOL


def test_distributed_optimizer_needs_adam():
    from r1mega.config import load_config

    with pytest.raises(ConfigError, match="optimizer.name: megatron's distributed optimizer supports adam only"):
        load_config("examples/configs/tiny.yaml", ["optimizer.name=sgd", "parallel.use_distributed_optimizer=true"])
    load_config("examples/configs/tiny.yaml", ["optimizer.name=sgd", "parallel.use_distributed_optimizer=false"])


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("lr", 0.0, "lr: must be > 0"),
        ("min_lr", 1.0, r"min_lr: must be in \[0, lr"),
        ("adam_beta2", 1.0, r"adam_beta2: must be in \[0, 1\)"),
        ("adam_eps", 0.0, "adam_eps: must be > 0"),
        ("clip_grad", -1.0, "clip_grad: must be >= 0"),
        ("weight_decay", -0.1, "weight_decay: must be >= 0"),
    ],
)
def test_optimizer_config_rejects_bad_values(field, value, match):
    with pytest.raises(ConfigError, match=match):
        OptimizerConfig(**{field: value}).validate()


@pytest.mark.parametrize("cls,kwargs", [
    (torch.optim.AdamW, dict(lr=1e-3, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)),
    (torch.optim.Adam, dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8)),
    (torch.optim.SGD, dict(lr=1e-2, momentum=0.9)),
])
def test_foreach_on_host_is_bit_identical_to_one_tensor_at_a_time(cls, kwargs):
    """`_foreach_on_host` switches host optimizers to torch's multi-tensor step; it must not change
    a single bit of the parameters or the optimizer state over several steps."""
    from types import SimpleNamespace

    from r1mega.training.optimizer import _foreach_on_host

    seed = int(torch.randint(0, 2**31, ()))
    shapes = [(512, 128), (128,), (384, 128), (704, 128), (128, 352)]

    def run(foreach: bool):
        gen = torch.Generator().manual_seed(seed)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
        opt = cls(params, **kwargs)
        if foreach:
            _foreach_on_host(SimpleNamespace(chained_optimizers=[SimpleNamespace(optimizer=opt)]))
            assert all(g["foreach"] for g in opt.param_groups)
        else:
            assert not any(g.get("foreach") for g in opt.param_groups)
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        state = [t for p in params for t in opt.state[p].values() if torch.is_tensor(t)]
        return [p.detach() for p in params], state

    (p1, s1), (p2, s2) = run(False), run(True)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    assert len(s1) == len(s2) and all(torch.equal(a, b) for a, b in zip(s1, s2))
