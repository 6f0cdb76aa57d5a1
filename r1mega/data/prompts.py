"""The RL prompt dataset: templated, tokenized prompts with the reference the rewards score against.

Each example is the prompt text (template applied, ending where generation starts), its token ids
(checked against `max_prompt_tokens`) and a `reference` dict, which the reward functions receive:

    answer           ground truth (string)
    task             math | countdown | arithmetic | a custom name
    metadata         the row's metadata (countdown: numbers, target, use_all)
    prompt           the question or the last user message, without template
    response_prefix  text the prompt ends with that belongs to the completion ("<think>" or "")
    source           file:line (or procedural:task:split:index) of the row
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from r1mega.data.config import DataConfig
from r1mega.data.errors import DataError, ErrorReport, RowError
from r1mega.data.example_list import ExampleList
from r1mega.data.rows import Row
from r1mega.data.sources import load_rows
from r1mega.data.templates import TemplateError, render_prompt, require_chat_template, response_prefix

__all__ = ["PromptExample", "PromptDataset", "load_prompt_dataset", "build_prompt_examples"]


@dataclass
class PromptExample:
    prompt_text: str
    prompt_token_ids: list[int]
    reference: dict[str, Any] = field(default_factory=dict)


class PromptDataset(ExampleList[PromptExample]):
    """The prompts of one split plus the report of rows skipped while building it."""

    @property
    def tasks(self) -> set[str]:
        """Tasks of the rule-checked (reasoning) prompts: general prompts have no accuracy check."""
        return {ex.reference["task"] for ex in self.examples if ex.reference.get("prompt_type", "reasoning") == "reasoning"}


def _question(row: Row) -> str:
    if row.prompt is not None:
        return row.prompt
    users = [m["content"] for m in row.messages if m["role"] == "user"]
    return users[-1] if users else ""


def build_prompt_examples(
    rows: list[Row], tokenizer: Any, cfg: DataConfig, report: ErrorReport
) -> list[PromptExample]:
    """Template, tokenize and length-check rows; bad ones go through `report`."""
    if cfg.template == "chat":
        require_chat_template(tokenizer)  # a tokenizer problem, not a row problem: fail before any row
    rendered: list[tuple[Row, str]] = []
    for row in rows:
        if row.messages is not None and row.messages[-1]["role"] == "assistant":
            report.add(row.location, RowError("template", "an RL prompt's chat must not end with an assistant message"))
            continue
        try:
            text = render_prompt(
                template=cfg.template,
                prompt=row.prompt,
                messages=row.messages,
                tokenizer=tokenizer,
                think_in_prompt=cfg.think_in_prompt,
                system_prompt=cfg.system_prompt,
            )
        except TemplateError as e:
            report.add(row.location, RowError("template", str(e)))
            continue
        rendered.append((row, text))
    if not rendered:
        return []
    # Chat templates write their own BOS; plain text gets the tokenizer's usual special tokens.
    add_special = cfg.template != "chat"
    # each distinct text once: procedural tasks repeat problems (the tiny default: ~1000 in 8000 rows)
    distinct = list(dict.fromkeys(t for _, t in rendered))
    ids_of = dict(zip(distinct, tokenizer(distinct, add_special_tokens=add_special)["input_ids"], strict=True))
    all_ids = [ids_of[t] for _, t in rendered]
    examples = []
    for (row, text), ids in zip(rendered, all_ids, strict=True):
        if len(ids) > cfg.max_prompt_tokens:
            report.add(
                row.location,
                RowError("too_long", f"prompt has {len(ids)} tokens > data.max_prompt_tokens={cfg.max_prompt_tokens}"),
            )
            continue
        reference = {
            "answer": row.answer,
            "task": row.task,
            "metadata": row.metadata,
            "prompt": _question(row),
            "response_prefix": response_prefix(text),
            "source": row.location,
            "prompt_type": row.prompt_type,
        }
        examples.append(PromptExample(text, list(ids), reference))
    return examples


def load_prompt_dataset(cfg: DataConfig, split: str, tokenizer: Optional[Any] = None) -> PromptDataset:
    """The prompts of `split` ("train" or "test") from the configured source.

    `tokenizer` defaults to `load_tokenizer(cfg.tokenizer)`. Skipped rows are logged and counted in
    the returned dataset's `report`.
    """
    if tokenizer is None:
        from r1mega.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    report = ErrorReport(on_error=cfg.on_error)
    rows = load_rows(cfg, split, report)
    examples = build_prompt_examples(rows, tokenizer, cfg, report)
    report.log(f"prompt dataset ({split})")
    if rows and not examples:
        raise DataError(f"data ({split}): every row was rejected; {report.summary()}")
    return PromptDataset(examples, report, name=split)
