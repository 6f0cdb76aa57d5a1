"""LeanDecoder: the decode step of a dense llama-family model without transformers' per-call machinery.

A decode step feeds one token per running sample through a few small layers. On the tiny model,
transformers' Python around them (output capture, config lookups, the 4D mask builder, the cache
object, ~30 module calls a layer) costs about as much as the arithmetic. This class runs the same
step on the same modules' weights with the same torch ops in the same order -- transformers' own
`apply_rotary_pos_emb`, RMSNorm `forward`s, activation and `sdpa_attention_forward` -- so its logits
are bit-identical to `model(...)` (tests/test_lean_decode.py), only without the overhead.

It covers decoders whose layers are: RMSNorm -> q/k/v projections (optional bias; optional
per-head q/k RMSNorm as in Qwen3) -> rotary -> SDPA over the cache -> o projection -> residual ->
RMSNorm -> gated MLP -> residual, with full attention only (no sliding window) and SDPA attention.
`LeanDecoder.supports(model)` says whether a model is one; the engine falls back to `model(...)`
otherwise. The prefill stays with transformers (one call per micro-batch).
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward

_SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
CACHE_CHUNK = 16  # positions the KV buffers grow by: one copy per 16 tokens, not one `torch.cat` per token
_ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")


class LeanDecoder:
    """One-token-per-sample decode steps over a KV cache held as plain per-layer tensors."""

    def __init__(self, model):
        why = self.unsupported_reason(model)
        if why is not None:
            raise ValueError(f"LeanDecoder: {why}")
        self.model = model
        self.body = model.model
        self.layers = list(self.body.layers[: model.config.num_hidden_layers])
        self.apply_rotary = sys.modules[type(self.layers[0].self_attn).__module__].apply_rotary_pos_emb
        self.keys: list[torch.Tensor] = []  # per layer [batch, kv_heads, capacity, head_dim]
        self.values: list[torch.Tensor] = []
        self.length = 0  # filled positions of every buffer

    @staticmethod
    def unsupported_reason(model) -> Optional[str]:
        """None when the lean step reproduces `model(...)` for this model, else why not."""
        config = model.config
        if config.model_type not in _SUPPORTED_MODEL_TYPES:
            return f"model_type {config.model_type!r} is not one of {_SUPPORTED_MODEL_TYPES}"
        if getattr(config, "_attn_implementation", None) != "sdpa":
            return f"attention implementation {config._attn_implementation!r} is not 'sdpa'"
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
            return "sliding-window layers"
        body = getattr(model, "model", None)
        if body is None or not all(hasattr(body, n) for n in ("embed_tokens", "layers", "norm", "rotary_emb")):
            return "not a <Model>ForCausalLM with embed_tokens/layers/norm/rotary_emb"
        for layer in body.layers:
            attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
            if attn is None or mlp is None or not all(hasattr(attn, n) for n in _ATTN_PARTS):
                return "a layer without self_attn.{q,k,v,o}_proj"
            if not all(hasattr(mlp, n) for n in _MLP_PARTS):
                return "a layer whose MLP is not gated (gate/up/down_proj)"
            if getattr(attn, "sliding_window", None) is not None:
                return "sliding-window attention"
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None):
            return "logit soft-capping"
        return None

    @classmethod
    def supports(cls, model) -> bool:
        return cls.unsupported_reason(model) is None

    # -- cache ---------------------------------------------------------------------------------

    def take_cache(self, cache, rows: Optional[torch.Tensor] = None) -> None:
        """Adopt the keys/values of a transformers DynamicCache filled by the prefill, copied into
        buffers with room for `CACHE_CHUNK` more positions; `rows` [batch] picks (and repeats) the
        cache rows each sample starts from (a GRPO group shares one prefilled prompt)."""
        if len(cache.layers) != len(self.layers):
            raise ValueError(f"take_cache: {len(cache.layers)} cache layers for {len(self.layers)} model layers")
        self.length = cache.layers[0].keys.shape[2]
        self.keys = [self._with_room(layer.keys, rows) for layer in cache.layers]
        self.values = [self._with_room(layer.values, rows) for layer in cache.layers]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows of the cache (finished samples leave). index_select copies
        whole rows; advanced indexing (`k[rows]`) gives the same values ~3x slower."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]

    def release(self) -> None:
        self.keys, self.values, self.length = [], [], 0

    def cached(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's keys and values so far, [batch, kv_heads, length, head_dim] (views)."""
        return self.keys[i][:, :, : self.length], self.values[i][:, :, : self.length]

    @staticmethod
    def _with_room(t: torch.Tensor, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """t [batch, heads, length, dim] (its `rows` if given) in a buffer with CACHE_CHUNK spare positions."""
        batch, heads, length, dim = t.shape
        if rows is not None:
            batch = rows.numel()
        room = t.new_empty(batch, heads, length + CACHE_CHUNK, dim)
        if rows is None:
            room[:, :, :length].copy_(t)
        else:
            torch.index_select(t, 0, rows, out=room[:, :, :length])
        return room

    # -- the step ------------------------------------------------------------------------------

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [batch, vocab] of the next token after `tokens` [batch]; `attention_mask` [batch,
        past + 1] (1 = real token, this step's included), `positions` [batch]. Appends to the cache."""
        hidden = self.body.embed_tokens(tokens.unsqueeze(1))  # [batch, 1, hidden]
        position_ids = positions.unsqueeze(1)
        cos, sin = self.body.rotary_emb(hidden, position_ids)
        # transformers passes no mask when no position is padded (SDPA then attends to all)
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :]
        if self.length == self.keys[0].shape[2]:
            self.keys = [self._with_room(k) for k in self.keys]
            self.values = [self._with_room(v) for v in self.values]
        for i, layer in enumerate(self.layers):
            residual = hidden
            hidden = layer.input_layernorm.forward(hidden)
            hidden = self._attention(i, layer.self_attn, hidden, cos, sin, mask)
            hidden = residual + hidden
            residual = hidden
            hidden = layer.post_attention_layernorm.forward(hidden)
            hidden = layer.mlp.forward(hidden)
            hidden = residual + hidden
        self.length += 1
        hidden = self.body.norm.forward(hidden)
        head = self.model.lm_head
        return F.linear(hidden, head.weight, head.bias)[:, -1]

    def _attention(self, i, attn, hidden, cos, sin, mask) -> torch.Tensor:
        shape = (*hidden.shape[:-1], -1, attn.head_dim)  # [batch, 1, heads, head_dim]
        q = F.linear(hidden, attn.q_proj.weight, attn.q_proj.bias).view(shape)
        k = F.linear(hidden, attn.k_proj.weight, attn.k_proj.bias).view(shape)
        v = F.linear(hidden, attn.v_proj.weight, attn.v_proj.bias).view(shape)
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head before the rotary
            q, k = attn.q_norm.forward(q), attn.k_norm.forward(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        q, k = self.apply_rotary(q, k, cos, sin)
        at = self.length
        self.keys[i][:, :, at : at + 1].copy_(k)
        self.values[i][:, :, at : at + 1].copy_(v)
        keys, values = self.keys[i][:, :, : at + 1], self.values[i][:, :, : at + 1]
        out, _ = sdpa_attention_forward(attn, q, keys, values, mask, dropout=0.0, scaling=attn.scaling)
        out = out.reshape(*hidden.shape[:-1], -1).contiguous()
        return F.linear(out, attn.o_proj.weight, attn.o_proj.bias)
