"""Local HF safetensors checkpoints: checked before use, read slice by slice, written atomically.

Reading never unpickles anything: `.bin` / `.pt` weights are refused. Before any tensor is read,
`HFCheckpoint` checks that the shard index (`model.safetensors.index.json`) and the files agree
(every listed file present, every listed tensor in its file) and that no file is truncated (each
header's data offsets must fit in the file), so a bad checkpoint fails up front with the file named.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

import torch

__all__ = ["HFCheckpoint", "TensorDictSource", "open_hf_source", "write_safetensors_shards", "INDEX_NAME"]

INDEX_NAME = "model.safetensors.index.json"

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
    "F8_E5M2": getattr(torch, "float8_e5m2", None),
}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def _shape_str(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class _Entry:
    __slots__ = ("file", "dtype", "shape")

    def __init__(self, file: Path, dtype: str, shape: tuple[int, ...]):
        self.file, self.dtype, self.shape = file, dtype, shape


def read_header(path: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file, after checking the file holds all of its data."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: truncated or not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise ValueError(f"{path}: truncated or not a safetensors file (header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    data = size - 8 - n
    end = 0
    for name, info in header.items():
        try:
            begin, stop = info["data_offsets"]
            dtype, shape = info["dtype"], info["shape"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: corrupt safetensors header entry for {name!r}") from None
        if _DTYPES.get(dtype) is None:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, which is not supported")
        numel = 1
        for d in shape:
            numel *= int(d)
        if stop - begin != numel * _DTYPES[dtype].itemsize:
            raise ValueError(f"{path}: tensor {name!r} has {stop - begin} bytes for shape {shape} {dtype}")
        end = max(end, stop)
    if end > data:
        raise ValueError(
            f"{path}: truncated: the header describes {end} bytes of tensor data, the file holds {data}"
        )
    return header


class HFCheckpoint:
    """A local HF checkpoint directory (safetensors), indexed by tensor name."""

    def __init__(self, directory: Union[str, os.PathLike]):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ValueError(f"{self.directory}: not a directory")
        self._entries: dict[str, _Entry] = {}
        self._handles: dict[Path, object] = {}
        for path, names in self._files().items():
            header = read_header(path)
            wanted = header.keys() if names is None else names
            for name in wanted:
                info = header.get(name)
                if info is None:
                    raise ValueError(f"{self.directory / INDEX_NAME}: lists {name!r} in {path.name}, which does not contain it")
                if name in self._entries:
                    raise ValueError(f"{self.directory}: tensor {name!r} is in both {self._entries[name].file.name} and {path.name}")
                self._entries[name] = _Entry(path, info["dtype"], tuple(int(d) for d in info["shape"]))

    def _files(self) -> dict[Path, Optional[list[str]]]:
        """file -> tensor names the index puts there (None: every tensor in the file)."""
        index = self.directory / INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{index}: not a safetensors index ({e!r})") from None
            files: dict[Path, list[str]] = {}
            for name, file in weight_map.items():
                files.setdefault(self.directory / file, []).append(name)
            missing = sorted(p.name for p in files if not p.is_file())
            if missing:
                raise ValueError(
                    f"{self.directory}: {len(missing)} shard(s) listed in {INDEX_NAME} are missing: {', '.join(missing)}"
                )
            return dict(files)
        found = sorted(self.directory.glob("*.safetensors"))
        if not found:
            pickled = sorted(p.name for p in self.directory.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
            extra = f" (found {pickled}: pickle checkpoints are never loaded; convert them to safetensors)" if pickled else ""
            raise ValueError(f"{self.directory}: no *.safetensors weights{extra}")
        if len(found) > 1:
            raise ValueError(
                f"{self.directory}: {len(found)} safetensors files but no {INDEX_NAME}; without the index a "
                "missing shard could not be noticed"
            )
        return {found[0]: None}

    # -- queries -------------------------------------------------------------------------------

    def names(self) -> set[str]:
        return set(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def file_of(self, name: str) -> Path:
        return self._entry(name).file

    def dtype_of(self, name: str) -> torch.dtype:
        return _DTYPES[self._entry(name).dtype]

    def _entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None:
            raise ValueError(f"{self.directory}: tensor {name!r} is not in the checkpoint")
        return entry

    # -- reading -------------------------------------------------------------------------------

    def read(self, name: str, expected_shape, index: tuple[slice, ...]) -> torch.Tensor:
        """`tensor[index]`, reading only those bytes; ValueError when the stored shape is not the
        one the model config implies."""
        entry = self._entry(name)
        if entry.shape != tuple(expected_shape):
            raise ValueError(
                f"{entry.file}: tensor {name!r} has shape {_shape_str(entry.shape)}, the model config "
                f"implies {_shape_str(tuple(expected_shape))}"
            )
        handle = self._handles.get(entry.file)
        if handle is None:
            from safetensors import safe_open

            handle = safe_open(str(entry.file), framework="pt", device="cpu")
            self._handles[entry.file] = handle
        if all(s == slice(None) for s in index):
            return handle.get_tensor(name)
        return handle.get_slice(name)[index]

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> "HFCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorDictSource:
    """HF tensors already in memory (a state dict or an export), read like a checkpoint."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        self._tensors = dict(tensors)
        self.directory = "<tensors>"

    def names(self) -> set[str]:
        return set(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._get(name).shape)

    def dtype_of(self, name: str) -> torch.dtype:
        return self._get(name).dtype

    def _get(self, name: str) -> torch.Tensor:
        if name not in self._tensors:
            raise ValueError(f"tensor {name!r} is not among the given HF tensors")
        return self._tensors[name]

    def read(self, name: str, expected_shape, index: tuple[slice, ...]) -> torch.Tensor:
        t = self._get(name)
        if tuple(t.shape) != tuple(expected_shape):
            raise ValueError(
                f"tensor {name!r} has shape {_shape_str(t.shape)}, the model config implies {_shape_str(tuple(expected_shape))}"
            )
        return t[index]

    def close(self) -> None:
        pass


