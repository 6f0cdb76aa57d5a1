"""Procedural tasks: seeded, disjoint splits, correct answers, realistic wrong solutions, knobs."""

import random
import re

import pytest

from r1mega.configlib import ConfigError, from_dict
from r1mega.data.config import ArithmeticConfig, CountdownConfig, ProceduralConfig
from r1mega.data.expr import evaluate
from r1mega.data.tasks import generate, split_of
from r1mega.data.tasks.arithmetic import slip
from r1mega.rewards.accuracy import accuracy_reward
from r1mega.rewards.format import is_well_formatted
from r1mega.rewards.types import SampleView


def _cfg(task, **kw):
    return ProceduralConfig(task=task, **kw)


def _score(example):
    """The accuracy reward of the example's own worked solution."""
    sample = SampleView([], [], [], "stop", example.solution)
    reference = {"answer": example.answer, "task": example.task, "metadata": example.metadata}
    return accuracy_reward(sample, reference)["score"]


@pytest.mark.parametrize("task", ["countdown", "arithmetic"])
def test_generation_is_deterministic_in_the_seed(task):
    a = [e.to_row(True) for e in generate(_cfg(task, seed=3), "train", 50)]
    b = [e.to_row(True) for e in generate(_cfg(task, seed=3), "train", 50)]
    c = [e.to_row(True) for e in generate(_cfg(task, seed=4), "train", 50)]
    assert a == b
    assert a != c


@pytest.mark.parametrize("task", ["countdown", "arithmetic"])
def test_splits_are_disjoint_by_construction(task):
    # different seeds for the two splits: disjointness must not rely on sharing a generator stream
    train = generate(_cfg(task, seed=1, heldout_fraction=0.2), "train", 2000)
    test = generate(_cfg(task, seed=2, heldout_fraction=0.2), "test", 300)
    train_keys, test_keys = {e.key for e in train}, {e.key for e in test}
    assert len(train_keys) == 2000 and len(test_keys) == 300  # unique within each split
    assert not train_keys & test_keys
    assert all(split_of(task, k, 0.2) == "test" for k in test_keys)
    # the held-out share of the problem space is about heldout_fraction
    rng = random.Random(0)
    keys = [f"{rng.random()}" for _ in range(20000)]
    share = sum(split_of(task, k, 0.2) == "test" for k in keys) / len(keys)
    assert abs(share - 0.2) < 0.015


@pytest.mark.parametrize("task", ["countdown", "arithmetic"])
def test_correct_solutions_are_correct_and_well_formatted(task):
    for ex in generate(_cfg(task, seed=5), "train", 300):
        assert ex.solution_correct
        assert is_well_formatted(ex.solution), ex.solution
        assert _score(ex) == 1.0, ex.solution
        # every step of the trace is true arithmetic
        for line in ex.steps:
            lhs, rhs = line.split("=")
            assert evaluate(lhs, allow_unary_minus=True).value == int(rhs), line


def test_arithmetic_answers_match_python_and_knobs_hold():
    knobs = ArithmeticConfig(min_digits=2, max_digits=4, min_operands=3, max_operands=5, operators=["+", "*"])
    for ex in generate(ProceduralConfig(task="arithmetic", arithmetic=knobs), "train", 200):
        expr = ex.metadata["expression"]
        operands = [int(x) for x in re.split(r"[+*]", expr)]
        assert 3 <= len(operands) <= 5
        assert all(10 <= x <= 9999 for x in operands)
        assert set(re.findall(r"[+\-*]", expr)) <= {"+", "*"}
        assert int(ex.answer) == evaluate(expr).value  # exact evaluation of the prompt's expression
        assert ex.prompt == f"Calculate {expr}"


