"""Does a tokenizer directory load as the tokenizer its files describe? One-line answers.

transformers picks the class that `AutoTokenizer` builds from config.json's `model_type` as well as
from tokenizer_config.json's `tokenizer_class`, and some classes rebuild their pipeline from a
recipe of their own instead of reading tokenizer.json. transformers 5.25, for example, builds
`Qwen2Tokenizer` for every `model_type: qwen2` directory whatever class it declares, and that class
applies Qwen2's fixed pre-tokenizer and normalizer to the vocabulary and merges: a tokenizer trained
with another pre-tokenizer (r1mega's tiny one) then tokenizes differently, silently. The checks
here compare what a loader built with what the files say, by the ids both give on `PROBE_TEXTS`
(plus the tokenizer's own special and added tokens) and by the vocabulary, so a mismatch is caught
whichever part of the pipeline differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from r1mega.data.templates import R1_ZERO_TEMPLATE

__all__ = [
    "PROBE_TEXTS",
    "declared_class",
    "probe_texts",
    "first_difference",
    "resolution_problem",
]

PROBE_TEXTS: tuple[str, ...] = (
    R1_ZERO_TEMPLATE.format(prompt="Calculate 7+5+9") + " <think>",
    (
        "A conversation between User and Assistant. User: Using the numbers [3, 7, 25], create an "
        "equation that equals 46. Assistant: <think>\n25+3*7=46\n</think> <answer>25+3*7</answer>"
    ),
    "12+34=<think> 4+2=6 </think> <answer>46</answer>",
    "It's 3.14159, isn't it?  Two  spaces,\ttab,\n\nnewlines\r\n and trailing   ",
    "数学题：一加一等于几？答案是２。 Привет, мир! αβγ δ café naïve Ünïcödé 🙂👍🏽",
    "composed é vs decomposed e\u0301, ﬁ ligature, Ｆｕｌｌｗｉｄｔｈ, \u00a0nbsp, zero\u200bwidth",
    "def f(x):\n    return x**2 - 1  # code\n",
)
"""Texts that separate tokenizers: the R1-Zero template and a templated countdown prompt with its
solution, digits, contractions, whitespace runs, non-Latin and combining characters (a Unicode
normalizer shows on the decomposed and full-width forms), emoji and code."""


def declared_class(directory: Path) -> Optional[str]:
    """tokenizer_config.json's `tokenizer_class` (None when absent)."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    value = config.get("tokenizer_class")
    return value if isinstance(value, str) else None


def probe_texts(tokenizer: Any) -> list[str]:
    """PROBE_TEXTS plus one text made of the tokenizer's special and added tokens between words."""
    tokens = list(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "get_added_vocab", None)
    if added is not None:
        tokens += sorted(added(), key=str)
    if not tokens:
        return list(PROBE_TEXTS)
    return [*PROBE_TEXTS, "x " + " y".join(dict.fromkeys(str(t) for t in tokens)) + " z"]


def first_difference(
    texts: Iterable[str],
    got: Callable[[str], Sequence[int]],
    want: Callable[[str], Sequence[int]],
) -> Optional[str]:
    """A short description of the first text the two encoders disagree on, or None."""
    for text in texts:
        a, b = list(got(text)), list(want(text))
        if a != b:
            shown = text if len(text) <= 40 else text[:37] + "..."
            return f"{shown!r} becomes {len(a)} tokens instead of {len(b)}"
    return None


def _same_class(declared: str, resolved: type) -> bool:
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    for name in dict.fromkeys((declared, declared.removesuffix("Fast"), declared + "Fast")):
        cls = tokenizer_class_from_name(name)
        if cls is not None and cls is resolved:
            return True
    return resolved.__name__ in (declared, declared.removesuffix("Fast"))


def _model_type(directory: Path) -> str:
    path = directory / "config.json"
    try:
        model_type = json.loads(path.read_text(encoding="utf-8")).get("model_type") if path.is_file() else None
    except json.JSONDecodeError:
        model_type = None
    return f" (config.json model_type {model_type!r})" if model_type else ""


def resolution_problem(directory: Path, tokenizer: Any) -> Optional[str]:
    """Why `tokenizer` (what a loader built from `directory`) is not the tokenizer the directory's
    files describe, in one line naming the declared and the resolved class; None when it is.

    With a tokenizer.json, the ids on the probe texts and the vocabulary must be those of
    tokenizer.json read as it is (a declared class that transformers replaces is accepted only
    then); without one, the declared class and the built class must be the same.
    """
    directory = Path(directory)
    declared = declared_class(directory)
    resolved = type(tokenizer)
    same = declared is not None and _same_class(declared, resolved)
    verb = "and AutoTokenizer builds" if same else "but AutoTokenizer builds"
    where = (
        f"{directory}: tokenizer_config.json declares {declared or 'no tokenizer_class'} {verb} "
        f"{resolved.__name__}{_model_type(directory)}"
    )
    file_path = directory / "tokenizer.json"
    if not file_path.is_file():
        if declared is not None and not same:
            return where
        return None
    from tokenizers import Tokenizer

    try:
        reference = Tokenizer.from_file(str(file_path))
    except Exception as e:  # the Rust loader's errors are plain Exceptions
        raise ValueError(f"{file_path}: not a readable tokenizers file ({e})") from None
    # Without special tokens: the pipeline (normalizer, pre-tokenizer, model, added tokens). The
    # BOS/EOS a tokenizer adds may be set by tokenizer_config.json (add_bos_token) over the file's
    # post-processor; that is the same in every transformers loader, not a mismatch.
    diff = first_difference(
        probe_texts(tokenizer),
        lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
        lambda t: reference.encode(t, add_special_tokens=False).ids,
    )
    if diff is not None:
        return f"{where}, which tokenizes differently from tokenizer.json: {diff}"
    if tokenizer.get_vocab() != reference.get_vocab(with_added_tokens=True):
        return f"{where}, whose vocabulary differs from tokenizer.json's"
    return None
