"""The layouts (fused QKV, SwiGLU fc1, padded vocabulary) against independent references, at several
TP sizes, and the name rules for both megatron spellings (local spec and transformer-engine)."""

from __future__ import annotations

import pytest
import torch

from r1mega.convert.hf_checkpoint import TensorDictSource
from r1mega.convert.hf_config import model_config_from_hf
from r1mega.convert.layouts import FusedQKV, GateUp, Same, Shard, VocabRows
from r1mega.convert.rules import match_name, rule
from r1mega.convert.live import family_rules
from tests.convert_helpers import tiny_hf_config


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _shards(layout, source, full_shape, dim, tp):
    return [layout.read_shard(source, Shard(tuple(full_shape), dim, r, tp)) for r in range(tp)]


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_qkv_is_grouped_per_query_group(tp, bias):
    heads, groups, hd, hidden = 8, 4, 3, 5
    rest = () if bias else (hidden,)
    q, k, v = _rand(heads * hd, *rest, seed=1), _rand(groups * hd, *rest, seed=2), _rand(groups * hd, *rest, seed=3)
    layout = FusedQKV("q", "k", "v", heads=heads, groups=groups, head_dim=hd)
    src = TensorDictSource({"q": q, "k": k, "v": v})
    # reference: megatron's fused rows are [q heads of group g; k_g; v_g] for g = 0, 1, ...
    per = heads // groups
    blocks = []
    for g in range(groups):
        blocks += [q[g * per * hd : (g + 1) * per * hd], k[g * hd : (g + 1) * hd], v[g * hd : (g + 1) * hd]]
    reference = torch.cat(blocks)
    shards = _shards(layout, src, reference.shape, 0, tp)
    # each TP rank holds whole query groups, i.e. a contiguous block of the fused tensor
    assert torch.equal(torch.cat(shards), reference)
    out = dict(layout.to_hf(torch.cat(shards), tp))
    assert all(torch.equal(out[n], t) for n, t in (("q", q), ("k", k), ("v", v)))


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_gate_up_shards_hold_their_part_of_each(tp):
    inter, hidden = 8, 3
    gate, up = _rand(inter, hidden, seed=4), _rand(inter, hidden, seed=5)
    layout = GateUp("gate", "up")
    src = TensorDictSource({"gate": gate, "up": up})
    shards = _shards(layout, src, (2 * inter, hidden), 0, tp)
    step = inter // tp
    for r, shard in enumerate(shards):  # reference: rank r holds [gate_r; up_r]
        assert torch.equal(shard, torch.cat([gate[r * step : (r + 1) * step], up[r * step : (r + 1) * step]]))
    out = dict(layout.to_hf(torch.cat(shards), tp))
    assert torch.equal(out["gate"], gate) and torch.equal(out["up"], up)


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_vocab_rows_are_padded_with_zeros_and_stripped(tp):
    vocab, padded, hidden = 10, 16, 3
    emb = _rand(vocab, hidden, seed=6)
    layout = VocabRows("emb", vocab)
    shards = _shards(layout, TensorDictSource({"emb": emb}), (padded, hidden), 0, tp)
    full = torch.cat(shards)
    assert torch.equal(full[:vocab], emb) and torch.equal(full[vocab:], torch.zeros(padded - vocab, hidden))
    (name, back), = layout.to_hf(full, tp)
    assert name == "emb" and torch.equal(back, emb)
    assert back.untyped_storage().data_ptr() != full.untyped_storage().data_ptr()  # padding not kept alive


