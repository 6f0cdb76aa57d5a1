"""Training checkpoints: model, optimizer, LR schedule, RNG states, step and trainer state, saved with
megatron's dist_checkpointing, so a checkpoint loads under any TP/PP/VPP/EP/DP layout.

    save_checkpoint(root, step, model_chunks, optimizer, scheduler, extra_state={"sampler": ...})
    loaded = load_checkpoint(path, model_chunks, optimizer, scheduler)   # -> step, extra_state
    path = resolve_resume("auto", root)                                  # latest complete, or None

Layout of a checkpoint root (docs/checkpoints.md has the details):

    root/iter_0000200/            one complete checkpoint (megatron torch_dist files + r1mega.json)
    root/iter_0000300.incomplete/ a save in progress (or killed): never loaded, removed by the next save
    root/latest                   "iter_0000300", rewritten after each complete save

Atomicity: every rank writes into `iter_N.incomplete`; once all are done, rank 0 writes r1mega.json
(step, layout, model config), fsyncs every file and the directory, renames it to `iter_N` and then
rewrites `latest` (write-temp, fsync, rename). A kill at any moment leaves either the new checkpoint
complete or the previous one untouched, and `resolve_resume("auto")` considers only complete
directories (final name and r1mega.json present).

Sharding: the model's `sharded_state_dict()` names tensors by global parameter name and global
offsets, and the distributed optimizer's state is saved in megatron's `fully_reshardable` format
(per-parameter tensors in the same global coordinates), so TP, PP, VPP, EP and DP may all differ
between save and load. RNG states are per rank and only meaningful in the same layout: they
are restored when the layout is unchanged and skipped (with a log line) otherwise.

Bad inputs fail before any collective, on every rank alike, with a CheckpointError naming the
checkpoint: missing or truncated shard files (checked against the torch_dist metadata), a model
config that differs from the checkpoint's, a checkpoint without the optimizer state asked for.

Memory: no copy of the training state is made to save or load it (r1mega.training.checkpoint_memory);
each save/load measures its peak extra host memory and duration (`last_io_stats()`), which stay
under `checkpoint_memory.save_transient_bytes(state)`.

Preemption: `PreemptionWatcher` turns SIGTERM/SIGUSR1 into a flag; the trainer asks
`should_stop()` (all ranks agree through an all-reduce) at each step boundary, saves and exits 0.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from r1mega.configlib import to_dict
from r1mega.training.checkpoint_config import CheckpointConfig  # noqa: F401  (re-exported)

__all__ = [
    "CheckpointConfig",
    "CheckpointError",
    "LoadedCheckpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "load_body_weights",
    "find_latest_checkpoint",
    "resolve_resume",
    "is_complete",
    "checkpoint_name",
    "read_checkpoint_info",
    "check_checkpoint_model",
    "PreemptionWatcher",
    "INFO_FILE",
    "CheckpointIOStats",
    "last_io_stats",
    "metered_io",
]

logger = logging.getLogger(__name__)

INFO_FILE = "r1mega.json"
"""Written last inside a checkpoint directory: its presence (with the final name) marks it complete."""
LATEST_FILE = "latest"
_INCOMPLETE = ".incomplete"
_NAME_RE = re.compile(r"^iter_(\d{7,})$")
_FORMAT_VERSION = 1
# Fields of ModelConfig that neither change the parameters' shapes nor their meaning.
_MODEL_FIELDS_FREE_TO_CHANGE = {
    "attention_dropout", "hidden_dropout", "init_method_std", "max_position_embeddings",
    "moe_token_dispatcher_type", "moe_aux_loss_coeff", "moe_router_bias_update_rate",
}


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded as asked; the message names the directory and why."""


@dataclass
class LoadedCheckpoint:
    path: Path
    step: int
    extra_state: dict = field(default_factory=dict)
    optimizer_loaded: bool = False
    rng_restored: bool = False
    info: dict = field(default_factory=dict)


@dataclass
class CheckpointIOStats:
    """What one save or load cost: wall seconds and the peak host memory it added on top of the
    rank's (max over ranks), measured by HostMemoryMeter, beside the rank's training state."""

    kind: str
    path: str
    seconds: float
    peak_extra_bytes: Optional[int]
    state_bytes: int

    def line(self) -> str:
        extra = "n/a" if self.peak_extra_bytes is None else f"{self.peak_extra_bytes / 2**30:.2f} GiB"
        return (f"{self.kind} {self.path} in {self.seconds:.1f}s, peak extra host memory {extra} "
                f"(rank state {self.state_bytes / 2**30:.2f} GiB)")

    def record(self) -> dict:
        return {"kind": self.kind, "path": self.path, "seconds": round(self.seconds, 3),
                "peak_extra_bytes": self.peak_extra_bytes, "state_bytes": self.state_bytes}


