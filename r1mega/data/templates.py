"""Prompt templates: R1-Zero (DeepSeek-R1 paper, Table 1), a tokenizer's chat template, or raw text.

The rendered prompt ends exactly where the model starts generating. With `think_in_prompt` it ends
with `<think>`, so the response begins inside the reasoning; `response_prefix(prompt)` returns that
trailing `<think>` so the rewards can judge `prefix + response` as one completion whichever way the
prompt was built.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

__all__ = [
    "R1_ZERO_TEMPLATE",
    "THINK_OPEN",
    "render_prompt",
    "render_chat",
    "require_chat_template",
    "response_prefix",
    "TemplateError",
]

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user "
    "with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> "
    "<answer> answer here </answer>. User: {prompt}. Assistant:"
)
"""Verbatim from the paper; `{prompt}` is the question. Nothing is stripped from the question, so a
question ending in "." reads "..", exactly as the paper's template would render it."""

THINK_OPEN = "<think>"


class TemplateError(ValueError):
    """A prompt cannot be rendered with the chosen template (e.g. the tokenizer has no chat template)."""


Messages = Sequence[dict[str, Any]]


def require_chat_template(tokenizer: Any) -> None:
    """TemplateError unless the tokenizer has a chat template."""
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TemplateError(
            f"template 'chat': tokenizer {name!r} has no chat template (tokenizer_config.json has no "
            "`chat_template`); use data.template: r1_zero or raw, or a tokenizer that ships one"
        )


def render_chat(tokenizer: Any, messages: Messages, *, add_generation_prompt: bool) -> str:
    """`tokenizer.apply_chat_template` to text, with a clear error when there is no template."""
    require_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def render_prompt(
    *,
    template: str,
    prompt: Optional[str] = None,
    messages: Optional[Messages] = None,
    tokenizer: Any = None,
    think_in_prompt: bool = False,
    system_prompt: Optional[str] = None,
) -> str:
    """The text the model is conditioned on. Give `prompt` (a question) or `messages` (a chat).

    r1_zero and raw take one question: a `messages` chat is accepted only if it is a single user
    message. chat takes either (a question becomes one user message, after `system_prompt` if set).
    """
    if (prompt is None) == (messages is None):
        raise ValueError("render_prompt: give exactly one of prompt or messages")
    if template in ("r1_zero", "raw"):
        if messages is not None:
            prompt = _single_user_message(messages, template)
        text = R1_ZERO_TEMPLATE.replace("{prompt}", prompt) if template == "r1_zero" else prompt
        if think_in_prompt:
            text += " " + THINK_OPEN if template == "r1_zero" else THINK_OPEN
        return text
    if template == "chat":
        if messages is None:
            messages = [{"role": "user", "content": prompt}]
            if system_prompt is not None:
                messages = [{"role": "system", "content": system_prompt}, *messages]
        elif system_prompt is not None and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": system_prompt}, *messages]
        text = render_chat(tokenizer, messages, add_generation_prompt=True)
        if think_in_prompt and not text.rstrip().endswith(THINK_OPEN):
            # Some chat templates (DeepSeek-R1 distills) already open the reasoning block.
            text += THINK_OPEN
        return text
    raise ValueError(f"unknown template {template!r}; choose r1_zero, chat or raw")


def _single_user_message(messages: Messages, template: str) -> str:
    if len(messages) != 1 or messages[0].get("role") != "user":
        roles = [m.get("role") for m in messages]
        raise TemplateError(
            f"template {template!r} takes one question; this chat has roles {roles} "
            "(use data.template: chat for multi-message prompts)"
        )
    return messages[0].get("content")


def response_prefix(prompt_text: str) -> str:
    """The opened, unclosed `<think>` the prompt ends with (plus trailing whitespace), else ""."""
    stripped = prompt_text.rstrip()
    if not stripped.endswith(THINK_OPEN):
        return ""
    return prompt_text[len(stripped) - len(THINK_OPEN):]
