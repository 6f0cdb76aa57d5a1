"""Benchmark of per-token log-probs from hidden states: fused vs materialised vs Liger.

Implementations:
  fused  `fused_logprob` as dispatched on the device (Triton on CUDA, chunked torch on CPU)
  naive  logits = h @ W^T, .float(), log_softmax, gather (what frameworks do without a kernel)
  liger  Liger-Kernel's fused linear cross entropy (reduction="sum"), when installed and on CUDA

FLOPs are model FLOPs, the same for every implementation: forward 2 N V H (the logits GEMM),
forward+backward 6 N V H (plus the two gradient GEMMs). The fused kernel executes 8 N V H in
forward+backward (it recomputes the logits instead of storing them); the records say so in notes.
"""

from __future__ import annotations

import gc
from typing import Callable, Optional

import torch

from r1mega.kernels.bench.common import Record, tensor_bytes, time_call
from r1mega.kernels.bench.memory import peak_bytes
from r1mega.kernels.dispatch import resolve_backend
from r1mega.kernels.logprob import fused_logprob
from r1mega.kernels.naive import naive_logprob

V_QWEN = 151936  # Qwen2.5/Qwen3 vocabulary (padded), the headline vocabulary

SHAPES = {
    # N tokens, H hidden, V vocabulary rows on this rank
    "headline": [
        (n, 4096, v) for v in (V_QWEN, V_QWEN // 8) for n in (8192, 16384, 32768)
    ],
    "small": [(1024, 256, 32768), (4096, 256, 32768)],
    "tiny": [(256, 16, 12000)],  # N x V above one CPU logits block, so chunking shows
}


def _liger_loss() -> Optional[Callable]:
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="sum")


def _make_call(impl: str, mode: str, hidden, weight, targets):
    """A closure running one forward (or forward+backward) and returning what the call produced."""
    need_grad = mode == "fwd+bwd"
    h = hidden.detach().requires_grad_(need_grad)
    w = weight.detach().requires_grad_(need_grad)
    liger = _liger_loss() if impl == "liger" else None

    def run():
        h.grad = None
        w.grad = None
        with torch.set_grad_enabled(need_grad):
            if impl == "fused":
                out = fused_logprob(h, w, targets)
            elif impl == "naive":
                out = naive_logprob(h, w, targets)
            else:
                out = liger(w, h, targets)
                if not isinstance(out, torch.Tensor):  # newer Liger may return an output record
                    out = getattr(out, "loss", None) if hasattr(out, "loss") else out[0]
            if need_grad:
                out.sum().backward()
        return [out] + ([h.grad, w.grad] if need_grad else [])

    return run


def run(device: torch.device, shapes: list[tuple[int, int, int]], modes: list[str], impls: list[str],
        dtype: torch.dtype, warmup: int, repeats: int, reference: dict) -> list[Record]:
    records: list[Record] = []
    for n, hdim, v in shapes:
        g = torch.Generator(device="cpu").manual_seed(0)
        hidden = (torch.randn(n, hdim, generator=g) * 0.5).to(device=device, dtype=dtype)
        weight = (torch.randn(v, hdim, generator=g) * hdim**-0.5).to(device=device, dtype=dtype)
        targets = torch.randint(0, v, (n,), generator=g).to(device)
        logits_bytes = n * v * torch.empty((), dtype=dtype).element_size()
        for mode in modes:
            for impl in impls:
                rec = Record(
                    op="logprob", impl=impl, mode=mode, shape={"N": n, "H": hdim, "V": v},
                    dtype=str(dtype).replace("torch.", ""), device=device.type, backend=_backend_name(impl, device),
                    flops=(2 if mode == "fwd" else 6) * n * v * hdim,
                )
                if impl == "fused" and mode == "fwd+bwd":
                    rec.notes.append("executes 8NVH FLOPs (logits recomputed in backward); rate uses 6NVH")
                if impl == "liger":
                    rec.notes.append("Liger computes the cross-entropy sum; its forward already computes "
                                     "input gradients when they are required")
                    if _liger_loss() is None or device.type != "cuda":
                        rec.error = "skipped: liger-kernel not installed" if _liger_loss() is None else \
                            "skipped: Liger-Kernel needs CUDA"
                        records.append(rec)
                        continue
                try:
                    call = _make_call(impl, mode, hidden, weight, targets)
                    rec.time = time_call(call, device, warmup=warmup, repeats=repeats)
                    _measure_memory(rec, call, device, logits_bytes)
                except torch.cuda.OutOfMemoryError as e:  # a data point: the naive path at scale
                    rec.time = None
                    rec.error = f"CUDA out of memory: {str(e).splitlines()[0]}"
                rec.fill_rates(reference)
                records.append(rec)
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return records


def _measure_memory(rec: Record, call, device: torch.device, logits_bytes: int) -> None:
    results: list = []
    peak, method = peak_bytes(lambda: results.extend(call()), device)
    rec.peak_extra_bytes = int(peak - tensor_bytes(*results))
    rec.peak_extra_pct_of_logits = 100.0 * rec.peak_extra_bytes / logits_bytes
    rec.memory_method = method + "; minus the call's outputs and gradients; logits = N x V in the input dtype"


def _backend_name(impl: str, device: torch.device) -> str:
    if impl == "fused":
        chosen = resolve_backend(None, torch.empty(0, device=device), "fused_logprob")
        return "triton" if chosen == "triton" else "torch-chunked"
    return "liger-triton" if impl == "liger" else "torch"
