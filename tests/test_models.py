"""Model configs and the GPTModel builder: every shipped config validates, each tiny model builds and
trains on CPU, the family -> TransformerConfig mapping sets the HF-reproducing options, and the real
configs have the published parameter counts."""

from pathlib import Path

import pytest

from r1mega.config import load_config
from r1mega.configlib import ConfigError
from r1mega.models.param_count import count_parameters
from r1mega.parallel.config import ParallelConfig
from r1mega.parallel.launch import run_distributed
from tests import _model_fns

MODELS_DIR = Path("examples/configs/models")
TINY = ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_qwen3_moe", "tiny_deepseek_v3"]


def model_cfg(name: str, *overrides: str):
    return load_config("examples/configs/tiny.yaml", [f"model=models/{name}.yaml", *overrides]).model


@pytest.mark.parametrize("path", sorted(MODELS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_model_config_validates(path):
    from r1mega.models.config import FAMILIES

    assert model_cfg(path.stem).family in FAMILIES


def test_every_family_has_a_tiny_config():
    families = {model_cfg(name).family for name in TINY}
    assert families == {"llama", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3"}


# Published totals (model cards / DeepSeek-V3's README); 1% covers their rounding (Qwen2.5-32B's card
# says 32.5B for a checkpoint of 32.76B parameters).
PUBLISHED = [
    ("qwen2.5-0.5b", dict(), 0.49e9),
    ("qwen2.5-7b", dict(), 7.61e9),
    ("qwen2.5-32b", dict(), 32.5e9),
    ("qwen3-235b-a22b", dict(), 235e9),
    ("qwen3-235b-a22b", dict(active=True), 22e9),
    ("deepseek-v3-671b", dict(), 671e9),
    # "36.6B activated, including 0.9B for the output head" (the input embedding is not counted)
    ("deepseek-v3-671b", dict(active=True, embedding=False), 36.6e9),
]


@pytest.mark.parametrize("name,kwargs,published", PUBLISHED, ids=[f"{n}{'-active' if k else ''}" for n, k, _ in PUBLISHED])
def test_real_configs_match_published_parameter_counts(name, kwargs, published):
    count = count_parameters(model_cfg(name), **kwargs)
    assert abs(count - published) / published < 0.01, f"{name}: {count / 1e9:.3f}B vs {published / 1e9}B"


def test_qwen25_7b_parameter_count_exact():
    # 28 layers x 233.0M + embedding and untied head 2 x 545.0M + final norm
    assert count_parameters(model_cfg("qwen2.5-7b")) == 7_615_616_512


@pytest.mark.dist
def test_tiny_models_build_and_train_on_cpu():
    (out,) = run_distributed(_model_fns.tiny_forward_backward, 1, TINY, timeout=600)
    for name in TINY:
        r = out[name]
        cfg = model_cfg(name)
        assert r["logits_shape"] == (2, 16, cfg.padded_vocab_size(1)), name
        assert r["finite"], name
        assert 4.0 < r["loss"] < 8.0, f"{name}: loss {r['loss']} (random model: about ln(vocab) = 5.5)"
        # every parameter receives gradient (expert bias is a buffer, not a parameter)
        assert r["no_grad"] == [], f"{name}: no gradient for {r['no_grad']}"
        # the built model has exactly the analytic parameter count (tiny vocabularies need no padding)
        assert cfg.padded_vocab_size(1) == cfg.vocab_size
        assert r["num_params"] == count_parameters(cfg), name


@pytest.mark.dist
def test_full_activation_recompute_reproduces_gradients_with_dropout():
    (out,) = run_distributed(_model_fns.recompute_matches, 1, "tiny_qwen2", timeout=600)
    assert out["identical"] and out["n"] > 0


# --- the family -> megatron TransformerConfig mapping (no process group needed) ---------------


def tcfg(name: str, parallel: ParallelConfig | None = None, *overrides: str):
    from r1mega.models.builder import transformer_config

    return transformer_config(model_cfg(name, *overrides), parallel or ParallelConfig(), use_te=False)


def test_dense_families_map_to_hf_behaviour():
    import torch.nn.functional as F

    for name in ("tiny_llama", "tiny_qwen2", "tiny_qwen3"):
        c = tcfg(name)
        assert c.normalization == "RMSNorm" and c.gated_linear_unit and c.activation_func is F.silu
        assert not c.add_bias_linear and not c.rotary_interleaved
    assert tcfg("tiny_qwen2").add_qkv_bias and not tcfg("tiny_llama").add_qkv_bias
    q3 = tcfg("tiny_qwen3")
    assert q3.qk_layernorm and q3.kv_channels == 32 and q3.num_query_groups == 2
    assert tcfg("tiny_llama").layernorm_epsilon == 1e-5


def test_qwen3_moe_routing_maps_norm_topk_prob():
    c = tcfg("tiny_qwen3_moe")
    assert c.num_moe_experts == 4 and c.moe_router_topk == 2 and c.moe_ffn_hidden_size == 48
    assert c.moe_router_score_function == "softmax"
    # softmax over the selected k logits == softmax, top-k, renormalise (HF norm_topk_prob=True)
    assert c.moe_router_pre_softmax is False
    assert tcfg("tiny_qwen3_moe", None, "model.moe_norm_topk_prob=false").moe_router_pre_softmax is True
    assert c.moe_shared_expert_intermediate_size is None and c.moe_layer_freq == [1, 1]
    assert c.moe_router_load_balancing_type == "none"


def test_deepseek_v3_maps_mla_yarn_and_sigmoid_router():
    from megatron.core.transformer.transformer_config import MLATransformerConfig

    c = tcfg("deepseek-v3-671b", ParallelConfig(tp=8, ep=8, sequence_parallel=True))
    assert isinstance(c, MLATransformerConfig) and c.multi_latent_attention
    assert (c.q_lora_rank, c.kv_lora_rank, c.qk_head_dim, c.qk_pos_emb_head_dim, c.v_head_dim) == (1536, 512, 128, 64, 128)
    assert c.rope_type == "yarn" and c.rotary_scaling_factor == 40 and c.original_max_position_embeddings == 4096
    assert (c.beta_fast, c.beta_slow, c.mscale, c.mscale_all_dim) == (32, 1, 1.0, 1.0)
    assert c.moe_layer_freq == [0, 0, 0] + [1] * 58  # first_k_dense_replace = 3
    assert c.moe_router_score_function == "sigmoid" and c.moe_router_enable_expert_bias
    assert c.moe_router_topk_scaling_factor == 2.5 and c.moe_router_dtype == "fp32"
    assert (c.moe_router_num_groups, c.moe_router_group_topk, c.moe_router_topk) == (8, 4, 8)
    assert c.moe_shared_expert_intermediate_size == 2048 and not c.moe_shared_expert_gate
    assert not c.add_bias_linear  # megatron's shared experts require it
    assert c.moe_router_bias_update_rate == 0.0  # the loaded e_score_correction_bias stays fixed


def test_context_parallel_needs_transformer_engine():
    with pytest.raises(ValueError, match="transformer-engine"):
        tcfg("tiny_qwen2", ParallelConfig(cp=2))


def test_context_parallel_config_with_transformer_engine():
    pytest.importorskip("transformer_engine", reason="context parallelism needs transformer-engine attention")
    from r1mega.models.builder import transformer_config

    c = transformer_config(model_cfg("tiny_qwen2"), ParallelConfig(cp=2), use_te=True)
    assert c.context_parallel_size == 2


# --- model config validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,override,match",
    [
        ("tiny_qwen2", "model.add_qkv_bias=false", "add_qkv_bias: Qwen2/2.5 always has a bias"),
        ("tiny_llama", "model.add_qkv_bias=true", "add_qkv_bias: HF Llama's attention_bias"),
        ("tiny_qwen3", "model.qk_layernorm=false", "qk_layernorm: the qwen3 family"),
        ("tiny_llama", "model.qk_layernorm=true", "qk_layernorm: the llama family has no q/k norm"),
        ("tiny_qwen2", "model.rope_scaling={type: yarn, factor: 4, original_max_position_embeddings: 64}", "yarn is supported for deepseek_v3"),
        ("tiny_llama", "model.rope_scaling={rope_type: llama3, factor: 8, high_freq_factor: 2}", "fixes it to 4"),
        ("tiny_llama", "model.rope_scaling={rope_type: dynamic, factor: 2}", "unsupported type 'dynamic'"),
        ("tiny_qwen3_moe", "model.moe_router_score_function=sigmoid", "sigmoid routing is DeepSeek-V3's"),
        ("tiny_deepseek_v3", "model.moe_norm_topk_prob=false", "megatron always renormalises sigmoid"),
        ("tiny_deepseek_v3", "model.moe_router_group_topk=4", "ratio is 2"),
        ("tiny_qwen3_moe", "model.moe_shared_expert_intermediate_size=32", "has no shared expert"),
        ("tiny_deepseek_v3", "model.multi_latent_attention=false", "requires it"),
        ("tiny_qwen3_moe", "model.moe_router_enable_expert_bias=true", "needs moe_router_score_function=sigmoid"),
    ],
)
def test_model_config_rejects_contradictions(name, override, match):
    with pytest.raises(ConfigError, match=match):
        model_cfg(name, override)


def test_layout_rejects_moe_tp_without_sp_and_etp_mismatch():
    with pytest.raises(ConfigError, match="parallel.sequence_parallel: megatron-core requires sequence parallelism"):
        load_config("examples/configs/tiny.yaml", ["model=models/tiny_qwen3_moe.yaml", "parallel.tp=2"])
    with pytest.raises(ConfigError, match="parallel.etp"):
        load_config("examples/configs/tiny.yaml", ["model=models/tiny_qwen3_moe.yaml", "parallel.tp=2", "parallel.sequence_parallel=true", "parallel.etp=1"])
    # etp < tp is fine once experts are expert-parallel
    load_config("examples/configs/tiny.yaml", ["model=models/tiny_qwen3_moe.yaml", "parallel.tp=2", "parallel.sequence_parallel=true", "parallel.etp=1", "parallel.ep=2"])
