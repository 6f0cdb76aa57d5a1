"""A generative judge: a model on any rollout engine decides whether a response's answer matches the
reference, for answers no rule can check (DeepSeek-R1's rejection sampling used DeepSeek-V3 this way).

For each sample:
  prompt   = cfg.template filled with {question}, {reference} and {response} (the summary outside the
             reasoning, or the full completion: cfg.response_part), as raw text or wrapped in the
             judge tokenizer's chat template (cfg.chat)
  output   = greedy generation of at most cfg.max_new_tokens tokens on the engine
  verdict  = True when cfg.yes_pattern matches the output, False when cfg.no_pattern does (when both
             do, the earlier match wins), None when neither does or the prompt is over
             cfg.max_prompt_tokens: unparsable, counted by `verdict_counts` and treated as a rejection
             by the data stages.

The engine is anything with the RolloutEngine interface (`generate(prompts_token_ids, sampling)`);
the tokenizer is the judge model's.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Sequence

from r1mega.configlib import ConfigError

__all__ = ["JudgeConfig", "judge_samples", "judge_prompt", "parse_verdict", "verdict_counts", "DEFAULT_TEMPLATE"]

DEFAULT_TEMPLATE = (
    "Decide whether the response gives the same final answer as the reference.\n"
    "Question: {question}\n"
    "Reference answer: {reference}\n"
    "Response: {response}\n"
    "Is the response's final answer equivalent to the reference answer? Reply yes or no.\n"
    "Verdict:"
)
_FIELDS = frozenset({"question", "reference", "response"})


@dataclass(kw_only=True)
class JudgeConfig:
    template: str = DEFAULT_TEMPLATE
    """Judge prompt with {question}, {reference} and {response} (each optional but {response});
    write literal braces as {{ and }}."""
    chat: bool = False
    """True: send the filled template as a user message through the judge tokenizer's chat template
    (instruction-tuned judges); False: as raw text."""
    response_part: Literal["summary", "full"] = "summary"
    """What the judge reads: `summary`, the completion with its reasoning removed (the answer part),
    or `full`, the whole completion."""
    yes_pattern: str = r"\b(yes|correct|equivalent)\b"
    """Regex (case-insensitive, searched in the judge's output) of an accepting verdict."""
    no_pattern: str = r"\b(no|incorrect|wrong|not equivalent)\b"
    """Regex of a rejecting verdict."""
    max_new_tokens: int = 16
    """Tokens the judge may generate (greedy)."""
    max_prompt_tokens: int = 4096
    """A judge prompt longer than this is not sent; its verdict is None."""
    stop: list[str] = field(default_factory=list)
    """Stop strings of the judge's generation (e.g. "\\n")."""

    def validate(self) -> None:
        try:
            names = {f for _, f, _, _ in string.Formatter().parse(self.template) if f is not None}
        except ValueError as e:
            raise ConfigError(f"template: not a valid format string ({e}); write literal braces as {{{{ and }}}}") from None
        unknown = sorted(names - _FIELDS)
        if unknown:
            raise ConfigError(f"template: unknown field(s) {unknown}; the template may use {sorted(_FIELDS)}")
        if "response" not in names:
            raise ConfigError("template: must contain {response}, the text being judged")
        for name in ("yes_pattern", "no_pattern"):
            try:
                re.compile(getattr(self, name))
            except re.error as e:
                raise ConfigError(f"{name}: not a valid regular expression ({e})") from None
        for name in ("max_new_tokens", "max_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")


def parse_verdict(text: str, cfg: JudgeConfig) -> Optional[bool]:
    """True / False / None (unparsable) from the judge's output; see the module docstring."""
    yes = re.search(cfg.yes_pattern, text, re.IGNORECASE)
    no = re.search(cfg.no_pattern, text, re.IGNORECASE)
    if yes and no:
        return yes.start() < no.start()
    if yes:
        return True
    if no:
        return False
    return None


def _response_text(sample: dict, cfg: JudgeConfig) -> str:
    from r1mega.recipe.filters import completion_of
    from r1mega.rewards.parse import parse_completion

    completion = completion_of(sample)
    if cfg.response_part == "full":
        return completion.strip()
    return " ".join(parse_completion(completion).outside.split())


def judge_prompt(sample: dict, cfg: JudgeConfig) -> str:
    """The filled template for one sample (before any chat template)."""
    reference = sample.get("reference") or {}
    question = reference.get("prompt") or sample.get("prompt") or ""
    return cfg.template.format(question=question, reference=str(reference.get("answer", "")),
                               response=_response_text(sample, cfg))


def judge_samples(engine: Any, tokenizer: Any, samples: Sequence[dict], cfg: JudgeConfig) -> list[Optional[bool]]:
    """One verdict per sample, in order: True (accepted), False (rejected) or None (unparsable)."""
    from r1mega.rollout.types import SamplingParams

    samples = list(samples)
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or not isinstance(s.get("response"), str):
            raise ValueError(f"judge: sample {i} has no 'response' string")
    texts = [judge_prompt(s, cfg) for s in samples]
    if cfg.chat:
        from r1mega.data.templates import render_chat

        texts = [render_chat(tokenizer, [{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]
    ids = tokenizer(texts, add_special_tokens=not cfg.chat)["input_ids"] if texts else []
    send = [i for i, x in enumerate(ids) if 0 < len(x) <= cfg.max_prompt_tokens]
    verdicts: list[Optional[bool]] = [None] * len(samples)
    if not send:
        return verdicts
    sampling = SamplingParams(temperature=0.0, max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop), seed=0)
    outputs = engine.generate([ids[i] for i in send], sampling)
    if len(outputs) != len(send):
        raise RuntimeError(f"judge: the engine returned {len(outputs)} outputs for {len(send)} prompts")
    for i, out in zip(send, outputs):
        text = out.response_text or tokenizer.decode(list(out.response_token_ids), skip_special_tokens=True)
        verdicts[i] = parse_verdict(text, cfg)
    return verdicts


def verdict_counts(verdicts: Sequence[Optional[bool]]) -> dict[str, int]:
    """{"accepted", "rejected", "unparsable"} counts, for the data stage's log."""
    return {
        "accepted": sum(v is True for v in verdicts),
        "rejected": sum(v is False for v in verdicts),
        "unparsable": sum(v is None for v in verdicts),
    }
