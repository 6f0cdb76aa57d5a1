"""The trainer's view of rollout across the job: one engine per rollout group, rewards on rank 0.

`JobEngine.generate` and `SharedRewards.score` are collectives that every rank calls in the same
order with the same arguments: the first splits the prompts over all engines and gives every rank
every sample (`generate_across_engines`), the second scores on rank 0's reward pool and broadcasts
the scores. With both, `RolloutCollector` runs unchanged on every rank and computes the same
trajectories everywhere (its sampler and dynamic-sampling decisions see identical data), so each DP
rank takes its share without a broadcast of the batch.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from r1mega.rollout.orchestration import RolloutGroups, generate_across_engines
from r1mega.rollout.types import Sample, SamplingParams

__all__ = ["JobEngine", "SharedRewards"]


class JobEngine:
    """All rollout engines of the job behind one `generate` (a collective)."""

    def __init__(self, engine, groups: RolloutGroups, *, sglang_keep=None):
        """`engine`: this rank's engine when it owns one, else None. `sglang_keep`: the expert filter
        of SGLang engines (`sglang_payloads.expert_filter`); None for built-in engines."""
        self.engine = engine
        self.groups = groups
        self.sglang_keep = sglang_keep

    @classmethod
    def start(cls, cfg, tokenizer, hf_config, model_dir) -> "JobEngine":
        """One engine per rollout group, on its owner rank (a collective). SGLang engines start from
        `model_dir/engine<e>` (HF config + tokenizer, weights pushed later) and are released at once."""
        from r1mega.rollout.engines import make_engine

        groups = RolloutGroups.current(cfg.rollout.tp)
        if cfg.rollout.engine == "sglang":
            import os

            import torch

            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", groups.world_size))
            if local_world % cfg.rollout.tp:
                # an engine's GPUs are base_gpu_id .. base_gpu_id + tp - 1 of one node; engines that
                # span nodes (SGLang nnodes > 1) are not supported yet
                raise ValueError(
                    f"rollout.tp: {cfg.rollout.tp} must divide the {local_world} GPUs of a node "
                    "(one SGLang engine per group of GPUs on one node)"
                )

            from r1mega.rollout.sglang_engine import SGLangEngine
            from r1mega.rollout.sglang_payloads import expert_filter

            local = None
            if groups.is_owner:
                directory = model_dir / f"engine{groups.engine}"
                hf_config.save_pretrained(str(directory))
                tokenizer.save_pretrained(str(directory))
                local = SGLangEngine.launch(
                    cfg.rollout, model_path=str(directory), base_gpu_id=torch.cuda.current_device(),
                    seed=cfg.run.seed + groups.engine,
                    dtype="bfloat16" if cfg.rl.params_dtype == "bfloat16" else "float32",
                    routing_shape=(cfg.model.num_layers, cfg.model.moe_router_topk),
                )
            keep = expert_filter(cfg.rollout.tp, cfg.rollout.ep, cfg.model.num_experts)
            return cls(local, groups, sglang_keep=keep)
        local = None
        if groups.is_owner:
            local = make_engine(cfg.rollout, hf_config, tokenizer=tokenizer, seed=cfg.run.seed,
                                eos_token_ids=[tokenizer.eos_token_id])
        return cls(local, groups)

    def generate(self, prompts_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
        return generate_across_engines(self.engine, self.groups, prompts_token_ids, sampling)

    def sync(self, named_tensor_buckets, version: int) -> dict[str, float]:
        """Every rank consumes the export (a collective); engines load it. Returns sync_bytes (HF
        bytes this rank handled) and, for SGLang, sync_buckets."""
        if self.sglang_keep is not None:
            from r1mega.rollout.weight_sync import push_to_sglang

            stats = push_to_sglang(named_tensor_buckets, self.engine, self.groups, version=str(version),
                                   keep=self.sglang_keep)
            stats.pop("sync_s")  # the trainer times the whole sync, export included
            return stats
        counted = [0]

        def counting():
            for bucket in named_tensor_buckets:
                counted[0] += sum(t.numel() * t.element_size() for _, t in bucket)
                yield bucket

        if self.engine is not None:
            self.engine.update_weights(counting())
        else:
            for _ in counting():
                pass
        return {"sync_bytes": float(counted[0])}

    def after_rollout(self) -> None:
        """Hand the GPU back to training: SGLang engines release weights, KV cache and CUDA graphs."""
        if self.sglang_keep is not None and self.engine is not None:
            self.engine.release_memory()


class SharedRewards:
    """Scores on rank 0's reward pool, the same list on every rank (a collective)."""

    def __init__(self, pool: Optional[Any]):
        self.pool = pool

    def score(self, samples: Sequence[Any], references: Sequence[dict]) -> list[dict[str, float]]:
        import torch.distributed as dist

        box = [self.pool.score(samples, references) if dist.get_rank() == 0 else None]
        if dist.get_world_size() > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
