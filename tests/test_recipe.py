"""`r1mega recipe`: stage wiring, markers, skip/resume/--from/--only, provenance, bad inputs.

The pipeline tests run a micro recipe (pretrain -> rl -> sample -> select -> sft, a few steps each)
in fresh processes (tests/_recipe_fns.py), once uninterrupted and once with a failure injected right
after a checkpoint inside the sft stage, then compare the two runs' artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

MICRO = {
    "name": "micro",
    "defaults": str(REPO / "examples/configs/tiny_pretrain.yaml"),
    "eval": {"config": {"samples_per_prompt": 2, "max_prompts": 4, "max_new_tokens": 16}},
    "stages": [
        {"name": "base", "kind": "pretrain", "eval": False, "config": {
            "data": {"procedural": {"train_size": 64, "test_size": 8}},
            "sft": {"steps": 4, "global_batch_size": 8, "micro_batch_size": 8, "eval_every": 0},
            "pretrain": {"mixed_language_fraction": 0.5, "export_hf": False},
            "optimizer": {"lr_warmup_steps": 0},
            "logging": {"tensorboard": False, "print_every": 0}}},
        {"name": "zero", "kind": "rl", "init": "base", "eval": False,
         "base": str(REPO / "examples/configs/tiny_r1_zero.yaml"), "config": {
             "data": {"procedural": {"train_size": 64, "test_size": 8}},
             "rl": {"steps": 2, "prompts_per_step": 4, "micro_batch_size": 8, "eval_every": -1, "eval_at_start": False},
             "algorithm": {"group_size": 2}, "rollout": {"max_new_tokens": 16},
             "logging": {"tensorboard": False, "print_every": 0}}},
        {"name": "samples", "kind": "sample", "checkpoint": "zero",
         "config": {"data": {"procedural": {"train_size": 64, "test_size": 8}}},
         "sample": {"n": 2, "max_prompts": 6, "max_new_tokens": 16, "prompts_per_chunk": 4}},
        {"name": "picked", "kind": "select", "samples": "samples",
         "select": {"filters": [], "nonreasoning": {"count": 3}}},
        {"name": "sft", "kind": "sft", "init": "base", "data": "picked", "config": {
            "sft": {"steps": 4, "global_batch_size": 4, "micro_batch_size": 4, "eval_every": 0},
            "optimizer": {"lr_warmup_steps": 0}, "checkpoint": {"save_every": 2}, "logging": {"tensorboard": False, "print_every": 0}}},
        {"name": "eval_zero", "kind": "eval", "checkpoint": "zero"},
    ],
}


def _write_recipe(tmp: Path, recipe: dict) -> Path:
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def _run(recipe: Path, out: Path, *args: str, fail_after: str | None = None,
         signal_after: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tests._recipe_fns"]
    if fail_after:
        cmd += ["--fail-after", fail_after]
    if signal_after:
        cmd += ["--signal-after", signal_after]
    cmd += ["--", str(recipe), f"output_dir={out}", *args]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)


def _weights(ckpt: Path) -> dict:
    """The model tensors of a checkpoint, read with torch.distributed.checkpoint's reader."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = FileSystemReader(str(ckpt))
    meta = reader.read_metadata()
    names = [k for k, v in meta.state_dict_metadata.items()
             if isinstance(v, TensorStorageMetadata) and k.startswith(("embedding.", "decoder.", "output_layer."))
             and "_extra_state" not in k]
    sd = {k: torch.empty(meta.state_dict_metadata[k].size, dtype=meta.state_dict_metadata[k].properties.dtype) for k in names}
    import torch.distributed.checkpoint as dcp

    dcp.load(sd, storage_reader=reader, no_dist=True)
    return sd


pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run (a) and a run that fails inside `sft` after its step-2 checkpoint, then
    is rerun with the same command (b)."""
    tmp = tmp_path_factory.mktemp("recipe")
    recipe = _write_recipe(tmp, MICRO)
    a = _run(recipe, tmp / "a")
    assert a.returncode == 0, a.stdout + a.stderr
    b1 = _run(recipe, tmp / "b", fail_after="sft:2")
    assert b1.returncode != 0 and "injected failure" in b1.stderr, b1.stdout + b1.stderr
    b2 = _run(recipe, tmp / "b")
    assert b2.returncode == 0, b2.stdout + b2.stderr
    return {"recipe": recipe, "a": tmp / "a" / "micro", "b": tmp / "b" / "micro", "out_b": tmp / "b",
            "b1": b1, "b2": b2, "tmp": tmp}


def test_a_signal_inside_a_stage_saves_stops_the_pipeline_and_a_rerun_continues(runs):
    """SIGTERM after the step-2 checkpoint of zero (rl): the job saves step 3 (its next step boundary)
    and the pipeline stops with exit 0 before any later stage; the rerun continues zero from step 3
    and ends with the uninterrupted run's weights."""
    tmp, recipe = runs["tmp"], runs["recipe"]
    rl_micro = yaml.safe_load(recipe.read_text())
    rl_micro["stages"][1]["config"]["rl"]["steps"] = 4
    rl_micro["stages"][1]["config"]["checkpoint"] = {"save_every": 2}
    rl_micro["stages"] = rl_micro["stages"][:2]
    path = tmp / "rl_recipe.yaml"
    path.write_text(yaml.safe_dump(rl_micro, sort_keys=False))
    whole = _run(path, tmp / "whole")
    assert whole.returncode == 0, whole.stderr
    c1 = _run(path, tmp / "c", signal_after="zero:2")
    assert c1.returncode == 0, c1.stderr
    assert "stage zero: stopped by a signal" in c1.stdout and "stopped inside stage zero" in c1.stdout
    c = tmp / "c" / "micro"
    assert not (c / "zero" / "stage.json").exists() and (c / "zero" / "checkpoints" / "iter_0000003").is_dir()
    c2 = _run(path, tmp / "c")
    assert c2.returncode == 0, c2.stderr
    assert "stage zero (rl): continuing an interrupted run" in c2.stdout and "at step 3" in c2.stdout
    wa = _weights(_artifact(tmp / "whole" / "micro", "zero", "checkpoint"))
    wc = _weights(_artifact(c, "zero", "checkpoint"))
    assert _artifact(c, "zero", "checkpoint").name == "iter_0000004"
    for k in wa:
        assert (wa[k] == wc[k]).all(), k


def _marker(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "stage.json").read_text())


def _artifact(run: Path, stage: str, key: str) -> Path:
    from r1mega.recipe.markers import artifact_path

    return artifact_path(_marker(run, stage), key, run)


def test_interrupted_stage_continues_and_matches_the_uninterrupted_run(runs):
    a, b = runs["a"], runs["b"]
    b1, b2 = runs["b1"].stdout, runs["b2"].stdout
    # the failure hit inside sft: earlier stages completed, sft did not
    for stage in ("base", "zero", "samples", "picked"):
        assert f"stage {stage} (" in b1 and (b / stage / "stage.json").is_file()
    assert "stage sft (sft): running" in b1
    # the rerun skipped the completed stages and continued sft from its step-2 checkpoint
    for stage in ("base", "zero", "samples", "picked"):
        assert f"stage {stage} ({_marker(b, stage)['kind']}): complete, skipped" in b2
    assert "stage sft (sft): continuing an interrupted run" in b2
    assert "at step 2" in b2
    assert _marker(b, "sft")["resumed"] is True
    # same artifacts as the uninterrupted run: datasets byte for byte, checkpoints tensor for tensor
    for stage, key in (("samples", "samples"), ("picked", "dataset")):
        fa = _artifact(a, stage, key).read_bytes()
        fb = _artifact(b, stage, key).read_bytes()
        assert fa.replace(str(a).encode(), b"") == fb.replace(str(b).encode(), b""), stage
    for stage in ("base", "zero", "sft"):
        wa = _weights(_artifact(a, stage, "checkpoint"))
        wb = _weights(_artifact(b, stage, "checkpoint"))
        assert wa.keys() == wb.keys() and wa
        for k in wa:
            assert (wa[k] == wb[k]).all(), (stage, k)
    assert _artifact(a, "sft", "checkpoint").name == "iter_0000004"
    # the comparison sees real weights: training moved them
    base, sft = _weights(_artifact(a, "base", "checkpoint")), _weights(_artifact(a, "sft", "checkpoint"))
    assert any(not (base[k] == sft[k]).all() for k in base)


def test_training_stages_end_with_the_held_out_evaluation_and_the_report_has_them(runs):
    b = runs["b"]
    ev = json.loads(_artifact(b, "sft", "eval").read_text())
    greedy = json.loads((b / "sft" / "eval" / "greedy" / "eval.json").read_text())
    heldout = b / "heldout" / "arithmetic_test.jsonl"
    assert list(ev["files"]) == list(greedy["files"]) and heldout.is_file()
    assert ev["all"]["prompts"] == 4 and ev["all"]["samples"] == 8 and greedy["all"]["samples"] == 4
    report = json.loads((b / "report.json").read_text())
    row, zero = report["stages"]  # the evaluated stages, in recipe order
    ev_zero = json.loads(_artifact(b, "eval_zero", "eval").read_text())
    assert zero["stage"] == "eval_zero" and zero["pass@1"] == ev_zero["all"]["pass@1"]
    assert ev_zero["model_path"].endswith("iter_0000002") and ev_zero["all"]["samples"] == 8
    assert row["stage"] == "sft" and row["pass@1"] == ev["all"]["pass@1"] and row["accuracy"] == greedy["all"]["pass@1"]
    assert row["language_consistency"] == ev["all"]["language_consistency"] and row["trained_sequences"] == 16
    assert "| sft | sft |" in (b / "report.md").read_text() and (b / "report.png").stat().st_size > 0


