"""Reading a completion: reasoning block, answer blocks, `\\boxed{}` answers.

The completion a reward judges is `reference["response_prefix"] + sample.response_text`: when the
prompt already opened `<think>` (data.think_in_prompt), that tag belongs to the completion.

Answer extraction (the one rule every accuracy check uses). Reasoning is the content of every
complete `<think>...</think>` block and everything after an unclosed `<think>`; nothing in it is an
answer, neither an `<answer>` block nor a `\\boxed{}`:
1. Exactly one `<answer>...</answer>` block outside the reasoning: its content is the answer; if that
   content contains a `\\boxed{...}`, the last boxed content is the answer.
2. Several answer blocks: no answer (score 0). Listing several candidates is a hedge, not an answer.
3. No answer block: with `boxed_fallback`, the last `\\boxed{...}` outside the reasoning is the
   answer (chat-style math models box their final answer).
4. Otherwise no answer. Plain text outside tags ("the answer is 5") is never read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

__all__ = [
    "Completion",
    "completion_text",
    "parse_completion",
    "extract_answer",
    "last_boxed",
    "MAX_ANSWER_CHARS",
]

THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
MAX_ANSWER_CHARS = 1000
"""Longer extracted answers score 0 without being parsed (no final answer is that long; parsing one
would only cost time)."""


@dataclass(frozen=True)
class Completion:
    text: str
    think: Optional[str]
    """Content of the first complete <think> block (None if there is none)."""
    answers: tuple[str, ...]
    """Contents of every complete <answer> block outside the reasoning, in order."""
    outside: str
    """The text with every <think> block (and anything after an unclosed <think>) removed."""


def completion_text(sample: Any, reference: dict[str, Any]) -> str:
    return (reference.get("response_prefix") or "") + (sample.response_text or "")


def parse_completion(text: str) -> Completion:
    thinks = THINK_RE.findall(text)
    outside = THINK_RE.sub(" ", text)
    unclosed = outside.find("<think>")
    if unclosed >= 0:
        outside = outside[:unclosed]
    return Completion(
        text=text,
        think=thinks[0] if thinks else None,
        answers=tuple(ANSWER_RE.findall(outside)),
        outside=outside,
    )


def last_boxed(text: str) -> Optional[str]:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`) with balanced braces; None if none."""
    best = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            best = text[m.end() : i - 1]
    return best


def extract_answer(completion: Completion, *, boxed_fallback: bool = True) -> tuple[Optional[str], str]:
    """(answer or None, how): how is one of answer_tag, boxed_in_tag, boxed, multiple_answers,
    no_answer, too_long. See the module docstring for the rule."""
    if len(completion.answers) > 1:
        return None, "multiple_answers"
    if len(completion.answers) == 1:
        content = completion.answers[0]
        boxed = last_boxed(content)
        answer, how = (boxed, "boxed_in_tag") if boxed is not None else (content, "answer_tag")
    elif boxed_fallback and (boxed := last_boxed(completion.outside)) is not None:
        answer, how = boxed, "boxed"
    else:
        return None, "no_answer"
    answer = answer.strip()
    if not answer:
        return None, "no_answer"
    if len(answer) > MAX_ANSWER_CHARS:
        return None, "too_long"
    return answer, how
