"""The tensors of a live (possibly sharded) megatron model, each tied to its conversion rule.

`local_tensors(model_chunks, model_cfg)` walks this rank's chunks and matches every parameter (and
the router's expert-bias buffer) against the family's rules. The spelling of each name is read from
the model, never assumed (local vs transformer-engine spec, SequentialMLP vs TEGroupedMLP), and the
local indices become global ones:

- layer: local `decoder.layers.{i}` is global layer `layer_number - 1` (PP and virtual stages);
- expert: local expert j on EP rank r is global expert `r * experts_per_rank + j`.

TP sharding comes from megatron's own parameter attributes (`tensor_model_parallel`,
`partition_dim`); routed-expert tensors are split over the expert-TP group, the rest over TP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from r1mega.convert.hf_config import family_map
from r1mega.convert.layouts import Layout, Shard
from r1mega.convert.rules import Rule, match_name
from r1mega.models.config import ModelConfig

__all__ = ["LocalTensor", "local_tensors", "unwrap", "family_rules"]


@dataclass
class LocalTensor:
    """One tensor of this rank and where it belongs in the global model and in HF."""

    megatron_name: str
    """Global megatron name: layer and expert indices are global."""
    local_name: str
    tensor: torch.Tensor
    rule_index: int
    rule: Rule
    layer: Optional[int]
    expert: Optional[int]
    layout: Layout
    tp_dim: Optional[int]
    """Partition dim over the (expert-)TP group; None when every TP rank holds it whole."""
    tp_rank: int
    tp_size: int

    @property
    def full_shape(self) -> tuple[int, ...]:
        shape = list(self.tensor.shape)
        if self.tp_dim is not None:
            shape[self.tp_dim] *= self.tp_size
        return tuple(shape)

    @property
    def shard(self) -> Shard:
        return Shard(self.full_shape, self.tp_dim, self.tp_rank, self.tp_size)

    @property
    def hf_names(self) -> tuple[str, ...]:
        return self.layout.hf_names


def unwrap(chunk):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while not hasattr(chunk, "decoder") and hasattr(chunk, "module"):
        chunk = chunk.module
    if not hasattr(chunk, "decoder") and not hasattr(chunk, "embedding"):
        raise TypeError(f"expected a megatron GPTModel (or a wrapper of one), got {type(chunk).__name__}")
    return chunk


def family_rules(model_cfg: ModelConfig) -> list[Rule]:
    return family_map(model_cfg.family).weight_rules(model_cfg)


def _check_config(model, model_cfg: ModelConfig) -> None:
    """The chunk was built from this ModelConfig (catches passing the wrong config)."""
    c = model.config
    pairs = [
        ("num_layers", c.num_layers, model_cfg.num_layers),
        ("hidden_size", c.hidden_size, model_cfg.hidden_size),
        ("num_attention_heads", c.num_attention_heads, model_cfg.num_attention_heads),
        ("num_experts", c.num_moe_experts, model_cfg.num_experts),
    ]
    bad = [f"{n}: model has {a}, config says {b}" for n, a, b in pairs if a != b]
    if bad:
        raise ValueError("the megatron model was not built from this model config: " + "; ".join(bad))


def _named_tensors(model):
    """Parameters, plus the persistent buffers a rule may claim (the router's expert bias)."""
    yield from model.named_parameters()
    for name, buf in model.named_buffers():
        if name.endswith("router.expert_bias"):
            yield name, buf


def local_tensors(model_chunks, model_cfg: ModelConfig) -> list[LocalTensor]:
    """Every tensor of this rank's chunks with its rule; ValueError for a parameter no rule maps."""
    from megatron.core import parallel_state as ps

    chunks = model_chunks if isinstance(model_chunks, (list, tuple)) else [model_chunks]
    rules = family_rules(model_cfg)
    ep_rank = ps.get_expert_model_parallel_rank()
    ep_size = ps.get_expert_model_parallel_world_size()
    per_rank = (model_cfg.num_experts or 0) // ep_size
    out: list[LocalTensor] = []
    unmapped: list[str] = []
    for chunk in chunks:
        model = unwrap(chunk)
        _check_config(model, model_cfg)
        layer_of = {}
        if getattr(model, "decoder", None) is not None:
            layer_of = {i: layer.layer_number - 1 for i, layer in enumerate(model.decoder.layers)}
        for name, tensor in _named_tensors(model):
            m = match_name(rules, name)
            if m is None:
                unmapped.append(name)
                continue
            layer = layer_of[m.layer] if m.layer is not None else None
            expert = ep_rank * per_rank + m.expert if m.expert is not None else None
            if m.rule.is_expert:
                tp_rank = ps.get_expert_tensor_parallel_rank()
                tp_size = ps.get_expert_tensor_parallel_world_size()
            else:
                tp_rank = ps.get_tensor_model_parallel_rank()
                tp_size = ps.get_tensor_model_parallel_world_size()
            split = getattr(tensor, "tensor_model_parallel", False)
            out.append(
                LocalTensor(
                    megatron_name=m.template.format(layer=layer, expert=expert),
                    local_name=name,
                    tensor=tensor,
                    rule_index=m.rule_index,
                    rule=m.rule,
                    layer=layer,
                    expert=expert,
                    layout=m.rule.layout_for(model_cfg, layer, expert),
                    tp_dim=int(tensor.partition_dim) if split else None,
                    tp_rank=tp_rank if split else 0,
                    tp_size=tp_size if split else 1,
                )
            )
    if unmapped:
        raise ValueError(
            f"no {model_cfg.family} conversion rule for megatron parameter(s) {unmapped[:8]}"
            + (f" and {len(unmapped) - 8} more" if len(unmapped) > 8 else "")
            + " (a layer spec this map does not know; add the spelling to r1mega/convert/)"
        )
    return out
