"""The SFT dataset: prompt + response token ids with a loss mask on the response only.

Used by SFT stages (cold start, rejection-sampling SFT) and to pre-train the tiny default model on
procedural worked solutions. Rows are `prompt` + `response`, or a chat whose last message is the
assistant's reply (earlier assistant turns are context, not targets).

- r1_zero / raw templates: input = prompt ids + response ids + EOS; the mask covers the response and
  the EOS (the model must learn to stop). The response follows the prompt with no separator; when
  the prompt ends with `<think>` (think_in_prompt) a response starting with `<think>` loses it.
- chat template: the whole conversation is rendered by the tokenizer's template; the prompt is the
  rendering of the earlier messages with the generation prompt, and must be a prefix of the whole
  (a template that rewrites history, e.g. dropping earlier reasoning, makes the row an error). The
  template's own end-of-turn tokens are part of the response.
`loss_mask[t] = 1` means token t is a training target (predicted from the tokens before it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from r1mega.data.config import DataConfig
from r1mega.data.errors import DataError, ErrorReport, RowError
from r1mega.data.example_list import ExampleList
from r1mega.data.rows import Row
from r1mega.data.sources import load_rows
from r1mega.data.templates import (
    THINK_OPEN,
    TemplateError,
    render_chat,
    render_prompt,
    require_chat_template,
    response_prefix,
)

__all__ = ["SFTExample", "SFTDataset", "build_sft_examples", "load_sft_dataset", "collate_sft"]


@dataclass
class SFTExample:
    input_ids: list[int]
    loss_mask: list[int]
    source: str

    @property
    def prompt_length(self) -> int:
        return self.loss_mask.index(1)


class SFTDataset(ExampleList[SFTExample]):
    """The SFT examples of one split plus the report of rows skipped while building it."""


def _texts(row: Row, tokenizer: Any, cfg: DataConfig) -> tuple[str, str]:
    """(prompt text, response text) of one row."""
    if cfg.template == "chat":
        if row.messages is not None:
            history, last = row.messages[:-1], row.messages[-1]
        else:
            history = [{"role": "user", "content": row.prompt}]
            last = {"role": "assistant", "content": row.response}
        if cfg.system_prompt is not None and not any(m["role"] == "system" for m in history):
            history = [{"role": "system", "content": cfg.system_prompt}, *history]
        prompt_text = render_prompt(
            template="chat", messages=history, tokenizer=tokenizer, think_in_prompt=cfg.think_in_prompt
        )
        full = render_chat(tokenizer, [*history, last], add_generation_prompt=False)
        if not full.startswith(prompt_text):
            raise TemplateError(
                "the chat template's rendering of the whole conversation does not start with its "
                "rendering of the prompt, so the response cannot be separated"
            )
        return prompt_text, full[len(prompt_text):]
    if row.messages is not None:
        prompt = render_prompt(template=cfg.template, messages=row.messages[:-1], think_in_prompt=cfg.think_in_prompt)
        response = row.messages[-1]["content"]
    else:
        prompt = render_prompt(template=cfg.template, prompt=row.prompt, think_in_prompt=cfg.think_in_prompt)
        response = row.response
    if response_prefix(prompt) and response.lstrip().startswith(THINK_OPEN):
        response = response.lstrip()[len(THINK_OPEN):]
    return prompt, response


def build_sft_examples(rows: list[Row], tokenizer: Any, cfg: DataConfig, report: ErrorReport) -> list[SFTExample]:
    if cfg.template == "chat":
        require_chat_template(tokenizer)
    pairs: list[tuple[Row, str, str]] = []
    for row in rows:
        try:
            prompt, response = _texts(row, tokenizer, cfg)
        except TemplateError as e:
            report.add(row.location, RowError("template", str(e)))
            continue
        pairs.append((row, prompt, response))
    if not pairs:
        return []
    add_special = cfg.template != "chat"
    prompt_ids = tokenizer([p for _, p, _ in pairs], add_special_tokens=add_special)["input_ids"]
    response_ids = tokenizer([r for _, _, r in pairs], add_special_tokens=False)["input_ids"]
    eos = [] if cfg.template == "chat" else [tokenizer.eos_token_id]
    examples = []
    for (row, _, _), p_ids, r_ids in zip(pairs, prompt_ids, response_ids, strict=True):
        r_ids = list(r_ids) + eos
        if not r_ids:
            report.add(row.location, RowError("missing_field", "the response is empty after tokenization"))
            continue
        n = len(p_ids) + len(r_ids)
        if n > cfg.max_sft_tokens:
            detail = f"example has {n} tokens > data.max_sft_tokens={cfg.max_sft_tokens}"
            report.add(row.location, RowError("too_long", detail))
            continue
        if len(p_ids) > cfg.max_prompt_tokens:
            detail = f"prompt has {len(p_ids)} tokens > data.max_prompt_tokens={cfg.max_prompt_tokens}"
            report.add(row.location, RowError("too_long", detail))
            continue
        examples.append(SFTExample(list(p_ids) + r_ids, [0] * len(p_ids) + [1] * len(r_ids), row.location))
    return examples


def load_sft_dataset(cfg: DataConfig, split: str, tokenizer: Optional[Any] = None) -> SFTDataset:
    """SFT examples of `split` from the configured source (procedural: the worked solutions)."""
    if tokenizer is None:
        from r1mega.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.tokenizer)
    report = ErrorReport(on_error=cfg.on_error)
    rows = load_rows(cfg, split, report, need_answer=False, need_response=True)
    examples = build_sft_examples(rows, tokenizer, cfg, report)
    report.log(f"SFT dataset ({split})")
    if rows and not examples:
        raise DataError(f"data ({split}): every SFT row was rejected; {report.summary()}")
    return SFTDataset(examples, report, name=split)


def collate_sft(examples: Sequence[SFTExample], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, loss_mask and attention_mask, each [batch, max_len]."""
    import torch

    if not examples:
        raise ValueError("collate_sft: empty batch")
    width = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # [batch, max_len]
    loss_mask = torch.zeros((len(examples), width), dtype=torch.float32)  # [batch, max_len]
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # [batch, max_len]
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[i, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        loss_mask[i, :n] = torch.tensor(ex.loss_mask, dtype=torch.float32)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "loss_mask": loss_mask, "attention_mask": attention_mask}
