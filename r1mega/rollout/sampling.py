"""Next-token sampling: temperature, top-k, top-p, per-sample random streams, and the reported log-probs.

The reported log-prob is always log softmax(logits / T) at the chosen token over the full vocabulary,
before truncation (see `r1mega.rollout.types`); truncation only changes which tokens can be drawn.
Order of operations, as in HF's and vLLM's samplers: temperature, then top-k, then top-p applied to
the renormalised top-k distribution. Temperature 0 is greedy, reported at temperature 1.

Randomness: each sample owns a `torch.Generator` seeded from (request seed, sample index) and uses
exactly one uniform of its stream per generated token, by inverse-CDF sampling. A sample's draws
therefore do not depend on which other samples share its batch or on the micro-batch size.
`UniformStreams` draws those uniforms a chunk at a time: the same values in the same order (CPU
generators give n float64 draws in one call exactly as n single draws; tests/test_rollout_sampling.py
checks it), at one call per sample per chunk of tokens rather than per token.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from r1mega.rollout.types import SamplingParams


def sample_seed(base_seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for sample `index` of a request seeded with `base_seed`."""
    state = np.random.SeedSequence([int(base_seed) & (2**64 - 1), int(index)]).generate_state(1, np.uint64)
    return int(state[0]) >> 1


def sample_generators(base_seed: int, count: int, first: int = 0) -> list[torch.Generator]:
    """One CPU generator per sample (indices first .. first + count - 1): uniforms are drawn on the
    CPU, so results match across devices."""
    return [torch.Generator().manual_seed(sample_seed(base_seed, first + i)) for i in range(count)]


def draw_uniforms(generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
    """One U[0, 1) draw per sample, in float64 so the inverse CDF is resolved finely."""
    draws = [torch.rand((), generator=g, dtype=torch.float64) for g in generators]
    return torch.stack(draws).to(device)  # [batch]


class UniformStreams:
    """The t-th uniform of every running sample at decode step t, drawn `chunk` steps ahead.

    Samples of one batch advance in lockstep (each running sample takes one token per step), so the
    draws form a [batch, chunk] table refilled every `chunk` steps for the samples still running.
    """

    def __init__(self, generators: Sequence[torch.Generator], chunk: int = 64):
        if chunk < 1:
            raise ValueError(f"UniformStreams: chunk must be >= 1, got {chunk}")
        self.generators = list(generators)
        self.chunk = chunk
        self._table = torch.empty(len(self.generators), chunk, dtype=torch.float64)  # [batch, chunk]
        self._step = 0

    def next(self, rows: Sequence[int]) -> torch.Tensor:
        """[len(rows)] float64: this step's uniform of each sample in `rows` (indices into the
        generators, each still running); advances every stream by one step."""
        col = self._step % self.chunk
        index = torch.tensor(list(rows), dtype=torch.long)
        if col == 0:
            fresh = [torch.rand(self.chunk, generator=self.generators[i], dtype=torch.float64) for i in rows]
            self._table.index_copy_(0, index, torch.stack(fresh))
        self._step += 1
        return self._table[index, col]


def scaled_logprobs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in float32 over the last dim; T == 0 (greedy) is reported at T = 1."""
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1)


def truncate_sorted(
    probs: torch.Tensor, top_k: int, top_p: float
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Apply top-k then top-p; return (kept probabilities, their vocab ids) in descending order.

    `probs` is [batch, vocab] and sums to 1 per row. Returns ([batch, n], [batch, n]) with dropped
    entries zeroed (not renormalised), or (probs, None) unchanged when neither filter is active.
    Top-p keeps the smallest prefix of the sorted (top-k renormalised) distribution whose mass
    reaches top_p: a token stays while the mass strictly above it is below top_p, so the most likely
    token always stays.
    """
    use_k = top_k > 0 and top_k < probs.shape[-1]
    use_p = top_p < 1.0
    if not use_k and not use_p:
        return probs, None
    if use_k:
        kept, ids = torch.topk(probs, top_k, dim=-1, sorted=True)  # [batch, k]
    else:
        kept, ids = torch.sort(probs, dim=-1, descending=True, stable=True)  # [batch, vocab]
    if use_p:
        kept64 = kept.double()
        renormed = kept64 / kept64.sum(dim=-1, keepdim=True)
        mass_above = torch.cumsum(renormed, dim=-1) - renormed
        kept = kept.masked_fill(mass_above >= top_p, 0.0)
    return kept, ids


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of unnormalised non-negative `weights` [batch, n] with one uniform per row."""
    cdf = torch.cumsum(weights.double(), dim=-1)  # [batch, n]
    target = (uniforms.double() * cdf[:, -1]).unsqueeze(-1)  # [batch, 1]
    # first index whose cumulative weight exceeds the target: zero-weight entries can never be chosen
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp_(max=weights.shape[-1] - 1)


def sample_next_tokens(
    logits: torch.Tensor,
    params: SamplingParams,
    generators: Sequence[torch.Generator],
    uniforms: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of `logits` [batch, vocab]; return (token ids [batch], log-probs [batch]).

    Each row takes its uniform from `uniforms` [batch] when given (`UniformStreams`), else one fresh
    draw from its generator."""
    logprobs = scaled_logprobs(logits, params.temperature)  # [batch, vocab]
    if params.temperature == 0:
        tokens = torch.argmax(logprobs, dim=-1)
    else:
        if uniforms is None:
            assert len(generators) == logits.shape[0], "one generator per row"
            uniforms = draw_uniforms(generators, logits.device)
        assert uniforms.shape == (logits.shape[0],), "one uniform per row"
        weights, ids = truncate_sorted(logprobs.exp(), params.top_k, params.top_p)
        choice = inverse_cdf(weights, uniforms.to(logits.device))  # [batch]
        tokens = choice if ids is None else ids.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
