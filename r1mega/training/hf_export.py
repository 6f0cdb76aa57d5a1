"""The HF export at the end of `r1mega pretrain`: a live (possibly sharded) megatron model written as
a Hugging Face checkpoint directory that transformers, SGLang and the built-in rollout engine load.

    write_hf_export(trainer.model, cfg.model, tokenizer, run_dir / "hf")

A collective: every rank streams the model through `export_hf_tensors` (TP shards gathered, PP
stages and EP experts broadcast, one bounded bucket at a time) and rank 0 writes

    model.safetensors (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    config.json              hf_config_from_model_config, with the tokenizer's token ids and the dtype
    generation_config.json   eos / bos / pad token ids, so generation stops where training taught it
    tokenizer files          the training tokenizer's own files, checked to load as it in
                             AutoTokenizer beside this config.json (r1mega.convert.hf_tokenizer)

into a temporary directory renamed into place once everything is written (r1mega.convert.atomic):
a crash or a kill never leaves a half-written export, and an earlier export stays until the new one
is complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import torch

from r1mega.models.config import ModelConfig

__all__ = ["write_hf_export", "check_exportable", "DEFAULT_BUCKET_BYTES", "DEFAULT_MAX_SHARD_BYTES"]

DEFAULT_BUCKET_BYTES = 256 << 20
"""Extra memory of one export step per rank (plus the largest tensor's staging buffer): small
beside training memory, large enough that the gathers are not latency-bound."""
DEFAULT_MAX_SHARD_BYTES = 5 << 30
"""transformers' own default shard size for save_pretrained."""


def _params_dtype(model_chunks) -> torch.dtype:
    for chunk in model_chunks:
        for p in chunk.parameters():
            return p.dtype
    raise ValueError("write_hf_export: the model has no parameters")


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {}
    for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if isinstance(value, int):
            ids[key] = value
    if "eos_token_id" not in ids:
        raise ValueError("write_hf_export: the tokenizer has no eos_token_id; generation would never stop")
    return ids


def write_hf_export(
    model_chunks,
    model_cfg: ModelConfig,
    tokenizer,
    out_dir: Union[str, os.PathLike],
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = True,
    hf_base=None,
    progress=None,
) -> Path:
    """Write the HF checkpoint of `model_chunks` (this rank's chunks, any layout) to `out_dir`.

    Every rank must call it. `tokenizer`: a transformers tokenizer (its files and token ids go into
    the directory). `overwrite`: replace an existing `out_dir` once the new export is complete (a
    resumed run re-exports); with False an existing directory is a ValueError. `hf_base`: an
    original config.json whose non-architecture fields are kept. `progress(n_tensors)`: called on
    rank 0 as tensors are written. Returns `out_dir`.
    """
    from transformers import GenerationConfig

    from r1mega.convert.atomic import atomic_directory
    from r1mega.convert.export import export_hf_tensors
    from r1mega.convert.hf_checkpoint import write_safetensors_shards
    from r1mega.convert.hf_tokenizer import export_tokenizer_files, write_files

    if bucket_bytes < 1 or max_shard_bytes < 1:
        raise ValueError(f"write_hf_export: bucket_bytes and max_shard_bytes must be >= 1, got {bucket_bytes}, {max_shard_bytes}")
    chunks = list(model_chunks) if isinstance(model_chunks, (list, tuple)) else [model_chunks]
    # checked on every rank before any collective, so a refusal never leaves ranks waiting
    token_ids = _token_ids(tokenizer)
    config = _hf_config(model_cfg, token_ids, _params_dtype(chunks), hf_base)
    tokenizer_files = export_tokenizer_files(tokenizer, config)
    out_dir = Path(out_dir).resolve()
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        buckets = export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg)
        if _is_rank0():
            write_safetensors_shards(buckets, tmp, max_shard_bytes=max_shard_bytes, progress=progress)
            config.save_pretrained(str(tmp))
            GenerationConfig(**token_ids).save_pretrained(str(tmp))
            write_files(tokenizer_files, tmp)
        else:
            for bucket in buckets:  # every rank takes part in the gathers and broadcasts
                del bucket
    return out_dir


def check_exportable(model_cfg: ModelConfig, tokenizer) -> None:
    """The checks of `write_hf_export` that need no weights (EOS, tokenizer files that load as
    `tokenizer`), for a job to run at start-up instead of failing after training."""
    from r1mega.convert.hf_tokenizer import export_tokenizer_files

    export_tokenizer_files(tokenizer, _hf_config(model_cfg, _token_ids(tokenizer), torch.float32))


def _hf_config(model_cfg: ModelConfig, token_ids: dict[str, int], dtype: torch.dtype, hf_base=None):
    from r1mega.convert.hf_config import hf_config_from_model_config

    config = hf_config_from_model_config(model_cfg, base=hf_base)
    for key, value in token_ids.items():
        setattr(config, key, value)
    config.dtype = str(dtype).removeprefix("torch.")
    return config


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