_last_io: Optional[CheckpointIOStats] = None


def last_io_stats() -> Optional[CheckpointIOStats]:
    """The stats of this process's latest save_checkpoint / load_checkpoint."""
    return _last_io


@contextlib.contextmanager
def metered_io(kind: str, path, model_chunks: list, optimizer=None):
    """Measure the body on every rank, then agree on the max over ranks (a collective); the result
    is `last_io_stats()`. Saves and loads use it; the HF export too."""
    global _last_io
    from r1mega.training.checkpoint_memory import training_state_bytes
    from r1mega.training.host_memory import HostMemoryMeter

    state = training_state_bytes(model_chunks, optimizer)
    with HostMemoryMeter() as meter:
        yield
    peak, state = _max_over_ranks(meter.peak_extra_bytes, state)
    _last_io = CheckpointIOStats(kind, str(path), meter.seconds, peak, state)
    logger.info("%s (this process %s, child processes %s)", _last_io.line(), meter.own_extra_bytes, meter.children_bytes)


def _max_over_ranks(peak: Optional[int], state: int) -> tuple[Optional[int], int]:
    import torch.distributed as dist

    values = torch.tensor([-1 if peak is None else peak, state], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return (None if values[0] < 0 else int(values[0])), int(values[1])


# ------------------------------------------------------------------------------------------------
# naming and discovery
# ------------------------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"iter_{step:07d}"


def _step_of(path: Path) -> Optional[int]:
    m = _NAME_RE.match(path.name)
    return int(m.group(1)) if m else None


def read_checkpoint_info(path: str | os.PathLike) -> dict:
    """The r1mega.json record of a checkpoint directory; CheckpointError if absent or unreadable."""
    path = Path(path)
    info_path = path / INFO_FILE
    try:
        return json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a complete r1mega checkpoint ({INFO_FILE} is missing)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{info_path}: unreadable ({e})") from None


def is_complete(path: str | os.PathLike) -> bool:
    """A finished save: final `iter_N` name, r1mega.json readable and agreeing on the step."""
    path = Path(path)
    step = _step_of(path)
    if step is None or not path.is_dir():
        return False
    try:
        return read_checkpoint_info(path).get("step") == step
    except CheckpointError:
        return False


def find_latest_checkpoint(root: str | os.PathLike) -> Optional[Path]:
    """The complete checkpoint with the highest step under `root` (incomplete ones are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return None
    complete = [p for p in root.iterdir() if is_complete(p)]
    return max(complete, key=lambda p: _step_of(p)) if complete else None


def resolve_resume(spec: str, root: str | os.PathLike) -> Optional[Path]:
    """`auto` -> latest complete checkpoint in `root` or None; `none` -> None; a path -> that
    checkpoint (or the latest complete one inside it); CheckpointError if it is not usable."""
    if spec == "none":
        return None
    if spec == "auto":
        return find_latest_checkpoint(root)
    path = Path(os.path.expanduser(spec))
    if not path.exists():
        raise CheckpointError(f"checkpoint.resume: {path} does not exist")
    if _step_of(path) is not None or (path / INFO_FILE).exists():
        if not is_complete(path):
            raise CheckpointError(f"checkpoint.resume: {path} is not a complete checkpoint")
        return path
    latest = find_latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"checkpoint.resume: {path} holds no complete checkpoint")
    return latest


# ------------------------------------------------------------------------------------------------
# state pieces
# ------------------------------------------------------------------------------------------------


def _layout() -> dict[str, int]:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    return {
        "world_size": dist.get_world_size(),
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
        "vpp": ps.get_virtual_pipeline_model_parallel_world_size() or 1,
        "cp": ps.get_context_parallel_world_size(),
        "ep": ps.get_expert_model_parallel_world_size(),
        "etp": ps.get_expert_tensor_parallel_world_size(),
        "dp": ps.get_data_parallel_world_size(),
    }


def _rng_state() -> dict[str, Any]:
    """Every state as tensors and plain data, so that it loads with weights_only (numpy's key
    array becomes an int64 tensor)."""
    from megatron.core import tensor_parallel

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(),  # on CPU: megatron's stand-in CUDA generator (parallel/cpu.py)
        "tracker": {k: v.clone() for k, v in tensor_parallel.get_cuda_rng_tracker().get_states().items()},
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(state: Optional[dict] = None):
    """One shard per global rank: the states belong to that rank's place in the layout."""
    import torch.distributed as dist
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject("rng_state", state, (dist.get_world_size(),), (dist.get_rank(),), replica_id=0)


def _model_sharded_state_dict(model_chunks: list) -> dict:
    # Tensors are named by the bare GPTModel (DDP would prefix "module."), as Megatron-LM does; the
    # chunk keys are only this dict's nesting: tensors are matched by their global names.
    return {f"chunk{i}": _unwrapped(chunk).sharded_state_dict() for i, chunk in enumerate(model_chunks)}


def _optimizer_sharded_state_dict(optimizer, model_sd: dict, is_loading: bool, fmt: str) -> dict:
    # the distributed optimizer's format (module docstring); the other optimizers ignore the key
    _ensure_adam_state(optimizer)
    return optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata={"distrib_optim_sharding_type": fmt})


