"""Per family: a tiny random HF checkpoint (made here with transformers) converted to megatron gives
transformers' own logits on random tokens within 1e-4 (relative, float32), and exported back every
tensor is bit-identical to the original safetensors.

All five families run in one spawned process (megatron's start-up is the expensive part).
"""

from __future__ import annotations

import pytest
import torch

from r1mega.parallel.launch import run_distributed
from tests._convert_fns import run_cases
from tests.convert_helpers import FAMILIES, hf_logits, make_hf_checkpoint, random_tokens, relative_error

LOGITS_TOL = 1e-4


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    """family -> (rank-0 result, transformers' logits)."""
    cases, reference = [], {}
    for i, family in enumerate(FAMILIES):
        directory = make_hf_checkpoint(family, tmp_path_factory.mktemp(family), seed=10 + i)
        tokens = random_tokens(seed=20 + i)
        reference[family] = hf_logits(directory, tokens)
        cases.append(
            {"name": family, "checkpoint": str(directory), "layout": {}, "tokens": tokens, "kwargs": {"control": True}}
        )
    (results,) = run_distributed(run_cases, 1, cases, timeout=900)
    return {r["name"]: (r, reference[r["name"]]) for r in results}


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers(single_process, family):
    result, want = single_process[family]
    got = result["logits"]
    assert got.shape == want.shape
    assert torch.isfinite(got).all(), "NaN logits: some tensor was not loaded"
    err = relative_error(got, want)
    assert err <= LOGITS_TOL, f"{family}: logits off by {err:.2e} (relative)"


@pytest.mark.parametrize("family", FAMILIES)
def test_export_is_bit_identical(single_process, family):
    result, _ = single_process[family]
    assert result["differences"] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_sync_into_the_rollout_engine(single_process, family):
    """The export feeds BuiltinEngine.update_weights (HF names, full tensors): an engine built from
    the converted model config alone then computes the checkpoint's logits."""
    result, want = single_process[family]
    assert relative_error(result["engine_logits"], want) <= LOGITS_TOL


@pytest.mark.parametrize("family", FAMILIES)
def test_logit_check_sees_a_layout_error(single_process, family):
    """Negative control: gate and up exchanged in layer 0 must be far outside the tolerance."""
    result, want = single_process[family]
    assert result["swapped"] >= 1
    assert relative_error(result["control_logits"], want) > 100 * LOGITS_TOL
