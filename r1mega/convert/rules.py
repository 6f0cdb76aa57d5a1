"""Declarative name rules: megatron-core parameter names <-> HF names, and how they are matched.

A `Rule` pairs the megatron name(s) of one tensor with its HF name(s) and a layout kind
(r1mega/convert/layouts.py). Templates use two placeholders, both global indices:
`{layer}` (0-based decoder layer) and `{expert}` (routed expert id).

A rule may list several megatron spellings of the same tensor: megatron-core names it differently
with transformer-engine layers (input norm fused into `linear_qkv.layer_norm_weight`, experts as
`experts.linear_fc1.weight{j}` of TEGroupedMLP) than with the local spec (`input_layernorm.weight`,
`experts.local_experts.{j}.linear_fc1.weight`). Which spelling applies is never assumed: each live
parameter is matched against every rule, and must match exactly one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from r1mega.convert.layouts import FusedQKV, GateUp, Layout, Same, VocabRows
from r1mega.models.config import ModelConfig

LAYER = "decoder.layers.{layer}."
"""Prefix of a megatron decoder-layer tensor."""
HF_LAYER = "model.layers.{layer}."
"""Prefix of an HF decoder-layer tensor."""


def _tuple(x: Union[str, Sequence[str]]) -> tuple[str, ...]:
    return (x,) if isinstance(x, str) else tuple(x)


@dataclass(frozen=True)
class Rule:
    megatron: tuple[str, ...]
    """Alternative spellings of the megatron name (templates)."""
    hf: tuple[str, ...]
    """The HF name(s) the tensor maps to, in the order the layout expects."""
    layout: str = "same"
    """same | vocab (padded rows) | gate_up (SwiGLU fc1) | qkv (fused, GQA-grouped)."""
    export: bool = True
    """False for a tensor that is loaded from HF but not exported (the tied output layer: HF
    stores only the embedding)."""
    _patterns: tuple[re.Pattern, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.layout not in ("same", "vocab", "gate_up", "qkv"):
            raise ValueError(f"rule {self.megatron[0]}: unknown layout {self.layout!r}")
        object.__setattr__(self, "_patterns", tuple(_compile(t) for t in self.megatron))

    @property
    def is_expert(self) -> bool:
        """A routed-expert tensor: split over expert-TP, owned by one EP rank."""
        return "{expert}" in self.megatron[0]

    def match(self, name: str) -> Optional[tuple[int, re.Match]]:
        """(alternative index, match) of a megatron name with local indices, or None."""
        for i, pattern in enumerate(self._patterns):
            m = pattern.fullmatch(name)
            if m:
                return i, m
        return None

    def hf_names(self, layer: Optional[int], expert: Optional[int]) -> tuple[str, ...]:
        return tuple(t.format(layer=layer, expert=expert) for t in self.hf)

    def layout_for(self, cfg: ModelConfig, layer: Optional[int], expert: Optional[int]) -> Layout:
        names = self.hf_names(layer, expert)
        if self.layout == "same":
            return Same(*names)
        if self.layout == "vocab":
            return VocabRows(names[0], cfg.vocab_size)
        if self.layout == "gate_up":
            return GateUp(*names)
        groups = cfg.num_query_groups or cfg.num_attention_heads
        return FusedQKV(*names, heads=cfg.num_attention_heads, groups=groups, head_dim=cfg.head_dim)


def rule(
    megatron: Union[str, Sequence[str]], hf: Union[str, Sequence[str]], layout: str = "same", *, export: bool = True
) -> Rule:
    return Rule(_tuple(megatron), _tuple(hf), layout, export)


def layer_rule(
    megatron: Union[str, Sequence[str]], hf: Union[str, Sequence[str]], layout: str = "same"
) -> Rule:
    """A rule inside a decoder layer: names are relative to the layer prefix on both sides."""
    return rule([LAYER + m for m in _tuple(megatron)], [HF_LAYER + h for h in _tuple(hf)], layout)


def _compile(template: str) -> re.Pattern:
    pattern = re.escape(template)
    pattern = pattern.replace(r"\{layer\}", r"(?P<layer>\d+)").replace(r"\{expert\}", r"(?P<expert>\d+)")
    return re.compile(pattern)


@dataclass(frozen=True)
class Match:
    rule_index: int
    rule: Rule
    layer: Optional[int]
    """Layer index as it appears in the matched name (local to the chunk for live names)."""
    expert: Optional[int]
    """Expert index as it appears in the matched name (local to the EP rank for live names)."""
    template: str
    """The megatron spelling that matched."""


def match_name(rules: Sequence[Rule], name: str) -> Optional[Match]:
    """The one rule matching `name`; None if none does; ValueError if several do (a map bug)."""
    found = []
    for i, r in enumerate(rules):
        m = r.match(name)
        if m is not None:
            alt, mm = m
            groups = mm.groupdict()
            layer = int(groups["layer"]) if groups.get("layer") is not None else None
            expert = int(groups["expert"]) if groups.get("expert") is not None else None
            found.append(Match(i, r, layer, expert, r.megatron[alt]))
    if len(found) > 1:
        raise ValueError(f"megatron name {name!r} matches several conversion rules: {[f.template for f in found]}")
    return found[0] if found else None
