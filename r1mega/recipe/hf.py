"""A stage's final training checkpoint as an HF directory, for the rollout engine (sampling, judge).

The conversion is the one `tools/convert_mcore_to_hf.py` does on a training checkpoint (model from
its r1mega.json, tokenizer from the run's saved config), run in this process on one rank.
"""

from __future__ import annotations

import os
from pathlib import Path

from r1mega.training.checkpoint import find_latest_checkpoint, is_complete, read_checkpoint_info

__all__ = ["final_checkpoint", "export_for_engine", "checkpoint_model_config"]


def final_checkpoint(root: Path) -> Path:
    """The latest complete checkpoint under a run's checkpoint root (ValueError naming it if none)."""
    root = Path(root)
    if is_complete(root):
        return root
    latest = find_latest_checkpoint(root)
    if latest is None:
        raise ValueError(f"{root}: no complete checkpoint")
    return latest


def checkpoint_model_config(path: Path) -> dict | None:
    return read_checkpoint_info(path).get("model_config")


def export_for_engine(checkpoint: Path, out: Path) -> Path:
    """Write the HF export of `checkpoint` to `out` (once: an export made from the same checkpoint
    is reused), and return `out`."""
    from r1mega.convert.mcore_to_hf import main

    stamp = out / ".source_checkpoint"
    source = str(Path(checkpoint).resolve())
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == source and (out / "config.json").is_file():
        return out
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    try:  # the tool picks a private port for its in-process rank; leave the environment as it was
        code = main(["--mcore-dir", str(checkpoint), "--out", str(out), "--overwrite", "--no-progress"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if code != 0:
        raise ValueError(f"{checkpoint}: the HF export for the rollout engine failed (see the error above)")
    stamp.write_text(source, encoding="utf-8")
    return out
