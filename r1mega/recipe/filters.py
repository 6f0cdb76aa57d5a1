"""Sample filters of the data stages (cold-start selection, rejection sampling), and the readable
cold-start format.

A sample is a dict with the provenance keys "prompt_id", "sample_index", "prompt", "response",
"reference" (the PromptExample.reference dict), "task", "checkpoint", "stage". Filters judge the
completion as the rewards do: `reference["response_prefix"] + response` (the prompt may have opened
`<think>`). Each filter says whether a sample passes:

- correct: the task's rule accuracy check (r1mega.rewards.accuracy; custom tasks through
  `task_accuracy`) scores 1.
- closed_reasoning: exactly one `<think>` and one `</think>`, in that order, with non-empty content
  (an unclosed or missing reasoning block fails: a response cut off mid-thought).
- language: the share of target-language words in the reasoning (r1mega.rewards.language) is at
  least `min_language_share`; no reasoning block fails (DeepSeek-R1 drops mixed-language CoT).
- paragraphs: every paragraph of the reasoning (text between blank lines) has at most
  `max_paragraph_chars` characters.
- code_blocks: no fenced code block (``` or ~~~ at the start of a line) anywhere in the completion.
- repetition: no line (stripped, non-empty) occurs more than `max_line_repeats` times and no
  whitespace-separated n-gram of `ngram_size` words occurs more than `max_ngram_repeats` times:
  the signature of a decoding loop.

`filter_samples` applies the named filters in the given order; a dropped sample is counted under
the first filter it fails, so the counts add up to the number dropped.

The readable format (`to_readable`). DeepSeek-R1's cold-start data is
`|special_token|<reasoning_process>|special_token|<summary>`: the reasoning, a delimiter, then a
summary for the reader. r1mega keeps the R1-Zero template's tags as the delimiters, so that the
format reward, the answer extraction and the tiny tokenizer (which has `<think>`, `</think>`,
`<answer>`, `</answer>` as single tokens and no other special tokens than EOS and pad) all work
unchanged on the cold-start model's outputs:

    |special_token|  -> `<think>\\n`          (opens the reasoning)
    <reasoning>      -> its non-empty lines, stripped, one per line (blank lines, indentation and
                        trailing spaces removed)
    |special_token|  -> `\\n</think> `        (closes it)
    <summary>        -> `<answer>summary</answer>`: the content of the response's answer block

This is exactly the layout of the generated worked solutions (r1mega.data.tasks.format_solution).
For the built-in tasks the summary is the final answer, because the rule checks read the whole
answer block (a prose summary with a `\\boxed{}` answer also passes the math check, and can be
written by a custom data stage). `to_readable` returns None when the response does not have
exactly that structure (one reasoning block, one answer block, nothing around them; the strict
format reward's rule) or when its reasoning has no text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

from r1mega.configlib import ConfigError

__all__ = [
    "FilterConfig",
    "FilterResult",
    "FILTERS",
    "filter_samples",
    "first_failure",
    "to_readable",
    "completion_of",
    "SAMPLE_KEYS",
]

SAMPLE_KEYS: tuple[str, ...] = ("prompt_id", "sample_index", "prompt", "response", "reference", "task",
                                "checkpoint", "stage")
"""The provenance keys every sample dict carries (filters keep them all, and add "filters_passed")."""


@dataclass(kw_only=True)
class FilterConfig:
    language: Literal["en", "zh"] = "en"
    """Target language of the reasoning for the `language` filter."""
    min_language_share: float = 1.0
    """Least share of target-language words in the reasoning; 1.0 drops any mixing (the paper's
    cold-start and rejection-sampling rule)."""
    max_paragraph_chars: int = 1000
    """Longest paragraph (text between blank lines) of the reasoning, in characters."""
    ngram_size: int = 8
    """Words per n-gram of the `repetition` filter."""
    max_ngram_repeats: int = 3
    """An n-gram seen more often than this marks a loop."""
    max_line_repeats: int = 3
    """A (stripped, non-empty) line seen more often than this marks a loop."""
    boxed_fallback: bool = True
    """`correct`: read the last `\\boxed{}` outside the reasoning when there is no answer block
    (as rewards.boxed_fallback)."""
    task_accuracy: dict[str, str] = field(default_factory=dict)
    """`correct` for task types without a built-in check: task -> `package.module:function`, a
    RewardFn (as rewards.task_accuracy)."""

    def validate(self) -> None:
        if not 0.0 <= self.min_language_share <= 1.0:
            raise ConfigError(f"min_language_share: must be in [0, 1], got {self.min_language_share}")
        for name in ("max_paragraph_chars", "ngram_size", "max_ngram_repeats", "max_line_repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        from r1mega.rewards.config import IMPORT_PATH_RE

        for task, path in self.task_accuracy.items():
            if not IMPORT_PATH_RE.match(path):
                raise ConfigError(f"task_accuracy.{task}: {path!r} is not an import path 'package.module:function'")


@dataclass
class FilterResult:
    kept: list[dict]
    """The samples that passed every filter, each with "filters_passed" added."""
    removed: dict[str, int]
    """Filter name -> samples it dropped (each dropped sample counts under its first failing filter)."""
    total: int
    """Samples seen."""

    def summary(self) -> str:
        """One line: kept/total and what each filter removed."""
        parts = ", ".join(f"{name}={n}" for name, n in self.removed.items())
        return f"kept {len(self.kept)} of {self.total} samples; removed by filter: {parts or 'none'}"


# -- reading a sample --------------------------------------------------------------------------------


def completion_of(sample: dict) -> str:
    """The completion the filters judge: the prompt's response prefix + the response."""
    reference = sample.get("reference") or {}
    return (reference.get("response_prefix") or "") + str(sample["response"])


