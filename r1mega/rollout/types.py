"""The rollout interface: what a generation request asks for and what comes back.

Log-prob convention (shared by every engine and by the trainer, so their difference measures weight
sync and numerics, nothing else): `response_logprobs[t]` is log softmax(logits_t / temperature) at the
sampled token, over the model's real vocabulary, before any top-k/top-p truncation. This is what the
trainer recomputes with `fused_logprob(..., temperature=T)` when it needs old/rollout log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Optional, Protocol, Sequence, runtime_checkable

import torch

FinishReason = Literal["stop", "length", "abort"]

NamedTensors = list[tuple[str, torch.Tensor]]
"""One bucket of weights: HF parameter names with full (unsharded) HF-layout tensors."""


@dataclass(kw_only=True)
class SamplingParams:
    max_new_tokens: int = 256
    """Hard cap on generated tokens; hitting it finishes a sample with reason "length"."""
    temperature: float = 1.0
    """0 means greedy (log-probs are then reported at temperature 1)."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1.0 disables it."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 (or 0) disables it."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends once the decoded response contains one (it is kept, like SGLang)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end generation (added to the engine's EOS ids); the id is kept in the response."""
    seed: Optional[int] = None
    """Seed for this request's sampling; None draws from the engine's generator."""
    first_sample_index: int = 0
    """Index of this request's first sample in the whole step: sample i of the request is seeded by
    (seed, first_sample_index + i), so a step split over several engines samples what one would."""

    def validate(self) -> None:
        """Raise ValueError naming the field when a request is impossible (engines call this first)."""
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"SamplingParams.temperature: must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"SamplingParams.top_p: must be in (0, 1], got {self.top_p}")
        if self.first_sample_index < 0:
            raise ValueError(f"SamplingParams.first_sample_index: must be >= 0, got {self.first_sample_index}")
        if self.top_k < -1:
            raise ValueError(f"SamplingParams.top_k: must be -1, 0 (both disable it) or positive, got {self.top_k}")
        for i, s in enumerate(self.stop):
            if not isinstance(s, str) or not s:
                raise ValueError(f"SamplingParams.stop[{i}]: must be a non-empty string, got {s!r}")
        for i, t in enumerate(self.stop_token_ids):
            if isinstance(t, bool) or not isinstance(t, int) or t < 0:
                raise ValueError(f"SamplingParams.stop_token_ids[{i}]: must be a token id >= 0, got {t!r}")


@dataclass(kw_only=True)
class Sample:
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    response_logprobs: list[float]
    """Per response token, see the module docstring for the exact definition."""
    finish_reason: FinishReason
    response_text: str = ""
    """Decoded response (empty when the engine has no tokenizer)."""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def response_length(self) -> int:
        return len(self.response_token_ids)


@runtime_checkable
class RolloutEngine(Protocol):
    """A generation engine the RL loop drives: SGLangEngine on GPU, BuiltinEngine on CPU and in tests."""

    def generate(self, prompts_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
        """One Sample per prompt, in order. Repeat a prompt G times for G samples of it."""
        ...

    def update_weights(self, named_tensor_buckets: Iterable[NamedTensors]) -> None:
        """Load HF-named full tensors, bucket by bucket; unknown names and wrong shapes are errors."""
        ...

    def release_memory(self) -> None:
        """Free the engine's weights and caches while training runs (colocated mode)."""
        ...

    def resume_memory(self) -> None:
        """Re-allocate what release_memory freed; weights must be pushed again with update_weights."""
        ...
