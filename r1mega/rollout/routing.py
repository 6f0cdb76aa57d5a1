"""Routed experts of a rollout, for MoE routing replay (R3).

R3 makes the trainer's routers choose the experts the rollout engine chose, so the log-probs it
trains on are those of the policy that sampled (same experts, only the numerics differ). Engines report
what they routed in one layout, SGLang's (`return_routed_experts`):

    routed_experts: int32 [tokens, num_hidden_layers, top_k]

one row per token the engine fed through the model, i.e. the prompt and every response token but the
last (which is sampled, never fed); row p holds the experts of position p. Columns of dense layers
(DeepSeek-V3's first layers) hold -1. The built-in engine records the same tensor from the
transformers routers (`RoutingRecorder`); SGLang's base64 payload is decoded by `decode_sglang`.
"""

from __future__ import annotations

import base64
from typing import Optional

import numpy as np
import torch

__all__ = ["RoutingRecorder", "router_modules", "decode_sglang", "DENSE"]

DENSE = -1
"""Filler of the columns of layers without routing."""


def router_modules(hf_model) -> dict[int, torch.nn.Module]:
    """{layer index: router} of a transformers MoE CausalLM: the `mlp.gate` modules that return
    (router_logits, top-k weights, top-k indices), as Qwen3-MoE's and DeepSeek-V3's do."""
    layers = hf_model.model.layers
    found = {}
    for i, layer in enumerate(layers):
        gate = getattr(getattr(layer, "mlp", None), "gate", None)
        if gate is not None and hasattr(gate, "top_k") and hasattr(gate, "weight"):
            found[i] = gate
    return found


class RoutingRecorder:
    """Records the top-k expert indices of every router of a transformers MoE model, one forward at a
    time: `take(batch, length)` returns [batch, length, num_layers, top_k] for the last forward of
    `batch` x `length` tokens (inputs flattened row-major, as the routers see them)."""

    def __init__(self, hf_model):
        self.routers = router_modules(hf_model)
        if not self.routers:
            raise ValueError(
                "rollout.routing_replay: the rollout model has no MoE routers (a dense model routes nothing)"
            )
        self.num_layers = len(hf_model.model.layers)
        self.top_k = int(next(iter(self.routers.values())).top_k)
        self._last: dict[int, torch.Tensor] = {}
        self._handles = [r.register_forward_hook(self._hook(i)) for i, r in self.routers.items()]

    def _hook(self, layer: int):
        def record(module, args, output):
            self._last[layer] = output[2]  # [tokens, top_k]

        return record

    def take(self, batch: int, length: int) -> torch.Tensor:
        out = torch.full((batch, length, self.num_layers, self.top_k), DENSE, dtype=torch.int32)
        for layer in self.routers:
            idx = self._last.pop(layer, None)
            if idx is None:
                raise RuntimeError(f"RoutingRecorder: router of layer {layer} did not run in the last forward")
            out[:, :, layer, :] = idx.reshape(batch, length, self.top_k).to(device="cpu", dtype=torch.int32)
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def decode_sglang(value, *, num_layers: int, top_k: int, tokens: Optional[int] = None) -> torch.Tensor:
    """SGLang's `meta_info["routed_experts"]` (base64 of int32 [tokens, num_layers, top_k], or the
    array itself) as an int32 tensor; `tokens`, when given, is checked."""
    if isinstance(value, str):
        array = np.frombuffer(base64.b64decode(value.encode("utf-8")), dtype=np.int32)
    else:
        array = np.asarray(value, dtype=np.int32).reshape(-1)
    per_token = num_layers * top_k
    if array.size % per_token:
        raise ValueError(
            f"routed_experts: {array.size} indices is not a multiple of num_layers x top_k = {per_token}"
        )
    out = torch.from_numpy(array.copy()).view(-1, num_layers, top_k)
    if tokens is not None and out.shape[0] != tokens:
        raise ValueError(f"routed_experts: {out.shape[0]} tokens, expected {tokens} (prompt + response - 1)")
    return out
