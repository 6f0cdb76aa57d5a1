"""Raw records -> validated rows: prompt or messages, answer, task, metadata (and SFT response).

Field names come from `FieldsConfig`; a dotted name reads a nested field (`reward_model.ground_truth`,
the verl parquet layout). A `prompt` that holds a list is read as chat messages (also verl's layout).
Task-specific checks catch rows the rewards could never score: countdown needs integer `numbers`
in its metadata and an integer target as its answer; arithmetic needs an integer answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from r1mega.data.config import FieldsConfig
from r1mega.data.errors import RowError

__all__ = ["Row", "parse_row", "ROLES"]

ROLES = ("system", "user", "assistant", "tool")
_INT = re.compile(r"^[+-]?\d+$")


@dataclass
class Row:
    location: str
    prompt: Optional[str]
    """The question (None when the row is a chat)."""
    messages: Optional[list[dict[str, str]]]
    answer: Optional[str]
    task: str
    metadata: dict[str, Any] = field(default_factory=dict)
    response: Optional[str] = None
    """SFT target for a `prompt` row (a chat row's target is its last assistant message)."""
    prompt_type: str = "reasoning"
    """`reasoning`: rule-checked (accuracy against the answer); `general`: scored by reward models
    (rewards.models), no answer needed and no accuracy check."""


PROMPT_TYPES = ("reasoning", "general")


_MISSING = object()


def _get(obj: dict, dotted: str) -> Any:
    """obj["a"]["b"] for "a.b"; a top-level key containing a dot wins; None counts as missing."""
    if dotted in obj:
        value = obj[dotted]
    else:
        value = obj
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                return _MISSING
            value = value[part]
    return _MISSING if value is None else value


def _messages(value: Any, name: str) -> list[dict[str, str]]:
    if not isinstance(value, (list, tuple)) or not value:
        raise RowError("bad_field", f"{name!r} must be a non-empty list of {{role, content}} messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RowError("bad_field", f"{name}[{i}] must be a mapping with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise RowError("bad_field", f"{name}[{i}].role {m['role']!r} is not one of {list(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    if all(not m["content"].strip() for m in out):
        raise RowError("empty_prompt", f"every message in {name!r} is empty")
    return out


def _answer(obj: dict, fields: FieldsConfig) -> str:
    for name in fields.answer:
        value = _get(obj, name)
        if value is _MISSING:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise RowError("bad_field", f"answer {name!r} must be a string or a number, got {type(value).__name__}")
        text = str(value).strip()
        if not text:
            raise RowError("missing_field", f"answer {name!r} is empty")
        return text
    raise RowError("missing_field", f"no answer field (looked for {', '.join(map(repr, fields.answer))})")


def _metadata(obj: dict, fields: FieldsConfig) -> dict[str, Any]:
    value = _get(obj, fields.metadata)
    if value is _MISSING:
        return {}
    if isinstance(value, str):  # parquet files often store nested metadata as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowError("bad_field", f"metadata {fields.metadata!r} is a string but not JSON") from None
    if not isinstance(value, dict):
        raise RowError("bad_field", f"metadata {fields.metadata!r} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _check_task(task: str, answer: Optional[str], metadata: dict[str, Any]) -> None:
    if answer is None:
        return
    if task == "countdown":
        numbers = metadata.get("numbers")
        if (
            not isinstance(numbers, (list, tuple))
            or not numbers
            or any(isinstance(n, bool) or not isinstance(n, int) for n in numbers)
        ):
            raise RowError("bad_field", "countdown rows need metadata.numbers: a non-empty list of integers")
        if not _INT.match(answer):
            raise RowError("bad_field", f"countdown answer must be the integer target, got {answer!r}")
        if "use_all" in metadata and not isinstance(metadata["use_all"], bool):
            raise RowError("bad_field", "countdown metadata.use_all must be true or false")
        ops = metadata.get("operators")
        if ops is not None and (
            not isinstance(ops, (list, tuple)) or not ops or any(op not in ("+", "-", "*", "/") for op in ops)
        ):
            raise RowError("bad_field", "countdown metadata.operators must be a non-empty list of + - * /")
    elif task == "arithmetic":
        if not _INT.match(answer.replace(",", "")):
            raise RowError("bad_field", f"arithmetic answer must be an integer, got {answer!r}")


def parse_row(
    location: str,
    obj: dict[str, Any],
    fields: FieldsConfig,
    *,
    default_task: str,
    need_answer: bool = True,
    need_response: bool = False,
) -> Row:
    """Validate one record; RowError (with a reason from errors.REASONS) when it is malformed."""
    prompt = _get(obj, fields.prompt)
    messages = None
    if isinstance(prompt, (list, tuple)):
        messages, prompt = _messages(prompt, fields.prompt), None
    elif prompt is not _MISSING:
        if not isinstance(prompt, str):
            raise RowError("bad_field", f"{fields.prompt!r} must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise RowError("empty_prompt", f"{fields.prompt!r} is empty")
    else:
        prompt = None
        raw_messages = _get(obj, fields.messages)
        if raw_messages is _MISSING:
            raise RowError("missing_field", f"neither {fields.prompt!r} nor {fields.messages!r} is present")
        messages = _messages(raw_messages, fields.messages)

    prompt_type = _get(obj, fields.prompt_type)
    if prompt_type is _MISSING:
        prompt_type = "reasoning"
    elif prompt_type not in PROMPT_TYPES:
        raise RowError("bad_field", f"{fields.prompt_type} {prompt_type!r} is not one of {list(PROMPT_TYPES)}")
    general = prompt_type == "general"

    task = _get(obj, fields.task)
    if task is _MISSING:
        task = "general" if general else default_task
    elif not isinstance(task, str) or not task:
        raise RowError("bad_field", f"task {fields.task!r} must be a non-empty string")

    answer = None
    if need_answer and not general:
        answer = _answer(obj, fields)
    elif general and any(_get(obj, name) is not _MISSING for name in fields.answer):
        answer = _answer(obj, fields)  # optional: held-out checks of general prompts may use it
    metadata = _metadata(obj, fields)
    _check_task(task, answer, metadata)

    response = None
    if need_response:
        if messages is not None:
            if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
                raise RowError("missing_field", "an SFT chat must end with a non-empty assistant message")
            if len(messages) < 2:
                raise RowError("missing_field", "an SFT chat needs a prompt message before the assistant reply")
        else:
            response = _get(obj, fields.response)
            if response is _MISSING:
                raise RowError("missing_field", f"no {fields.response!r} field for the SFT target")
            if not isinstance(response, str) or not response.strip():
                raise RowError("bad_field", f"{fields.response!r} must be a non-empty string")
    return Row(location, prompt, messages, answer, task, metadata, response, prompt_type)
