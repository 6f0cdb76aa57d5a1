"""HF checkpoint names -> the live tensors of a transformers model: in-place loading, coverage, release.

The engine receives what SGLang receives: checkpoint-style HF names with full tensors, MoE experts one
by one (`model.layers.3.mlp.experts.7.gate_proj.weight`). transformers 5 keeps experts fused in 3-D
parameters (`mlp.experts.gate_up_proj` [experts, 2*inter, hidden] and `mlp.experts.down_proj`
[experts, hidden, inter]), so a per-expert tensor lands in a slice of the fused parameter. Copies go
straight into the existing storage (dtype/device cast by `copy_`): no second copy of the model.

Coverage is tracked per checkpoint name ("unit"): a full sync must deliver every unit once, which is
how a forgotten tensor surfaces as an error instead of stale or uninitialised weights.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

# Checkpoint entries that exist in HF checkpoints but have no parameter to land in (SGLang skips them
# too): precomputed rotary tables of older Llama checkpoints.
_ALWAYS_IGNORED = (re.compile(r"(^|\.)rotary_emb\.inv_freq$"),)


@dataclass(frozen=True)
class _Slot:
    """Where one checkpoint tensor goes: `owner.<attr>[index]`, resolved at copy time.

    The live tensor is looked up on every copy because release/resume replaces parameter storage
    and buffer objects.
    """

    owner: nn.Module
    attr: str
    index: Optional[tuple]  # None = the whole tensor

    def live(self) -> torch.Tensor:
        tensor = getattr(self.owner, self.attr)
        return tensor if self.index is None else tensor[self.index]


class HFWeightMap:
    """Resolves HF names for one model and copies tensors into it, remembering which ones arrived."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._slots: dict[str, _Slot] = {}  # unit (checkpoint) name -> slot
        self._groups: dict[str, tuple[_Slot, list[str]]] = {}  # fused in-memory name -> (slot, its units)
        self._aliases: dict[str, str] = {}  # tied duplicate name -> canonical name
        self._ignored = list(_ALWAYS_IGNORED) + [
            re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])
        ]
        self._index_model()
        self.pending: set[str] = set(self._slots)
        """Units not yet received in the current sync."""

    # -- indexing ------------------------------------------------------------------------------

    def _index_model(self) -> None:
        seen: dict[int, str] = {}  # id(tensor) -> first name, to spot tied (shared) parameters
        fused_owners = {id(m) for m in self.model.modules() if _is_fused_experts(m)}
        for mod_name, module in self.model.named_modules():
            local = [(n, p) for n, p in module.named_parameters(recurse=False)]
            local += [
                (n, b)
                for n, b in module.named_buffers(recurse=False)
                if n not in module._non_persistent_buffers_set
            ]
            for attr, tensor in local:
                name = f"{mod_name}.{attr}" if mod_name else attr
                if id(tensor) in seen:
                    self._aliases[name] = seen[id(tensor)]
                    continue
                seen[id(tensor)] = name
                if id(module) in fused_owners and attr in ("gate_up_proj", "down_proj"):
                    self._index_fused(mod_name, module, attr)
                else:
                    self._slots[name] = _Slot(module, attr, None)

    def _index_fused(self, mod_name: str, experts: nn.Module, attr: str) -> None:
        """Per-expert checkpoint names of a fused [experts, out, in] parameter."""
        units = []
        weight = getattr(experts, attr)
        if attr == "gate_up_proj":
            inter = weight.shape[1] // 2
            parts = (("gate_proj", slice(0, inter)), ("up_proj", slice(inter, 2 * inter)))
        else:
            parts = (("down_proj", slice(None)),)
        for e in range(weight.shape[0]):
            for proj, rows in parts:
                unit = f"{mod_name}.{e}.{proj}.weight"
                self._slots[unit] = _Slot(experts, attr, (e, rows))
                units.append(unit)
        self._groups[f"{mod_name}.{attr}"] = (_Slot(experts, attr, None), units)

    # -- queries -------------------------------------------------------------------------------

    @property
    def expected_names(self) -> list[str]:
        """Every checkpoint name a full sync must deliver (tied duplicates excluded)."""
        return sorted(self._slots)

    def is_ignored(self, name: str) -> bool:
        return any(p.search(name) for p in self._ignored)

    def _resolve(self, name: str) -> tuple[_Slot, list[str]]:
        name = self._aliases.get(name, name)
        if name in self._slots:
            return self._slots[name], [name]
        if name in self._groups:
            return self._groups[name]
        close = difflib.get_close_matches(name, list(self._slots) + list(self._groups), n=3)
        hint = f"; closest known names: {close}" if close else ""
        raise ValueError(
            f"update_weights: unknown tensor {name!r} for {type(self.model).__name__}{hint}"
        )

    # -- loading -------------------------------------------------------------------------------

    def copy_in(self, name: str, tensor: torch.Tensor) -> None:
        """Copy one HF-named tensor into the model, in place; unknown name or wrong shape is an error."""
        if self.is_ignored(name):
            return
        slot, units = self._resolve(name)
        target = slot.live()
        if tuple(tensor.shape) != tuple(target.shape):
            raise ValueError(
                f"update_weights: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
        with torch.no_grad():
            target.copy_(tensor)
        self.pending.difference_update(units)

    def load(self, buckets: Iterable[Iterable[tuple[str, torch.Tensor]]]) -> int:
        """Copy every (name, tensor) of every bucket; returns the number of tensors consumed."""
        count = 0
        for bucket in buckets:
            for name, tensor in bucket:
                self.copy_in(name, tensor)
                count += 1
        return count

    def finish_sync(self) -> None:
        """Check that the sync delivered every unit, then start counting afresh for the next one."""
        if self.pending:
            missing = sorted(self.pending)
            shown = ", ".join(repr(n) for n in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ValueError(
                f"update_weights: {len(missing)} tensor(s) of {type(self.model).__name__} were never "
                f"received: {shown}{more}"
            )
        self.pending = set(self._slots)

    # -- memory --------------------------------------------------------------------------------

    def _owned_tensors(self) -> list[tuple[nn.Module, str, torch.Tensor]]:
        """Each parameter / persistent buffer once (tied parameters are one object)."""
        out, seen = [], set()
        for module in self.model.modules():
            for attr, p in module.named_parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((module, attr, p))
            for attr, b in module.named_buffers(recurse=False):
                if attr not in module._non_persistent_buffers_set and id(b) not in seen:
                    seen.add(id(b))
                    out.append((module, attr, b))
        return out

    def release(self) -> tuple[int, list]:
        """Drop the storage of every loaded tensor; returns (bytes freed, what `reallocate` needs)."""
        freed, layout = 0, []
        for module, attr, tensor in self._owned_tensors():
            freed += tensor.numel() * tensor.element_size()
            layout.append((module, attr, tensor.shape, tensor.dtype, tensor.device))
            _set_storage(module, attr, torch.empty(0, dtype=tensor.dtype, device=tensor.device))
        return freed, layout

    def reallocate(self, layout: list) -> None:
        """Give every released tensor fresh (uninitialised) storage; a full sync must follow."""
        for module, attr, shape, dtype, device in layout:
            _set_storage(module, attr, torch.empty(shape, dtype=dtype, device=device))
        self.pending = set(self._slots)


def _set_storage(module: nn.Module, attr: str, data: torch.Tensor) -> None:
    if attr in module._parameters:
        module._parameters[attr].data = data  # the Parameter object (and any tie) survives
    else:
        module._buffers[attr] = data


def _is_fused_experts(module: nn.Module) -> bool:
    """transformers' fused MoE experts: 3-D gate_up_proj [E, 2*I, H] and down_proj [E, H, I]."""
    gate_up = module._parameters.get("gate_up_proj")
    down = module._parameters.get("down_proj")
    if gate_up is None or down is None or gate_up.dim() != 3 or down.dim() != 3:
        return False
    layout = (
        getattr(module, "is_transposed", False),
        getattr(module, "is_concatenated", True),
        getattr(module, "has_gate", True),
        getattr(module, "has_bias", False),
    )
    if layout != (False, True, True, False):
        raise ValueError(
            f"{type(module).__name__}: fused expert layout (transposed, concatenated, gate, bias) = "
            f"{layout} has no HF per-expert name mapping here"
        )
    return True
