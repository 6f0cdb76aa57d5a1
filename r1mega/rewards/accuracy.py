"""Rule-based accuracy: is the extracted answer right? Routed by the row's task type.

- math: equivalence with the ground truth via math-verify (sympy underneath). Plain numbers on both
  sides (`42`, `-3.5`, `1/2`, `1,000`) are compared exactly with fractions first, which is fast and
  immune to huge values. Otherwise the answer is parsed as LaTeX math (as if boxed) and, when that
  fails to match, as prose (math-verify finds the last expression), and compared with the parsed
  ground truth. math-verify's own signal-based timeouts are off: the worker pool's hard timeout is
  the only one, and it also stops checks stuck in C code, where a signal cannot reach them.
- countdown: the answer is an expression (optionally `expr = target`), evaluated exactly by an AST
  walker (never eval) with bounds on size; it must equal the target and use the given numbers each
  exactly once (`use_all`, the default) or at most once. Operators are those in
  metadata.operators (default + - * /).
- arithmetic: the answer must be the integer result (spaces and thousands commas ignored).
Each returns {"score": 1.0 or 0.0, "answer_found": 1.0 or 0.0}. The answer is extracted by the one
rule in `r1mega.rewards.parse` (answer block, else boxed outside the reasoning).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from fractions import Fraction
from typing import Any, Callable, Optional

from r1mega.data.expr import ExprError, evaluate, normalize_operators
from r1mega.rewards.parse import completion_text, extract_answer, parse_completion

__all__ = [
    "math_equal",
    "countdown_correct",
    "arithmetic_correct",
    "accuracy_reward",
    "BUILTIN_CHECKS",
]

_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_RATIO = re.compile(r"^[+-]?\d+/\d+$")
_THOUSANDS = re.compile(r"^([+-]?)(\d{1,3}(?:,\d{3})+)((?:\.\d*)?)$")
_MAX_NUMBER_DIGITS = 1000  # longer numbers are compared as text; Python refuses > 4300 digits


def _plain_number(text: str) -> Optional[Fraction]:
    """`42`, `-3.5`, `.5`, `1/2`, `1,000.5` (optionally in $...$) -> exact value; else None."""
    t = text.strip().strip("$").strip().replace(" ", "")
    m = _THOUSANDS.match(t)
    if m:
        t = m.group(1) + m.group(2).replace(",", "") + m.group(3)
    if len(t) > _MAX_NUMBER_DIGITS:
        return None
    if _NUMBER.match(t):
        return Fraction(t)
    if _RATIO.match(t):
        num, den = t.split("/")
        return Fraction(int(num), int(den)) if int(den) else None
    return None


def _math_verify_equal(answer: str, gold: str) -> bool:
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # "timeout is disabled" warnings

    def parsed(text: str, boxed: bool) -> list:
        return parse("\\boxed{" + text + "}" if boxed else text, parsing_timeout=None)

    gold_parsed = parsed(gold, True) or parsed(gold, False)
    if not gold_parsed:
        return False
    for boxed in (True, False):
        candidate = parsed(answer, boxed)
        if candidate and verify(gold_parsed, candidate, timeout_seconds=None):
            return True
    return False


def math_equal(answer: str, gold: str) -> bool:
    """Is `answer` mathematically equivalent to the ground truth `gold`?"""
    a, g = _plain_number(answer), _plain_number(gold)
    if a is not None and g is not None:
        return a == g
    if a is None and g is None and answer.strip() == gold.strip():
        return True
    return _math_verify_equal(answer, gold)


def countdown_correct(answer: str, numbers: list[int], target: int, *, use_all: bool = True,
                      operators: str = "+-*/") -> bool:
    text = normalize_operators(answer).replace("\\times", "*").replace("\\div", "/").strip().strip("$")
    if text.count("=") > 1:
        return False
    if "=" in text:
        lhs, rhs = text.split("=")
        if _plain_number(rhs) != target:
            return False
        text = lhs
    try:
        result = evaluate(text, operators=frozenset(operators))
    except ExprError:
        return False
    if result.value != target:
        return False
    used, available = Counter(result.literals), Counter(numbers)
    if use_all:
        return used == available
    return all(used[n] <= available[n] for n in used)


def arithmetic_correct(answer: str, gold: str) -> bool:
    t = answer.strip().strip("$").strip().rstrip(".").replace(" ", "").replace(",", "")
    if not re.fullmatch(r"[+-]?\d{1,%d}" % _MAX_NUMBER_DIGITS, t):
        return False
    return int(t) == int(gold.replace(",", "").strip())


def _math(answer: str, reference: dict[str, Any]) -> bool:
    return math_equal(answer, str(reference["answer"]))


def _countdown(answer: str, reference: dict[str, Any]) -> bool:
    meta = reference.get("metadata") or {}
    return countdown_correct(
        answer,
        list(meta["numbers"]),
        int(reference["answer"]),
        use_all=bool(meta.get("use_all", True)),
        operators="".join(meta.get("operators", "+-*/")),
    )


def _arithmetic(answer: str, reference: dict[str, Any]) -> bool:
    return arithmetic_correct(answer, str(reference["answer"]))


BUILTIN_CHECKS: dict[str, Callable[[str, dict[str, Any]], bool]] = {
    "math": _math,
    "countdown": _countdown,
    "arithmetic": _arithmetic,
}
"""task -> (extracted answer, reference) -> correct?"""


def accuracy_reward(
    sample: Any,
    reference: dict[str, Any],
    *,
    boxed_fallback: bool = True,
    custom: Optional[dict[str, Callable]] = None,
) -> dict[str, float]:
    """Route by reference["task"]: a custom RewardFn for that task if configured, else a built-in."""
    task = reference.get("task")
    if custom and task in custom:
        return custom[task](sample, reference)
    check = BUILTIN_CHECKS.get(task)
    if check is None:
        known = sorted(set(BUILTIN_CHECKS) | set(custom or {}))
        raise ValueError(
            f"accuracy: no check for task {task!r} (row {reference.get('source', '?')}); known tasks: "
            f"{known}; add one under rewards.task_accuracy"
        )
    answer, _ = extract_answer(parse_completion(completion_text(sample, reference)), boxed_fallback=boxed_fallback)
    if answer is None:
        return {"score": 0.0, "answer_found": 0.0}
    return {"score": 1.0 if check(answer, reference) else 0.0, "answer_found": 1.0}