def test_provenance_traces_every_kept_sample_to_its_prompt_and_checkpoint(runs):
    from r1mega.config import load_config
    from r1mega.data.tasks import generate

    b = runs["b"]
    rows = [json.loads(line) for line in (b / "picked" / "dataset.jsonl").read_text().splitlines()]
    samples = {(s["prompt_id"], s["sample_index"]): s
               for s in map(json.loads, (b / "samples" / "samples.jsonl").read_text().splitlines())}
    zero_ckpt = str(_artifact(b, "zero", "checkpoint"))
    proc = load_config(str(REPO / "examples/configs/tiny_pretrain.yaml"),
                       ["data.procedural.train_size=64", "data.procedural.test_size=8"]).data.procedural
    problems = generate(proc, "train")
    reasoning = [r for r in rows if r["metadata"]["provenance"].get("kind") != "nonreasoning"]
    assert len(reasoning) == 6 * 2 and len(rows) == 12 + 3
    for r in reasoning:
        p = r["metadata"]["provenance"]
        assert p["stage"] == "picked" and p["sample_stage"] == "samples" and p["checkpoint"] == zero_ckpt
        task, split, index = p["prompt_id"].split(":")[1:]
        assert (task, split) == ("arithmetic", "train")
        assert problems[int(index)].prompt == r["prompt"] and problems[int(index)].answer == r["answer"]
        assert samples[(p["prompt_id"], p["sample_index"])]["response"] == r["response"]
        assert p["filters_passed"] == []
    assert sorted((r["metadata"]["provenance"]["prompt_id"], r["metadata"]["provenance"]["sample_index"])
                  for r in reasoning) == sorted(samples)


def test_rerun_skips_completed_stages_and_changes_nothing(runs):
    b = runs["b"]
    before = {s: (b / s / "stage.json").read_bytes() for s in ("base", "zero", "samples", "picked", "sft")}
    again = _run(runs["recipe"], runs["out_b"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("complete, skipped") == 6
    assert before == {s: (b / s / "stage.json").read_bytes() for s in before}


def test_changed_config_is_refused_naming_the_key(runs):
    b = runs["b"]
    before = (b / "sft" / "stage.json").read_bytes()
    res = _run(runs["recipe"], runs["out_b"], "stages.sft.config.sft.steps=5")
    assert res.returncode == 2
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "stage sft: completed with another config" in err[0] and "job.sft.steps" in err[0], res.stderr
    assert "--from sft" in err[0]
    assert (b / "sft" / "stage.json").read_bytes() == before


def test_bad_stage_names_and_missing_inputs_change_nothing(runs, tmp_path):
    for flag in ("--from", "--only"):
        res = _run(runs["recipe"], tmp_path / "x", flag, "nope")
        assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
        assert f"{flag} nope: unknown stage" in res.stderr
    res = _run(runs["recipe"], tmp_path / "x", "--only", "sft")
    assert res.returncode == 2 and "stage sft: input init comes from stage base, which has not completed" in res.stderr
    assert not (tmp_path / "x").exists()


def test_input_checkpoint_of_another_model_is_refused(runs, tmp_path):
    import shutil

    b = tmp_path / "copy"
    shutil.copytree(runs["out_b"], b)
    ckpt = _artifact(b / "micro", "base", "checkpoint")  # a moved run directory still resolves
    info = json.loads((ckpt / "r1mega.json").read_text())
    info["model_config"]["hidden_size"] = 64
    (ckpt / "r1mega.json").write_text(json.dumps(info))
    res = _run(runs["recipe"], b, "--from", "sft", "--only", "sft")
    assert res.returncode == 2
    assert "stage sft: input checkpoint of stage base is for another model" in res.stderr and "hidden_size" in res.stderr
    assert (b / "micro" / "sft" / "stage.json").is_file()  # nothing was removed


def test_a_missing_input_artifact_is_refused(runs, tmp_path):
    import shutil

    b = tmp_path / "copy"
    shutil.copytree(runs["out_b"], b)
    (b / "micro" / "picked" / "dataset.jsonl").unlink()
    res = _run(runs["recipe"], b, "--from", "sft", "--only", "sft")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "stage sft: input data:" in res.stderr and "dataset.jsonl (dataset of stage picked) is missing" in res.stderr
    assert (b / "micro" / "sft" / "stage.json").is_file()


def test_from_reruns_that_stage_and_the_later_ones(runs, tmp_path):
    import shutil

    b = tmp_path / "copy"
    shutil.copytree(runs["out_b"], b)
    base_marker = (b / "micro" / "base" / "stage.json").read_bytes()
    res = _run(runs["recipe"], b, "--from", "picked")
    assert res.returncode == 0, res.stderr
    assert "stage base (pretrain): complete, skipped" in res.stdout
    assert "stage samples (sample): complete, skipped" in res.stdout
    assert "stage picked (select): running" in res.stdout and "stage sft (sft): running" in res.stdout
    assert "continuing" not in res.stdout  # the rerun stages start over
    assert (b / "micro" / "base" / "stage.json").read_bytes() == base_marker