def test_countdown_knobs_hold_and_targets_are_reachable():
    knobs = CountdownConfig(min_numbers=4, max_numbers=5, min_number=2, max_number=30, min_target=20,
                            max_target=200, operators=["+", "-", "*"], use_all=False)
    for ex in generate(ProceduralConfig(task="countdown", countdown=knobs), "train", 200):
        m = ex.metadata
        assert 4 <= len(m["numbers"]) <= 5 and all(2 <= n <= 30 for n in m["numbers"])
        assert 20 <= m["target"] <= 200 and ex.answer == str(m["target"])
        assert m["use_all"] is False and m["operators"] == ["+", "-", "*"]
        assert "/" not in m["solution"]
        assert "at most once" in ex.prompt and str(m["numbers"]) in ex.prompt


def test_countdown_use_all_uses_every_number():
    for ex in generate(_cfg("countdown", seed=9), "train", 200):
        used = sorted(evaluate(ex.metadata["solution"]).literals)
        assert used == sorted(ex.metadata["numbers"])
        assert "exactly once" in ex.prompt


@pytest.mark.parametrize("task", ["countdown", "arithmetic"])
def test_wrong_solution_fraction_is_exact_and_the_answers_are_wrong(task):
    n, fraction = 200, 0.25
    examples = generate(_cfg(task, seed=11, wrong_solution_fraction=fraction), "train", n)
    wrong = [e for e in examples if not e.solution_correct]
    assert len(wrong) == round(n * fraction)
    for ex in wrong:
        assert is_well_formatted(ex.solution)  # the format is still right; only the answer is not
        assert _score(ex) == 0.0, ex.solution
    # the problems themselves are the same as without wrong solutions
    clean = generate(_cfg(task, seed=11), "train", n)
    assert [e.key for e in examples] == [e.key for e in clean]
    assert [e.answer for e in examples] == [e.answer for e in clean]


def test_arithmetic_slips_are_single_dropped_carries_or_borrows():
    rng = random.Random(0)
    # 58+67: carries out of both columns; dropping one gives 115 or 25
    assert {slip(58, "+", 67, rng) for _ in range(50)} == {125 - 10, 125 - 100}
    # 503-7: borrows in the units and tens columns; forgetting one gives 506 or 586
    assert {slip(503, "-", 7, rng) for _ in range(50)} == {496 + 10, 496 + 100}
    # 12+31 has no carry: a one-digit slip instead
    assert {slip(12, "+", 31, rng) for _ in range(50)} <= {42, 44, 33, 53}
    for _ in range(200):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        for op, exact in (("+", a + b), ("*", a * b)):
            wrong = slip(a, op, b, rng)
            diff = abs(wrong - exact)
            assert wrong != exact
            assert diff == int(str(diff)[0]) * 10 ** (len(str(diff)) - 1)  # one digit, one place


def test_too_small_problem_space_is_a_clear_error():
    knobs = ArithmeticConfig(min_digits=1, max_digits=1, min_operands=2, max_operands=2, operators=["+"])
    with pytest.raises(ValueError, match=r"found only \d+ of 500 distinct arithmetic problems"):
        generate(ProceduralConfig(task="arithmetic", arithmetic=knobs), "train", 500)


def test_solutions_are_short():
    # the tiny model pre-trains on these on CPU: a handful of lines each
    for task in ("countdown", "arithmetic"):
        for ex in generate(_cfg(task), "train", 200):
            assert len(ex.steps) <= 4 and len(ex.solution) < 120


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"arithmetic": {"operators": ["/"]}}, r"procedural.arithmetic.operators: \['/'\] not allowed"),
        ({"arithmetic": {"min_digits": 3, "max_digits": 2}}, r"procedural.arithmetic.min_digits/max_digits"),
        ({"countdown": {"min_numbers": 1}}, r"procedural.countdown.min_numbers/max_numbers"),
        ({"countdown": {"operators": []}}, r"procedural.countdown.operators: must list"),
        ({"heldout_fraction": 0.0}, r"procedural.heldout_fraction: must be in \(0, 1\)"),
        ({"wrong_solution_fraction": 1.5}, r"procedural.wrong_solution_fraction"),
        ({"task": "sudoku"}, r"procedural.task: 'sudoku' is not one of"),
    ],
)
def test_procedural_config_validation(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ProceduralConfig, raw, where="procedural")
