"""Benchmarks of the GRPO math: the fused policy loss and the group advantages.

grpo_loss: `policy_loss` with every input present (GRPO clip, k3 KL, entropy bonus, TIS), as
dispatched on the device ("fused": Triton on CUDA) against the torch reference of the same op
("torch": unfused autograd ops) on the same device. It is a memory-bound stream, so the rate that
matters is bytes/s against the measured copy bandwidth. Minimum bytes: forward reads the six
[B, L] fp32 inputs (logp, old, ref, rollout, mask, entropy) once; forward+backward also writes
the two [B, L] gradients (logp, entropy).

advantages: `group_advantages` over [B * G] rewards (reads and writes each reward once).
"""

from __future__ import annotations

import torch

from r1mega.kernels.advantages import group_advantages
from r1mega.kernels.bench.common import Record, tensor_bytes, time_call
from r1mega.kernels.bench.memory import peak_bytes
from r1mega.kernels.dispatch import resolve_backend
from r1mega.kernels.policy_loss import PolicyLossOptions, policy_loss

LOSS_SHAPES = {
    "headline": [(8, 32768)],  # 8 responses x 32768 tokens (R1's generation length)
    "small": [(8, 32768), (64, 4096)],
    "tiny": [(4, 100)],
}
ADV_SHAPES = {
    "headline": [(32, 16), (1024, 16), (65536, 16)],
    "small": [(32, 16), (1024, 16), (65536, 16)],
    "tiny": [(8, 4)],
}
LOSS_OPTIONS = PolicyLossOptions(kl_type="k3", kl_coef=0.001, entropy_coef=0.001, tis_cap=2.0,
                                 clip_eps_high=0.28, agg_mode="token-mean")


def _loss_inputs(bsz: int, length: int, device: torch.device, need_grad: bool) -> dict:
    g = torch.Generator(device="cpu").manual_seed(0)
    logp = -torch.rand(bsz, length, generator=g) * 2
    data = dict(
        logp=logp,
        old_logp=logp + torch.randn(bsz, length, generator=g) * 0.1,
        ref_logp=logp + torch.randn(bsz, length, generator=g) * 0.1,
        rollout_logp=logp + torch.randn(bsz, length, generator=g) * 0.1,
        entropy=torch.rand(bsz, length, generator=g),
        mask=(torch.rand(bsz, length, generator=g) < 0.9).float(),
        advantages=torch.randn(bsz, generator=g),
    )
    data = {k: v.to(device) for k, v in data.items()}
    data["logp"].requires_grad_(need_grad)
    data["entropy"].requires_grad_(need_grad)
    return data


def run_loss(device: torch.device, shapes, modes, impls, warmup, repeats, reference) -> list[Record]:
    records = []
    for bsz, length in shapes:
        for mode in modes:
            need_grad = mode == "fwd+bwd"
            data = _loss_inputs(bsz, length, device, need_grad)
            for impl in impls:
                backend = None if impl == "fused" else "torch"
                chosen = resolve_backend(backend, data["logp"], "policy_loss")
                rec = Record(op="grpo_loss", impl=impl, mode=mode, shape={"B": bsz, "L": length},
                             dtype="float32", device=device.type, backend=chosen,
                             bytes=(6 if mode == "fwd" else 8) * bsz * length * 4)

                def call(data=data, backend=backend, need_grad=need_grad):
                    data["logp"].grad = None
                    data["entropy"].grad = None
                    loss, metrics = policy_loss(options=LOSS_OPTIONS, backend=backend, **data)
                    if need_grad:
                        loss.backward()
                    return [loss, *metrics.values()] + (
                        [data["logp"].grad, data["entropy"].grad] if need_grad else [])

                rec.time = time_call(call, device, warmup=warmup, repeats=repeats)
                results: list = []
                peak, method = peak_bytes(lambda: results.extend(call()), device)
                rec.peak_extra_bytes = int(peak - tensor_bytes(*results))
                rec.memory_method = method + "; minus the call's outputs and gradients"
                rec.fill_rates(reference)
                records.append(rec)
    return records


def run_advantages(device: torch.device, shapes, impls, warmup, repeats, reference) -> list[Record]:
    records = []
    for n_groups, g in shapes:
        rewards = torch.randn(n_groups * g, generator=torch.Generator().manual_seed(0)).to(device)
        for impl in impls:
            backend = None if impl == "fused" else "torch"
            chosen = resolve_backend(backend, rewards, "group_advantages")
            rec = Record(op="advantages", impl=impl, mode="fwd", shape={"B": n_groups, "G": g}, dtype="float32",
                         device=device.type, backend=chosen, bytes=2 * rewards.numel() * 4)
            rec.time = time_call(lambda: group_advantages(rewards, g, mode="grpo", backend=backend), device,
                                 warmup=warmup, repeats=repeats)
            rec.fill_rates(reference)
            rec.notes.append("launch-bound at these sizes; bytes/s shown for completeness")
            records.append(rec)
    return records