@contextlib.contextmanager
def _bounded_memory(optimizer):
    """No copy of the training state while megatron builds, writes or reads a checkpoint
    (r1mega.training.checkpoint_memory has the measured cause)."""
    from r1mega.training.checkpoint_memory import fully_reshardable_without_copies, writes_without_clones

    with writes_without_clones(), (
        fully_reshardable_without_copies(optimizer) if optimizer is not None else contextlib.nullcontext()
    ):
        yield


def _ensure_adam_state(optimizer) -> None:
    """Give a never-stepped torch Adam its (zero) state, as its first step would.

    megatron's DistributedOptimizer.state_dict() reads the step count from the inner optimizer's
    per-parameter state when neither apex nor transformer-engine is installed, and asserts when
    there is none yet, i.e. before the first step: loading into a fresh optimizer (every resume)
    and saving at step 0 would fail. Zero moments at step 0 are exactly torch's lazy
    initialisation, and a load overwrites them.
    """
    parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    for part in parts:
        inner = getattr(part, "optimizer", None)
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)) or len(inner.state) > 0:
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                inner.state[p] = {
                    "step": torch.tensor(0.0),
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }


def _unshare_adam_steps(optimizer) -> None:
    """Give every parameter its own Adam "step" tensor after a load.

    megatron-core 0.16.1's DistributedOptimizer.load_state_dict (without apex/transformer-engine)
    restores the step by putting one tensor object into every parameter's state, and torch keeps
    it as is; each Adam step then increments that shared tensor once per parameter, so the bias
    correction of the next steps is computed with a step count ~num_params too high. Measured:
    a resumed run's second step differed from the uninterrupted run by 1% in loss.
    """
    parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    for part in parts:
        inner = getattr(part, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            continue
        for state in inner.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()


@contextlib.contextmanager
def _keep_torch_adam_step(optimizer):
    """Work around a megatron-core 0.16.1 gap when the distributed optimizer wraps torch's Adam
    (no apex / transformer-engine, e.g. on CPU).

    `DistributedOptimizer.load_state_dict` first restores each parameter's Adam "step" from the
    saved param_groups, then `load_parameter_state_from_fully_reshardable` skips "step" in the
    loaded per-parameter state ("handled separately") while `_set_main_param_and_optimizer_states`
    copies every key the optimizer state has, "step" included: KeyError. For the duration of the
    load, the state passed in is completed with the step already restored (copied onto itself).
    Applied only where the code still has that shape; a fixed megatron is left alone.
    """
    import inspect

    from megatron.core.optimizer import distrib_optimizer as dopt

    parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    targets = [p for p in parts if isinstance(p, dopt.DistributedOptimizer)]
    buggy = not dopt.HAVE_APEX_OR_TE and "dst_tensors[key].copy_(tensors[key])" in inspect.getsource(
        dopt.DistributedOptimizer._set_main_param_and_optimizer_states
    )
    if not buggy or not targets:
        yield
        return
    for part in targets:
        original = part._set_main_param_and_optimizer_states

        def with_step(model_param, tensors, _original=original, _part=part):
            if "step" not in tensors:
                group_index, group_order = _part.model_param_group_index_map[model_param]
                main_param = _part.optimizer.param_groups[group_index]["params"][group_order]
                step = _part.optimizer.state[main_param].get("step")
                if step is not None:
                    tensors = {**tensors, "step": step}
            return _original(model_param, tensors)

        part._set_main_param_and_optimizer_states = with_step  # instance attribute, removed below
    try:
        yield
    finally:
        for part in targets:
            del part._set_main_param_and_optimizer_states


def _unwrapped(chunk):
    while hasattr(chunk, "module") and not hasattr(chunk, "decoder"):
        chunk = chunk.module
    return chunk


def _fsync_tree(path: Path) -> None:
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# ------------------------------------------------------------------------------------------------
# save
# ------------------------------------------------------------------------------------------------


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model_chunks: list,
    optimizer=None,
    scheduler=None,
    extra_state: Optional[dict] = None,
    *,
    model_config=None,
    keep_last: int = 0,
    optimizer_format: str = "fully_reshardable",
) -> Path:
    """Save a checkpoint of `step` under `root` atomically (module docstring); every rank calls it.

    `extra_state`: picklable trainer state, identical on all ranks (e.g. the data sampler's
    state_dict, a reference model's step). `model_config`: the ModelConfig, recorded so loading
    into a different architecture fails with a clear message. `keep_last` > 0 deletes older
    complete checkpoints after this one is complete. `optimizer_format`: the distributed
    optimizer's layout on disk (CheckpointConfig.optimizer_format). Returns the checkpoint directory.
    """
    from megatron.core import dist_checkpointing

    if step < 0:
        raise ValueError(f"save_checkpoint: step must be >= 0, got {step}")
    extra_state = dict(extra_state or {})
    try:  # every rank finds out here, before any collective, rather than rank 0 alone mid-save
        pickle.dumps(extra_state)
    except Exception as e:
        raise CheckpointError(f"save_checkpoint: extra_state is not picklable ({type(e).__name__}: {e})") from None
    _check_weights_only(extra_state)
    root = Path(root)
    final = root / checkpoint_name(step)
    tmp = root / (checkpoint_name(step) + _INCOMPLETE)
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob("iter_*" + _INCOMPLETE):  # killed saves: never complete, never loaded
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    if optimizer is not None:
        _ensure_adam_state(optimizer)  # (before the first step) the state a step would create
    with metered_io("saved", final, model_chunks, optimizer):
        try:
            model_sd = _model_sharded_state_dict(model_chunks)
            state: dict[str, Any] = {"model": model_sd, "step": step, "extra_state": extra_state, "rng_state": _rng_sharded_object(_rng_state())}
            with _bounded_memory(optimizer):  # checkpoint_memory: no copies of the state
                if optimizer is not None:
                    state["optimizer"] = _optimizer_sharded_state_dict(optimizer, model_sd, False, optimizer_format)
                if scheduler is not None:
                    state["scheduler"] = scheduler.state_dict()
                dist_checkpointing.save(state, str(tmp))  # ends with a barrier
            del state, model_sd
            if _rank() == 0:
                info = {
                    "format_version": _FORMAT_VERSION,
                    "step": step,
                    "time": time.time(),
                    "layout": _layout(),
                    "has_optimizer": optimizer is not None,
                    "optimizer_format": optimizer_format if optimizer is not None else None,
                    "has_scheduler": scheduler is not None,
                    "extra_state_keys": sorted(extra_state),
                    "model_config": to_dict(model_config) if model_config is not None else None,
                }
                _write_atomic(tmp / INFO_FILE, json.dumps(info, indent=1))
                _fsync_tree(tmp)
                if final.exists():  # the same step saved again (e.g. after a resume): replace it
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _fsync_dir(root)
                _write_atomic(root / LATEST_FILE, final.name + "\n")
                if keep_last > 0:
                    _prune(root, keep_last)
        except BaseException:
            if _rank() == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        _barrier()
    return final


