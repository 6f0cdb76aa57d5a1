"""Evaluation metrics over k sampled responses per prompt, pure Python (no torch).

- pass@k, unbiased (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1):
  with n samples of which c are correct, the probability that at least one of k samples drawn
  without replacement from the n is correct: 1 - C(n-c, k) / C(n, k). Averaged over prompts.
- pass@1 is its k=1 case, c/n: the accuracy averaged over the k samples (DeepSeek-R1's pass@1).
- language consistency: the mean share of target-language words in the reasoning, over the samples
  that have a reasoning block (so it measures the language, not the format).
- cons@k: majority vote over the k extracted answers; 1 if the most frequent answer is correct.
  Ties go to the answer seen first; a sample without an answer (None) never wins the vote; all
  None -> no answer -> 0.

`PromptResult` holds one prompt's samples; `aggregate` turns a list of them into the METRICS dict
the runner writes (docs/eval.md has the schema).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from math import comb
from typing import Iterable, Optional, Sequence

__all__ = ["pass_at_k", "majority_answer", "cons_at_k", "PromptResult", "aggregate", "metric_keys"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt: n samples, c correct, k drawn. ValueError for k > n."""
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"pass_at_k: {name} must be an integer, got {v!r}")
    if n < 1:
        raise ValueError(f"pass_at_k: n must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be in [1, n={n}] (k samples are drawn from the n), got {k}")
    # exact rational arithmetic: comb() of Python ints never overflows, the ratio is exact
    return float(1 - Fraction(comb(n - c, k), comb(n, k)))


def majority_answer(answers: Sequence[Optional[str]]) -> Optional[str]:
    """The most frequent non-None answer; ties go to the one that occurs first; None if none."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


def cons_at_k(answers: Sequence[Optional[str]], correct: Sequence[bool]) -> float:
    """1.0 if the majority answer is correct, else 0.0. `correct[i]` is sample i's rule verdict;
    the majority answer's verdict is that of its first sample (samples with equal answers get equal
    verdicts from a rule check)."""
    if len(answers) != len(correct):
        raise ValueError(f"cons_at_k: {len(answers)} answers but {len(correct)} verdicts")
    winner = majority_answer(answers)
    if winner is None:
        return 0.0
    return 1.0 if correct[list(answers).index(winner)] else 0.0


@dataclass(frozen=True)
class PromptResult:
    """The k samples of one prompt, scored."""

    task: str
    correct: tuple[bool, ...]
    answers: tuple[Optional[str], ...]
    """Extracted (normalised) answers, the votes of cons@k; None where no answer was found."""
    formatted: tuple[bool, ...]
    language: tuple[Optional[float], ...]
    """Language consistency of each sample: the share of target-language words in its reasoning;
    None for a sample without a reasoning block (it has no reasoning whose language could count)."""
    lengths: tuple[int, ...]
    """Response length of each sample in tokens."""

    def __post_init__(self) -> None:
        n = len(self.correct)
        if n == 0:
            raise ValueError("PromptResult: a prompt needs at least one sample")
        for name in ("answers", "formatted", "language", "lengths"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"PromptResult.{name}: {len(getattr(self, name))} values for {n} samples")

    @property
    def n(self) -> int:
        return len(self.correct)


def metric_keys(pass_k: Sequence[int], k: int) -> list[str]:
    """The keys of a METRICS dict, in the order they are written."""
    keys = ["prompts", "samples", "pass@1"]
    keys += [f"pass@{j}" for j in sorted(set(pass_k)) if j != 1]
    return keys + [f"cons@{k}", "format", "language_consistency", "mean_length"]


def aggregate(results: Iterable[PromptResult], pass_k: Sequence[int], k: int) -> dict[str, float]:
    """METRICS over prompts that all have k samples: pass@j and cons@k averaged over prompts,
    format and length averaged over samples, language consistency over the samples that have a
    reasoning block (0.0 when none has one)."""
    results = list(results)
    if not results:
        raise ValueError("aggregate: no prompts")
    for r in results:
        if r.n != k:
            raise ValueError(f"aggregate: a prompt has {r.n} samples, expected k={k}")
    p = len(results)
    out: dict[str, float] = {"prompts": p, "samples": p * k}
    for j in [1, *sorted(set(pass_k) - {1})]:
        out[f"pass@{j}"] = sum(pass_at_k(k, sum(r.correct), j) for r in results) / p
    out[f"cons@{k}"] = sum(cons_at_k(r.answers, r.correct) for r in results) / p
    samples = p * k
    out["format"] = sum(sum(r.formatted) for r in results) / samples
    shares = [x for r in results for x in r.language if x is not None]
    out["language_consistency"] = sum(shares) / len(shares) if shares else 0.0
    out["mean_length"] = sum(sum(r.lengths) for r in results) / samples
    return out
