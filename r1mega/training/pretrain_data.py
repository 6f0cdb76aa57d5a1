"""The corpus `r1mega pretrain` trains a base model on: generated task text (see PretrainConfig).

One document per problem of `data.procedural` (same generator, seed and train/test split as the
RL prompts, so the held-out problems stay unseen): the prompt rendered with `data.template`, then
either the worked solution (`<think>` steps `</think> <answer>` answer `</answer>`, wrong in a
`wrong_solution_fraction` share of them) or just the solution's answer. Exactly
round(n * format_fraction) documents are formatted, chosen by a seeded draw. Documents become
`SFTExample`s through the SFT dataset code, so tokenization and length checks are the same; with
`loss_on: document` every token after the first is a target. With `pretrain.mixed_language_fraction`,
that share of the formatted documents (a second seeded draw, so the default corpus is unchanged)
opens its reasoning by restating the problem in Chinese number words (`七+五+九`).
"""

from __future__ import annotations

import random
from typing import Any

from r1mega.data.config import DataConfig
from r1mega.data.errors import DataError, ErrorReport
from r1mega.data.rows import Row
from r1mega.data.sft import SFTDataset, SFTExample, build_sft_examples
from r1mega.data.mixed_language import restate_in_han
from r1mega.data.tasks import format_solution, generate
from r1mega.training.sft_config import PretrainConfig

__all__ = ["pretrain_rows", "load_pretrain_dataset"]


def pretrain_rows(data: DataConfig, pretrain: PretrainConfig, split: str) -> list[Row]:
    """The documents of `split` as SFT rows (prompt + response), before templating."""
    if data.source != "procedural":
        raise DataError(
            "data.source: `r1mega pretrain` builds its corpus from generated problems; set "
            "data.source: procedural (use `r1mega sft` for datasets from files)"
        )
    proc = data.procedural
    problems = generate(proc, split)
    n = len(problems)
    rng = random.Random(f"r1mega:pretrain-format:{proc.task}:{split}:{proc.seed}")
    formatted = set(rng.sample(range(n), round(n * pretrain.format_fraction)))
    mixed: set[int] = set()
    if pretrain.mixed_language_fraction > 0:
        mix_rng = random.Random(f"r1mega:pretrain-mixed-language:{proc.task}:{split}:{proc.seed}")
        order = sorted(formatted)
        mixed = set(mix_rng.sample(order, round(len(order) * pretrain.mixed_language_fraction)))
    rows = []
    for i, ex in enumerate(problems):
        if i in mixed:
            problem = ex.metadata.get("expression") or " ".join(str(n) for n in ex.metadata.get("numbers", []))
            response = format_solution(restate_in_han(ex.steps, problem), ex.solution_answer)
        else:
            response = ex.solution if i in formatted else ex.solution_answer
        rows.append(
            Row(
                location=f"pretrain:{proc.task}:{split}:{i}",
                prompt=ex.prompt,
                messages=None,
                answer=ex.answer,
                task=ex.task,
                metadata={**ex.metadata, "formatted": i in formatted, "solution_correct": ex.solution_correct,
                          **({"mixed_language": True} if i in mixed else {})},
                response=response,
            )
        )
    return rows


def load_pretrain_dataset(data: DataConfig, pretrain: PretrainConfig, split: str, tokenizer: Any) -> SFTDataset:
    """The tokenized documents of `split`, with the loss mask `pretrain.loss_on` asks for."""
    report = ErrorReport(on_error=data.on_error)
    rows = pretrain_rows(data, pretrain, split)
    report.rows_read += len(rows)
    examples = build_sft_examples(rows, tokenizer, data, report)
    report.log(f"pretrain corpus ({split})")
    if rows and not examples:
        raise DataError(f"pretrain corpus ({split}): every document was rejected; {report.summary()}")
    if pretrain.loss_on == "document":
        # every token but the first (nothing precedes it to predict it from) is a target
        examples = [SFTExample(ex.input_ids, [0] + [1] * (len(ex.input_ids) - 1), ex.source) for ex in examples]
    return SFTDataset(examples, report, name=split)
