"""Config loading: strict typing, overrides, includes, and each class of impossible layout."""

import textwrap

import pytest

from r1mega.config import Config, load_config, save_config
from r1mega.configlib import ConfigError

TINY = "examples/configs/tiny.yaml"


def test_tiny_loads_with_include_and_overrides():
    cfg = load_config(TINY, ["parallel.tp=2", "model.num_layers=6", "run.seed=7"])
    assert isinstance(cfg, Config)
    assert cfg.parallel.tp == 2
    assert cfg.model.num_layers == 6  # override lands inside the included model file
    assert cfg.model.family == "qwen2" and cfg.model.add_qkv_bias
    assert cfg.run.seed == 7


def test_float_written_without_dot_is_accepted():
    # YAML 1.1 reads 1e-5 as a string; numeric fields must still accept it
    cfg = load_config(TINY, ["model.norm_epsilon=1e-5"])
    assert cfg.model.norm_epsilon == pytest.approx(1e-5)


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError, match=r"parallel\.tpp: unknown key \(did you mean parallel\.tp\?\)"):
        load_config(TINY, ["parallel.tpp=2"])


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"parallel\.tp: expected an integer, got str"):
        load_config(TINY, ["parallel.tp=two"])
    with pytest.raises(ConfigError, match=r"parallel\.sequence_parallel: expected true/false"):
        load_config(TINY, ["parallel.sequence_parallel=1"])


def test_bad_literal_is_named():
    with pytest.raises(ConfigError, match=r"model\.family: 'gpt2' is not one of"):
        load_config(TINY, ["model.family=gpt2"])


def test_missing_required_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  family: llama\n  num_layers: 2\n")
    with pytest.raises(ConfigError, match=r"model\.hidden_size: required key is missing"):
        load_config(p)


def test_world_size_not_divisible_by_tp_pp_cp():
    cfg = load_config(TINY, ["parallel.tp=2", "parallel.pp=2"])
    cfg.check_layout(8)
    with pytest.raises(ConfigError, match=r"world size 6 is not divisible by tp\*pp\*cp = 2\*2\*1 = 4"):
        cfg.check_layout(6)


def test_heads_not_divisible_by_tp():
    with pytest.raises(ConfigError, match=r"parallel\.tp: model\.num_attention_heads=4 is not divisible by tp=3"):
        load_config(TINY, ["parallel.tp=3"])


def test_query_groups_not_divisible_by_tp():
    with pytest.raises(ConfigError, match=r"model\.num_query_groups=2 is not divisible by tp=4"):
        load_config(TINY, ["parallel.tp=4"])


def test_experts_not_divisible_by_ep(tmp_path):
    p = tmp_path / "moe.yaml"
    p.write_text(
        textwrap.dedent(
            """
            model:
              family: qwen3_moe
              num_layers: 2
              hidden_size: 64
              ffn_hidden_size: 128
              num_attention_heads: 4
              vocab_size: 256
              qk_layernorm: true
              num_experts: 6
              moe_ffn_hidden_size: 32
            parallel:
              ep: 4
            """
        )
    )
    with pytest.raises(ConfigError, match=r"model\.num_experts=6 is not divisible by ep=4"):
        load_config(p)


def test_ep_on_dense_model_rejected():
    with pytest.raises(ConfigError, match=r"parallel\.ep: ep=2 needs an MoE model"):
        load_config(TINY, ["parallel.ep=2"])


def test_layers_not_divisible_by_pipeline_stages():
    with pytest.raises(ConfigError, match=r"model\.num_layers=4 is not divisible by pp\*vpp = 2\*3 = 6"):
        load_config(TINY, ["parallel.pp=2", "parallel.vpp=3"])


def test_sequence_parallel_needs_tp():
    with pytest.raises(ConfigError, match=r"parallel\.sequence_parallel: needs tp > 1"):
        load_config(TINY, ["parallel.sequence_parallel=true"])


def test_extends_and_cycle(tmp_path):
    base = tmp_path / "base.yaml"
    child = tmp_path / "child.yaml"
    base.write_text("extends: child.yaml\n")
    child.write_text("extends: base.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(child)


def test_missing_include_file_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: models/does_not_exist.yaml\n")
    with pytest.raises(ConfigError, match=r"model: include file 'models/does_not_exist.yaml' not found"):
        load_config(p)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(TINY, ["parallel.tp=2"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
