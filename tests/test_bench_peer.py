"""tools/bench_peer.py without running either system: its set-up, the TRL check and the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

import bench_peer  # noqa: E402


def test_a_python_without_trl_is_refused_with_one_clear_line(tmp_path):
    has_trl = subprocess.run([sys.executable, "-c", "import trl"], capture_output=True).returncode == 0
    if has_trl:
        pytest.skip("TRL is installed in this environment: the refusal cannot be shown here")
    with pytest.raises(SystemExit, match=r"TRL is not importable .*pip install -e '\.\[bench\]'"):
        bench_peer.main(["--steps", "1", "--seeds", "1", "--out", str(tmp_path / "r.json")])


def test_the_prompt_file_is_the_samplers_order(tmp_path):
    from r1mega.config import load_config
    from r1mega.data.prompts import load_prompt_dataset
    from r1mega.data.sampler import PromptSampler
    from r1mega.data.tokenizer import load_tokenizer

    cfg = load_config("examples/configs/tiny_r1_zero.yaml", ["data.procedural.train_size=64"])
    path = bench_peer.write_prompts(cfg, 3, tmp_path / "prompts.jsonl")
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    train = load_prompt_dataset(cfg.data, "train", load_tokenizer(cfg.data.tokenizer))
    sampler = PromptSampler(len(train), seed=cfg.data.seed, shuffle=cfg.data.shuffle)
    want = [train[i] for _ in range(3) for i in sampler.next_indices(cfg.rl.prompts_per_step)]
    assert len(rows) == 3 * cfg.rl.prompts_per_step == len(want)
    assert [r["prompt_token_ids"] for r in rows] == [w.prompt_token_ids for w in want]
    assert [r["reference"]["answer"] for r in rows] == [w.reference["answer"] for w in want]


def test_a_job_trl_is_not_matched_to_is_refused():
    from r1mega.config import load_config

    cfg = load_config("examples/configs/tiny_r1_zero.yaml", ["algorithm.kl_coef=0.01"])
    with pytest.raises(SystemExit, match="kl_coef=0.01"):
        bench_peer.check_matched(cfg)
    bench_peer.check_matched(load_config("examples/configs/tiny_r1_zero.yaml"))


def _run(system, seed, s_per_step, wall, acc):
    phases = {p: 0.0 for p in bench_peer.PHASES}
    phases["fwd_bwd"] = s_per_step
    return {"system": system, "seed": seed, "s_per_step": s_per_step, "wall_s": wall, "cpu_util": 1.5,
            "phases": phases, "eval": {"greedy_accuracy": acc, "pass@1": acc / 2}}


def test_summary_ratios_and_table():
    runs = [_run("r1mega", 1, 0.5, 60.0, 0.95), _run("trl", 1, 1.0, 90.0, 0.97),
            _run("r1mega", 2, 0.6, 66.0, 0.96), _run("trl", 2, 0.9, 80.0, 0.98)]
    s = bench_peer.summarize(runs)
    assert s["r1mega_over_trl"]["steps_per_s"] == [2.0, 1.5]
    assert s["r1mega_over_trl"]["steps_per_s_mean"] == pytest.approx(1.75)
    assert s["r1mega_over_trl"]["whole_command_speed"] == [1.5, round(80 / 66, 3)]
    assert s["trl"]["s_per_step"] == {"mean": pytest.approx(0.95), "min": 0.9, "max": 1.0}
    report = {"summary": s, "args": {"pass_k": 32}, "base_eval": {"greedy_accuracy": 0.875, "pass@1": 0.3}}
    table = bench_peer.markdown(report)
    assert "| r1mega | 60-66 | 0.50-0.60 | 95.0%-96.0% | 47.5%-48.0% | 150% |" in table
    assert "| trl | 80-90 | 0.90-1.00 |" in table


def test_repeated_runs_give_each_seed_the_median_and_keep_every_run():
    runs = []
    for repeat, (mine, theirs) in enumerate([(0.50, 0.80), (0.58, 0.84), (0.52, 0.95)]):
        for system, t in (("r1mega", mine), ("trl", theirs)):
            runs.append({**_run(system, 7, t, 40.0 + repeat, 0.9), "repeat": repeat})
    runs.append({**_run("r1mega", 8, 0.6, 50.0, 0.9), "repeat": 0})
    runs.append({**_run("trl", 8, 0.9, 70.0, 0.9), "repeat": 0})
    s = bench_peer.summarize(runs)
    seven = {r["system"]: r for r in bench_peer.per_seed(runs) if r["seed"] == 7}
    assert seven["r1mega"]["s_per_step"] == 0.52 and seven["trl"]["s_per_step"] == 0.84  # medians
    assert seven["r1mega"]["s_per_step_runs"] == [0.50, 0.58, 0.52]
    assert seven["r1mega"]["wall_s"] == 41.0 and seven["r1mega"]["phases"]["fwd_bwd"] == 0.52
    ratio = s["r1mega_over_trl"]
    assert ratio["steps_per_s"] == [round(0.84 / 0.52, 3), 1.5]
    assert ratio["steps_per_s_by_run"] == {7: [1.6, round(0.84 / 0.58, 3), round(0.95 / 0.52, 3)], 8: [1.5]}
    assert ratio["steps_per_s_best"] == [1.6, 1.5]  # 0.80 / 0.50: each system's fastest run
    assert s["r1mega"]["s_per_step"]["min"] == 0.52  # the summary spans seeds, not runs
    table = bench_peer.markdown({"summary": s, "args": {"pass_k": 4}, "base_eval": {"greedy_accuracy": 0.5}})
    assert "run by run" in table


def test_repeats_must_be_positive(tmp_path):
    with pytest.raises(SystemExit, match="--repeats must be >= 1"):
        bench_peer.main(["--steps", "1", "--seeds", "1", "--repeats", "0", "--systems", "r1mega",
                         "--out", str(tmp_path / "r.json")])
