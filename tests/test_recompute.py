"""Activation recompute (full uniform/block, selective per module) gives the gradients of no
recompute (1e-6 relative; the single-process reference has no recompute) on gloo layouts, and it
really re-runs the modules (forward calls counted); the megatron-core 0.16.1 fp8 flag bug that
breaks selective `layernorm` recompute without transformer-engine is fixed."""

import pytest

from r1mega.configlib import ConfigError
from r1mega.parallel.config import ParallelConfig
from r1mega.parallel.launch import run_distributed
from tests import parallel_equivalence as pe

RECOMPUTE_TOL = 1e-6


def test_checkpoint_without_output_fp8_flag_bug_and_fix():
    from megatron.core.tensor_parallel import random as mrandom

    from r1mega.parallel.megatron_fixes import fix_checkpoint_without_output_fp8

    assert fix_checkpoint_without_output_fp8()
    cls = mrandom.CheckpointWithoutOutput
    buggy = object.__new__(cls)
    cls.__init__.__wrapped__(buggy, fp8=False)  # megatron's own __init__
    assert buggy.fp8 is True  # the bug: `fp8 is not None` -> FP8 branch -> NameError without TE
    assert cls(fp8=False).fp8 is False and cls().fp8 is False
    assert fix_checkpoint_without_output_fp8()  # idempotent


@pytest.mark.parametrize(
    "fields, pattern",
    [
        (dict(recompute_granularity="full"), r"recompute_method: full recompute needs recompute_method"),
        (dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=0), r"recompute_num_layers: must be >= 1"),
        (dict(recompute_granularity="selective", recompute_num_layers=1), r"selective recompute takes recompute_modules only"),
        (dict(recompute_granularity="selective", recompute_modules=["attn"]), r"recompute_modules: unknown module 'attn'"),
        (dict(recompute_modules=["mlp"]), r"recompute_granularity: set it"),
        (dict(overlap_param_gather=True, use_distributed_optimizer=True), r"overlap_param_gather: needs"),
    ],
)
def test_recompute_options_are_validated(fields, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ParallelConfig(**fields).validate()


def test_recompute_modules_must_fit_the_model():
    from r1mega.config import load_config

    with pytest.raises(ConfigError, match=r"parallel\.recompute_modules: mla_up_proj needs an MLA model"):
        load_config("examples/configs/tiny.yaml", ["parallel.recompute_granularity=selective",
                                                   "parallel.recompute_modules=[mla_up_proj]"])
    cfg = load_config("examples/configs/tiny.yaml", ["parallel.recompute_granularity=full",
                                                     "parallel.recompute_method=block", "parallel.recompute_num_layers=2"])
    assert cfg.parallel.transformer_config_kwargs()["recompute_method"] == "block"


FULL_UNIFORM = dict(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
FULL_BLOCK = dict(recompute_granularity="full", recompute_method="block", recompute_num_layers=1)


@pytest.mark.dist
def test_recompute_gives_the_gradients_of_no_recompute():
    five = ["model.num_layers=5"]
    uneven = dict(pp=2, num_layers_in_first_pipeline_stage=2)
    cases = [
        dict(name="llama none", model="tiny_llama", model_overrides=five, layout=uneven),
        dict(name="llama full uniform", model="tiny_llama", model_overrides=five, layout={**uneven, **FULL_UNIFORM}),
        dict(name="llama full block", model="tiny_llama", model_overrides=five, layout={**uneven, **FULL_BLOCK}),
        dict(name="llama selective", model="tiny_llama", model_overrides=five,
             layout={**uneven, "recompute_granularity": "selective", "recompute_modules": ["core_attn", "mlp", "layernorm"]}),
        dict(name="llama vpp2 full uniform", model="tiny_llama",
             layout=dict(pp=2, vpp=2, **FULL_UNIFORM), microbatches_per_dp_rank=4),
        # MoE + MLA at EP=2 (DP=2 for the dense weights)
        dict(name="deepseek none", model="tiny_deepseek_v3", layout=dict(ep=2)),
        dict(name="deepseek full uniform", model="tiny_deepseek_v3", layout=dict(ep=2, **FULL_UNIFORM)),
        dict(name="deepseek selective", model="tiny_deepseek_v3",
             layout=dict(ep=2, recompute_granularity="selective", recompute_modules=["moe", "mla_up_proj", "layernorm"])),
    ]
    results = pe.by_case(run_distributed(pe.run_cases, 2, cases, timeout=900))
    for name, per_rank in results.items():
        pe.assert_equivalent(per_rank, grad_tol=RECOMPUTE_TOL, loss_tol=RECOMPUTE_TOL)

    def calls(name, cls):
        return sum(r["forward_calls"].get(cls, 0) for r in results[name])

    # recompute really re-runs: every layer (full), the chosen submodules (selective)
    assert calls("llama full uniform", "TransformerLayer") == 2 * calls("llama none", "TransformerLayer")
    assert calls("llama full block", "TransformerLayer") > calls("llama none", "TransformerLayer")
    assert calls("llama full block", "TransformerLayer") < calls("llama full uniform", "TransformerLayer")
    assert calls("llama selective", "MLP") == 2 * calls("llama none", "MLP")
    assert calls("llama selective", "TransformerLayer") == calls("llama none", "TransformerLayer")
    assert calls("deepseek full uniform", "TransformerLayer") == 2 * calls("deepseek none", "TransformerLayer")
    # "moe" checkpoints the inside of MoELayer.forward: router, dispatch, experts run again
    assert calls("deepseek selective", "TopKRouter") == 2 * calls("deepseek none", "TopKRouter")
    assert calls("deepseek selective", "MoELayer") == calls("deepseek none", "MoELayer")
