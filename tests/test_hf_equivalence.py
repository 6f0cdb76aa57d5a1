"""Each family's megatron model reproduces transformers' logits from the same weights (float32).

Tiny random models (every weight random, norms and biases included), HF's eager attention; the
conversion engineer's bar for real checkpoints is 1e-4, these match to ~1e-6. Negative controls:
flipping one family option on the megatron side only must break the match, so the comparison is
sensitive to the behaviours checked (llama3 RoPE scaling, YaRN, norm_topk_prob, routed scaling).
"""

import pytest

from r1mega.parallel.launch import run_distributed
from tests import _hf_fns

FAMILIES = ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_qwen3_moe", "tiny_deepseek_v3"]
CONTROLS = {
    "tiny_llama:no-llama3-scaling": ["model.rope_scaling=null"],
    "tiny_deepseek_v3:no-yarn": ["model.rope_scaling=null"],
    "tiny_qwen3_moe:no-renormalisation": ["model.moe_norm_topk_prob=false"],
    "tiny_deepseek_v3:no-routed-scaling": ["model.moe_router_topk_scaling_factor=1.0"],
}


@pytest.mark.dist
def test_logits_match_transformers():
    (out,) = run_distributed(
        _hf_fns.compare_with_transformers, 1, FAMILIES + list(CONTROLS), megatron_overrides=CONTROLS, timeout=600
    )
    for name in FAMILIES:
        r = out[name]
        assert r["missing"] == [] and r["unused"] == [], f"{name}: name map incomplete {r}"
        assert r["rel_err"] <= 1e-5, f"{name}: logits differ from transformers by {r['rel_err']:.2e} (relative)"
    for name in CONTROLS:
        assert out[name]["rel_err"] > 1e-4, f"{name}: the comparison did not notice the wrong option"
