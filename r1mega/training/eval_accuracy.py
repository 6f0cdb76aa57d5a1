"""Score generated completions of held-out prompts with the task's rule rewards (accuracy, format).

The same reward code the RL loop uses (r1mega.rewards), run in-process: the checks of the built-in
tasks are fast, and an evaluation is not worth a worker pool. The completion is decoded the way the
rollout engine decodes it (special tokens skipped), and the prompt's `response_prefix` counts as
part of it, as in RL.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from r1mega.rewards.config import RewardConfig
from r1mega.rewards.suite import RewardSuite
from r1mega.rewards.types import SampleView

__all__ = ["score_completions"]


def score_completions(
    prompts: Sequence[Any],
    completions: Sequence[Sequence[int]],
    tokenizer: Any,
    rewards: RewardConfig,
    *,
    samples_path: Optional[Path] = None,
) -> dict[str, float]:
    """{"correct": count, "formatted": count} over `prompts` (PromptExamples) and their completion
    token ids; optionally writes one jsonl row per sample to `samples_path`."""
    suite = RewardSuite(dataclasses.replace(rewards, weights={"accuracy": 1.0, "format": 1.0}))
    correct = formatted = 0.0
    rows = []
    for ex, ids in zip(prompts, completions, strict=True):
        text = tokenizer.decode(list(ids), skip_special_tokens=True)
        finished = bool(ids) and ids[-1] == tokenizer.eos_token_id
        view = SampleView(
            prompt_token_ids=list(ex.prompt_token_ids),
            response_token_ids=list(ids),
            response_logprobs=[],
            finish_reason="stop" if finished else "length",
            response_text=text,
        )
        acc = suite.run("accuracy", view, ex.reference)["accuracy"]
        fmt = suite.run("format", view, ex.reference)["format"]
        correct += acc
        formatted += fmt
        rows.append({"source": ex.reference.get("source"), "answer": ex.reference.get("answer"),
                     "completion": text, "accuracy": acc, "format": fmt})
    if samples_path is not None:
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        with open(samples_path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return {"correct": correct, "formatted": formatted}
