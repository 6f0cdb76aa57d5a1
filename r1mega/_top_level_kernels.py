"""Keep the repo's `kernels/` directory from shadowing PyPI's top-level `kernels` package.

`kernels/` is installed as `r1mega.kernels`, but from the repo root it is also reachable as a
top-level `kernels`, the name of a PyPI package that transformers and SGLang import. When the
directory is imported under that name, `hand_over_to_pypi_kernels` loads the real package from the
rest of sys.path and puts it in `sys.modules["kernels"]`, which is what the import statement then
returns. Without the PyPI package the import fails as if the name did not exist.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def _same_dir(path_entry: str, directory: str) -> bool:
    try:
        return os.path.samefile(path_entry or os.curdir, directory)
    except OSError:
        return False


def hand_over_to_pypi_kernels(kernels_init_file: str) -> None:
    """Replace the module being imported as `kernels` by PyPI's `kernels`, found outside the repo."""
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(kernels_init_file)))
    search_path = [p for p in sys.path if isinstance(p, str) and not _same_dir(p, repo_root)]
    spec = importlib.machinery.PathFinder.find_spec("kernels", search_path)
    if spec is None or spec.loader is None:
        sys.modules.pop("kernels", None)
        raise ModuleNotFoundError(
            "No module named 'kernels' (the repo's kernels/ directory is r1mega.kernels, "
            "not the top-level PyPI package)",
            name="kernels",
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("kernels", None)
        raise
