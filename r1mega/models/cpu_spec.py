"""Layer-spec modules for running the local (non-transformer-engine) spec on CPU.

- `SequenceParallelNorm`: megatron's `WrappedTorchNorm` asserts when sequence parallelism is on.
  This builds the same torch RMSNorm/LayerNorm and tags its parameters `sequence_parallel=True`
  (what TE's norms do), so `finalize_model_grads` all-reduces their partial grads over TP.
- `HeadNorm`: the per-head q/k norm of Qwen3; it sees the full sequence (after the QKV projection),
  megatron already sums its grads over TP by name, so it carries no tag.
- `LatentNorm`: MLA's latent q/kv norms. Without SP every TP rank holds the complete gradient, but
  finalize_model_grads SUM-reduces `q_layernorm` grads by name: tag them
  `average_gradients_across_tp_domain` (AVG of equal grads is a no-op). With SP they act on
  sequence shards: tag `sequence_parallel`.
- `SDPACoreAttention`: the core attention of every local-spec layer, on
  `F.scaled_dot_product_attention`. megatron's local `DotProductAttention` has one head dim for q/k
  and v (MLA needs q/k of qk_head_dim + rope dim and v of v_head_dim), and it materialises the
  [b, n, s, s] scores, fills the mask, softmaxes and copies them in separate passes: at the tiny
  default's RL microbatch (8 rows of 201 tokens, 4 heads of 32, GQA 2) its forward + backward took
  13 ms a layer against 7 ms for SDPA's fused CPU kernel (2-core CPU, docs/benchmarks.md).

r1mega/models/spec.py puts these into the local spec; r1mega/parallel/cpu.py holds everything that
patches megatron/torch. Written for megatron-core 0.16.1 (see docs/cpu_support.md).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


def _torch_norm(config: TransformerConfig, hidden_size: int, eps: float) -> torch.nn.Module:
    if config.normalization == "RMSNorm":
        return torch.nn.RMSNorm(hidden_size, eps=eps)
    if config.normalization == "LayerNorm":
        return torch.nn.LayerNorm(hidden_size, eps=eps)
    raise ValueError(f"normalization {config.normalization!r} is not supported by the CPU spec")


class SequenceParallelNorm:
    """Factory with WrappedTorchNorm's signature: a torch norm whose params know about SP."""

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **unused: Any):
        norm = _torch_norm(config, hidden_size, eps)
        for p in norm.parameters():
            p.sequence_parallel = bool(config.sequence_parallel)
        return norm


class HeadNorm:
    """Per-head q/k norm (Qwen3): full-sequence input, TP-summed by name in finalize_model_grads."""

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **unused: Any):
        return _torch_norm(config, hidden_size, eps)


class LatentNorm:
    """MLA latent q/kv norm: complete grads without SP (average tag), sequence shards with SP."""

    def __new__(cls, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **unused: Any):
        norm = _torch_norm(config, hidden_size, eps)
        for p in norm.parameters():
            if config.sequence_parallel:
                p.sequence_parallel = True
            else:
                p.average_gradients_across_tp_domain = True
        return norm


class SDPACoreAttention(MegatronModule):
    """Core attention on torch's SDPA: GQA, and separate q/k and v head dims (MLA).

    Takes megatron's [s, b, heads, dim] q/k/v (k/v with heads or query groups) and returns
    [s, b, heads * v_dim]. megatron's mask convention is True = masked; no mask with a causal
    layer means causal. Sliding windows and non-vanilla softmax variants are refused.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        k_channels: Optional[int] = None,
        v_channels: Optional[int] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Any = None,
    ) -> None:
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("context parallelism needs transformer-engine attention (TE spec)")
        if getattr(config, "window_size", None) is not None:
            raise ValueError("window_size: sliding-window attention needs transformer-engine attention (TE spec)")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise ValueError(f"softmax_type: {config.softmax_type!r} needs transformer-engine attention (TE spec)")
        self.attn_mask_type = attn_mask_type
        k_channels = k_channels or config.kv_channels
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(k_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Any = None,
        **unused: Any,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPACoreAttention supports neither packed sequences nor attention bias")
        sq, b, heads, _ = query.shape
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        gqa = k.size(1) != heads  # each KV head serves heads // groups query heads
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        is_causal = attention_mask is None and mask_type == AttnMaskType.causal and sq > 1
        mask = None if attention_mask is None else ~attention_mask  # SDPA: True = attend
        p = self.dropout_p if self.training else 0.0

        def attend() -> torch.Tensor:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal, scale=self.softmax_scale,
                enable_gqa=gqa,
            )

        if p > 0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():  # TP ranks: different heads, masks
                out = attend()
        else:
            out = attend()
        # [b, n, s, dv] -> [s, b, n * dv]
        return out.permute(2, 0, 1, 3).reshape(sq, b, -1)
