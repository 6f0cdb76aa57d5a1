"""megatron-core distributed checkpoints (torch_dist) of a model's weights: save, check, load.

megatron's sharded state dicts describe every tensor by its global shape and this rank's offset,
so a checkpoint saved at one layout (TP=2, PP=2, ...) loads at any other. Beside megatron's files
the directory holds `r1mega_model.json` (the ModelConfig, the HF config.json it came from and the
weights' dtype), which is what lets the reverse conversion rebuild the model without being told.

Loading unpickles nothing it has not checked: the DCP `.metadata` file (a pickle) is first read with
an unpickler that only admits torch's checkpoint-metadata classes, every storage file it names must
exist and hold the bytes it refers to, megatron's non-tensor objects (`_extra_state`) are not loaded
at all, and every `torch.load` inside megatron runs with weights_only forced on.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import torch

from r1mega.configlib import from_dict, to_dict
from r1mega.models.config import ModelConfig

__all__ = [
    "RECORD_NAME",
    "ConversionRecord",
    "write_record",
    "read_record",
    "resolve_checkpoint_dir",
    "check_mcore_checkpoint",
    "save_model_checkpoint",
    "load_model_checkpoint",
    "weights_only_loads",
    "unpickling_reason",
]

RECORD_NAME = "r1mega_model.json"

PathLike = Union[str, os.PathLike]


class ConversionRecord(dict):
    """{"model": ModelConfig fields, "hf_config": config.json dict, "dtype": "float32", ...}."""

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self["model"], where="model")

    @property
    def dtype(self) -> torch.dtype:
        return getattr(torch, self.get("dtype", "float32"))


def write_record(directory: PathLike, model_cfg: ModelConfig, hf_config: dict, dtype: torch.dtype, **extra: Any) -> None:
    record = {"model": to_dict(model_cfg), "hf_config": hf_config, "dtype": str(dtype).removeprefix("torch."), **extra}
    (Path(directory) / RECORD_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_record(directory: PathLike) -> ConversionRecord:
    path = Path(directory) / RECORD_NAME
    if not path.is_file():
        raise ValueError(
            f"{directory}: no {RECORD_NAME}; say which model this is with --model-config and --hf-config"
        )
    try:
        return ConversionRecord(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def resolve_checkpoint_dir(directory: PathLike) -> Path:
    """A torch_dist directory, or a Megatron-LM save directory with latest_checkpointed_iteration.txt
    (-> iter_XXXXXXX or release)."""
    directory = Path(directory)
    tracker = directory / "latest_checkpointed_iteration.txt"
    if not (directory / "metadata.json").is_file() and tracker.is_file():
        tag = tracker.read_text(encoding="utf-8").strip()
        directory = directory / ("release" if tag == "release" else f"iter_{int(tag):07d}")
    return directory


# ------------------------------------------------------------------------------------------------
# checks before megatron reads anything
# ------------------------------------------------------------------------------------------------

_ALLOWED_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint.planner",
)
_ALLOWED_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
}


class _MetadataUnpickler(pickle.Unpickler):
    """Admits torch.distributed.checkpoint's metadata classes, torch.Size and dtypes only."""

    def find_class(self, module: str, name: str):
        if module in _ALLOWED_MODULES or (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def check_mcore_checkpoint(directory: PathLike) -> Any:
    """Validate a torch_dist checkpoint directory before loading; returns its DCP metadata.

    ValueError names the problem: not a torch_dist checkpoint, a metadata file that needs
    something besides checkpoint-metadata classes to unpickle, missing or truncated storage files.
    """
    directory = Path(directory)
    meta_json = directory / "metadata.json"
    if not meta_json.is_file():
        raise ValueError(f"{directory}: not a megatron distributed checkpoint (no metadata.json)")
    try:
        backend = json.loads(meta_json.read_text(encoding="utf-8")).get("sharded_backend")
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_json}: not valid JSON ({e})") from None
    if backend != "torch_dist":
        raise ValueError(f"{meta_json}: sharded_backend {backend!r}; only torch_dist checkpoints are supported")
    dcp_meta = directory / ".metadata"
    if not dcp_meta.is_file():
        raise ValueError(f"{directory}: the torch_dist index .metadata is missing")
    try:
        metadata = _MetadataUnpickler(io.BytesIO(dcp_meta.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise ValueError(f"{dcp_meta}: not loadable as checkpoint metadata ({e})") from None
    needed: dict[str, int] = {}
    for info in (getattr(metadata, "storage_data", None) or {}).values():
        path = str(info.relative_path)
        needed[path] = max(needed.get(path, 0), int(info.offset) + int(info.length))
    missing = sorted(p for p in needed if not (directory / p).is_file())
    if missing:
        raise ValueError(f"{directory}: {len(missing)} storage file(s) named in .metadata are missing: {', '.join(missing)}")
    for rel, end in sorted(needed.items()):
        size = (directory / rel).stat().st_size
        if size < end:
            raise ValueError(f"{directory / rel}: truncated: .metadata needs {end} bytes, the file has {size}")
    return metadata


def unpickling_reason(e: BaseException) -> str:
    """The line of torch's weights-only refusal that names the object it would not unpickle."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = next((line for line in lines if "Unsupported global" in line or "Unsupported operand" in line), None)
    reason = (reason or (lines[-1] if lines else type(e).__name__)).split(". Please use")[0]  # not advice to allow it
    return reason + " (only tensors and plain data are loaded)"


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Force torch.load(weights_only=True) everywhere inside (megatron and DCP call torch.load)."""
    saved = {k: os.environ.get(k) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------------------------------
# save / load
# ------------------------------------------------------------------------------------------------


def _sharded_state_dict(model_chunks) -> dict:
    """Megatron-LM's layout: "model" for one chunk, "model0", "model1", ... for virtual stages."""
    from r1mega.convert.live import unwrap

    chunks = [unwrap(c) for c in model_chunks]
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


def save_model_checkpoint(model_chunks, directory: PathLike) -> None:
    """megatron dist_checkpointing.save of the model weights into an existing empty `directory`.

    A collective (every rank saves its shards). Entry scripts need an `if __name__ == "__main__"`
    guard: the save workers are started with the spawn method.
    """
    from megatron.core import dist_checkpointing

    dist_checkpointing.save(_sharded_state_dict(model_chunks), str(directory))


def _tensors_only(tree):
    """The sharded state dict without megatron's pickled objects (_extra_state): weights only."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    if isinstance(tree, dict):
        return {k: _tensors_only(v) for k, v in tree.items() if not isinstance(v, ShardedObject)}
    return tree


def load_model_checkpoint(model_chunks, directory: PathLike, *, checked: Optional[Any] = None) -> None:
    """Load the weights of a torch_dist checkpoint (any layout) into this rank's chunks, after
    `check_mcore_checkpoint`. Raises ValueError naming a tensor whose shape does not fit."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException

    from r1mega.convert.live import unwrap

    directory = Path(directory)
    if checked is None:
        check_mcore_checkpoint(directory)
    sharded = _tensors_only(_sharded_state_dict(model_chunks))
    try:
        with weights_only_loads():
            state = dist_checkpointing.load(sharded, str(directory))
    except CheckpointingException as e:
        raise ValueError(f"{directory}: the checkpoint does not fit the model: {e}") from None
    except pickle.UnpicklingError as e:
        raise ValueError(f"{directory}: refusing to load: {unpickling_reason(e)}") from None
    chunks = [unwrap(c) for c in model_chunks]
    keys = ["model"] if len(chunks) == 1 else [f"model{i}" for i in range(len(chunks))]
    for key, chunk in zip(keys, chunks):
        result = chunk.load_state_dict(state[key], strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{directory}: loading {key} left parameters unset {missing[:5]} / unexpected {result.unexpected_keys[:5]}"
            )
