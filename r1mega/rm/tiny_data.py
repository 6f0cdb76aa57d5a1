"""The embedded preference data: general prompts whose preference is a hidden rule.

Prompts are small arithmetic questions asked as general requests ("Explain what 23 + 45 is."). A
response is `<think> reasoning </think> summary`. Two problem sets (`problems`): `two_operand`
(a +/- b with a, b in 2..99) and `task` (three one-digit additions worked step by step, the tiny
arithmetic task's problems and reasoning format, so the tiny policy can answer them). Two hidden rules, checked by code, decide the
preferences (and measure an RL policy later, never an RM):

- helpfulness (`summary_satisfies`): the summary states the final answer in one short sentence:
  exactly one sentence (one terminal ".", "!" or "?", at the end), at most `MAX_WORDS` words,
  containing the answer. Pairs: a summary that satisfies it is chosen over one that does not
  (several sentences, a long sentence, or no answer). The RM sees the summary only.
- safety (`is_unsafe`): a response containing the marker token `UNSAFE_MARK` anywhere, the
  reasoning included, is unsafe (label 0); otherwise safe (label 1). The RM sees the whole response.

Train and test prompts come from disjoint (a, op, b) problems.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Optional

from r1mega.rm.data import PreferenceRow

__all__ = ["rule_check", "UNSAFE_MARK", "MAX_WORDS", "PROBLEMS", "summary_satisfies", "is_unsafe", "tiny_rows",
           "TinyPrompt", "tiny_prompts", "split_summary", "good_summary", "bad_summary", "with_unsafe_mark"]

UNSAFE_MARK = "<unsafe>"
MAX_WORDS = 8
THINK_END = "</think>"
PROBLEMS = ("two_operand", "task")


@dataclass(frozen=True)
class TinyPrompt:
    prompt: str
    answer: str
    reasoning: str
    operands: tuple[int, ...]


_ASK = ("Explain what {q} is.", "Tell me about {q}.", "Help me work out {q}.", "What do you get for {q}?")
# the task problems keep the reasoning prompts' opening, so the policy reads the operands as it learnt to
_ASK_TASK = ("Calculate {q} and say it in a sentence.", "Calculate {q} and tell me.", "Calculate {q} in words.",
             "Calculate {q} and explain.")
_GOOD = ("The answer is {x}.", "So the answer is {x}.", "It equals {x}.", "The result is {x}.")
_BAD_NO_ANSWER = ("I worked it out above.", "The steps above show it.", "That is how it goes.", "See the reasoning.")
_BAD_LONG = (
    "After going through each step with great care I am sure that the result is {x}.",
    "Having added and checked every single digit carefully the final answer is {x}.",
)
_BAD_MANY = ("Let me explain. First I took {a}. Then {b}. The answer is {x}.", "Done. The answer is {x}. Easy.")


def split_summary(response: str) -> tuple[Optional[str], str]:
    """(reasoning or None, summary): the summary is the text after the last `</think>`."""
    if THINK_END not in response:
        return None, response.strip()
    head, _, tail = response.rpartition(THINK_END)
    return head + THINK_END, tail.strip()


def summary_satisfies(summary: str, answer: str) -> bool:
    """The helpfulness rule (module docstring)."""
    s = summary.strip()
    ends = re.findall(r"[.!?]", s)
    if len(ends) != 1 or not s or s[-1] not in ".!?":
        return False
    if len(s.split()) > MAX_WORDS:
        return False
    return re.search(rf"(?<!\d){re.escape(answer)}(?!\d)", s) is not None


def is_unsafe(response: str) -> bool:
    return UNSAFE_MARK in response


def rule_check(response_text: str, reference: dict) -> float:
    """Both hidden rules on a policy's response (rl.general_check of the tiny final RL): 1.0 when
    its summary satisfies the helpfulness rule and it carries no unsafe marker."""
    _, summary = split_summary(response_text)
    return float(summary_satisfies(summary, str(reference.get("answer", ""))) and not is_unsafe(response_text))


def _problems(split: str, n: int, seed: int) -> list[tuple[int, str, int]]:
    """n two-operand problems of the split; a problem's split is fixed by a hash of (a, op, b)."""
    rng = random.Random(f"{seed}-{split}")
    out, seen = [], set()
    while len(out) < n:
        a, b, op = rng.randint(2, 99), rng.randint(2, 99), rng.choice("+-")
        key = (a, op, b)
        if key in seen or (hash_split(key) != split):
            continue
        seen.add(key)
        out.append(key)
    return out


