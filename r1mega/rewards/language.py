"""Language consistency (DeepSeek-R1): the share of target-language words in the reasoning.

Words are maximal runs of letters of one script; Han, kana and Hangul characters each count as one
word (those scripts do not separate words with spaces). Digits, symbols and Greek letters (math
variables) are neutral: they count for no language. The score is target words / all words in the
`<think>` block. A reasoning block with no words at all (e.g. only arithmetic) scores 1: nothing in
it is in another language. No reasoning block scores 0.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Any

from r1mega.rewards.parse import completion_text, parse_completion

__all__ = ["language_share", "language_reward", "LANGUAGES"]

LANGUAGES: dict[str, frozenset[str]] = {
    "en": frozenset({"latin"}),
    "zh": frozenset({"han"}),
}
"""Target language -> the scripts that count as that language."""

_PER_CHARACTER = frozenset({"han", "kana", "hangul"})


@lru_cache(maxsize=65536)
def _script(ch: str) -> str | None:
    """The script of a letter, None for a non-letter or a neutral letter (Greek)."""
    if not ch.isalpha():
        return None
    if ch.isascii():
        return "latin"
    name = unicodedata.name(ch, "")
    if name.startswith("LATIN"):
        return "latin"
    if name.startswith("GREEK"):
        return None
    if name.startswith(("CJK UNIFIED", "CJK COMPATIBILITY IDEOGRAPH")):
        return "han"
    if name.startswith(("HIRAGANA", "KATAKANA")):
        return "kana"
    if name.startswith("HANGUL"):
        return "hangul"
    return name.split(" ", 1)[0].lower() or "other"  # CYRILLIC, ARABIC, DEVANAGARI, ...


def _words(text: str) -> list[str]:
    """The script of each word of `text`."""
    words: list[str] = []
    current = None
    for ch in text:
        s = _script(ch)
        if s is None:
            current = None
        elif s in _PER_CHARACTER:
            words.append(s)
            current = None
        elif s != current:
            words.append(s)
            current = s
    return words


def language_share(text: str, language: str) -> float:
    """Share of `language` words among all words of `text` (1.0 when there are no words)."""
    target = LANGUAGES[language]
    words = _words(text)
    if not words:
        return 1.0
    return sum(w in target for w in words) / len(words)


def language_reward(sample: Any, reference: dict[str, Any], *, language: str = "en") -> float:
    think = parse_completion(completion_text(sample, reference)).think
    if think is None:
        return 0.0
    return language_share(think, language)
