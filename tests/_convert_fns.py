"""Rank functions of the conversion tests (spawned processes import them by module path).

`run_conversion_cases` builds the megatron model of an HF checkpoint in each requested layout,
loads the checkpoint with `load_hf_into_model` (each rank reading its own shards), runs the forward
pass through megatron's pipeline schedule, and exports everything back with `export_hf_tensors`.
It returns what the test asserts on: logits (last stage, TP-gathered), the exported tensors'
differences from the original file, bucket sizes, and how many bytes each rank read.
"""

from __future__ import annotations

from typing import Optional

import torch


def _forward_logits(chunks, tokens: torch.Tensor, vocab: int) -> Optional[torch.Tensor]:
    """Logits [b, s, vocab] on the last pipeline stage (None elsewhere), gathered over TP."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from r1mega.training.megatron_step import forward_backward

    b, s = tokens.shape
    batch = {"tokens": tokens, "position_ids": torch.arange(s).unsqueeze(0).expand(b, s).contiguous()}

    def keep_logits(output: torch.Tensor, mb: dict):
        return output.sum() * 0.0, {"logits": output.detach()}

    for c in chunks:
        c.eval()
    metrics = forward_backward(chunks, [batch], keep_logits, seq_length=s, micro_batch_size=b, forward_only=True)
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None
    local = metrics[0]["logits"]  # [b, s, vocab_padded / tp]
    tp = ps.get_tensor_model_parallel_world_size()
    if tp > 1:
        parts = [torch.empty_like(local) for _ in range(tp)]
        dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
        local = torch.cat(parts, dim=-1)
    return local[..., :vocab].clone()


def _exported(chunks, model_cfg, bucket_bytes: int) -> tuple[dict[str, torch.Tensor], list[int]]:
    from r1mega.convert import export_hf_tensors

    out: dict[str, torch.Tensor] = {}
    sizes = []
    for bucket in export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg):
        sizes.append(sum(t.numel() * t.element_size() for _, t in bucket))
        for name, t in bucket:
            assert name not in out, f"{name} exported twice"
            out[name] = t
        del bucket
    return out, sizes


def run_case(
    checkpoint: str,
    layout: dict,
    tokens: torch.Tensor,
    *,
    bucket_bytes: int = 48 * 1024,
    seed: int = 1,
) -> dict:
    """Load `checkpoint` into megatron at `layout` (ParallelConfig fields), forward, export back."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from r1mega.convert import load_hf_into_model, model_config_from_hf
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed
    from tests.convert_helpers import bitwise_differences, safetensors_state

    model_cfg = model_config_from_hf(checkpoint)
    pcfg = ParallelConfig(**layout)
    init_distributed(pcfg, seed=seed)
    try:
        chunks = build_model(model_cfg, pcfg)
        for c in chunks:  # start from something other than the checkpoint: every tensor must be loaded
            for p in c.parameters():
                p.data.fill_(float("nan"))
            for name, buf in c.named_buffers():
                if name.endswith("expert_bias"):
                    buf.fill_(float("nan"))
        read = load_hf_into_model(chunks, checkpoint, model_cfg=model_cfg)
        logits = _forward_logits(chunks, tokens, model_cfg.vocab_size)
        exported, sizes = _exported(chunks, model_cfg, bucket_bytes)
        largest = max(t.numel() * t.element_size() for t in exported.values())
        return {
            "rank": dist.get_rank(),
            "layout": layout,
            "logits": logits,
            "differences": bitwise_differences(safetensors_state(checkpoint), exported),
            "bucket_sizes": sizes,
            "largest_tensor": largest,
            "bytes_read": read["bytes"],
            "tp_rank": ps.get_tensor_model_parallel_rank(),
            "pp_rank": ps.get_pipeline_model_parallel_rank(),
            "ep_rank": ps.get_expert_model_parallel_rank(),
        }
    finally:
        ps.destroy_model_parallel()


def run_cases(cases: list[dict]) -> list[dict]:
    """Several `run_case`s in one process group (a spawn per case would cost more than the case)."""
    out = []
    for case in cases:
        result = run_case(case["checkpoint"], case["layout"], case["tokens"], **case.get("kwargs", {}))
        result["name"] = case["name"]
        out.append(result)
    return out


def peak_extra_bytes(fn) -> tuple[int, object]:
    """(peak of bytes allocated minus bytes freed while `fn()` runs, its result), from the CPU
    allocator's own events recorded by the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    assert events, "the profiler recorded no memory events: the measurement would be meaningless"
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak, result


def measure_export_memory(checkpoint: str, layout: dict, bucket_bytes: int, seed: int = 1) -> dict:
    """Peak extra memory on this rank while streaming the whole model, consumed bucket by bucket
    (`streamed`) and, as a control, with every bucket kept (`retained`)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from r1mega.convert import export_hf_tensors, load_hf_into_model, model_config_from_hf
    from r1mega.convert.export import export_plan
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed

    model_cfg = model_config_from_hf(checkpoint)
    pcfg = ParallelConfig(**layout)
    init_distributed(pcfg, seed=seed)
    try:
        chunks = build_model(model_cfg, pcfg)
        load_hf_into_model(chunks, checkpoint, model_cfg=model_cfg)
        plan = export_plan(chunks, model_cfg)
        largest = max(torch.empty(it.full_shape, dtype=it.dtype, device="meta").nbytes for it in plan)
        total = sum(it.hf_bytes for it in plan)

        def streamed():
            count = 0
            for bucket in export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg):
                count += sum(t.numel() * t.element_size() for _, t in bucket)
                del bucket
            return count

        def retained():
            return list(export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg))

        dist.barrier()
        peak_streamed, count = peak_extra_bytes(streamed)
        dist.barrier()
        peak_retained, kept = peak_extra_bytes(retained)
        del kept
        return {
            "rank": dist.get_rank(),
            "peak_streamed": peak_streamed,
            "peak_retained": peak_retained,
            "largest_tensor": largest,
            "total_bytes": total,
            "exported_bytes": count,
        }
    finally:
        ps.destroy_model_parallel()


def measure_cases(cases: list[dict]) -> list[dict]:
    out = []
    for case in cases:
        result = measure_export_memory(case["checkpoint"], case["layout"], case["bucket_bytes"])
        result["name"] = case["name"]
        out.append(result)
    return out
