"""`SampleView`: the fields of a rollout Sample without torch, for the reward worker processes.

Reward workers never import torch (it would add seconds and hundreds of MB to every worker start);
they receive this view, which has the same attributes as r1mega.rollout.types.Sample. Metadata
entries that are not plain Python data (str, numbers, bools, None, lists and dicts of those) are
left out of the view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["SampleView"]


@dataclass
class SampleView:
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    response_logprobs: list[float]
    finish_reason: str
    response_text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def response_length(self) -> int:
        return len(self.response_token_ids)

    @classmethod
    def of(cls, sample: Any) -> "SampleView":
        """A view of any object with Sample's attributes (a Sample, a SampleView, a test double)."""
        return cls(
            prompt_token_ids=list(getattr(sample, "prompt_token_ids", []) or []),
            response_token_ids=list(getattr(sample, "response_token_ids", []) or []),
            response_logprobs=[float(x) for x in (getattr(sample, "response_logprobs", []) or [])],
            finish_reason=str(getattr(sample, "finish_reason", "stop")),
            response_text=str(getattr(sample, "response_text", "") or ""),
            metadata={k: v for k, v in (getattr(sample, "metadata", {}) or {}).items() if _plain(v)},
        )


def _plain(value: Any) -> bool:
    """Plain Python data only: a tensor in Sample.metadata would make every worker import torch."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False