def _reasoning(text: str) -> Optional[str]:
    from r1mega.rewards.parse import parse_completion

    return parse_completion(text).think


# -- the filters -------------------------------------------------------------------------------------


class _Correct:
    """Rule accuracy, with the custom task checks imported once per filter_samples call."""

    def __init__(self, cfg: FilterConfig):
        from r1mega.rewards.registry import load_reward_fn

        self.cfg = cfg
        self.custom = {t: load_reward_fn(p, f"task_accuracy.{t}") for t, p in cfg.task_accuracy.items()}

    def __call__(self, sample: dict, text: str) -> bool:
        from r1mega.rewards.accuracy import accuracy_reward
        from r1mega.rewards.suite import normalize_value
        from r1mega.rewards.types import SampleView

        reference = dict(sample["reference"])
        view = SampleView(prompt_token_ids=[], response_token_ids=[], response_logprobs=[],
                          finish_reason="stop", response_text=str(sample["response"]))
        value = accuracy_reward(view, reference, boxed_fallback=self.cfg.boxed_fallback, custom=self.custom)
        return normalize_value("accuracy", value)["accuracy"] >= 1.0


def _closed_reasoning(cfg: FilterConfig, text: str) -> bool:
    opens, closes = text.count("<think>"), text.count("</think>")
    if opens != 1 or closes != 1 or text.index("<think>") > text.index("</think>"):
        return False
    return bool(_reasoning(text) and _reasoning(text).strip())


def _language(cfg: FilterConfig, text: str) -> bool:
    from r1mega.rewards.language import language_share

    think = _reasoning(text)
    return think is not None and language_share(think, cfg.language) >= cfg.min_language_share


_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def _paragraphs(cfg: FilterConfig, text: str) -> bool:
    think = _reasoning(text)
    if think is None:
        return True  # nothing to judge here; closed_reasoning is the filter for that
    return all(len(p.strip()) <= cfg.max_paragraph_chars for p in _BLANK_LINE.split(think))


_FENCE = re.compile(r"(^|\n)[ \t]*(```|~~~)")


def _code_blocks(cfg: FilterConfig, text: str) -> bool:
    return _FENCE.search(text) is None


