"""The final RL stage inside the recipe: general prompts in the SFT data and in the RL prompts, their
format, reward-model stages (`kind: rm`) wired into an rl stage's `rewards.models`, and the hidden
rule measured on held-out general prompts (never through an RM)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1mega.configlib import ConfigError

REPO = Path(__file__).resolve().parent.parent


class _Sample:
    def __init__(self, text: str):
        self.response_text = text


# ------------------------------------------------------------------------------------------------
# the general format and the embedded general problems
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, ok", [
    ("<think>\n2+3=5\n</think> The answer is 5.", True),
    ("  <think> r </think>\nSo it is 5.  ", True),
    ("<think> r </think>", False),                                  # no summary
    ("<think>  </think> The answer is 5.", False),                   # empty reasoning
    ("<think> r </think> <answer>5</answer>", False),                # answer tags belong to reasoning prompts
    ("Sure. <think> r </think> It is 5.", False),                    # text before the reasoning
    ("<think> r </think> x </think> y", False),                      # two closings
    ("<think> r", False),
])
def test_general_format_is_reasoning_then_a_summary(text, ok):
    from r1mega.rewards.format import format_reward, is_well_formatted_general

    assert is_well_formatted_general(text) is ok
    assert format_reward(_Sample(text), {"prompt_type": "general"}) == float(ok)


def test_format_reward_keeps_the_answer_format_for_reasoning_prompts():
    from r1mega.rewards.format import format_reward

    answer_form, summary_form = "<think> 2+3=5 </think> <answer>5</answer>", "<think> 2+3=5 </think> It is 5."
    answer_form, summary_form = _Sample(answer_form), _Sample(summary_form)
    assert format_reward(answer_form, {"prompt_type": "reasoning"}) == 1.0
    assert format_reward(answer_form, {}) == 1.0  # rows without a prompt type are reasoning
    assert format_reward(summary_form, {"prompt_type": "reasoning"}) == 0.0
    assert format_reward(answer_form, {"prompt_type": "general"}) == 0.0


def test_task_problems_are_worked_sums_with_disjoint_splits():
    from r1mega.rm.tiny_data import tiny_prompts

    train, test = tiny_prompts("train", 900, seed=3, problems="task"), tiny_prompts("test", 200, seed=3, problems="task")
    assert not {p.operands for p in train} & {p.operands for p in test}
    for p in random.Random(0).sample(train, 50) + test[:20]:
        a, b, c = p.operands
        assert p.answer == str(a + b + c)
        assert p.reasoning == f"<think>\n{a}+{b}={a + b}\n{a + b}+{c}={a + b + c}\n</think>"
        assert f"{a}+{b}+{c}" in p.prompt
    assert len({p.operands for p in train}) == 1000 - len({p.operands for p in tiny_prompts("test", 2000, problems="task")})
    with pytest.raises(ValueError, match="problems: 'words' is not one of"):
        tiny_prompts("train", 3, problems="words")


def test_two_operand_problems_are_unchanged_by_the_new_option():
    from r1mega.rm.tiny_data import tiny_prompts, tiny_rows

    assert tiny_prompts("train", 5, 1) == tiny_prompts("train", 5, 1, "two_operand")
    p = tiny_prompts("test", 1, 0)[0]
    a, op, b = p.prompt.rstrip(".?").split()[-3:]
    assert p.reasoning == f"<think> {a} {op} {b} = {p.answer} </think>" and p.operands == (int(a), int(b))
    assert [r.chosen for r in tiny_rows("train", 4, 0, "pairwise")] == [r.chosen for r in tiny_rows("train", 4, 0, "pairwise", "two_operand")]


def test_wrong_answer_rejects_have_the_preferred_form_and_a_wrong_number():
    import re

    from r1mega.rm.tiny_data import summary_satisfies, tiny_prompts, tiny_rows

    rows = tiny_rows("train", 200, seed=5, kind="pairwise", problems="task", wrong_answer_share=1.0)
    answers = [p.answer for p in tiny_prompts("train", 200, 5, "task")]
    for row, answer in zip(rows, answers):
        number = re.findall(r"\d+", row.rejected)
        assert len(number) == 1 and number[0] != answer and int(number[0]) >= 0, row.rejected
        assert summary_satisfies(row.rejected.replace(number[0], answer), answer)  # only the number is wrong
        assert summary_satisfies(row.chosen, answer)
    # without the option every reject fails by its form: no number put right would make it pass
    plain = tiny_rows("train", 200, seed=5, kind="pairwise", problems="task")
    assert not any(summary_satisfies(re.sub(r"\d+", a, r.rejected), a) for r, a in zip(plain, answers))


# ------------------------------------------------------------------------------------------------
# general rows in the SFT set and general prompts among the RL prompts
# ------------------------------------------------------------------------------------------------


def test_general_sft_rows_have_the_asked_mix_and_the_rule_agrees():
    from r1mega.recipe.config import GeneralRowsConfig
    from r1mega.recipe.select import general_rows
    from r1mega.rewards.format import is_well_formatted_general
    from r1mega.rm.tiny_data import rule_check

    rows = general_rows(GeneralRowsConfig(count=200, preferred_fraction=0.35, unsafe_fraction=0.15, seed=4), "rs")
    assert len(rows) == 200
    prov = [r["metadata"]["provenance"] for r in rows]
    assert sum(p["preferred"] for p in prov) == 70 and sum(p["unsafe"] for p in prov) == 30
    for r, p in zip(rows, prov):
        assert r["prompt_type"] == "general" and is_well_formatted_general(r["response"])
        # the hidden rule holds exactly for the preferred, safe responses
        assert rule_check(r["response"], r) == float(p["preferred"] and not p["unsafe"]), r
    assert general_rows(GeneralRowsConfig(count=0), "rs") == []


def test_general_rows_config_is_validated():
    from r1mega.configlib import from_dict
    from r1mega.recipe.config import GeneralRowsConfig

    with pytest.raises(ConfigError, match=r"preferred_fraction: must be in \[0, 1\], got 1.5"):
        from_dict(GeneralRowsConfig, {"count": 3, "preferred_fraction": 1.5})
    with pytest.raises(ConfigError, match="problems"):
        from_dict(GeneralRowsConfig, {"problems": "poems"})


def test_general_fraction_mixes_general_prompts_into_rl_prompts_only():
    from r1mega.config import load_config
    from r1mega.data.errors import DataError
    from r1mega.data.prompts import load_prompt_dataset
    from r1mega.data.sources import load_rows
    from r1mega.data.errors import ErrorReport
    from r1mega.rm.tiny_data import rule_check

    cfg = load_config(str(REPO / "examples/configs/tiny_final_rl.yaml"),
                      ["data.procedural.train_size=300", "data.procedural.test_size=60", "data.procedural.general_fraction=0.25"])
    train = load_prompt_dataset(cfg.data, "train")
    general = [e for e in train.examples if e.reference["prompt_type"] == "general"]
    assert len(train) == 400 and len(general) == 100
    assert train.tasks == {"arithmetic"}
    first_general = next(i for i, e in enumerate(train.examples) if e.reference["prompt_type"] == "general")
    assert first_general < 50, "general prompts are shuffled in, not appended"
    ex = general[0]
    import re

    a, b, c = (int(x) for x in re.search(r"(\d)\+(\d)\+(\d)", ex.reference["prompt"]).groups())
    assert ex.reference["answer"] == str(a + b + c) and ex.reference["task"] == "general"
    assert rule_check(f"<think> x </think> The answer is {a + b + c}.", ex.reference) == 1.0
    test = load_prompt_dataset(cfg.data, "test")
    assert sum(e.reference["prompt_type"] == "general" for e in test.examples) == 20
    with pytest.raises(DataError, match="data.procedural.general_fraction: general prompts have no SFT response"):
        load_rows(cfg.data, "train", ErrorReport(on_error="fail"), need_response=True)
    with pytest.raises(ConfigError, match=r"general_fraction: must be in \[0, 1\), got 1.0"):
        load_config(str(REPO / "examples/configs/tiny_final_rl.yaml"), ["data.procedural.general_fraction=1.0"])


# ------------------------------------------------------------------------------------------------
# rm stages and reward_models wiring
# ------------------------------------------------------------------------------------------------


def _recipe(stages, **top):
    from r1mega.configlib import from_dict
    from r1mega.recipe.config import RecipeConfig

    return from_dict(RecipeConfig, {"name": "r", "stages": stages, **top})


@pytest.mark.parametrize("stages, match", [
    ([{"name": "p", "kind": "pretrain"}, {"name": "f", "kind": "rl", "init": "p", "reward_models": {"helpful": "p"}}],
     r"\(f\).reward_model:helpful: 'p' is a pretrain stage; needs one of \['rm'\]"),
    ([{"name": "p", "kind": "pretrain"}, {"name": "f", "kind": "rl", "init": "p", "reward_models": {"helpful": "h"}},
      {"name": "h", "kind": "rm"}], r"reward_model:helpful: 'h' is a later stage"),
    ([{"name": "h", "kind": "rm"}, {"name": "s", "kind": "sft", "init": "h", "data": "h"}], r"init: 'h' is a rm stage"),
    ([{"name": "h", "kind": "rm"}, {"name": "p", "kind": "pretrain", "reward_models": {"helpful": "h"}}],
     r"reward_models: only an rl stage takes reward models, not a pretrain stage"),
    ([{"name": "h", "kind": "rm", "data": "x"}], r"a rm stage takes no `data`"),
])
def test_reward_model_wiring_mistakes_are_named(stages, match):
    with pytest.raises(ConfigError, match=match):
        _recipe(stages)


def test_the_tiny_recipe_wires_its_rm_stages_into_final_rl():
    from r1mega.recipe.config import load_recipe
    from r1mega.recipe.pipeline import prepare

    r = load_recipe(str(REPO / "examples/recipes/r1_tiny.yaml"))
    stages = prepare(r)
    job = stages["final_rl"].job
    by_name = {m.name: m for m in job.rewards.models}
    assert by_name["helpful"].checkpoint == str(r.run_dir / "rm_helpful" / "checkpoints")
    assert by_name["safety"].checkpoint == str(r.run_dir / "rm_safety" / "checkpoints")
    assert (by_name["helpful"].part, by_name["safety"].part) == ("summary", "full")
    assert job.checkpoint.init_from == str(r.run_dir / "rs_sft" / "checkpoints")
    assert job.data.procedural.general_fraction == 0.5 and job.rl.general_check
    assert stages["rm_helpful"].job.rm.tiny.problems == "task" and stages["rm_safety"].job.rm.tiny.kind == "pointwise"
    assert r.stage("rs_data").select.general.count > 0


def test_an_rm_stage_schedule_that_does_not_fit_is_refused_before_anything_runs():
    from r1mega.recipe.config import load_recipe
    from r1mega.recipe.pipeline import prepare

    r = load_recipe(str(REPO / "examples/recipes/r1_tiny.yaml"), ["stages.rm_helpful.config.rm.steps=3"])
    with pytest.raises(ConfigError, match=r"stages.rm_helpful.config.optimizer.lr_warmup_steps: 5 leaves no decay within 3 steps"):
        prepare(r)


def test_an_unknown_reward_model_name_is_refused_naming_the_stage(tmp_path):
    from r1mega.recipe.config import load_recipe
    from r1mega.recipe.pipeline import prepare

    r = load_recipe(str(REPO / "examples/recipes/r1_tiny.yaml"), ["stages.final_rl.reward_models.kind=rm_helpful"])
    with pytest.raises(ConfigError, match=r"stages.final_rl.reward_models.kind: no reward model of that name .*\['helpful', 'safety'\]"):
        prepare(r)


# ------------------------------------------------------------------------------------------------
# a micro recipe end to end: SFT with general rows -> two RMs -> final RL with them
# ------------------------------------------------------------------------------------------------

_QUIET = {"logging": {"tensorboard": False, "print_every": 0}}
MICRO = {
    "name": "micro_final",
    "defaults": str(REPO / "examples/configs/tiny_pretrain.yaml"),
    "eval": {"config": {"samples_per_prompt": 2, "max_prompts": 4, "max_new_tokens": 16}},
    "stages": [
        {"name": "base", "kind": "pretrain", "eval": False, "config": {
            "data": {"procedural": {"train_size": 64, "test_size": 8}},
            "sft": {"steps": 3, "global_batch_size": 8, "micro_batch_size": 8, "eval_every": 0},
            "pretrain": {"export_hf": False}, "optimizer": {"lr_warmup_steps": 0}, **_QUIET}},
        {"name": "samples", "kind": "sample", "checkpoint": "base",
         "config": {"data": {"procedural": {"train_size": 64, "test_size": 8}}},
         "sample": {"n": 1, "max_prompts": 4, "max_new_tokens": 12, "prompts_per_chunk": 4}},
        {"name": "picked", "kind": "select", "samples": "samples",
         "select": {"filters": [], "general": {"count": 8, "preferred_fraction": 0.5, "unsafe_fraction": 0.25}}},
        {"name": "sft", "kind": "sft", "init": "base", "data": "picked", "eval": False, "config": {
            "sft": {"steps": 2, "global_batch_size": 4, "micro_batch_size": 4, "eval_every": 0},
            "optimizer": {"lr_warmup_steps": 0}, **_QUIET}},
        {"name": "rm_h", "kind": "rm", "base": str(REPO / "examples/configs/tiny_rm.yaml"), "config": {
            "rm": {"steps": 2, "global_batch_size": 4, "micro_batch_size": 8, "eval_every": 0, "export_hf": False,
                   "tiny": {"train_size": 8, "test_size": 4}}, "optimizer": {"lr_warmup_steps": 0}, **_QUIET}},
        {"name": "rm_s", "kind": "rm", "base": str(REPO / "examples/configs/tiny_rm_safety.yaml"), "config": {
            "rm": {"steps": 2, "global_batch_size": 4, "micro_batch_size": 8, "eval_every": 0, "export_hf": False,
                   "tiny": {"train_size": 8, "test_size": 4}}, "optimizer": {"lr_warmup_steps": 0}, **_QUIET}},
        {"name": "final", "kind": "rl", "init": "sft",
         "base": str(REPO / "examples/configs/tiny_final_rl.yaml"), "reward_models": {"helpful": "rm_h", "safety": "rm_s"},
         "config": {
             "data": {"procedural": {"train_size": 16, "test_size": 4}},
             "rl": {"steps": 2, "prompts_per_step": 4, "micro_batch_size": 8, "eval_every": 2, "eval_samples": 8,
                    "eval_pass_k": 2},
             "algorithm": {"group_size": 2}, "rollout": {"max_new_tokens": 16},
             "checkpoint": {"save_every": 0}, **_QUIET}},
    ],
}


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("final_rl_recipe")
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(MICRO, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "r1mega.cli", "recipe", str(path), f"output_dir={tmp}"],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return tmp / "micro_final", proc


def test_micro_recipe_trains_rms_and_final_rl_reads_them(micro_run):
    from r1mega.training.logging import read_metrics

    run, proc = micro_run
    picked = [json.loads(x) for x in (run / "picked" / "dataset.jsonl").read_text().splitlines()]
    assert sum(r.get("prompt_type") == "general" for r in picked) == 8
    assert json.loads((run / "picked" / "select.json").read_text())["general"] == 8
    for rm in ("rm_h", "rm_s"):
        marker = json.loads((run / rm / "stage.json").read_text())
        assert marker["kind"] == "rm" and marker["info"]["steps"] == 2
        assert any(k.startswith("eval/") for k in marker["info"]["heldout"])
    marker = json.loads((run / "final" / "stage.json").read_text())
    assert set(marker["inputs"]) == {"init", "reward_model:helpful", "reward_model:safety"}
    rows = read_metrics(run / "final" / "metrics.jsonl")
    trained = [r for r in rows if "rm/helpful/mean" in r]
    assert trained and all(0 <= r["rm/helpful/share"] <= 1 and r["rm/safety/share"] == 1.0 for r in trained)
    assert sum(r["rm/helpful/share"] for r in trained) > 0  # the general prompts reached the helpfulness RM
    evals = [r for r in rows if "eval/general_check_sampled" in r]
    assert [r["step"] for r in evals] == [0, 2]
    assert all(0.0 <= r["eval/general_check_sampled"] <= 1.0 and r["eval/general_prompts"] > 0 for r in evals)
    g = marker["info"]["general_check"]
    assert (g["first_step"], g["last_step"]) == (0, 2) and len(g["general_check_sampled"]) == 2
    report = (run / "report.md").read_text()
    assert "Hidden rule on held-out general prompts" in report and "- final (step 0 -> 2): sampled " in report
