"""Stage records: what a stage was run with, and the marker that says it finished.

runs/<recipe>/<stage>/
    stage_started.json   written when the stage starts: its config and input fingerprints
    stage.json           written atomically last: config + inputs fingerprints, artifacts, output
                         fingerprint, wall seconds. Its presence is what "completed" means.

Fingerprints are sha256 over canonical JSON. A stage's config fingerprint covers its resolved job
config (every default spelled out) and its recipe section; its input fingerprint is the output
fingerprint of every stage it reads. A dataset's output fingerprint is the file's sha256; a
checkpoint's is its r1mega.json (step, layout, model config) plus the names and sizes of its files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "relative_to_run", "artifact_path", "MARKER", "STARTED", "fingerprint", "file_sha256", "checkpoint_fingerprint", "write_json_atomic",
    "read_marker", "changed_keys",
]

MARKER = "stage.json"
STARTED = "stage_started.json"


def relative_to_run(obj: Any, run_dir: Path) -> Any:
    """`obj` with every string path inside the recipe's run directory made relative to it (`<run>/...`),
    so records and fingerprints survive moving the run directory."""
    root = str(Path(run_dir))
    if isinstance(obj, dict):
        return {k: relative_to_run(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_to_run(v, run_dir) for v in obj]
    if isinstance(obj, str) and (obj == root or obj.startswith(root + os.sep)):
        return "<run>" + obj[len(root):]
    return obj


def artifact_path(marker: dict, key: str, run_dir: Path) -> Path:
    """A stage's artifact as a path (records keep it relative to the run directory)."""
    value = marker["artifacts"][key]
    return Path(run_dir) / value[len("<run>/"):] if value.startswith("<run>/") else Path(value)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(_canonical(obj).encode("utf-8")).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_fingerprint(path: Path) -> str:
    """r1mega.json + file names and sizes: cheap at any model size, and it changes when a stage
    writes another checkpoint (another step, model or layout)."""
    files = sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())
    return fingerprint({"info": (path / "r1mega.json").read_text(encoding="utf-8"), "files": files})


def write_json_atomic(path: Path, data: Any) -> None:
    """Write-temp, fsync, rename, fsync the directory: a kill leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, ensure_ascii=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_marker(stage_dir: Path, name: str = MARKER) -> Optional[dict]:
    """The stage's record, None when absent; a corrupt record raises ValueError naming the file."""
    path = stage_dir / name
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable stage record ({e}); remove it or rerun with --from") from None


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-like trees (for "what changed" lines)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(key)
            else:
                out.extend(changed_keys(old[k], new[k], key))
        return out
    return [] if _canonical(old) == _canonical(new) else [prefix or "<root>"]