def _check_weights_only(extra_state: dict) -> None:
    """extra_state must load back with weights_only (loading never unpickles arbitrary objects):
    tensors, numbers, strings, None, and lists/tuples/dicts of them."""
    from r1mega.convert.mcore_checkpoint import unpickling_reason

    buffer = io.BytesIO()
    torch.save(extra_state, buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"save_checkpoint: extra_state could not be loaded back: {unpickling_reason(e)}") from None


def _prune(root: Path, keep_last: int) -> None:
    complete = sorted((p for p in root.iterdir() if is_complete(p)), key=lambda p: _step_of(p))
    for old in complete[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# load
# ------------------------------------------------------------------------------------------------


def _verify_files(path: Path) -> None:
    """Every file the torch_dist metadata refers to exists and is long enough (no collective, so
    every rank reaches the same verdict before megatron's load starts its collectives)."""
    for name in ("metadata.json", "common.pt", ".metadata"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: {name} is missing; the checkpoint is incomplete or damaged")
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as e:
        raise CheckpointError(f"{path}/.metadata: unreadable ({type(e).__name__}: {e})") from None
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for rel, size in sorted(needed.items()):
        file = path / rel
        if not file.is_file():
            raise CheckpointError(f"{path}: shard file {rel} is missing")
        actual = file.stat().st_size
        if actual < size:
            raise CheckpointError(f"{path}: shard file {rel} is truncated ({actual} bytes, needs {size})")


def _check_model_config(path: Path, info: dict, model_config) -> None:
    saved = info.get("model_config")
    if model_config is None or saved is None:
        return
    saved = {"head": "lm", **saved}  # saved before reward models existed: a causal LM
    current = to_dict(model_config)
    diffs = [
        f"{k}: {saved.get(k)!r} (checkpoint) vs {current.get(k)!r} (this run)"
        for k in sorted(set(saved) | set(current))
        if k not in _MODEL_FIELDS_FREE_TO_CHANGE and saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointError(f"{path}: saved for a different model; " + "; ".join(diffs))


def check_checkpoint_model(path: str | os.PathLike, model_config) -> None:
    """CheckpointError naming the differing fields when the complete checkpoint at `path` was saved
    for another model than `model_config` (what loading it would refuse), before anything is built."""
    path = Path(path)
    _check_model_config(path, read_checkpoint_info(path), model_config)


def _explain_load_error(path: Path, e: BaseException) -> CheckpointError:
    """The line that says what went wrong: torch's CheckpointException wraps each rank's traceback."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    refused = next((line for line in lines if "Unsupported global" in line), None)
    if refused is not None:  # a rank's weights-only read, wrapped by torch.distributed.checkpoint
        from r1mega.convert.mcore_checkpoint import unpickling_reason

        return CheckpointError(f"{path}: refusing to load: {unpickling_reason(RuntimeError(refused))}")
    reason = next((line for line in reversed(lines) if "Exception:" in line or "Error:" in line), lines[-1] if lines else "")
    return CheckpointError(f"{path}: loading failed: {reason or type(e).__name__}")


def load_checkpoint(
    path: str | os.PathLike,
    model_chunks: list,
    optimizer=None,
    scheduler=None,
    *,
    model_config=None,
    load_optimizer: bool = True,
    load_rng: bool = True,
) -> LoadedCheckpoint:
    """Restore a complete checkpoint into this rank's model chunks (and optimizer / scheduler / RNG).

    Works under any layout; RNG states only come back when the layout is the one saved. Raises
    CheckpointError (on every rank alike) for an incomplete or damaged checkpoint, a different model
    config, or a missing optimizer state when `load_optimizer` is set.
    """
    from megatron.core import dist_checkpointing

    path = Path(path)
    if not is_complete(path):
        raise CheckpointError(f"{path}: not a complete checkpoint (final iter_N name and {INFO_FILE} needed)")
    info = read_checkpoint_info(path)
    if info.get("format_version") != _FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {info.get('format_version')} is not {_FORMAT_VERSION}")
    _check_model_config(path, info, model_config)
    _verify_files(path)
    want_optimizer = optimizer is not None and load_optimizer
    if want_optimizer and not info.get("has_optimizer"):
        raise CheckpointError(
            f"{path}: has no optimizer state (saved with checkpoint.save_optimizer=false); "
            "set checkpoint.load_optimizer=false to start with fresh optimizer moments"
        )
    same_layout = info.get("layout") == _layout()
    restore_rng = load_rng and same_layout

    if want_optimizer:
        _ensure_adam_state(optimizer)  # the state a step would create: not counted as the load's
    with metered_io("loaded", path, model_chunks, optimizer):
        model_sd = _model_sharded_state_dict(model_chunks)
        request: dict[str, Any] = {"model": model_sd}
        if want_optimizer:
            with _bounded_memory(optimizer):  # reads straight into the optimizer's state
                request["optimizer"] = _optimizer_sharded_state_dict(optimizer, model_sd, True, info["optimizer_format"])
        if restore_rng:
            request["rng_state"] = _rng_sharded_object()
        from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

        from r1mega.convert.mcore_checkpoint import unpickling_reason, weights_only_loads
        from r1mega.training.checkpoint_memory import merges_in_place

        merges_in_place(request)  # gated-MLP halves read in place stay there
        try:
            with weights_only_loads():  # every torch.load inside, DCP's object reads included
                loaded = dist_checkpointing.load(request, str(path))
        except pickle.UnpicklingError as e:
            raise CheckpointError(f"{path}: refusing to load: {unpickling_reason(e)}") from None
        except (Exception, CheckpointException) as e:
            raise _explain_load_error(path, e) from e
        for i, chunk in enumerate(model_chunks):
            _unwrapped(chunk).load_state_dict(loaded["model"][f"chunk{i}"], strict=True)
        if want_optimizer:
            with _keep_torch_adam_step(optimizer):
                optimizer.load_state_dict(loaded["optimizer"])
            _unshare_adam_steps(optimizer)
        elif optimizer is not None:
            optimizer.reload_model_params()  # main (fp32) copies follow the loaded weights
        if scheduler is not None and "scheduler" in loaded:
            scheduler.load_state_dict(loaded["scheduler"])
        if restore_rng:
            _set_rng_state(loaded["rng_state"])
        elif load_rng:
            logger.info(
                "%s: RNG states not restored: saved under layout %s, running %s", path, info.get("layout"), _layout()
            )
    return LoadedCheckpoint(
        path=path,
        step=int(loaded["step"]),
        extra_state=dict(loaded.get("extra_state") or {}),
        optimizer_loaded=want_optimizer,
        rng_restored=restore_rng,
        info=info,
    )


def load_model_weights(path: str | os.PathLike, model_chunks: list, *, model_config=None) -> Path:
    """Only the model weights of a checkpoint (a complete one, or the latest complete one inside a
    root), under any layout: initial weights for the next stage (SFT from a base, RL from SFT)."""
    resolved = resolve_resume(str(path), path)
    if resolved is None:  # pragma: no cover - resolve_resume raises instead
        raise CheckpointError(f"{path}: no checkpoint")
    load_checkpoint(resolved, model_chunks, model_config=model_config, load_optimizer=False, load_rng=False)
    return resolved


def load_body_weights(path: str | os.PathLike, model_chunks: list, *, model_config) -> Path:
    """A causal LM checkpoint's weights minus its output layer, into a reward model
    (`model_config.head == "score"`) of the same architecture, under any layout: the score head
    keeps its fresh initialisation. Returns the checkpoint directory used."""
    import dataclasses

    from megatron.core import dist_checkpointing

    resolved = resolve_resume(str(path), path)
    if resolved is None:  # pragma: no cover - resolve_resume raises instead
        raise CheckpointError(f"{path}: no checkpoint")
    info = read_checkpoint_info(resolved)
    _check_model_config(resolved, info, dataclasses.replace(model_config, head="lm"))
    _verify_files(resolved)
    with metered_io("loaded", resolved, model_chunks):
        model_sd = _model_sharded_state_dict(model_chunks)
        for chunk_sd in model_sd.values():
            for key in [k for k in chunk_sd if k.startswith("output_layer.")]:
                del chunk_sd[key]  # the LM head is not read; the score head is not in the checkpoint
        from torch.distributed.checkpoint.api import CheckpointException

        from r1mega.convert.mcore_checkpoint import weights_only_loads

        try:
            with weights_only_loads():
                loaded = dist_checkpointing.load({"model": model_sd}, str(resolved))
        except (Exception, CheckpointException) as e:
            raise _explain_load_error(resolved, e) from e
        for i, chunk in enumerate(model_chunks):
            result = _unwrapped(chunk).load_state_dict(loaded["model"][f"chunk{i}"], strict=False)
            missing = [k for k in result.missing_keys if not k.startswith("output_layer.")]
            if missing or result.unexpected_keys:
                raise CheckpointError(f"{resolved}: does not fit the reward model: missing {missing}, unexpected {result.unexpected_keys}")
    return resolved


# ------------------------------------------------------------------------------------------------
# preemption
# ------------------------------------------------------------------------------------------------


class PreemptionWatcher:
    """SIGTERM / SIGUSR1 set a flag (the handler does nothing else); `should_stop()` tells every
    rank whether any rank got one, so all of them save at the same step and exit cleanly."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        self.received = signum

    def __enter__(self) -> "PreemptionWatcher":
        if self.enabled:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def should_stop(self) -> bool:
        """Collective: True on every rank if any rank received a signal."""
        import torch.distributed as dist

        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