def open_hf_source(source) -> Union[HFCheckpoint, TensorDictSource]:
    if isinstance(source, (HFCheckpoint, TensorDictSource)):
        return source
    if isinstance(source, Mapping):
        return TensorDictSource(source)
    return HFCheckpoint(source)


def write_safetensors_shards(
    buckets: Iterable[list[tuple[str, torch.Tensor]]],
    directory: Union[str, os.PathLike],
    *,
    max_shard_bytes: int = 5 << 30,
    progress=None,
) -> dict[str, str]:
    """Write streamed HF tensors as `model-0000i-of-0000n.safetensors` (or `model.safetensors` when
    one file is enough) plus the index; returns the weight map. `progress(n_tensors)` is called
    after each bucket. Each tensor goes to its file as it arrives (SafetensorsStreamWriter), so the
    memory used is the bucket in hand, not a whole shard."""
    from r1mega.convert.safetensors_stream import SafetensorsStreamWriter

    directory = Path(directory)
    shards: list[tuple[Path, list[str]]] = []
    seen: set[str] = set()
    writer: Optional[SafetensorsStreamWriter] = None
    total = 0

    def new_shard() -> SafetensorsStreamWriter:
        path = directory / f"shard-{len(shards):05d}.tmp"
        shards.append((path, []))
        return SafetensorsStreamWriter(path)

    try:
        for bucket in buckets:
            for name, tensor in bucket:
                nbytes = tensor.numel() * tensor.element_size()
                if name in seen:
                    raise ValueError(f"write_safetensors_shards: tensor {name!r} delivered twice")
                seen.add(name)
                if writer is None or (writer.nbytes and writer.nbytes + nbytes > max_shard_bytes):
                    if writer is not None:
                        writer.close()
                    writer = new_shard()
                writer.add(name, tensor)
                shards[-1][1].append(name)
                total += nbytes
            if progress is not None:
                progress(len(bucket))
            del bucket
        if writer is None:
            writer = new_shard()
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    weight_map: dict[str, str] = {}
    n = len(shards)
    for i, (path, names) in enumerate(shards):
        final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        path.rename(directory / final)
        weight_map.update({name: final for name in names})
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return weight_map
