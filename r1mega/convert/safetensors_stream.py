"""A safetensors file written tensor by tensor: memory bounded by one tensor, not by the file.

`safetensors.torch.save_file` needs every tensor of a file in memory at once (up to a whole
5 GB shard of an HF export, on top of training state). Here each tensor's bytes go to the file as
they arrive, after a space reserved for the header; the header (names, dtypes, shapes, offsets) is
written into that space when the file is closed, padded with spaces as the format allows. A header
larger than the reservation (more than ~8000 tensors in one file) moves the data once, in chunks.

    with SafetensorsStreamWriter(path) as w:
        w.add("model.embed_tokens.weight", tensor)
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["SafetensorsStreamWriter", "HEADER_RESERVE"]

HEADER_RESERVE = 1 << 20
"""Bytes reserved at the start of each file for the length word and the JSON header."""

_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _attr, _name in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _attr):
        _NAMES[getattr(torch, _attr)] = _name


def _raw_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes in memory order, without a copy when it is a contiguous CPU tensor."""
    t = tensor.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(-1).view(torch.uint8).numpy())


class SafetensorsStreamWriter:
    def __init__(self, path: Union[str, os.PathLike], metadata: Optional[dict[str, str]] = None):
        self.path = Path(path)
        self._file = open(self.path, "wb")
        self._file.seek(HEADER_RESERVE)
        self._entries: dict[str, dict] = {}
        self._offset = 0
        self._metadata = dict(metadata or {"format": "pt"})

    @property
    def nbytes(self) -> int:
        """Tensor bytes written so far."""
        return self._offset

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._entries:
            raise ValueError(f"{self.path.name}: tensor {name!r} written twice")
        if tensor.dtype not in _NAMES:
            raise ValueError(f"{self.path.name}: {name}: dtype {tensor.dtype} has no safetensors name")
        data = _raw_bytes(tensor)
        self._file.write(data)
        n = data.nbytes
        self._entries[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                               "data_offsets": [self._offset, self._offset + n]}
        self._offset += n

    def close(self) -> None:
        header = json.dumps({"__metadata__": self._metadata, **self._entries}, separators=(",", ":")).encode()
        room = HEADER_RESERVE - 8
        if len(header) > room:  # move the data to make room (rare: thousands of tensors in one file)
            room = (len(header) + 7) // 8 * 8
            self._shift_data(8 + room)
        self._file.seek(0)
        self._file.write(struct.pack("<Q", room) + header + b" " * (room - len(header)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()

    def _shift_data(self, start: int) -> None:
        self._file.flush()
        moved = self.path.with_name(self.path.name + ".data")
        with open(self.path, "rb") as src, open(moved, "wb") as dst:
            src.seek(HEADER_RESERVE)
            dst.seek(start)
            shutil.copyfileobj(src, dst, 16 << 20)
        self._file.close()
        os.replace(moved, self.path)
        self._file = open(self.path, "r+b")

    def abort(self) -> None:
        self._file.close()

    def __enter__(self) -> "SafetensorsStreamWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
