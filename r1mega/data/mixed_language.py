"""Number words in Han characters, for the tiny base's mixed-language reasoning (recipe only).

DeepSeek-R1-Zero's reasoning mixed languages; the tiny base gets the same habit from its pretraining
text when `pretrain.mixed_language_fraction` > 0: in that share of the worked solutions, the
reasoning opens by restating the problem with Chinese number words (`七+五+九`) before the usual
steps. The restatement sits before any computation and the steps read their operands from the
prompt, so it changes no arithmetic: the accuracy reward is indifferent to it, and only a language
signal (the cold-start filter, the language-consistency reward) removes it. (A gloss of the last
result, just before the answer, was tried first: the tiny model then copied its answer from a
misread Han number, R1-Zero's accuracy reward itself removed the mixing, and nothing was left for
the language reward to do.)
"""

from __future__ import annotations

import re

__all__ = ["han_number", "restate_in_han"]

_DIGITS = "零一二三四五六七八九"
_UNITS = ((10**8, "亿"), (10**4, "万"), (1000, "千"), (100, "百"), (10, "十"))


def han_number(n: int) -> str:
    """The Chinese reading of an integer: 21 -> 二十一, 105 -> 一百零五, -3 -> 负三."""
    if n < 0:
        return "负" + han_number(-n)
    if n < 10:
        return _DIGITS[n]
    if n < 20:  # 十, 十二: the leading 一 is not said
        return "十" + (_DIGITS[n - 10] if n > 10 else "")
    return _big(n)


def _big(n: int) -> str:
    out = ""
    gap = False  # a skipped place before a non-zero digit is read as 零
    for value, name in _UNITS:
        q, n = divmod(n, value)
        if q:
            if gap and out:
                out += "零"
            out += (_big(q) if q >= 10 else _DIGITS[q]) + name
            gap = False
        elif out:
            gap = True
    if n:
        out += ("零" if gap and out else "") + _DIGITS[n]
    return out


def restate_in_han(steps: list[str], problem: str) -> list[str]:
    """The steps preceded by `problem` (an expression, or the given numbers) with every integer in
    Chinese number words: `7+5+9` -> `七+五+九`."""
    if not problem:
        return steps
    return [re.sub(r"\d+", lambda m: han_number(int(m.group())), problem), *steps]
