"""pass@k, majority vote / cons@k and their aggregation (r1mega.eval.metrics) against brute force:
pass@k by enumerating every k-subset of n labelled samples, the vote by counting every candidate."""

from __future__ import annotations

import itertools
import random

import pytest

from r1mega.eval.metrics import PromptResult, aggregate, cons_at_k, majority_answer, pass_at_k


def brute_pass_at_k(labels: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(range(len(labels)), k))
    return sum(any(labels[i] for i in s) for s in subsets) / len(subsets)


def brute_majority(answers):
    best, best_count, best_first = None, 0, None
    for a in set(x for x in answers if x is not None):
        count = sum(1 for x in answers if x == a)
        first = answers.index(a)
        if count > best_count or (count == best_count and first < best_first):
            best, best_count, best_first = a, count, first
    return best


def test_pass_at_k_equals_enumeration_of_every_subset():
    rng = random.Random(12)
    checked = 0
    for n in range(1, 9):
        for c in range(0, n + 1):
            labels = [True] * c + [False] * (n - c)
            rng.shuffle(labels)  # which samples are correct must not matter
            for k in range(1, n + 1):
                want = brute_pass_at_k(labels, k)
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
                checked += 1
    assert checked == sum(n * (n + 1) for n in range(1, 9))


def test_pass_at_k_edge_cases():
    assert pass_at_k(8, 0, 1) == 0.0 and pass_at_k(8, 0, 8) == 0.0  # c = 0
    assert pass_at_k(5, 5, 1) == 1.0 and pass_at_k(5, 5, 3) == 1.0  # c = n
    assert pass_at_k(6, 1, 6) == 1.0  # k = n: the one correct sample is always drawn
    assert pass_at_k(7, 3, 1) == pytest.approx(3 / 7)  # pass@1 = c / n
    assert pass_at_k(64, 1, 1) == pytest.approx(1 / 64)
    assert pass_at_k(1000, 3, 500) == pytest.approx(1 - (500 * 499 * 498) / (1000 * 999 * 998))  # large n exact


@pytest.mark.parametrize("n,c,k,match", [
    (4, 1, 5, "k must be in"), (4, 1, 0, "k must be in"), (4, 5, 1, "c must be in"),
    (4, -1, 1, "c must be in"), (0, 0, 1, "n must be"), (4, 1.0, 1, "c must be an integer"),
])
def test_pass_at_k_refuses_impossible_arguments(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_majority_answer_matches_brute_force_on_random_votes():
    rng = random.Random(7)
    for _ in range(400):
        n = rng.randint(1, 8)
        answers = [rng.choice(["1", "2", "3", None]) for _ in range(n)]
        assert majority_answer(answers) == brute_majority(answers), answers


def test_majority_ties_none_and_cons():
    assert majority_answer(["3", "5", "5", "3"]) == "3"  # tie: first occurrence wins
    assert majority_answer(["5", "3", "3", "5"]) == "5"
    assert majority_answer([None, None, "4"]) == "4"  # None never wins, even when most frequent
    assert majority_answer([None, None]) is None
    assert cons_at_k([None, "7", "7", "2"], [False, True, True, False]) == 1.0
    assert cons_at_k(["2", "7", "2", "7", "2"], [False, True, False, True, False]) == 0.0
    assert cons_at_k([None, None], [False, False]) == 0.0
    with pytest.raises(ValueError, match="answers but"):
        cons_at_k(["1"], [True, False])


def _result(task, correct, answers, lengths=None, formatted=None, language=None):
    n = len(correct)
    return PromptResult(task=task, correct=tuple(correct), answers=tuple(answers),
                        formatted=tuple(formatted or [True] * n), language=tuple(language or [1.0] * n),
                        lengths=tuple(lengths or [10] * n))


def test_aggregate_averages_per_prompt_and_per_sample():
    rng = random.Random(3)
    k = 4
    results = []
    for i in range(9):
        correct = [rng.random() < 0.4 for _ in range(k)]
        answers = [("right" if c else rng.choice(["w1", "w2", None])) for c in correct]
        results.append(_result("t", correct, answers, lengths=[rng.randint(1, 50) for _ in range(k)],
                               formatted=[rng.random() < 0.7 for _ in range(k)],
                               language=[rng.choice([None, rng.random()]) for _ in range(k)]))
    m = aggregate(results, [1, 2, 4], k)
    assert m["prompts"] == 9 and m["samples"] == 36
    for j in (1, 2, 4):
        want = sum(brute_pass_at_k(list(r.correct), j) for r in results) / 9
        assert m[f"pass@{j}"] == pytest.approx(want, abs=1e-12)
    assert m["pass@1"] == pytest.approx(sum(sum(r.correct) for r in results) / 36)
    assert m["cons@4"] == pytest.approx(sum(brute_majority(list(r.answers)) == "right" for r in results) / 9)
    assert m["format"] == pytest.approx(sum(sum(r.formatted) for r in results) / 36)
    shares = [x for r in results for x in r.language if x is not None]
    assert 0 < len(shares) < 36
    assert m["language_consistency"] == pytest.approx(sum(shares) / len(shares))
    no_reasoning = [_result("t", [True], ["1"], language=[None])]
    assert aggregate(no_reasoning, [1], 1)["language_consistency"] == 0.0
    assert m["mean_length"] == pytest.approx(sum(sum(r.lengths) for r in results) / 36)


def test_aggregate_refuses_mixed_sample_counts_and_empty():
    with pytest.raises(ValueError, match="expected k=4"):
        aggregate([_result("t", [True, False], ["1", "2"])], [1], 4)
    with pytest.raises(ValueError, match="no prompts"):
        aggregate([], [1], 4)
    with pytest.raises(ValueError, match="answers"):
        PromptResult(task="t", correct=(True,), answers=(), formatted=(True,), language=(1.0,), lengths=(1,))
