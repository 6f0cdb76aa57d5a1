"""Load HF weights into a live sharded megatron model: each rank reads only its own shards.

`load_hf_into_model(model_chunks, source, model_cfg=...)` matches this rank's parameters to HF
names (r1mega/convert/live.py), reads just the rows/columns of each HF tensor its TP shard needs
(`safe_open(...).get_slice`), assembles the megatron layout (fused QKV, [gate; up], padded
vocabulary) and copies it in place. No tensor crosses ranks.

Checks, made the same way on every rank so that all ranks fail together (none is left waiting in
a collective): the checkpoint must hold every HF tensor some rank needs and nothing the model does
not use (besides `IGNORED`), and every tensor must have the shape the model config implies.
"""

from __future__ import annotations

import re
import warnings
from typing import Callable, Optional

import torch

from r1mega.convert.hf_checkpoint import open_hf_source
from r1mega.convert.live import local_tensors
from r1mega.models.config import ModelConfig

__all__ = ["load_hf_into_model", "IGNORED"]

IGNORED = (re.compile(r"(^|\.)rotary_emb\.inv_freq$"),)
"""HF checkpoint entries with no weight behind them (precomputed RoPE tables of old checkpoints)."""


def _mtp_layer(name: str, num_layers: int) -> bool:
    """DeepSeek-V3 multi-token-prediction layers sit after the last decoder layer."""
    m = re.match(r"model\.layers\.(\d+)\.", name)
    return m is not None and int(m.group(1)) >= num_layers


def _all_ranks(obj):
    """Every rank's `obj` (just ours without a process group)."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def load_hf_into_model(
    model_chunks,
    source,
    *,
    model_cfg: ModelConfig,
    allow_mtp_layers: bool = True,
    progress: Optional[Callable[[int], None]] = None,
    leave: Optional[str] = None,
    ignore: tuple[str, ...] = (),
) -> dict[str, int]:
    """Copy HF weights (a safetensors directory, an `HFCheckpoint` or a dict of tensors) into this
    rank's chunks. Returns {"tensors": copied on this rank, "bytes": bytes read from the source on this rank}.

    `allow_mtp_layers`: DeepSeek-V3 checkpoints carry multi-token-prediction layers
    (model.layers.{num_layers}...); they have no place in the megatron model and are skipped with
    a warning. Any other unused tensor is an error. `progress(n)` is called after each tensor.
    `leave`: a regular expression on megatron names of parameters not read (they keep their values);
    `ignore`: HF names that may be present and unused (a causal LM's head, when the model is a
    reward model whose score head starts fresh).
    """
    reader = open_hf_source(source)
    try:
        error: Optional[str] = None
        mine = []
        try:
            mine = local_tensors(model_chunks, model_cfg)
            if leave is not None:
                mine = [t for t in mine if not re.search(leave, t.megatron_name)]
        except ValueError as e:
            error = str(e)
        # coverage is decided from the union of all ranks' needs, identically everywhere
        needed_here = sorted({n for t in mine for n in t.hf_names})
        everyone = _all_ranks((needed_here, error))
        errors = [e for _, e in everyone if e]
        if errors:
            raise ValueError(errors[0])
        needed = set().union(*(set(n) for n, _ in everyone))
        available = reader.names()
        missing = sorted(needed - available)
        if missing:
            shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            raise ValueError(f"{reader.directory}: {len(missing)} tensor(s) the model needs are missing: {shown}")
        unused = sorted(n for n in available - needed if not any(p.search(n) for p in IGNORED) and n not in ignore)
        mtp = [n for n in unused if model_cfg.family == "deepseek_v3" and _mtp_layer(n, model_cfg.num_layers)]
        if mtp and allow_mtp_layers:
            warnings.warn(f"{reader.directory}: skipping {len(mtp)} multi-token-prediction tensor(s) (layers >= {model_cfg.num_layers})")
            unused = [n for n in unused if n not in set(mtp)]
        unused = _tied_duplicates_removed(unused, reader, model_cfg)
        if unused:
            shown = ", ".join(unused[:6]) + (f" and {len(unused) - 6} more" if len(unused) > 6 else "")
            raise ValueError(
                f"{reader.directory}: {len(unused)} tensor(s) have no place in the {model_cfg.family} model "
                f"(wrong config or family?): {shown}"
            )

        copied, error = 0, None
        counting = _CountingSource(reader)
        try:
            with torch.no_grad():
                for t in mine:
                    value = t.layout.read_shard(counting, t.shard)
                    if tuple(value.shape) != tuple(t.tensor.shape):
                        raise ValueError(
                            f"{t.local_name}: assembled shape {tuple(value.shape)} from {t.hf_names} does not fit "
                            f"the parameter's {tuple(t.tensor.shape)}"
                        )
                    if t.local_name.endswith("router.expert_bias") and t.tensor.dtype != torch.float32:
                        # megatron's router keeps the expert bias in float32 whatever the model dtype
                        t.tensor.data = t.tensor.data.float()
                    t.tensor.copy_(value)
                    copied += 1
                    if progress is not None:
                        progress(1)
        except ValueError as e:
            error = str(e)
        errors = [e for e in _all_ranks(error) if e]
        if errors:
            raise ValueError(errors[0])
        return {"tensors": copied, "bytes": counting.bytes_read}
    finally:
        if reader is not source:
            reader.close()


class _CountingSource:
    """Counts the bytes actually read from the HF source (padding rows are never read)."""

    def __init__(self, source):
        self.source = source
        self.bytes_read = 0

    def read(self, name, expected_shape, index):
        t = self.source.read(name, expected_shape, index)
        self.bytes_read += t.numel() * t.element_size()
        return t


def _tied_duplicates_removed(unused: list[str], reader, model_cfg: ModelConfig) -> list[str]:
    """A tied checkpoint may still carry lm_head.weight; accept it only as an exact copy."""
    if not model_cfg.tie_word_embeddings or "lm_head.weight" not in unused:
        return unused
    embed = reader.read("model.embed_tokens.weight", reader.shape("model.embed_tokens.weight"), (slice(None),))
    head = reader.read("lm_head.weight", reader.shape("lm_head.weight"), (slice(None),))
    if head.shape != embed.shape or not torch.equal(head, embed):
        raise ValueError(
            f"{reader.directory}: tie_word_embeddings is true but lm_head.weight differs from "
            "model.embed_tokens.weight; the config and the weights disagree"
        )
    return [n for n in unused if n != "lm_head.weight"]
