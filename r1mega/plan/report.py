"""A job config -> its memory plan, the table `r1mega plan` prints, the start-up check, and the
smallest layout that fits when the given one does not."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from r1mega.config import Config
from r1mega.configlib import ConfigError
from r1mega.parallel.config import ParallelConfig
from r1mega.plan.memory import Plan, RolloutShape, TrainShape, plan_memory

__all__ = ["plan_for_config", "format_plan", "propose_layout", "check_plan_at_startup"]

Stage = Literal["rl", "sft"]


def _train_shape(cfg: Config, parallel: ParallelConfig, world_size: int, stage: Stage) -> TrainShape:
    dp = max(world_size // parallel.model_parallel_size, 1)
    if stage == "rl":
        seq = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
        tokens = cfg.rl.micro_batch_tokens or cfg.rl.micro_batch_size * seq
        samples = cfg.rl.prompts_per_step * cfg.algorithm.group_size
        per_mb = max(tokens // seq, 1)
        n = max(samples // (dp * per_mb), 1)
        dtype = cfg.rl.params_dtype
    else:
        seq = cfg.model.max_position_embeddings
        tokens = cfg.sft.micro_batch_tokens or cfg.sft.micro_batch_size * seq
        n = max(cfg.sft.global_batch_size // (dp * cfg.sft.micro_batch_size), 1)
        dtype = cfg.sft.params_dtype
    return TrainShape(micro_batch_tokens=tokens, num_microbatches=n, params_bytes=2 if dtype == "bfloat16" else 4,
                      seq_length=seq)


def plan_for_config(cfg: Config, *, world_size: int, gpu: str, stage: Stage = "rl",
                    parallel: Optional[ParallelConfig] = None, cpu_offload: Optional[bool] = None,
                    spec: Literal["te", "local"] = "te") -> Plan:
    """`spec`: the layer spec the job will run ("te" on GPUs with transformer-engine, the target of
    `r1mega plan`; "local" without it, see r1mega.plan.local_activations)."""
    parallel = parallel or cfg.parallel
    pc = cfg.plan
    rollout = None
    if stage == "rl":
        rollout = RolloutShape(
            tp=pc.rollout_tp, mem_fraction_static=pc.mem_fraction_static,
            longest_sequence=cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens,
            concurrent_sequences=pc.concurrent_sequences, weight_bytes=pc.rollout_weight_bytes,
        )
    return plan_memory(
        cfg.model, parallel, world_size=world_size, gpu=gpu,
        train=_train_shape(cfg, parallel, world_size, stage), rollout=rollout,
        cpu_offload=cfg.optimizer.cpu_offload if cpu_offload is None else cpu_offload,
        offload_fraction=cfg.optimizer.offload_fraction, link_gbps=pc.link_gbps, gpus_per_node=pc.gpus_per_node,
        spec=spec,
    )


def _layout_text(p: ParallelConfig) -> str:
    parts = [f"tp={p.tp}", f"pp={p.pp}"]
    if (p.vpp or 1) > 1:
        parts.append(f"vpp={p.vpp}")
    if p.ep > 1:
        parts += [f"ep={p.ep}", f"etp={p.expert_tp}"]
    if p.num_layers_in_first_pipeline_stage is not None:
        parts.append(f"first={p.num_layers_in_first_pipeline_stage}")
    if p.num_layers_in_last_pipeline_stage is not None:
        parts.append(f"last={p.num_layers_in_last_pipeline_stage}")
    if p.pipeline_layout:
        parts.append(f"layout={p.pipeline_layout!r}")
    parts.append(f"recompute={p.recompute_granularity}")
    return " ".join(parts)


def format_plan(plan: Plan, cfg: Config, *, world_size: int, parallel: Optional[ParallelConfig] = None) -> str:
    parallel = parallel or cfg.parallel
    lines = [f"{cfg.model.family} on {world_size} x {plan.gpu} ({plan.gpu_gib:.1f} GiB): {_layout_text(parallel)}"
             + (", optimizer offloaded" if cfg.optimizer.cpu_offload else "")]

    def section(title, terms, total=None):
        lines.append(f"  {title}")
        for t in terms:
            lines.append(f"    {t.name:<42} {t.gib:9.2f} {t.unit:<3}   {t.note}".rstrip())
        if total is not None:
            lines.append(f"    {'total':<42} {total:9.2f} GiB")

    section("training (per GPU, largest stage)", plan.train, plan.train_gib)
    if plan.rollout:
        section("rollout (per GPU, SGLang colocated)", plan.rollout, plan.rollout_gib)
    section("host (per node)", plan.host)
    section("weight sync", [dataclasses.replace(t) for t in plan.sync])
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines.append(f"  colocated peak {plan.peak_gib:.2f} GiB of {plan.gpu_gib:.1f} GiB: {verdict}")
    for problem in plan.problems:
        lines.append(f"  problem: {problem}")
    return "\n".join(lines)


def propose_layout(cfg: Config, *, gpus_per_node: int, gpu: str, stage: Stage = "rl",
                   max_nodes: int = 128) -> Optional[tuple[int, ParallelConfig, bool]]:
    """(nodes, layout, optimizer offload) of the smallest job that fits: fewest nodes, then the
    least memory. Searches TP within a node, PP over divisors (uneven splits proposed), EP, full
    recompute, and optimizer offload."""
    from r1mega.parallel.pipeline_split import propose_split

    m = cfg.model
    nodes = 1
    while nodes <= max_nodes:
        world = nodes * gpus_per_node
        best = None
        for tp in (1, 2, 4, 8):
            if tp > gpus_per_node:
                continue
            for pp in (1, 2, 4, 8, 16, 32):
                if world % (tp * pp) or pp > m.num_layers:
                    continue
                split = {}
                if m.num_layers % pp:
                    proposal = propose_split(m.num_layers, pp, None)
                    for item in proposal.removeprefix("for example set ").split(" "):
                        key, _, value = item.partition("=")
                        if key == "parallel.num_layers_in_first_pipeline_stage":
                            split["num_layers_in_first_pipeline_stage"] = int(value)
                        elif key == "parallel.num_layers_in_last_pipeline_stage":
                            split["num_layers_in_last_pipeline_stage"] = int(value)
                        else:
                            split = None
                            break
                    if split is None:
                        continue
                eps = [1]
                if m.is_moe:
                    eps = [e for e in (1, 2, 4, 8, 16, 32, 64) if m.num_experts % e == 0 and (world // pp) % e == 0]
                for ep in eps:
                    for recompute in (None, "full"):
                        for offload in (False, True):
                            kwargs = dict(tp=tp, pp=pp, ep=ep, etp=1 if ep > 1 else None,
                                          sequence_parallel=tp > 1, use_distributed_optimizer=True, **split)
                            if recompute:
                                kwargs.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
                            p = ParallelConfig(**kwargs)
                            try:
                                p.validate()
                                plan = plan_for_config(cfg, world_size=world, gpu=gpu, stage=stage, parallel=p, cpu_offload=offload)
                            except (ConfigError, ZeroDivisionError):
                                continue
                            if plan.fits and (best is None or plan.peak_gib < best[0]):
                                best = (plan.peak_gib, p, offload)
        if best is not None:
            return nodes, best[1], best[2]
        nodes *= 2
    return None


def _detect_gpu() -> Optional[str]:
    import torch

    if not torch.cuda.is_available():
        return None
    from r1mega.plan.memory import GPUS

    total = torch.cuda.get_device_properties(0).total_memory / 1024**3
    return min(GPUS, key=lambda g: abs(GPUS[g] - total))


def check_plan_at_startup(cfg: Config, *, world_size: int, stage: Stage) -> Optional[Plan]:
    """Called by r1mega train/sft before anything is allocated. Raises ConfigError with the plan's
    numbers when it predicts the layout will not fit (plan.enforce=false only warns). Skipped
    (None) without a GPU kind: on CPU there is no device memory to plan."""
    import sys

    gpu = cfg.plan.gpu or _detect_gpu()
    if gpu is None:
        return None
    from r1mega.models.spec import transformer_engine_usable

    # the job builds the transformer-engine spec only where TE can run; otherwise the local spec,
    # whose unfused attention keeps s x s probabilities: plan for the spec that will run
    spec = "te" if transformer_engine_usable() else "local"
    plan = plan_for_config(cfg, world_size=world_size, gpu=gpu, stage=stage, spec=spec)
    if plan.fits:
        return plan
    text = format_plan(plan, cfg, world_size=world_size)
    if cfg.plan.enforce:
        raise ConfigError(
            "plan: the memory planner predicts this layout does not fit (r1mega plan CONFIG for "
            f"details; plan.enforce=false to start anyway):\n{text}"
        )
    print(f"warning: {text}", file=sys.stderr)
    return plan
