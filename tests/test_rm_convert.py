"""Reward models <-> HF: per family, a random transformers ...ForSequenceClassification checkpoint
(num_labels=1, pad_token_id set) loaded into megatron (model.head: score) scores right-padded
sequences as transformers does (within 1e-4, relative, float32), at TP=1 and at TP=2 / PP=2, and
exported back every tensor is bit-identical; `r1mega rm`'s own export loads in
AutoModelForSequenceClassification with the trained model's scores."""

from __future__ import annotations

import pytest

from r1mega.parallel.launch import run_distributed
from tests import _rm_hf_fns
from tests.convert_helpers import FAMILIES, relative_error

SCORE_TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for i, family in enumerate(FAMILIES):
        directory = _rm_hf_fns.make_hf_reward_model(family, tmp_path_factory.mktemp(f"rm_{family}"), seed=30 + i)
        tokens, lengths = _rm_hf_fns.rm_tokens(seed=40 + i)
        out[family] = (directory, tokens, lengths, _rm_hf_fns.hf_scores(directory, tokens))
    return out


def _cases(checkpoints, families, layout):
    return [
        {"name": f, "checkpoint": str(checkpoints[f][0]), "layout": layout, "tokens": checkpoints[f][1], "lengths": checkpoints[f][2]}
        for f in families
    ]


@pytest.fixture(scope="module")
def single_process(checkpoints):
    (results,) = run_distributed(_rm_hf_fns.run_rm_cases, 1, _cases(checkpoints, FAMILIES, {}), timeout=900)
    return {r["name"]: r for r in results}


@pytest.mark.dist
@pytest.mark.parametrize("family", FAMILIES)
def test_scores_match_transformers_and_export_is_bit_identical(checkpoints, single_process, family):
    result = single_process[family]
    want = checkpoints[family][3]
    assert result["head"] == "score"
    assert result["differences"] == []
    err = relative_error(result["scores"], want)
    assert err <= SCORE_TOL, f"{family}: scores off by {err:.2e}"
    assert want.abs().min() > 0 and len(set(want.tolist())) == len(want)  # non-trivial scores


@pytest.mark.dist
def test_sharded_reward_models_score_the_same(checkpoints):
    cases = _cases(checkpoints, ["qwen2", "llama"], {"tp": 2}) + _cases(checkpoints, ["qwen3", "qwen3_moe"], {"pp": 2})
    cases += _cases(checkpoints, ["qwen3_moe"], {"ep": 2})
    per_rank = run_distributed(_rm_hf_fns.run_rm_cases, 2, cases, timeout=900)
    for i, case in enumerate(cases):
        got = [r[i] for r in per_rank if r[i]["scores"] is not None]
        assert got, case["name"]
        for r in got:
            assert r["differences"] == [], (case["name"], case["layout"])
            err = relative_error(r["scores"], checkpoints[case["name"]][3])
            assert err <= SCORE_TOL, (case["name"], case["layout"], err)


@pytest.mark.dist
def test_conversion_tools_round_trip_a_reward_model(checkpoints, tmp_path):
    """tools/convert_hf_to_mcore.py then tools/convert_mcore_to_hf.py (at TP=2) give back the same
    bytes and the sequence-classification config (architecture, num_labels, pad_token_id)."""
    import json

    from tests.convert_helpers import bitwise_differences, run_tool, safetensors_state

    src = checkpoints["qwen3"][0]
    mcore, back = tmp_path / "mcore", tmp_path / "hf"
    proc = run_tool("convert_hf_to_mcore.py", "--hf-dir", src, "--out", mcore, "--tp", 2)
    assert proc.returncode == 0, proc.stderr
    proc = run_tool("convert_mcore_to_hf.py", "--mcore-dir", mcore, "--out", back, "--hf-config", src / "config.json")
    assert proc.returncode == 0, proc.stderr
    assert bitwise_differences(safetensors_state(src), safetensors_state(back)) == []
    config = json.loads((back / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForSequenceClassification"]
    assert len(config["id2label"]) == 1 and config["pad_token_id"] == _rm_hf_fns.PAD
