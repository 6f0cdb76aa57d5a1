"""Format reward: 1 for exactly `<think>reasoning</think> <answer>answer</answer>`, else 0.

Strict on purpose (R1-Zero's format reward): the completion, ignoring surrounding whitespace, must
be one reasoning block followed by one answer block, both non-empty, each tag exactly once, with
only whitespace between them and nothing after `</answer>`. Text before `<think>`, a second answer,
an unclosed tag or a missing block all score 0.

A general prompt (reference prompt_type `general`, scored by reward models) has no answer to
check: its format is R1's readable one, `<think>reasoning</think> summary`: one non-empty reasoning
block, then a non-empty summary, no answer tags.
"""

from __future__ import annotations

import re
from typing import Any

from r1mega.rewards.parse import completion_text

__all__ = ["format_reward", "is_well_formatted", "is_well_formatted_general"]

_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_FORMAT_RE = re.compile(r"<think>(.*)</think>\s*<answer>(.*)</answer>", re.DOTALL)
_GENERAL_RE = re.compile(r"<think>(.*)</think>(.*)", re.DOTALL)


def is_well_formatted(text: str) -> bool:
    text = text.strip()
    if any(text.count(tag) != 1 for tag in _TAGS):
        return False
    m = _FORMAT_RE.fullmatch(text)
    return bool(m and m.group(1).strip() and m.group(2).strip())


def is_well_formatted_general(text: str) -> bool:
    text = text.strip()
    if text.count("<think>") != 1 or text.count("</think>") != 1 or "<answer>" in text or "</answer>" in text:
        return False
    m = _GENERAL_RE.fullmatch(text)
    return bool(m and m.group(1).strip() and m.group(2).strip())


def format_reward(sample: Any, reference: dict[str, Any]) -> float:
    text = completion_text(sample, reference)
    if reference.get("prompt_type", "reasoning") == "general":
        return 1.0 if is_well_formatted_general(text) else 0.0
    return 1.0 if is_well_formatted(text) else 0.0
