"""What `r1mega eval --model` points at, and a rollout engine serving it.

Two kinds of model directory:
- an HF directory (config.json + *.safetensors, e.g. `runs/NAME/hf` or a conversion's output): the
  engine loads it directly;
- an r1mega training checkpoint: a run directory (`runs/NAME`, whose `checkpoints/` is used), a
  checkpoint root (`runs/NAME/checkpoints`: its latest complete iter_N) or one `iter_N`. Its
  r1mega.json records the ModelConfig; the megatron model is built in this process (one rank),
  loaded at any saved layout, and streamed into the engine with `export_hf_tensors`, the same path
  as the RL loop's weight sync. So the same weights give the same engine, bit for bit, whichever
  way they were saved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

__all__ = ["ModelSource", "resolve_model", "build_engine"]


@dataclass(frozen=True)
class ModelSource:
    kind: Literal["hf", "megatron"]
    path: Path
    """The HF directory, or the one complete iter_N checkpoint that will be loaded."""
    step: Optional[int] = None
    """Training step of a megatron checkpoint."""


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def resolve_model(model: str | os.PathLike) -> ModelSource:
    """Classify `model` (see the module docstring); ValueError in one line when it is neither kind."""
    from r1mega.training import checkpoint as ckpt

    path = Path(os.path.expanduser(str(model)))
    if not path.exists():
        raise ValueError(f"--model {model}: no such directory")
    if not path.is_dir():
        raise ValueError(f"--model {model}: expected a directory (an HF export or an r1mega checkpoint), got a file")
    if _is_hf_dir(path):
        return ModelSource("hf", path)
    if (path / ckpt.INFO_FILE).is_file():
        if not ckpt.is_complete(path):
            raise ValueError(f"--model {model}: an incomplete checkpoint (its save did not finish)")
        return ModelSource("megatron", path, int(ckpt.read_checkpoint_info(path)["step"]))
    for root in (path, path / "checkpoints"):
        if root.is_dir() and ((root / "latest").is_file() or any(root.glob("iter_*"))):
            latest = ckpt.find_latest_checkpoint(root)
            if latest is None:
                raise ValueError(f"--model {model}: {root} holds no complete checkpoint")
            return ModelSource("megatron", latest, int(ckpt.read_checkpoint_info(latest)["step"]))
    raise ValueError(
        f"--model {model}: neither an HF directory (config.json + *.safetensors) nor an r1mega checkpoint "
        "(a run directory, its checkpoints/ or an iter_N inside)"
    )


def _model_config_of(path: Path):
    from r1mega.configlib import ConfigError, from_dict
    from r1mega.models.config import ModelConfig
    from r1mega.training import checkpoint as ckpt

    info = ckpt.read_checkpoint_info(path)
    if info.get("model_config") is None:
        raise ValueError(f"{path / ckpt.INFO_FILE}: no model_config recorded; cannot rebuild the model")
    try:
        return from_dict(ModelConfig, info["model_config"], where=f"{path / ckpt.INFO_FILE}: model_config")
    except ConfigError as e:
        raise ValueError(str(e)) from None


def _megatron_weights(path: Path, bucket_bytes: int):
    """(hf_config, list of HF-named tensor buckets) of a training checkpoint, built on one rank.
    torch.distributed must not be running yet (this starts and ends a one-process group)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from r1mega.convert import hf_config_from_model_config
    from r1mega.convert.export import export_hf_tensors
    from r1mega.convert.mcore_checkpoint import check_mcore_checkpoint
    from r1mega.convert.mcore_to_hf import stored_weight_dtype
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training import checkpoint as ckpt

    if dist.is_available() and dist.is_initialized():
        raise RuntimeError(
            "evaluating a megatron checkpoint builds its own one-process group; call run_eval before "
            "torch.distributed is initialised (or after destroy_distributed), or pass an HF export"
        )
    model_cfg = _model_config_of(path)
    dtype = stored_weight_dtype(check_mcore_checkpoint(path), path)
    pcfg = ParallelConfig()
    init_distributed(pcfg, seed=0, model_cfg=model_cfg)
    try:
        chunks = build_model(model_cfg, pcfg, params_dtype=dtype)
        ckpt.load_checkpoint(path, chunks, model_config=model_cfg, load_optimizer=False, load_rng=False)
        # materialised while the group exists: the export gathers through it
        buckets = [list(b) for b in export_hf_tensors(chunks, bucket_bytes, model_cfg=model_cfg)]
        del chunks
    finally:
        parallel_state.destroy_model_parallel()
        destroy_distributed()
    return hf_config_from_model_config(model_cfg), buckets


def build_engine(source: ModelSource, rollout_cfg, tokenizer: Any, *, seed: int):
    """A rollout engine (rollout.engine, built-in on CPU) serving the model's weights."""
    from r1mega.rollout.engines import make_engine

    eos = [tokenizer.eos_token_id]
    if source.kind == "hf":
        engine = make_engine(rollout_cfg, str(source.path), tokenizer=tokenizer, seed=seed, eos_token_ids=eos)
    else:
        hf_config, buckets = _megatron_weights(source.path, int(rollout_cfg.bucket_mb * 2**20))
        hf_config.eos_token_id = tokenizer.eos_token_id
        hf_config.pad_token_id = tokenizer.pad_token_id
        engine = make_engine(rollout_cfg, hf_config, tokenizer=tokenizer, seed=seed, eos_token_ids=eos)
        engine.update_weights(buckets)
    vocab = getattr(engine, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(
            f"data.tokenizer has {len(tokenizer)} tokens but the model at {source.path} has a vocabulary of {vocab}; "
            "evaluate with the tokenizer the model was trained with"
        )
    return engine