@pytest.mark.parametrize("dim", [0, 1])
def test_same_layout_reads_only_this_ranks_block(dim):
    w = _rand(4, 6, seed=7)
    reads = []

    class Recording(TensorDictSource):
        def read(self, name, expected_shape, index):
            reads.append(index)
            return super().read(name, expected_shape, index)

    src = Recording({"w": w})
    shards = _shards(Same("w"), src, (4, 6), dim, 2)
    assert torch.equal(torch.cat(shards, dim=dim), w)
    assert all(ix[dim] in (slice(0, w.shape[dim] // 2), slice(w.shape[dim] // 2, w.shape[dim])) for ix in reads)


def test_wrong_hf_shape_is_named():
    layout = FusedQKV("q", "k", "v", heads=4, groups=2, head_dim=2)
    src = TensorDictSource({"q": _rand(8, 3), "k": _rand(4, 3), "v": _rand(6, 3)})
    with pytest.raises(ValueError, match=r"'v' has shape \(6, 3\), the model config implies \(4, 3\)"):
        layout.read_shard(src, Shard((16, 3), 0, 0, 1))


# ------------------------------------------------------------------------------------------------
# rules: both megatron spellings of every tensor
# ------------------------------------------------------------------------------------------------

L = "decoder.layers.1."
H = "model.layers.1."
_SPELLINGS = {
    # (local spec, transformer-engine spec) -> HF names
    "llama": [
        ((L + "input_layernorm.weight", L + "self_attention.linear_qkv.layer_norm_weight"), [H + "input_layernorm.weight"]),
        ((L + "pre_mlp_layernorm.weight", L + "mlp.linear_fc1.layer_norm_weight"), [H + "post_attention_layernorm.weight"]),
        ((L + "self_attention.linear_qkv.weight",) * 2,
         [H + "self_attn.q_proj.weight", H + "self_attn.k_proj.weight", H + "self_attn.v_proj.weight"]),
    ],
    "qwen3_moe": [
        ((L + "mlp.experts.local_experts.3.linear_fc1.weight", L + "mlp.experts.linear_fc1.weight3"),
         [H + "mlp.experts.3.gate_proj.weight", H + "mlp.experts.3.up_proj.weight"]),
        ((L + "mlp.experts.local_experts.7.linear_fc2.weight", L + "mlp.experts.linear_fc2.weight7"),
         [H + "mlp.experts.7.down_proj.weight"]),
        ((L + "self_attention.q_layernorm.weight",) * 2, [H + "self_attn.q_norm.weight"]),
        ((L + "pre_mlp_layernorm.weight",) * 2, [H + "post_attention_layernorm.weight"]),
    ],
    "deepseek_v3": [
        ((L + "self_attention.q_layernorm.weight", L + "self_attention.linear_q_up_proj.layer_norm_weight"),
         [H + "self_attn.q_a_layernorm.weight"]),
        ((L + "self_attention.kv_layernorm.weight", L + "self_attention.linear_kv_up_proj.layer_norm_weight"),
         [H + "self_attn.kv_a_layernorm.weight"]),
        ((L + "mlp.router.expert_bias",) * 2, [H + "mlp.gate.e_score_correction_bias"]),
        ((L + "mlp.shared_experts.linear_fc1.weight",) * 2,
         [H + "mlp.shared_experts.gate_proj.weight", H + "mlp.shared_experts.up_proj.weight"]),
        (("decoder.layers.0.mlp.linear_fc1.layer_norm_weight",) * 2, ["model.layers.0.post_attention_layernorm.weight"]),
    ],
}


@pytest.mark.parametrize("family", sorted(_SPELLINGS))
def test_local_and_te_spellings_map_to_the_same_hf_names(family):
    rules = family_rules(model_config_from_hf(tiny_hf_config(family)))
    for spellings, hf in _SPELLINGS[family]:
        for name in spellings:
            m = match_name(rules, name)
            assert m is not None, name
            assert list(m.rule.hf_names(m.layer, m.expert)) == hf, name


def test_tied_output_layer_is_loaded_but_not_exported():
    tied = family_rules(model_config_from_hf(tiny_hf_config("qwen2")))
    m = match_name(tied, "output_layer.weight")
    assert m.rule.hf_names(None, None) == ("model.embed_tokens.weight",) and not m.rule.export
    untied = family_rules(model_config_from_hf(tiny_hf_config("llama")))
    m = match_name(untied, "output_layer.weight")
    assert m.rule.hf_names(None, None) == ("lm_head.weight",) and m.rule.export


def test_unknown_and_ambiguous_names():
    rules = family_rules(model_config_from_hf(tiny_hf_config("llama")))
    assert match_name(rules, "decoder.layers.0.mlp.experts.linear_fc1.weight0") is None  # dense family
    clash = [rule("a.{layer}.w", "x.{layer}"), rule(["a.{layer}.w", "b"], "y.{layer}")]
    with pytest.raises(ValueError, match="matches several conversion rules"):
        match_name(clash, "a.3.w")
