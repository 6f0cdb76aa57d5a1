"""How one megatron tensor relates to its HF tensor(s): split on export, assembled on import.

Every layout works in two directions:

- `to_hf(gathered, shards)`: the megatron tensor with its TP shards concatenated along the partition
  dim (what an all-gather over the TP group yields; `shards` of them) -> the HF tensors.
- `read_shard(source, shard)`: this rank's TP shard, read from the HF tensors. Only the rows/columns
  the shard needs are read (`source.read(name, expected_shape, index)`), so a rank never loads more
  of a checkpoint than it keeps.

TP layouts are megatron-core's: a fused QKV weight is grouped by query group ([q heads of group 0,
k0, v0, q heads of group 1, ...]) so each TP rank holds whole groups; a SwiGLU fc1 shard is
[gate_r; up_r] (its part of gate on top of its part of up), so the gathered tensor is
[gate_0; up_0; gate_1; up_1; ...], not [gate; up].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import torch

Shape = tuple[int, ...]


class HFSource(Protocol):
    """Where import reads HF tensors from (a safetensors directory or a dict of tensors)."""

    def read(self, name: str, expected_shape: Shape, index: tuple[slice, ...]) -> torch.Tensor:
        """`tensor[index]` of HF tensor `name`, after checking its full shape is `expected_shape`."""
        ...


@dataclass(frozen=True)
class Shard:
    """Which part of a megatron tensor this rank holds."""

    full_shape: Shape
    """The unsharded megatron shape (vocab padding included)."""
    dim: Optional[int]
    """Partition dim over the TP group; None = not split (replicated)."""
    rank: int = 0
    size: int = 1

    def block(self, length: int) -> tuple[int, int]:
        """[start, stop) of this rank's contiguous block of a dimension of `length`."""
        step = length // self.size
        return self.rank * step, (self.rank + 1) * step


def _index(ndim: int, dim: int, start: int, stop: int) -> tuple[slice, ...]:
    return tuple(slice(start, stop) if d == dim else slice(None) for d in range(ndim))


def _full(ndim: int) -> tuple[slice, ...]:
    return tuple(slice(None) for _ in range(ndim))


class Layout(ABC):
    """Base: the HF names this megatron tensor maps to, and the three conversions every layout has."""

    hf_names: tuple[str, ...]

    @abstractmethod
    def hf_shapes(self, full_shape: Shape) -> dict[str, Shape]:
        """HF name -> shape, given the full (gathered) megatron shape."""

    @abstractmethod
    def to_hf(self, gathered: torch.Tensor, shards: int) -> list[tuple[str, torch.Tensor]]:
        """The HF tensors of a gathered megatron tensor that was split `shards` ways."""

    @abstractmethod
    def read_shard(self, source: HFSource, shard: Shard) -> torch.Tensor:
        """This rank's megatron shard, read from the HF checkpoint."""


@dataclass(frozen=True)
class Same(Layout):
    """One HF tensor with the megatron layout (norms, o_proj/down_proj, MLA projections, router)."""

    hf_name: str

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.hf_name,)

    def hf_shapes(self, full_shape: Shape) -> dict[str, Shape]:
        return {self.hf_name: tuple(full_shape)}

    def to_hf(self, gathered: torch.Tensor, shards: int) -> list[tuple[str, torch.Tensor]]:
        return [(self.hf_name, gathered)]

    def read_shard(self, source: HFSource, shard: Shard) -> torch.Tensor:
        full = tuple(shard.full_shape)
        if shard.dim is None:
            return source.read(self.hf_name, full, _full(len(full)))
        start, stop = shard.block(full[shard.dim])
        return source.read(self.hf_name, full, _index(len(full), shard.dim, start, stop))


@dataclass(frozen=True)
class VocabRows(Layout):
    """Embedding / output layer: megatron pads the vocabulary rows, HF does not.

    Export drops the padded rows; import fills them with zeros (no token id reaches a padded
    embedding row, and a zero output row gives padded ids a logit of exactly 0, which any softmax
    over the vocabulary must mask; see docs/conversion.md).
    """

    hf_name: str
    vocab_size: int

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.hf_name,)

    def hf_shapes(self, full_shape: Shape) -> dict[str, Shape]:
        return {self.hf_name: (self.vocab_size, *full_shape[1:])}

    def to_hf(self, gathered: torch.Tensor, shards: int) -> list[tuple[str, torch.Tensor]]:
        if gathered.shape[0] == self.vocab_size:
            return [(self.hf_name, gathered)]
        # a fresh tensor, not a view that would keep the padded rows alive
        return [(self.hf_name, gathered[: self.vocab_size].clone())]

    def read_shard(self, source: HFSource, shard: Shard) -> torch.Tensor:
        full = tuple(shard.full_shape)
        hf_shape = self.hf_shapes(full)[self.hf_name]
        if full[0] < self.vocab_size:
            raise ValueError(
                f"{self.hf_name}: the model has {full[0]} embedding rows, fewer than vocab_size={self.vocab_size}"
            )
        if shard.dim not in (None, 0):
            raise ValueError(f"{self.hf_name}: vocabulary tensors must be split along rows, not dim {shard.dim}")
        start, stop = shard.block(full[0]) if shard.dim == 0 else (0, full[0])
        real = max(0, min(stop, self.vocab_size) - start)  # rows of this shard that exist in HF
        # an all-padding shard still reads an empty slice, which checks the HF shape
        rows = source.read(self.hf_name, hf_shape, _index(len(full), 0, min(start, self.vocab_size), min(start, self.vocab_size) + real))
        if real == stop - start:
            return rows
        out = rows.new_zeros((stop - start, *full[1:]))
        out[:real] = rows
        return out