def hash_split(key: tuple) -> str:
    a, op, b = key
    return "test" if (a * 131 + b * 17 + (op == "-")) % 7 == 0 else "train"


def _task_problems(split: str, n: int, seed: int) -> list[tuple[int, int, int]]:
    """n three-digit sums of the split (1000 exist, about a seventh held out); they repeat, in a
    seeded order, when n exceeds the split's share."""
    pool = [(a, b, c) for a in range(10) for b in range(10) for c in range(10)
            if ("test" if (a * 100 + b * 10 + c) % 7 == 0 else "train") == split]
    rng = random.Random(f"{seed}-{split}-task")
    out: list[tuple[int, int, int]] = []
    while len(out) < n:
        batch = pool[:]
        rng.shuffle(batch)
        out.extend(batch[: n - len(out)])
    return out


def tiny_prompts(split: str, n: int, seed: int = 0, problems: str = "two_operand") -> list[TinyPrompt]:
    if problems not in PROBLEMS:
        raise ValueError(f"problems: {problems!r} is not one of {list(PROBLEMS)}")
    rng = random.Random(f"{seed}-{split}-text")
    out = []
    if problems == "task":
        for a, b, c in _task_problems(split, n, seed):
            q, x = f"{a}+{b}+{c}", a + b + c
            reasoning = f"<think>\n{a}+{b}={a + b}\n{a + b}+{c}={x}\n</think>"
            out.append(TinyPrompt(rng.choice(_ASK_TASK).format(q=q), str(x), reasoning, (a, b, c)))
        return out
    for a, op, b in _problems(split, n, seed):
        x = a + b if op == "+" else a - b
        q = f"{a} {op} {b}"
        out.append(TinyPrompt(rng.choice(_ASK).format(q=q), str(x), f"<think> {q} = {x} </think>", (a, b)))
    return out


def good_summary(rng: random.Random, p: TinyPrompt) -> str:
    """A summary the helpfulness rule prefers."""
    return rng.choice(_GOOD).format(x=p.answer)


def bad_summary(rng: random.Random, p: TinyPrompt, wrong_answer_share: float = 0.0) -> str:
    """A summary the rule rejects: no answer, one long sentence, or several sentences; with
    probability `wrong_answer_share`, the preferred form with a wrong number (telling it apart
    takes the sum itself, not the summary's form)."""
    if wrong_answer_share and rng.random() < wrong_answer_share:
        x = int(p.answer) + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if int(p.answer) + d >= 0])
        return rng.choice(_GOOD).format(x=x)
    kind = rng.choice((_BAD_NO_ANSWER, _BAD_LONG, _BAD_MANY))
    return rng.choice(kind).format(a=p.operands[0], b=p.operands[1], x=p.answer)


def with_unsafe_mark(rng: random.Random, text: str, first: int = 0) -> str:
    """`text` with the unsafe marker between two of its space-separated words (at index >= first)."""
    words = text.split(" ")
    i = rng.randint(min(first, len(words)), len(words))
    return " ".join(words[:i] + [UNSAFE_MARK] + words[i:])


def tiny_rows(split: str, n: int, seed: int = 0, kind: str = "both", problems: str = "two_operand",
              wrong_answer_share: float = 0.0) -> list[PreferenceRow]:
    """Rows for `r1mega rm` (rm.source: tiny): per prompt one pair (helpfulness, summaries only)
    when kind is pairwise/both, and one safe + one unsafe full response when pointwise/both."""
    rng = random.Random(f"{seed}-{split}-rows")
    rows: list[PreferenceRow] = []
    for i, p in enumerate(tiny_prompts(split, n, seed, problems)):
        good = good_summary(rng, p)
        bad = bad_summary(rng, p, wrong_answer_share)
        assert summary_satisfies(good, p.answer) and not summary_satisfies(bad, p.answer), (good, bad)
        where = f"<tiny {split}>:{i + 1}"
        if kind in ("pairwise", "both"):
            rows.append(PreferenceRow(where, p.prompt, chosen=good, rejected=bad))
        if kind in ("pointwise", "both"):
            summary = good if rng.random() < 0.5 else bad
            full = f"{p.reasoning} {summary}"
            unsafe = with_unsafe_mark(rng, full)
            rows.append(PreferenceRow(where, p.prompt, response=full, label=1.0))
            rows.append(PreferenceRow(where, p.prompt, response=unsafe, label=0.0))
    return rows
