"""ModelConfig <-> HF config.json for every family, the field-by-field mismatch report, and the HF
options the maps refuse. No megatron, no weights: fast."""

from __future__ import annotations

import json

import pytest

from r1mega.config import load_config
from r1mega.convert.hf_config import (
    check_config_matches,
    config_mismatches,
    hf_config_from_model_config,
    load_hf_config,
    model_config_from_hf,
)
from tests.convert_helpers import FAMILIES, tiny_hf_config


def _yaml_model(family: str):
    return load_config("examples/configs/tiny.yaml", [f"model=models/tiny_{family}.yaml"]).model


@pytest.mark.parametrize("family", FAMILIES)
def test_model_config_survives_hf_and_back(family):
    cfg = _yaml_model(family)
    hf = hf_config_from_model_config(cfg)
    assert hf.model_type == family
    back = model_config_from_hf(hf)
    assert config_mismatches(cfg, hf) == []
    assert config_mismatches(back, hf) == []
    # through config.json text too (what the tools read and write)
    again = model_config_from_hf(json.loads(hf.to_json_string()))
    assert config_mismatches(again, hf) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_config_maps_to_the_same_architecture(family):
    hf = tiny_hf_config(family)
    cfg = model_config_from_hf(hf)
    assert cfg.family == family
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size) == (2, 64, 4, 300)
    rebuilt = hf_config_from_model_config(cfg, base=hf)
    assert config_mismatches(cfg, rebuilt) == []
    # the base keeps what ModelConfig does not describe
    assert (rebuilt.bos_token_id, rebuilt.eos_token_id) == (1, 2)


def test_family_specific_fields():
    llama = model_config_from_hf(tiny_hf_config("llama"))
    assert llama.rope_scaling_type == "llama3" and llama.rope_theta == 500000.0 and llama.num_query_groups == 2
    assert not llama.tie_word_embeddings
    qwen2 = model_config_from_hf(tiny_hf_config("qwen2"))
    assert qwen2.add_qkv_bias and qwen2.tie_word_embeddings
    qwen3 = model_config_from_hf(tiny_hf_config("qwen3"))
    assert qwen3.qk_layernorm and qwen3.head_dim == 32 != qwen3.hidden_size // qwen3.num_attention_heads
    moe = model_config_from_hf(tiny_hf_config("qwen3_moe"))
    assert (moe.num_experts, moe.moe_ffn_hidden_size, moe.moe_router_topk, moe.moe_norm_topk_prob) == (8, 32, 2, True)
    ds = model_config_from_hf(tiny_hf_config("deepseek_v3"))
    assert ds.multi_latent_attention and ds.q_lora_rank == 32 and ds.kv_lora_rank == 16
    assert (ds.qk_head_dim, ds.qk_pos_emb_head_dim, ds.v_head_dim) == (16, 8, 16)
    assert ds.moe_shared_expert_intermediate_size == 32 and ds.moe_first_k_dense == 1
    assert ds.moe_router_score_function == "sigmoid" and ds.moe_router_enable_expert_bias
    assert (ds.moe_router_num_groups, ds.moe_router_group_topk, ds.moe_router_topk_scaling_factor) == (4, 2, 2.5)
    assert ds.rope_scaling_type == "yarn" and ds.rope_scaling["mscale_all_dim"] == 1.0


def test_legacy_config_json_keys_are_read(tmp_path):
    """config.json files older than transformers 5 keep rope_theta / rope_scaling at top level."""
    raw = {
        "model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu",
        "max_position_embeddings": 16384, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    cfg = model_config_from_hf(tmp_path)
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling_type == "llama3" and cfg.rope_scaling["factor"] == 8.0


def test_mismatch_names_every_differing_field():
    cfg = model_config_from_hf(tiny_hf_config("qwen3_moe"))
    other = tiny_hf_config("qwen3_moe", num_hidden_layers=4, moe_intermediate_size=48, rms_norm_eps=1e-5)
    lines = config_mismatches(cfg, other)
    assert [line.split(":")[0] for line in lines] == ["num_layers", "norm_epsilon", "moe_ffn_hidden_size"]
    assert "model config has 2, config.json gives 4" in lines[0]
    with pytest.raises(ValueError, match=r"3 field\(s\) differ") as e:
        check_config_matches(cfg, other, where="ckpt/config.json")
    assert "ckpt/config.json" in str(e.value) and "moe_ffn_hidden_size" in str(e.value)


def test_training_only_fields_are_not_compared():
    cfg = model_config_from_hf(tiny_hf_config("llama"))
    cfg.make_vocab_size_divisible_by = 64
    cfg.hidden_dropout = 0.1
    cfg.max_position_embeddings = 1024
    assert config_mismatches(cfg, tiny_hf_config("llama")) == []


def test_equivalent_spellings_are_equal():
    """num_query_groups None means MHA; HF spells it with as many KV heads as heads."""
    hf = tiny_hf_config("qwen2", num_key_value_heads=4)
    cfg = model_config_from_hf(hf)
    assert cfg.num_query_groups is None
    cfg.num_query_groups = 4
    assert config_mismatches(cfg, hf) == []


@pytest.mark.parametrize(
    "family, field, value, message",
    [
        ("llama", "attention_bias", True, "attention_bias"),
        ("llama", "hidden_act", "gelu", "hidden_act"),
        ("qwen2", "use_sliding_window", True, "use_sliding_window"),
        ("qwen3_moe", "mlp_only_layers", [1], "mlp_only_layers"),
        ("deepseek_v3", "rope_interleave", False, "rope_interleave"),
        ("deepseek_v3", "topk_method", "greedy", "topk_method"),
        ("deepseek_v3", "norm_topk_prob", False, "moe_norm_topk_prob"),
    ],
)
def test_unsupported_hf_options_are_refused_by_name(family, field, value, message):
    hf = tiny_hf_config(family)
    setattr(hf, field, value)
    with pytest.raises(ValueError, match=message):
        model_config_from_hf(hf)


def test_unsupported_model_type_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        load_hf_config(tmp_path)
