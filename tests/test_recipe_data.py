"""The recipe's data pieces without a model: the mixed-language base corpus, the select stage's
dataset (filters, provenance, non-reasoning rows, the empty-set message), recipe config checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("n, words", [
    (0, "零"), (7, "七"), (10, "十"), (12, "十二"), (20, "二十"), (21, "二十一"), (99, "九十九"), (100, "一百"),
    (105, "一百零五"), (110, "一百一十"), (1000, "一千"), (1005, "一千零五"), (2019, "二千零一十九"),
    (10010, "一万零一十"), (-3, "负三"),
])
def test_han_number_words(n, words):
    from r1mega.data.mixed_language import han_number

    assert han_number(n) == words


def _corpus(overrides):
    from r1mega.config import load_config
    from r1mega.training.pretrain_data import pretrain_rows

    cfg = load_config(str(REPO / "examples/configs/tiny_pretrain.yaml"), ["data.procedural.train_size=400", *overrides])
    return pretrain_rows(cfg.data, cfg.pretrain, "train")


def test_mixed_language_corpus_glosses_a_share_of_the_reasoning_and_changes_nothing_else():
    from r1mega.rewards.format import is_well_formatted
    from r1mega.rewards.language import language_share
    from r1mega.rewards.parse import parse_completion

    plain = _corpus([])
    mixed = _corpus(["pretrain.mixed_language_fraction=0.4"])
    formatted = [i for i, r in enumerate(plain) if r.metadata["formatted"]]
    glossed = [i for i, r in enumerate(mixed) if r.metadata.get("mixed_language")]
    assert len(glossed) == round(0.4 * len(formatted)) and set(glossed) <= set(formatted)
    for i, (p, m) in enumerate(zip(plain, mixed, strict=True)):
        assert (p.prompt, p.answer, p.metadata["formatted"]) == (m.prompt, m.answer, m.metadata["formatted"])
        if i not in glossed:
            assert p.response == m.response  # the default corpus is untouched
            continue
        assert is_well_formatted(m.response)
        think_p, think_m = parse_completion(p.response).think, parse_completion(m.response).think
        assert language_share(think_p, "en") == 1.0 and language_share(think_m, "en") == 0.0
        # the reasoning opens with the problem in Han number words, then the plain steps
        from r1mega.data.mixed_language import han_number

        first, *steps = think_m.strip().splitlines()
        a, b, c = p.metadata["expression"].split("+")
        assert first == f"{han_number(int(a))}+{han_number(int(b))}+{han_number(int(c))}"
        assert steps == think_p.strip().splitlines()
        assert parse_completion(m.response).answers == parse_completion(p.response).answers
    # the tiny default's corpus does not use the option
    from r1mega.config import load_config

    assert load_config(str(REPO / "examples/configs/tiny_r1_zero.yaml")).pretrain.mixed_language_fraction == 0.0


def _sample(pid, idx, response, answer="21", ckpt="/ck/iter_0000060"):
    return {"prompt_id": pid, "sample_index": idx, "prompt": "Calculate 7+5+9", "response": response,
            "reference": {"answer": answer, "task": "arithmetic", "metadata": {"expression": "7+5+9"},
                          "prompt": "Calculate 7+5+9", "response_prefix": "", "source": pid},
            "task": "arithmetic", "checkpoint": ckpt, "stage": "samples"}


GOOD = "<think>\n7+5=12\n12+9=21\n</think> <answer>21</answer>"
MIXED = "<think>\n7+5=12\n12+9=21 二十一\n</think> <answer>21</answer>"
WRONG = "<think>\n7+5=12\n12+9=20\n</think> <answer>20</answer>"
UNCLOSED = "<think>\n7+5=12\n12+9=21 <answer>21</answer>"


def _write(tmp: Path, samples) -> Path:
    path = tmp / "samples.jsonl"
    path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    return path


def test_select_keeps_what_passes_with_provenance_and_counts_each_filter(tmp_path):
    from r1mega.recipe.config import NonReasoningConfig, SelectConfig
    from r1mega.recipe.select import run_select

    samples = [_sample("p:0", 0, GOOD), _sample("p:0", 1, MIXED), _sample("p:1", 0, WRONG),
               _sample("p:1", 1, UNCLOSED, ckpt="/ck/iter_0000020"), _sample("p:2", 0, "  " + GOOD + "\n"),
               _sample("p:2", 1, GOOD)]
    sc = SelectConfig(filters=["closed_reasoning", "correct", "language"], readable=True, max_per_prompt=1,
                      nonreasoning=NonReasoningConfig(count=4))
    counts = run_select(sc, _write(tmp_path, samples), "picked", tmp_path)
    assert counts["removed"] == {"closed_reasoning": 1, "correct": 1, "language": 1, "readable": 0, "max_per_prompt": 1}
    rows = [json.loads(line) for line in (tmp_path / "dataset.jsonl").read_text(encoding="utf-8").splitlines()]
    kept = [r for r in rows if r["metadata"]["provenance"].get("kind") != "nonreasoning"]
    assert [(r["metadata"]["provenance"]["prompt_id"], r["metadata"]["provenance"]["sample_index"]) for r in kept] == [
        ("p:0", 0), ("p:2", 0)]
    for r in kept:
        p = r["metadata"]["provenance"]
        assert p["checkpoint"] == "/ck/iter_0000060" and p["sample_stage"] == "samples" and p["stage"] == "picked"
        assert p["filters_passed"] == ["closed_reasoning", "correct", "language", "readable"]
        assert r["response"] == GOOD and r["answer"] == "21" and r["task"] == "arithmetic"
    extra = [r for r in rows if r["metadata"]["provenance"].get("kind") == "nonreasoning"]
    assert len(extra) == 4 and counts["rows"] == 6
    for r in extra:  # trivial two-operand additions, answered without reasoning, correctly
        a, b = r["prompt"].removeprefix("Calculate ").split("+")
        assert r["response"] == f"<think>\n</think> <answer>{int(a) + int(b)}</answer>" and r["answer"] == str(int(a) + int(b))
    # the SFT stage reads the set as it is
    from r1mega.config import load_config
    from r1mega.data.sft import load_sft_dataset
    from r1mega.data.tokenizer import load_tokenizer

    cfg = load_config(str(REPO / "examples/configs/tiny_pretrain.yaml"),
                      ["data.source=files", f"data.train_files=[{tmp_path / 'dataset.jsonl'}]"])
    assert len(load_sft_dataset(cfg.data, "train", load_tokenizer("tiny"))) == 6


def test_an_empty_filtered_set_says_which_filter_removed_what_and_writes_nothing(tmp_path):
    from r1mega.recipe.config import SelectConfig
    from r1mega.recipe.select import EmptyDatasetError, run_select

    samples = [_sample("p:0", 0, WRONG), _sample("p:0", 1, MIXED), _sample("p:1", 0, MIXED)]
    with pytest.raises(EmptyDatasetError, match=r"of 3 samples, correct removed 1, language removed 2$"):
        run_select(SelectConfig(filters=["correct", "language"]), _write(tmp_path, samples), "picked", tmp_path)
    assert not (tmp_path / "dataset.jsonl").exists() and not (tmp_path / "select.json").exists()


def _recipe(stages, **top):
    from r1mega.configlib import from_dict
    from r1mega.recipe.config import RecipeConfig

    return from_dict(RecipeConfig, {"name": "r", "stages": stages, **top})


@pytest.mark.parametrize("stages, match", [
    ([{"name": "a", "kind": "rl", "init": "b"}, {"name": "b", "kind": "pretrain"}], r"init: 'b' is a later stage"),
    ([{"name": "a", "kind": "sft", "init": "zz", "data": "zz"}], r"init: 'zz' is no stage"),
    ([{"name": "a", "kind": "pretrain"}, {"name": "s", "kind": "select", "samples": "a"}], r"'a' is a pretrain stage"),
    ([{"name": "a", "kind": "pretrain"}, {"name": "a", "kind": "pretrain"}], r"'a' is used twice"),
    ([{"name": "a", "kind": "pretrain", "config": {"checkpoint": {"init_from": "x"}}}], r"checkpoint.init_from: set by the pipeline"),
    ([{"name": "a", "kind": "rl"}], r"a rl stage needs `init`"),
    ([{"name": "a", "kind": "pretrain", "init": "a"}], r"a pretrain stage takes no `init`"),
])
def test_recipe_wiring_mistakes_are_named(stages, match):
    from r1mega.configlib import ConfigError

    with pytest.raises(ConfigError, match=match):
        _recipe(stages)


def test_stage_overrides_address_stages_by_name():
    from r1mega.configlib import ConfigError
    from r1mega.recipe.config import load_recipe

    r = load_recipe(str(REPO / "examples/recipes/r1_tiny.yaml"), ["stages.r1_zero.config.rl.steps=7"])
    assert r.stage("r1_zero").config["rl"]["steps"] == 7
    with pytest.raises(ConfigError, match="stages.nope: no stage of that name"):
        load_recipe(str(REPO / "examples/recipes/r1_tiny.yaml"), ["stages.nope.kind=rl"])


@pytest.mark.parametrize("recipe", ["r1_tiny.yaml", "r1_671b_qwen25.yaml"])
def test_example_recipes_validate(recipe):
    from r1mega.recipe.config import load_recipe
    from r1mega.recipe.pipeline import prepare

    r = load_recipe(str(REPO / "examples/recipes" / recipe))
    stages = prepare(r)
    assert list(stages) == [s.name for s in r.stages]
    kinds = {s.cfg.kind for s in stages.values()}
    assert {"rl", "sample", "select", "sft", "distill"} <= kinds


def test_select_with_a_judge_keeps_accepted_samples_and_counts_the_rest(tmp_path):
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.recipe.config import SelectConfig
    from r1mega.recipe.select import run_select
    from tests.test_recipe_judge import FixedEngine, sample

    tok = load_tokenizer("tiny")
    engine = FixedEngine(tok, {"ANSWER-A": " yes", "ANSWER-B": " no", "ANSWER-C": " hmm"})
    samples = [sample(f"<think>\nwork\n</think> <answer>{k}</answer>", i=i) for i, k in enumerate(["ANSWER-A", "ANSWER-B", "ANSWER-C", "ANSWER-A"])]
    counts = run_select(SelectConfig(filters=["closed_reasoning"], judge={}, judge_model="judge/dir"),
                        _write(tmp_path, samples), "picked", tmp_path, judge_engine=engine, tokenizer=tok)
    assert counts["removed"] == {"closed_reasoning": 0, "judge": 1, "judge_unparsable": 1} and counts["kept"] == 2
    rows = [json.loads(line) for line in (tmp_path / "dataset.jsonl").read_text().splitlines()]
    assert [r["metadata"]["provenance"]["prompt_id"] for r in rows] == ["q0", "q3"]
    assert all(r["metadata"]["provenance"]["filters_passed"] == ["closed_reasoning", "judge"] for r in rows)
