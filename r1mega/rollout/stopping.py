"""When a response ends: an EOS or stop id, a stop string in the decoded text, or the length cap.

The finishing token is kept in the response (its log-prob is part of what the policy is trained on).
A token that is both a stop and the last allowed one finishes as "stop": the response ended on its own.
"""

from __future__ import annotations

from typing import Optional, Protocol, Sequence


class Decoder(Protocol):
    """What the engine needs of a tokenizer (any HF tokenizer fits)."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class StopChecker:
    """Finish reason for a response after each new token, or None while it goes on.

    Stop strings are searched in the decoded text of the response's last `window` tokens, where
    window = 4 * (longest stop string in characters) + 16: every token decodes to at least one byte
    and a character is at most 4 bytes, so any occurrence that ends in the newest token lies inside
    the window. This keeps the check O(1) per token instead of re-decoding the whole response.
    Special tokens are kept in the checked text, so a stop string may also be a special token's text.
    """

    def __init__(
        self,
        *,
        max_new_tokens: int,
        stop_token_ids: Sequence[int],
        stop_strings: Sequence[str] = (),
        tokenizer: Optional[Decoder] = None,
    ):
        if stop_strings and tokenizer is None:
            raise ValueError(
                "SamplingParams.stop: stop strings need a tokenizer; construct the engine with tokenizer=..."
            )
        self.max_new_tokens = max_new_tokens
        self.stop_token_ids = frozenset(int(t) for t in stop_token_ids)
        self.stop_strings = tuple(stop_strings)
        self.tokenizer = tokenizer
        self.window = 4 * max((len(s) for s in self.stop_strings), default=0) + 16

    def check(self, response_token_ids: Sequence[int]) -> Optional[str]:
        """"stop", "length" or None for a response whose newest token is its last element."""
        if response_token_ids[-1] in self.stop_token_ids:
            return "stop"
        if self.stop_strings:
            tail = self.tokenizer.decode(list(response_token_ids[-self.window :]), skip_special_tokens=False)
            if any(s in tail for s in self.stop_strings):
                return "stop"
        if len(response_token_ids) >= self.max_new_tokens:
            return "length"
        return None