@dataclass(frozen=True)
class GateUp(Layout):
    """SwiGLU fc1 = [gate; up] (HF gate_proj and up_proj); each TP shard is [gate_r; up_r]."""

    gate: str
    up: str

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.gate, self.up)

    def hf_shapes(self, full_shape: Shape) -> dict[str, Shape]:
        if full_shape[0] % 2:
            raise ValueError(f"{self.gate}/{self.up}: fused fc1 has an odd number of rows {full_shape[0]}")
        half = (full_shape[0] // 2, *full_shape[1:])
        return {self.gate: half, self.up: half}

    def to_hf(self, gathered: torch.Tensor, shards: int) -> list[tuple[str, torch.Tensor]]:
        rows = gathered.shape[0] // (2 * shards)
        parts = gathered.view(shards, 2, rows, *gathered.shape[1:])  # [tp, gate|up, rows/tp, ...]
        gate = parts[:, 0].reshape(shards * rows, *gathered.shape[1:])  # [inter, ...]
        up = parts[:, 1].reshape(shards * rows, *gathered.shape[1:])
        return [(self.gate, gate), (self.up, up)]

    def read_shard(self, source: HFSource, shard: Shard) -> torch.Tensor:
        full = tuple(shard.full_shape)
        half = self.hf_shapes(full)[self.gate]
        if shard.dim not in (None, 0):
            raise ValueError(f"{self.gate}: fused fc1 must be split along rows, not dim {shard.dim}")
        start, stop = shard.block(half[0]) if shard.dim == 0 else (0, half[0])
        index = _index(len(full), 0, start, stop)
        return torch.cat([source.read(self.gate, half, index), source.read(self.up, half, index)], dim=0)


@dataclass(frozen=True)
class FusedQKV(Layout):
    """megatron's linear_qkv (weight or bias) = per query group [its q heads; k; v] (HF q/k/v_proj).

    HF's GQA gives query head h to KV head h // (heads / groups), so the q heads of one group are
    contiguous rows of q_proj and a TP shard (whole groups) reads contiguous rows of each.
    """

    q: str
    k: str
    v: str
    heads: int
    groups: int
    head_dim: int

    @property
    def hf_names(self) -> tuple[str, ...]:
        return (self.q, self.k, self.v)

    @property
    def _per_group(self) -> int:
        return self.heads // self.groups

    def hf_shapes(self, full_shape: Shape) -> dict[str, Shape]:
        want = self.groups * (self._per_group + 2) * self.head_dim
        if full_shape[0] != want:
            raise ValueError(
                f"{self.q}: fused QKV has {full_shape[0]} rows; heads={self.heads}, groups={self.groups}, "
                f"head_dim={self.head_dim} give {want}"
            )
        rest = tuple(full_shape[1:])
        return {
            self.q: (self.heads * self.head_dim, *rest),
            self.k: (self.groups * self.head_dim, *rest),
            self.v: (self.groups * self.head_dim, *rest),
        }

    def to_hf(self, gathered: torch.Tensor, shards: int) -> list[tuple[str, torch.Tensor]]:
        rest = gathered.shape[1:]
        per = self._per_group
        grouped = gathered.view(self.groups, per + 2, self.head_dim, *rest)  # [groups, q heads + k + v, hd, ...]
        q = grouped[:, :per].reshape(self.heads * self.head_dim, *rest)
        k = grouped[:, per].reshape(self.groups * self.head_dim, *rest)
        v = grouped[:, per + 1].reshape(self.groups * self.head_dim, *rest)
        return [(self.q, q), (self.k, k), (self.v, v)]

    def read_shard(self, source: HFSource, shard: Shard) -> torch.Tensor:
        full = tuple(shard.full_shape)
        shapes = self.hf_shapes(full)
        if shard.dim not in (None, 0):
            raise ValueError(f"{self.q}: fused QKV must be split along rows, not dim {shard.dim}")
        g0, g1 = shard.block(self.groups) if shard.dim == 0 else (0, self.groups)
        per, hd, nd = self._per_group, self.head_dim, len(full)
        q = source.read(self.q, shapes[self.q], _index(nd, 0, g0 * per * hd, g1 * per * hd))
        k = source.read(self.k, shapes[self.k], _index(nd, 0, g0 * hd, g1 * hd))
        v = source.read(self.v, shapes[self.v], _index(nd, 0, g0 * hd, g1 * hd))
        rest = full[1:]
        n = g1 - g0
        grouped = torch.cat(
            [q.reshape(n, per, hd, *rest), k.reshape(n, 1, hd, *rest), v.reshape(n, 1, hd, *rest)], dim=1
        )  # [groups/tp, q heads + k + v, hd, ...]
        return grouped.reshape(n * (per + 2) * hd, *rest)


LAYOUT_KINDS: Sequence[str] = ("same", "vocab", "gate_up", "qkv")
