"""Number words in Han characters, for the tiny base's mixed-language reasoning (recipe only).

DeepSeek-R1-Zero's reasoning mixed languages; the tiny base gets the same habit from its pretraining
text when `pretrain.mixed_language_fraction` > 0: in that share of the worked solutions, the last
step's result is followed by its Chinese number word (`12+9=21 二十一`). The gloss changes no
arithmetic, so the accuracy reward is indifferent to it and only a language signal (the cold-start
filter, the language-consistency reward) removes it.
"""

from __future__ import annotations

__all__ = ["han_number", "gloss_last_step"]

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


def gloss_last_step(steps: list[str]) -> list[str]:
    """The steps with the last one's result (after its last `=`) followed by its Han number word."""
    if not steps:
        return steps
    last = steps[-1]
    result = last.rsplit("=", 1)[-1].strip()
    try:
        value = int(result)
    except ValueError:
        return steps  # not an integer result (never for arithmetic): leave it as it is
    return [*steps[:-1], f"{last} {han_number(value)}"]
