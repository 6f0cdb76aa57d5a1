"""`run_eval` on the two kinds of checkpoint the project writes: a run's megatron checkpoint and an
HF export of the same weights give identical samples and metrics for the same seed."""

from __future__ import annotations

import json

import pytest

from r1mega.parallel.launch import run_distributed
from tests import _eval_fns


@pytest.mark.dist
def test_megatron_checkpoint_and_hf_export_give_identical_metrics(tmp_path):
    (result,) = run_distributed(_eval_fns.save_both_ways_and_evaluate, 1, str(tmp_path), timeout=600)
    mg, hf = result["megatron"], result["hf"]
    assert mg["report"]["model_kind"] == "megatron" and mg["report"]["step"] == 3
    assert mg["report"]["model_path"].endswith("checkpoints/iter_0000003")
    assert hf["report"]["model_kind"] == "hf"
    # the same completions, token for token, and so the same numbers
    assert mg["samples"] == hf["samples"]
    assert mg["report"]["files"] == hf["report"]["files"] and mg["report"]["all"] == hf["report"]["all"]
    rows = [json.loads(line) for line in mg["samples"].splitlines()]
    assert len(rows) == 4 * 3
    assert len({r["completion"] for r in rows}) > 1  # sampled, not a constant output
    m = mg["report"]["all"]
    assert set(m) == {"prompts", "samples", "pass@1", "pass@2", "cons@3", "format",
                      "language_consistency", "mean_length"}
    assert (m["prompts"], m["samples"]) == (4, 12)
    assert m["mean_length"] == sum(r["length"] for r in rows) / 12 > 0
    assert set(mg["report"]["files"]["heldout.jsonl"]["tasks"]) == {"arithmetic", "countdown"}
