"""The planner's activation model for the local layer spec (r1mega/plan/local_activations.py)
against what a training step really allocates on CPU.

Compared quantity: on each rank, the peak bytes of the storages created during one step's
forward/backward through megatron's schedule (r1mega/plan/measure.py's StorageTracker: every op's
new outputs while they live; views and in-place results of existing storages are not new). That is
activations + transients: saved tensors of every in-flight microbatch, logits, the output layer's
gradients, SDPA's backward gradients. Parameters,
DDP's main_grad buffers and optimizer state exist before the step; they are not in it (their counts
are checked in tests/test_plan.py). Tiny llama, qwen2 (no q/k norm, qkv bias) and qwen3 (q/k norm)
(and tiny qwen3_moe without TP/EP, recompute none / selective)
at TP 1/2 (gloo), SP, PP 1/2 (even and uneven), VPP, recompute none / selective (core_attn) / full, 1 and several
microbatches, short and long sequences; fp32. Within 10% everywhere (one process: to a few bytes)."""

import pytest

from r1mega.config import load_config
from r1mega.parallel.config import ParallelConfig
from r1mega.parallel.launch import run_distributed
from r1mega.plan.local_activations import StepShape, local_rank_peak_bytes
from tests import _plan_accuracy_fns

TOL = 0.10
SEL = dict(recompute_granularity="selective")
FULL = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
FULL_OVERRIDES = [f"parallel.{k}={v}" for k, v in FULL.items()]


def _case(model, layout, b, s, m):
    return dict(model=model, layout=layout, micro_batch_size=b, seq_length=s, num_microbatches=m)


ONE_RANK = [
    _case(model, layout, b, s, m)
    for model in ("tiny_llama", "tiny_qwen2", "tiny_qwen3")
    for layout in ({}, SEL, FULL)
    for b, s, m in ((2, 64, 1), (1, 256, 3))
] + [_case("tiny_qwen3_moe", layout, b, s, m) for layout in ({}, SEL) for b, s, m in ((2, 64, 1), (1, 256, 3))]
TWO_RANKS = [
    _case("tiny_llama", dict(tp=2), 2, 64, 1),
    _case("tiny_qwen3", dict(tp=2, **SEL), 1, 256, 2),
    _case("tiny_qwen2", dict(tp=2, sequence_parallel=True, **FULL), 2, 64, 2),
    _case("tiny_llama", dict(pp=2), 2, 64, 1),
    _case("tiny_llama", dict(pp=2), 1, 128, 4),
    _case("tiny_qwen2", dict(pp=2, **SEL), 2, 64, 3),
    _case("tiny_qwen3", dict(pp=2, **FULL), 1, 256, 3),
    _case("tiny_llama", dict(pp=2, vpp=2), 2, 64, 4),
    _case("tiny_llama", dict(pp=2, num_layers_in_first_pipeline_stage=1), 2, 64, 3),  # uneven [1, 3]
    _case("tiny_qwen3_moe", dict(pp=2, **SEL), 2, 64, 3),
]


def _check(cases, results):
    rows, worst = [], 0.0
    for i, case in enumerate(cases):
        m = load_config("examples/configs/tiny.yaml", [f"model=models/{case['model']}.yaml"]).model
        shape = StepShape(case["micro_batch_size"], case["seq_length"], case["num_microbatches"])
        for rank in results:
            got = rank[i]
            points = local_rank_peak_bytes(m, ParallelConfig(**case["layout"]), shape, got["pp_rank"])
            predicted = max(points.values())
            err = predicted / got["peak"] - 1
            worst = max(worst, abs(err))
            rows.append(f"{case['model']} {case['layout']} b={shape.micro_batch_size} s={shape.seq_length} "
                        f"M={shape.num_microbatches} pp_rank={got['pp_rank']} tp_rank={got['tp_rank']}: measured "
                        f"{got['peak']} predicted {predicted:.0f} ({err:+.1%}, {max(points, key=points.get)})")
    print("\n".join(rows))
    bad = [r for r in rows if abs(float(r.split("(")[-1].split("%")[0])) > TOL * 100]
    assert not bad, "\n".join(bad)
    return worst


def test_local_activation_model_matches_one_process():
    (results,) = run_distributed(_plan_accuracy_fns.measure, 1, ONE_RANK, timeout=300)
    _check(ONE_RANK, [results])


@pytest.mark.dist
def test_local_activation_model_matches_tp_and_pp_ranks():
    results = run_distributed(_plan_accuracy_fns.measure, 2, TWO_RANKS, timeout=300)
    _check(TWO_RANKS, results)


def test_the_planner_uses_the_local_model_for_the_local_spec():
    """plan_for_config(spec="local") puts the local model's peak (largest over pipeline ranks) in
    the table; what it does not model (here MoE with full recompute) keeps the "te" lines."""
    from r1mega.plan.report import plan_for_config

    cfg = load_config("examples/configs/tiny.yaml", ["parallel.pp=2"])
    plan = plan_for_config(cfg, world_size=2, gpu="h100-80gb", stage="sft", spec="local")
    (term,) = [t for t in plan.train if t.name.startswith("activations")]
    seq = cfg.model.max_position_embeddings
    shape = StepShape(cfg.sft.micro_batch_size, seq, cfg.sft.global_batch_size // cfg.sft.micro_batch_size, act_bytes=4)
    want = max(max(local_rank_peak_bytes(cfg.model, cfg.parallel, shape, r).values()) for r in range(2))
    assert term.name == "activations + transients (local spec)" and abs(term.gib * 1024**3 - want) < 1
    te = plan_for_config(cfg, world_size=2, gpu="h100-80gb", stage="sft")
    assert [t.name for t in te.train if t.name.startswith("activations")] == ["activations"]
    moe = load_config("examples/configs/tiny.yaml", ["model=models/tiny_qwen3_moe.yaml", *FULL_OVERRIDES])
    moe_plan = plan_for_config(moe, world_size=1, gpu="h100-80gb", stage="sft", spec="local")
    assert "activations" in [t.name for t in moe_plan.train]
