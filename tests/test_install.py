"""Installing and importing r1mega the way users do: the repo's kernels/ never shadows PyPI's
`kernels`, and the locks of tested versions agree with setup.py's ranges."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

_WHICH_KERNELS = """
import json, kernels, r1mega.kernels
import transformers.activations  # imports PyPI's kernels (transformers.integrations.hub_kernels)
from kernels import CUDAProperties  # noqa: F401, PyPI's API
print(json.dumps({"kernels": kernels.__file__, "r1mega.kernels": r1mega.kernels.__file__,
                  "fused_logprob": hasattr(r1mega.kernels, "fused_logprob")}))
"""


def _in_repo(path: str) -> bool:
    return Path(path).resolve().is_relative_to(ROOT)


def _run_from_root(args: list[str], stdin: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, input=stdin, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_pypi_kernels_wins_from_the_repo_root(how):
    # `python -c` and `python -` put the working directory (the repo root) first on sys.path, like
    # a notebook or REPL started there; `python -m pytest` is the test below
    r = _run_from_root(["-c", _WHICH_KERNELS]) if how == "-c" else _run_from_root(["-"], stdin=_WHICH_KERNELS)
    assert not _in_repo(r["kernels"]), r  # PyPI's package, from site-packages
    assert Path(r["r1mega.kernels"]).resolve() == ROOT / "kernels" / "__init__.py"
    assert r["fused_logprob"]


def test_pypi_kernels_wins_inside_this_test_process():
    # pytest started as `python -m pytest` in the repo root has the root on sys.path too
    import kernels

    import r1mega.kernels

    assert not _in_repo(kernels.__file__)
    assert hasattr(kernels, "CUDAProperties") and hasattr(r1mega.kernels, "policy_loss")


def test_without_pypi_kernels_the_name_is_absent_not_the_repo_directory():
    # -S: no site-packages, so no PyPI kernels; the repo's directory must not stand in for it
    probe = ("import sys\ntry:\n    import kernels\nexcept ModuleNotFoundError as e:\n"
             "    print('absent', e.name)\nelse:\n    print('found', kernels.__file__)\n")
    out = subprocess.run([sys.executable, "-S", "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split()[:2] == ["absent", "kernels"], out.stdout + out.stderr


# ------------------------------------------------------------------------------------------------
# locks vs setup.py
# ------------------------------------------------------------------------------------------------


def _setup_requirements() -> tuple[list[Requirement], dict[str, list[Requirement]]]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: k.value for k in call.keywords}
    install = [Requirement(r) for r in ast.literal_eval(kw["install_requires"])]
    extras = {k: [Requirement(r) for r in v] for k, v in ast.literal_eval(kw["extras_require"]).items()}
    return install, extras


def _lock(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


@pytest.mark.parametrize("lock, extras", [("lock-cpu.txt", ["test"]), ("lock-gpu.txt", ["gpu"])])
def test_each_lock_pins_every_requirement_within_setup_ranges(lock, extras):
    install, extra_reqs = _setup_requirements()
    pins = _lock(lock)
    for req in install + [r for e in extras for r in extra_reqs[e]]:
        name = canonicalize_name(req.name)
        assert name in pins, f"{lock} has no pin for {req.name} (setup.py requires it)"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {req.name}=={pins[name]}, outside setup.py's {req.specifier}")


def test_upper_bounds_on_the_libraries_whose_internals_r1mega_relies_on():
    install, extras = _setup_requirements()
    by_name = {canonicalize_name(r.name): r for r in install + extras["test"] + extras["gpu"]}
    for name in ("megatron-core", "transformers", "triton", "torch", "sglang"):
        spec = by_name[name].specifier
        assert any(s.operator in ("<", "<=", "==") for s in spec), f"{name} {spec} has no upper bound"


def test_the_gpu_lock_holds_sglangs_pins():
    pins = _lock("lock-gpu.txt")
    assert pins["sglang"] == "0.5.23" and pins["torch"] == "2.14.1" and pins["transformers"] == "5.19.0"


def test_ci_and_the_readme_install_from_the_cpu_lock():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert 'PIP_CONSTRAINT="$PWD/requirements/lock-cpu.txt"' in ci
    assert "requirements/lock-cpu.txt" in readme.split("## Map of the repo")[0]
