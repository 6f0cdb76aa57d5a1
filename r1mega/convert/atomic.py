"""Write a directory all at once: into a temporary sibling, renamed into place only on success.

A conversion that fails (bad input found late, a crash, Ctrl-C) therefore never leaves a
half-written destination: the destination either does not exist, keeps its previous content, or
holds the complete result. With several ranks, rank 0 names the temporary directory, everyone
writes into it, and rank 0 renames after a barrier. A process killed outright can leave a hidden
`.<name>.tmp-*` directory beside the destination; it is never mistaken for the result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_directory", "check_destination"]


def check_destination(dest: Union[str, os.PathLike], *, overwrite: bool) -> Path:
    """The resolved destination; ValueError when it exists and may not be replaced."""
    dest = Path(dest).resolve()
    if dest.exists() and not overwrite:
        raise ValueError(f"{dest}: already exists (pass --overwrite to replace it once the new one is complete)")
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"{dest}: exists and is not a directory")
    return dest


def _world():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


@contextlib.contextmanager
def atomic_directory(dest: Union[str, os.PathLike], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory beside `dest`; on success it becomes `dest`.

    A collective when torch.distributed is running: every rank must enter and leave it. On an
    exception the temporary directory is removed (by rank 0) and `dest` is left as it was.
    """
    dest = check_destination(dest, overwrite=overwrite)
    dist = _world()
    rank0 = dist is None or dist.get_rank() == 0
    holder = [None]
    if rank0:
        dest.parent.mkdir(parents=True, exist_ok=True)
        holder[0] = tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent)
    if dist is not None:
        dist.broadcast_object_list(holder, src=0)
    tmp = Path(holder[0])
    try:
        yield tmp
        if dist is not None:
            dist.barrier()
    except BaseException:
        if rank0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if rank0:
        _commit(tmp, dest)
    if dist is not None:
        dist.barrier()


def _default_modes(root: Path) -> None:
    """mkdtemp makes a 0700 directory (and some writers 0600 files): give the result the modes a
    plain mkdir / open would have under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def _commit(tmp: Path, dest: Path) -> None:
    _default_modes(tmp)
    if not dest.exists():
        os.rename(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, old / dest.name)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
