"""The `rollout:` config section: which engine generates, its sampling defaults and its work caps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Optional

from r1mega.configlib import ConfigError

if TYPE_CHECKING:  # keep config loading free of the torch import
    from r1mega.rollout.types import SamplingParams


@dataclass(kw_only=True)
class RolloutConfig:
    engine: Literal["builtin", "sglang"] = "builtin"
    """builtin: KV-cache sampling on the transformers model (CPU, tests); sglang: the GPU engine."""
    temperature: float = 1.0
    """Sampling temperature; 1.0 is the R1-Zero setting, 0 is greedy."""
    top_p: float = 1.0
    """Nucleus mass; 1.0 (no truncation) keeps the sampler on-policy for RL."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 disables it."""
    max_new_tokens: int = 1024
    """Response length cap; a response that hits it finishes with reason "length"."""
    stop: list[str] = field(default_factory=list)
    """Stop strings (e.g. "</answer>"); they need a tokenizer to check the decoded text."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Extra token ids that end a response, on top of the model's EOS ids."""
    max_batch_size: int = 64
    """Sequences decoded together in one micro-batch (bounds KV-cache memory with max_new_tokens)."""
    max_tokens_per_forward: int = 8192
    """Padded tokens per forward pass: prefill of long prompts is split into chunks under this cap."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Engine weights and activations; float32 makes rollout/train log-probs agree to ~1e-6."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available, else cpu."""
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    """transformers attention kernel of the built-in engine."""
    lean_decode: bool = True
    """Built-in engine: decode steps of dense llama/qwen2/qwen3 models through `LeanDecoder`, bit-identical
    to transformers' forward without its per-call overhead (r1mega/rollout/lean_decode.py)."""
    experts_implementation: Optional[Literal["eager", "grouped_mm", "batched_mm"]] = None
    """transformers MoE expert kernel of the built-in engine; None = transformers' default."""
    tp: int = 1
    """Ranks (GPUs) per rollout engine, its SGLang TP size; independent of the training layout."""
    ep: int = 1
    """SGLang expert parallelism inside an engine (divides tp); expert weights go only where loaded."""
    mem_fraction: float = 0.5
    """SGLang mem_fraction_static: share of each GPU's memory for engine weights + KV cache."""
    bucket_mb: float = 512.0
    """Weight sync bucket size (MiB of HF tensors per update_weights_from_tensor call)."""
    routing_replay: bool = False
    """MoE routing replay (R3): the engine reports the experts it routed each token to and the trainer's
    routers replay them in the log-prob and training forwards (r1mega.training.routing_replay)."""

    def validate(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ConfigError(f"top_k: must be -1 (disabled) or >= 0, got {self.top_k}")
        for name in ("max_new_tokens", "max_batch_size", "max_tokens_per_forward"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.max_tokens_per_forward < self.max_batch_size:
            raise ConfigError(
                f"max_tokens_per_forward: {self.max_tokens_per_forward} is below max_batch_size="
                f"{self.max_batch_size}; one decode step of a full batch would not fit"
            )
        for name in ("tp", "ep"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.tp % self.ep:
            raise ConfigError(f"ep: {self.ep} must divide tp={self.tp}")
        if not 0.0 < self.mem_fraction < 1.0:
            raise ConfigError(f"mem_fraction: must be in (0, 1), got {self.mem_fraction}")
        if not self.bucket_mb > 0:
            raise ConfigError(f"bucket_mb: must be > 0, got {self.bucket_mb}")
        for i, s in enumerate(self.stop):
            if not s:
                raise ConfigError(f"stop[{i}]: must be a non-empty string")
        for i, t in enumerate(self.stop_token_ids):
            if t < 0:
                raise ConfigError(f"stop_token_ids[{i}]: must be >= 0, got {t}")

    def sampling_params(self, **overrides) -> "SamplingParams":
        """SamplingParams from this section's defaults; keyword overrides win (e.g. seed=step)."""
        from r1mega.rollout.types import SamplingParams

        values = dict(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=list(self.stop),
            stop_token_ids=list(self.stop_token_ids),
        )
        values.update(overrides)
        return SamplingParams(**values)
