"""Rank functions of the SGLang payload tests (spawned processes import them by module path).

`payload_case` loads a tiny HF checkpoint into megatron at a training layout, then, for each rollout
layout (SGLang TP size, SGLang EP size), streams the model with `export_hf_tensors` and builds one
payload per SGLang TP rank on the rank colocated with it (`gather_rank_payloads`). The engine's owner
rank opens every payload with SGLang's own `MultiprocessingSerializer` and `FlattenedTensorBucket`,
as SGLang's TP rank would, and compares what it gets with the export's full tensors, byte for byte.
"""

from __future__ import annotations

import torch


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(-1).view(torch.uint8)


def _open_payload(payload: bytes) -> dict[str, torch.Tensor]:
    from sglang.srt.utils import MultiprocessingSerializer
    from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket

    obj = MultiprocessingSerializer.deserialize(payload)
    if not obj["metadata"]:
        return {}
    tensors = FlattenedTensorBucket(flattened_tensor=obj["flattened_tensor"], metadata=obj["metadata"]).reconstruct_tensors()
    return {n: t.clone() for n, t in tensors}


def _one_rollout_layout(chunks, model_cfg, plan, tp: int, ep: int, bucket_bytes: int) -> dict:
    import torch.distributed as dist

    from r1mega.convert.export import export_hf_tensors
    from r1mega.rollout.orchestration import RolloutGroups
    from r1mega.rollout.sglang_payloads import expert_filter, gather_rank_payloads

    groups = RolloutGroups.current(tp)
    keep = expert_filter(tp, ep, model_cfg.num_experts if ep > 1 else None)
    received: list[dict[str, torch.Tensor]] = [dict() for _ in range(tp)]
    expected: list[set[str]] = [set() for _ in range(tp)]
    differences: list[str] = []
    sent_bytes = 0
    for bucket in export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg, plan=plan):
        payloads, nbytes = gather_rank_payloads(
            bucket, tp_rank=groups.tp_rank, tp_size=tp, group=groups.group, owner=groups.owner, keep=keep
        )
        sent_bytes += nbytes
        if payloads is not None:
            assert len(payloads) == tp
            full = dict(bucket)
            for r, payload in enumerate(payloads):
                got = _open_payload(payload)
                for name, t in got.items():
                    if name in received[r]:
                        differences.append(f"tp rank {r}: {name} twice")
                    ref = full.get(name)
                    if ref is None or t.dtype != ref.dtype or t.shape != ref.shape or not torch.equal(_bits(t), _bits(ref)):
                        differences.append(f"tp rank {r}: {name} differs from the export")
                    received[r][name] = t
                for name in full:
                    if keep(r, name):
                        expected[r].add(name)
        dist.barrier()  # producers stay in the job while the owner opens their payloads
    return {
        "tp": tp, "ep": ep, "rank": dist.get_rank(), "is_owner": groups.is_owner, "sent_bytes": sent_bytes,
        "missing": [sorted(expected[r] - set(received[r])) for r in range(tp)] if groups.is_owner else None,
        "extra": [sorted(set(received[r]) - expected[r]) for r in range(tp)] if groups.is_owner else None,
        "names": [sorted(received[r]) for r in range(tp)] if groups.is_owner else None,
        "differences": differences,
    }


def payload_case(checkpoint: str, layout: dict, rollout_layouts: list, bucket_bytes: int = 64 * 1024) -> list[dict]:
    """Results per rollout layout on this rank (see the module docstring)."""
    from megatron.core import parallel_state as ps

    from r1mega.convert import load_hf_into_model, model_config_from_hf
    from r1mega.convert.export import export_plan
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed
    from tests.sglang_cpu import sglang_modules

    sglang_modules()
    model_cfg = model_config_from_hf(checkpoint)
    init_distributed(ParallelConfig(**layout), seed=1)
    try:
        chunks = build_model(model_cfg, ParallelConfig(**layout))
        load_hf_into_model(chunks, checkpoint, model_cfg=model_cfg)
        plan = export_plan(chunks, model_cfg)
        return [_one_rollout_layout(chunks, model_cfg, plan, tp, ep, bucket_bytes) for tp, ep in rollout_layouts]
    finally:
        ps.destroy_model_parallel()


def _sync_buckets() -> list:
    """Two buckets of HF-named tensors, the same on every rank (as the export gives them)."""
    g = torch.Generator().manual_seed(0)
    experts = [(f"model.layers.0.mlp.experts.{e}.up_proj.weight", torch.randn(3, 4, generator=g)) for e in range(4)]
    return [
        [("model.embed_tokens.weight", torch.randn(10, 4, generator=g)), *experts],
        [("model.norm.weight", torch.randn(4, generator=g).to(torch.bfloat16)), ("lm_head.weight", torch.randn(10, 4, generator=g))],
    ]


def push_case(rollout_layouts: list) -> list[dict]:
    """push_to_sglang on every rank; the owner's engine is a RecordingEngine (SGLang's request classes)."""
    import torch.distributed as dist

    from r1mega.rollout.orchestration import RolloutGroups
    from r1mega.rollout.sglang_engine import SGLangEngine
    from r1mega.rollout.sglang_payloads import expert_filter
    from r1mega.rollout.weight_sync import push_to_sglang
    from tests.sglang_cpu import sglang_modules
    from tests.sglang_recording import RecordingEngine, request_names

    sgl = sglang_modules()
    dist.init_process_group("gloo")
    out = []
    for tp, ep in rollout_layouts:
        groups = RolloutGroups.current(tp)
        recorder = RecordingEngine(sgl, tp=tp) if groups.is_owner else None
        engine = SGLangEngine(recorder, tp_size=tp) if groups.is_owner else None
        if engine is not None:
            engine.release_memory()
        stats = push_to_sglang(iter(_sync_buckets()), engine, groups, version="5", keep=expert_filter(tp, ep, 4))
        out.append({
            "tp": tp, "ep": ep, "rank": dist.get_rank(), "stats": stats, "owner": groups.is_owner,
            "requests": request_names(recorder.requests) if recorder else None,
            "loaded": recorder.loaded if recorder else None,
        })
    return out
