"""Read raw records from jsonl / JSON-array / parquet files, each with its file:line location.

A record that cannot be read as a JSON object is yielded with an error instead of data, so the
caller applies the same fail/skip policy as for any other malformed row.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from r1mega.data.errors import DataError, RowError

__all__ = ["RawRecord", "read_records"]


@dataclass
class RawRecord:
    location: str
    data: Optional[dict[str, Any]]
    error: Optional[RowError] = None


def read_records(path: str | os.PathLike) -> Iterator[RawRecord]:
    """Records of one file, chosen by extension: .jsonl/.json (JSON lines or one JSON array), .parquet."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: dataset file not found")
    if p.suffix == ".parquet":
        yield from _read_parquet(p)
    elif p.suffix in (".jsonl", ".json"):
        yield from _read_json(p)
    else:
        raise DataError(f"{p}: unknown dataset format (expected .jsonl, .json or .parquet)")


def _read_json(p: Path) -> Iterator[RawRecord]:
    with open(p, "rb") as f:
        head = f.read(4096).lstrip()
    if head.startswith(b"["):
        yield from _read_json_array(p)
        return
    # Binary lines, decoded one by one: a stray invalid byte spoils its own line, not the file.
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            loc = f"{p}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield RawRecord(loc, None, RowError("bad_json", f"not valid UTF-8 (byte {e.start})"))
                continue
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not rows
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield RawRecord(loc, None, RowError("bad_json", f"invalid JSON ({e.msg} at column {e.colno})"))
                continue
            if not isinstance(obj, dict):
                yield RawRecord(loc, None, RowError("bad_json", f"expected a JSON object, got {type(obj).__name__}"))
                continue
            yield RawRecord(loc, obj)


def _read_json_array(p: Path) -> Iterator[RawRecord]:
    try:
        items = json.loads(p.read_bytes())
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        # One broken array spoils the whole file: there are no rows to skip to.
        raise DataError(f"{p}:{e.lineno}: invalid JSON array ({e.msg} at column {e.colno})") from None
    if not isinstance(items, list):
        raise DataError(f"{p}: expected JSON lines or one JSON array of objects")
    for i, obj in enumerate(items):
        loc = f"{p}:item {i}"
        if not isinstance(obj, dict):
            yield RawRecord(loc, None, RowError("bad_json", f"expected a JSON object, got {type(obj).__name__}"))
        else:
            yield RawRecord(loc, obj)


def _read_parquet(p: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises several types for a corrupt or non-parquet file
        raise DataError(f"{p}: cannot read as parquet ({type(e).__name__}: {e})") from None
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            yield RawRecord(f"{p}:row {row}", obj)
            row += 1
