"""The local (CPU) spec's core attention: SDPA for every family, against a float64 masked softmax."""

import dataclasses
import math

import pytest
import torch
from megatron.core.transformer.enums import AttnMaskType

from r1mega.models.cpu_spec import SDPACoreAttention
from tests.test_models import tcfg


@pytest.mark.parametrize("mla", [False, True], ids=["gqa", "mla"])
def test_every_local_spec_layer_attends_with_sdpa(mla):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

    from r1mega.models.spec import _local_spec_for_cpu

    layer = get_gpt_layer_local_spec(multi_latent_attention=mla, normalization="RMSNorm")
    block = _local_spec_for_cpu(TransformerBlockSubmodules(layer_specs=[layer, layer]))
    for spec in block.layer_specs:
        assert spec.submodules.self_attention.submodules.core_attention is SDPACoreAttention


def _reference(q, k, v, masked, scale):
    """float64 softmax attention; q [s, b, n, d], k/v [s, b, g, d], masked [b, 1, s, s] True = masked."""
    n, g = q.shape[2], k.shape[2]
    q, k, v = (t.permute(1, 2, 0, 3).double() for t in (q, k, v))  # [b, heads, s, d]
    k, v = k.repeat_interleave(n // g, dim=1), v.repeat_interleave(n // g, dim=1)
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(masked, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v  # [b, n, s, d]
    return out.permute(2, 0, 1, 3).reshape(q.shape[2], q.shape[0], -1)


@pytest.mark.parametrize("explicit_mask", [False, True])
def test_sdpa_core_attention_matches_float64_softmax_attention(explicit_mask):
    config = tcfg("tiny_qwen2")  # 4 heads, 2 query groups: GQA
    attn = SDPACoreAttention(config, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    s, b, n, g, d = 23, 3, config.num_attention_heads, config.num_query_groups, config.kv_channels
    gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    q, k, v = (torch.randn(s, b, h, d, generator=gen, requires_grad=True) for h in (n, g, g))
    causal = ~torch.tril(torch.ones(s, s, dtype=torch.bool))
    if explicit_mask:  # a block mask like shared-prompt rows: some keys hidden beyond causality
        masked = causal.expand(b, 1, s, s).clone()
        masked[:, :, 12:, 5:12] = True
    else:
        masked = causal.expand(b, 1, s, s)
    out = attn(q, k, v, masked if explicit_mask else None)
    ref = _reference(q, k, v, masked, 1.0 / math.sqrt(d))
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w.double()).sum(), (q, k, v))
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-5)


def test_sdpa_core_attention_refuses_what_it_cannot_compute():
    config = tcfg("tiny_qwen2")
    with pytest.raises(ValueError, match="window_size"):
        SDPACoreAttention(dataclasses.replace(config, window_size=(8, 0)), 1, AttnMaskType.causal, "self")
    with pytest.raises(ValueError, match="softmax_type"):
        SDPACoreAttention(dataclasses.replace(config, softmax_type="learnable"), 1, AttnMaskType.causal, "self")