def _repetition(cfg: FilterConfig, text: str) -> bool:
    lines = Counter(line.strip() for line in text.splitlines() if line.strip())
    if lines and max(lines.values()) > cfg.max_line_repeats:
        return False
    words = text.split()
    n = cfg.ngram_size
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return not grams or max(grams.values()) <= cfg.max_ngram_repeats


_TEXT_FILTERS: dict[str, Callable[[FilterConfig, str], bool]] = {
    "closed_reasoning": _closed_reasoning,
    "language": _language,
    "paragraphs": _paragraphs,
    "code_blocks": _code_blocks,
    "repetition": _repetition,
}

FILTERS: tuple[str, ...] = ("correct", *_TEXT_FILTERS)
"""Every filter name, in the order a cold-start selection would apply them."""


def _build(names: Sequence[str], cfg: FilterConfig) -> list[tuple[str, Callable[[dict, str], bool]]]:
    if isinstance(names, str):
        raise ValueError(f"filter names must be a list, got the string {names!r}")
    unknown = [n for n in names if n not in FILTERS]
    if unknown:
        raise ValueError(f"unknown filter(s) {unknown}; known filters: {list(FILTERS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"filter names {list(names)} have duplicates")
    checks = []
    for name in names:
        if name == "correct":
            checks.append((name, _Correct(cfg)))
        else:
            fn = _TEXT_FILTERS[name]
            checks.append((name, lambda sample, text, fn=fn: fn(cfg, text)))
    return checks


def _check_sample(i: int, sample: Any, need_reference: bool) -> None:
    if not isinstance(sample, dict):
        raise ValueError(f"sample {i}: expected a dict, got {type(sample).__name__}")
    if "response" not in sample or not isinstance(sample["response"], str):
        raise ValueError(f"sample {i} (prompt_id {sample.get('prompt_id')!r}): 'response' is missing or not a string")
    if need_reference and not isinstance(sample.get("reference"), dict):
        raise ValueError(
            f"sample {i} (prompt_id {sample.get('prompt_id')!r}): 'reference' (the prompt's reference dict) is "
            "missing; the 'correct' filter needs it"
        )


def first_failure(sample: dict, names: Sequence[str], cfg: FilterConfig) -> Optional[str]:
    """The first filter of `names` that `sample` fails, or None when it passes them all."""
    result = filter_samples([sample], names, cfg)
    return next((name for name, n in result.removed.items() if n), None)


def filter_samples(samples: Iterable[dict], names: Sequence[str], cfg: FilterConfig) -> FilterResult:
    """Apply the named filters in order; see the module docstring. The kept dicts are copies of the
    input (every key kept) with "filters_passed": list of the filter names."""
    checks = _build(names, cfg)
    need_reference = "correct" in names
    kept: list[dict] = []
    removed = {name: 0 for name in names}
    total = 0
    for i, sample in enumerate(samples):
        total += 1
        _check_sample(i, sample, need_reference)
        text = completion_of(sample)
        failed = next((name for name, check in checks if not check(sample, text)), None)
        if failed is None:
            kept.append({**sample, "filters_passed": list(names)})
        else:
            removed[failed] += 1
    return FilterResult(kept=kept, removed=removed, total=total)


# -- the readable format -----------------------------------------------------------------------------


def to_readable(response: str) -> Optional[str]:
    """The cold-start format (module docstring) of a completion, or None when it cannot be reformatted.

    `response` is the completion as the rewards read it (with the prompt's response prefix, e.g. a
    leading `<think>`, when the prompt opened the reasoning: see `completion_of`)."""
    from r1mega.data.tasks.base import format_solution
    from r1mega.rewards.format import is_well_formatted
    from r1mega.rewards.parse import parse_completion

    if not is_well_formatted(response):
        return None
    parsed = parse_completion(response.strip())
    steps = [line.strip() for line in (parsed.think or "").splitlines() if line.strip()]
    answer = parsed.answers[0].strip()
    if not steps or not answer:
        return None
    readable = format_solution(steps, answer)
    assert is_well_formatted(readable), readable  # the format reward accepts what SFT will teach
    return readable
