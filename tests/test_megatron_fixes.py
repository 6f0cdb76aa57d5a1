"""Megatron fixes apply wherever the code they fix runs, on every device, not only with the CPU support.

The GPU path is exercised without a GPU: with `torch.cuda.is_available()` reporting True, the
model builder and distributed start-up must still apply every fix (a GPU without transformer-engine
runs the same local spec as the CPU, so DeepSeek-V3 at TP>1 would otherwise train with a wrong
k_pos_emb gradient, silently). Each check runs in a fresh interpreter, where nothing is applied yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PROBE = textwrap.dedent(
    """
    import json, sys, torch
    torch.cuda.is_available = lambda: True          # the GPU path, as the code sees it
    from megatron.core.transformer import multi_latent_attention as mla
    from megatron.core.transformer.moe import moe_utils
    gather_before = mla.gather_from_tensor_model_parallel_region
    from r1mega.parallel import cpu, megatron_fixes
    entry = sys.argv[1]
    try:
        if entry == "build_model":
            from r1mega.models.builder import build_model
            build_model(None, None)                   # refuses: no parallel state (after the fixes)
        elif entry == "init_distributed":
            from r1mega.parallel.config import ParallelConfig
            from r1mega.parallel.distributed import init_distributed
            init_distributed(ParallelConfig(backend="nccl"), seed=0)  # fails later: no NCCL/GPU here
        elif entry == "none":
            pass
    except Exception as e:
        error = type(e).__name__
    else:
        error = None
    print(json.dumps({
        "error": error,
        "applied": megatron_fixes.megatron_fixes_applied(),
        "cpu_support": cpu.cpu_support_enabled(),
        "mla_gather_wrapped": mla.gather_from_tensor_model_parallel_region is not gather_before,
        "mla_have_te": mla.HAVE_TE,
        "moe_te_general_gemm_defined": hasattr(moe_utils, "te_general_gemm"),
        "recompute_fp8_fixed": getattr(__import__("megatron.core.tensor_parallel.random", fromlist=["x"])
                                       .CheckpointWithoutOutput.__init__, "_r1mega_fp8_fix", False),
    }))
    """
)


def _probe(entry: str) -> dict:
    env = {"PYTHONPATH": str(ROOT), "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", _PROBE, entry], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_nothing_is_patched_before_a_job_starts():
    r = _probe("none")
    assert not r["applied"] and not r["mla_gather_wrapped"] and not r["cpu_support"]
    assert not r["recompute_fp8_fixed"]


@pytest.mark.parametrize("entry", ["build_model", "init_distributed"])
def test_the_gpu_path_applies_every_megatron_fix(entry):
    r = _probe(entry)
    assert r["error"] not in (None, "TypeError")  # both stop (no parallel state / no NCCL), after the fixes
    assert r["applied"] and not r["cpu_support"]
    assert r["mla_gather_wrapped"]  # the k_pos_emb gradient fix (TP > 1, local spec)
    assert r["mla_have_te"] is False  # no transformer-engine here
    assert r["moe_te_general_gemm_defined"]
    assert r["recompute_fp8_fixed"]  # selective recompute of layernorm without TE


def test_an_unknown_megatron_release_is_refused(monkeypatch):
    from megatron.core import package_info

    from r1mega.parallel import megatron_fixes

    monkeypatch.setattr(package_info, "__version__", "0.99.0")
    with pytest.raises(megatron_fixes.MegatronPatchError, match="written for megatron-core 0.16.1, found 0.99.0"):
        megatron_fixes.check_megatron_version()
