"""Import SGLang 0.5.23's own Python modules on a CPU-only machine (the contract tests' entry point).

`.ci/sglang_cpu.sh` installs sglang and the pure-Python modules its imports need, each `--no-deps`.
One import cannot be satisfied honestly there: `sglang.srt.configs` (reached from the engine and from
`managers.io_struct`) imports torchvision at module level for two vision-model preprocessors
(`multimodal/internvl_utils.py`, `configs/deepseek_ocr.py`). The registry has no CPU build of
torchvision, and its CUDA build does not load against CPU torch ("operator torchvision::nms does not
exist"); installed, it would also break transformers' image utilities for the whole suite. So, for
the duration of the import only, `torchvision` is a placeholder module holding the two names those
files read at import time (`transforms`, `InterpolationMode`); it is removed from `sys.modules`
afterwards, and transformers' torchvision probe is evaluated before, so transformers keeps seeing
torchvision as absent. No SGLang class is replaced: every class the tests use is SGLang's own.
"""

from __future__ import annotations

import enum
import importlib
import importlib.machinery
import sys
import types

import pytest

_MODULES = (
    "sglang.srt.entrypoints.engine",
    "sglang.srt.server_args",
    "sglang.srt.managers.io_struct",
    "sglang.srt.managers.tokenizer_control_mixin",
    "sglang.srt.sampling.sampling_params",
    "sglang.srt.weight_sync.tensor_bucket",
    "sglang.srt.utils",
    "sglang.srt.utils.patch_torch",
    "sglang.srt.constants",
)


def _placeholder(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    module.__path__ = []
    return module


def _import_with_torchvision_placeholder() -> dict[str, types.ModuleType]:
    from transformers.utils import import_utils

    import_utils.is_torchvision_available()  # cached: False, as installed
    tv, transforms, functional = (_placeholder(n) for n in
                                  ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"))

    class InterpolationMode(enum.Enum):  # the members SGLang's preprocessors name at import time
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    tv.transforms, transforms.functional = transforms, functional
    transforms.InterpolationMode = functional.InterpolationMode = InterpolationMode
    added = {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}
    sys.modules.update(added)
    try:
        return {name: importlib.import_module(name) for name in _MODULES}
    finally:
        for name in added:
            sys.modules.pop(name, None)


def sglang_modules() -> dict[str, types.ModuleType]:
    """SGLang's modules by dotted name; the test is skipped (with how to install) when sglang is absent."""
    try:
        import sglang
    except ImportError:
        pytest.skip("sglang 0.5.23 is not installed (CPU CI installs it with .ci/sglang_cpu.sh)")
    if sglang.__version__ != "0.5.23":
        pytest.fail(f"the adapter targets sglang 0.5.23; found {sglang.__version__}")
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return {name: importlib.import_module(name) for name in _MODULES}
    return _import_with_torchvision_placeholder()
