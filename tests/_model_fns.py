"""Rank functions for test_models.py and test_cpu_support.py (run in spawned processes, so the CPU
support's process-wide patches never leak into the pytest worker)."""

from __future__ import annotations

import logging

import torch


def tiny_forward_backward(model_yamls: list[str], seq: int = 16, mbs: int = 2) -> dict:
    """Build each tiny model on one CPU process, run forward + backward, report what happened."""
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from tests import parallel_equivalence as pe

    out = {}
    for name in model_yamls:
        cfg = pe._model_cfg(name)
        init_distributed(ParallelConfig(), seed=3)
        (model,) = build_model(cfg, ParallelConfig())
        pe.randomize_(model, 3)
        (mb,) = pe.make_microbatches(1, mbs, seq, cfg.vocab_size, 4)
        logits = model(mb["tokens"], mb["position_ids"], None)  # [b, s, padded vocab]
        loss = model(mb["tokens"], mb["position_ids"], None, labels=mb["labels"]).mean()
        loss.backward()
        out[name] = {
            "logits_shape": tuple(logits.shape),
            "loss": loss.item(),
            "finite": bool(torch.isfinite(logits).all()),
            "no_grad": sorted(n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0),
            "num_params": sum(p.numel() for p in model.parameters()),
            "padded_vocab": cfg.padded_vocab_size(1),
        }
        destroy_distributed()
    return out


def recompute_matches(model_yaml: str, seq: int = 16, mbs: int = 2) -> dict:
    """Full activation recompute (megatron's CheckpointFunction, backward re-runs the forward with
    device="cuda" allocations and forked RNG) reproduces the plain gradients bit for bit."""
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from tests import parallel_equivalence as pe

    cfg = pe._model_cfg(model_yaml, ["model.hidden_dropout=0.1", "model.attention_dropout=0.1"])
    grads = []
    for overrides in ({}, dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)):
        init_distributed(ParallelConfig(), seed=5)
        (model,) = build_model(cfg, ParallelConfig(), config_overrides=overrides)
        pe.randomize_(model, 5)
        (mb,) = pe.make_microbatches(1, mbs, seq, cfg.vocab_size, 6)
        model.train()
        torch.manual_seed(11)  # dropout outside the tracker's forks draws from the CPU generator
        model(mb["tokens"], mb["position_ids"], None, labels=mb["labels"]).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        destroy_distributed()
    plain, recomputed = grads
    return {"identical": all(torch.equal(plain[n], recomputed[n]) for n in plain), "n": len(plain)}


def rng_fork_behaviour() -> dict:
    """TP=2: inside the tracker's model-parallel fork TP ranks draw different numbers, outside it
    the same (same default seed); forks leave the CPU generator untouched and never warn."""
    import torch.distributed as dist
    from megatron.core import tensor_parallel

    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed

    warnings: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    logging.getLogger("megatron.core.tensor_parallel.random").addHandler(Catch())
    init_distributed(ParallelConfig(tp=2), seed=9)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    cpu_before = torch.get_rng_state()
    with tracker.fork():
        inside = torch.rand(4)
        with tracker.fork(tensor_parallel.random.get_expert_parallel_rng_tracker_name()):
            nested = torch.rand(4)
        inside_after_nested = torch.rand(4)
    cpu_unchanged = torch.equal(cpu_before, torch.get_rng_state())
    outside = torch.rand(4)
    with tracker.fork():
        inside_again = torch.rand(4)  # continues the stream, does not restart it
    dropout = torch.nn.functional.dropout(torch.ones(64), p=0.5)
    with tracker.fork():
        tp_dropout = torch.nn.functional.dropout(torch.ones(64), p=0.5)
    result = {
        "rank": dist.get_rank(),
        "inside": inside,
        "nested": nested,
        "inside_after_nested": inside_after_nested,
        "inside_again": inside_again,
        "outside": outside,
        "cpu_unchanged": cpu_unchanged,
        "dropout": dropout,
        "tp_dropout": tp_dropout,
        "warnings": warnings,
    }
    destroy_distributed()
    return result


def enable_twice() -> dict:
    """enable_cpu_support is idempotent: the device mode is pushed once, patches applied once."""
    from r1mega.parallel import cpu

    first = cpu.enable_cpu_support()
    depth = torch._C._len_torch_function_stack()
    fork = __import__("megatron.core.tensor_parallel.random", fromlist=["x"]).CudaRNGStatesTracker.fork
    second = cpu.enable_cpu_support()
    fork_again = __import__("megatron.core.tensor_parallel.random", fromlist=["x"]).CudaRNGStatesTracker.fork
    x = torch.zeros(2, device="cuda")  # mapped to the CPU
    return {
        "first": first,
        "second": second,
        "depth_after_first": depth,
        "depth_after_second": torch._C._len_torch_function_stack(),
        "fork_patched_once": fork is fork_again,
        "device": str(x.device),
        "cuda_tensor_noop": x.cuda() is x,
        "pinned": torch.empty(2, pin_memory=True).is_pinned(),
    }
