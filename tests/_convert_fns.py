"""Rank functions of the conversion tests (spawned processes import them by module path).

`run_case` builds the megatron model of an HF checkpoint at a layout, loads the checkpoint with
`load_hf_into_model` (each rank reading its own shards), runs the forward pass through megatron's
pipeline schedule, and exports everything back with `export_hf_tensors`, measuring the export's
peak extra memory on the way. It returns what the tests assert on.
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
    local = metrics[0]["logits"]  # [b, s, padded vocab / tp]
    tp = ps.get_tensor_model_parallel_world_size()
    if tp > 1:
        parts = [torch.empty_like(local) for _ in range(tp)]
        dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
        local = torch.cat(parts, dim=-1)  # [b, s, padded vocab]
    return local[..., :vocab].clone()


def peak_extra_bytes(fn) -> tuple[int, object]:
    """(peak of bytes allocated minus bytes freed while `fn()` runs, its result), from the CPU
    allocator's events recorded by the torch profiler (allocations and frees on this thread)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [
        e for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    assert events, "the profiler recorded no memory events: the measurement would be meaningless"
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        current += e.nbytes()
        peak = max(peak, current)
    return peak, result


def _measure_export(chunks, model_cfg, bucket_bytes: int) -> dict:
    """Peak extra memory while streaming the model (each bucket dropped before the next), and as a
    control with every bucket kept; bucket sizes; the largest full megatron tensor."""
    import torch.distributed as dist

    from r1mega.convert import export_hf_tensors
    from r1mega.convert.export import export_plan

    plan = export_plan(chunks, model_cfg)
    sizes: list[int] = []

    # the plan (one all_gather_object of names and shapes) is made once, outside the measurement
    def streamed():
        for bucket in export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg, plan=plan):
            sizes.append(sum(t.numel() * t.element_size() for _, t in bucket))
            del bucket

    def retained():
        return list(export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg, plan=plan))

    dist.barrier()
    peak_streamed, _ = peak_extra_bytes(streamed)
    peak_retained, kept = peak_extra_bytes(retained)
    del kept
    return {
        "peak_streamed": peak_streamed,
        "peak_retained": peak_retained,
        "bucket_sizes": sizes,
        "largest_tensor": max(torch.Size(it.full_shape).numel() * it.dtype.itemsize for it in plan),
        "largest_item": max(it.hf_bytes for it in plan),
        "model_bytes": sum(it.hf_bytes for it in plan),
    }


@torch.no_grad()
def _synced_engine_logits(chunks, model_cfg, tokens: torch.Tensor, bucket_bytes: int) -> torch.Tensor:
    """Rollout weight sync on this rank: a BuiltinEngine built from the model config alone (random
    weights) takes the export; it must then compute transformers' logits of the checkpoint."""
    from r1mega.convert import export_hf_tensors, hf_config_from_model_config
    from r1mega.rollout.builtin import BuiltinEngine

    engine = BuiltinEngine(hf_config_from_model_config(model_cfg), dtype="float32", device="cpu", eos_token_ids=[])
    # update_weights refuses a sync that misses any tensor the engine's model has
    engine.update_weights(export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg))
    return engine.model(input_ids=tokens, use_cache=False).logits.float()


@torch.no_grad()
def _swap_gate_up_in_first_layer(chunks) -> int:
    """Negative control: exchange the gate and up halves of every fc1 of global layer 0."""
    from r1mega.convert.live import unwrap

    swapped = 0
    for chunk in chunks:
        model = unwrap(chunk)
        if model.decoder is None or not model.decoder.layers or model.decoder.layers[0].layer_number != 1:
            continue
        for name, p in model.decoder.layers[0].named_parameters():
            if name.endswith("linear_fc1.weight") or ".linear_fc1.weight" in name:
                half = p.shape[0] // 2
                p.copy_(torch.cat([p[half:], p[:half]]))
                swapped += 1
    return swapped


def run_case(
    checkpoint: str,
    layout: dict,
    tokens: torch.Tensor,
    *,
    bucket_bytes: int = 128 * 1024,
    control: bool = False,
    seed: int = 1,
) -> dict:
    """Load `checkpoint` into megatron at `layout` (ParallelConfig fields), forward, export back."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from r1mega.convert import export_hf_tensors, load_hf_into_model, model_config_from_hf
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed
    from tests.convert_helpers import bitwise_differences, safetensors_state

    model_cfg = model_config_from_hf(checkpoint)
    pcfg = ParallelConfig(**layout)
    init_distributed(pcfg, seed=seed)
    try:
        chunks = build_model(model_cfg, pcfg)
        with torch.no_grad():  # start from NaN: a tensor the load misses poisons the logits
            for c in chunks:
                for p in c.parameters():
                    p.fill_(float("nan"))
                for name, buf in c.named_buffers():
                    if name.endswith("expert_bias"):
                        buf.fill_(float("nan"))
        read = load_hf_into_model(chunks, checkpoint, model_cfg=model_cfg)
        logits = _forward_logits(chunks, tokens, model_cfg.vocab_size)
        memory = _measure_export(chunks, model_cfg, bucket_bytes)
        exported: dict[str, torch.Tensor] = {}
        for bucket in export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg):
            for name, t in bucket:
                assert name not in exported, f"{name} exported twice"
                exported[name] = t
        result = {
            "engine_logits": _synced_engine_logits(chunks, model_cfg, tokens, bucket_bytes),
            "rank": dist.get_rank(),
            "layout": layout,
            "logits": logits,
            "differences": bitwise_differences(safetensors_state(checkpoint), exported),
            "bytes_read": read["bytes"],
            "bucket_bytes": bucket_bytes,
            **memory,
        }
        if control:
            result["swapped"] = _swap_gate_up_in_first_layer(chunks)
            result["control_logits"] = _forward_logits(chunks, tokens, model_cfg.vocab_size)
        return result
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
