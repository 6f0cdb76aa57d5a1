"""Greedy decoding on the training model itself (any TP/PP layout), for held-out accuracy checks.

The supervised trainer measures what a base or SFT model can do (accuracy and format rate on
held-out prompts) without converting weights for an inference engine: each new token is one
forward-only pass of megatron's schedule over the whole sequence so far (no KV cache: simple and
layout-agnostic, fine for the short answers of the small models this serves; the RL loop
generates with the rollout engine instead). The last stage takes the argmax over the real
vocabulary (TP shards gathered, padded rows excluded) and broadcasts the tokens to the other
pipeline stages, so every rank of a model replica extends the same sequences.

Prompts of equal length are decoded together (no left padding, hence no attention mask needed);
every rank of a model replica must call `greedy_generate` with the same prompts.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from r1mega.training.megatron_step import forward_backward

__all__ = ["greedy_generate"]


def _next_token_fn(vocab_size: int):
    def loss_fn(output: torch.Tensor, batch: dict):
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        last = output[:, batch["last"], :].float()  # [b, vocab_padded/tp]
        logits = gather_from_tensor_model_parallel_region(last)  # [b, vocab_padded]
        logits[:, vocab_size:] = float("-inf")  # megatron's padding rows are not tokens
        return torch.zeros((), dtype=torch.float32), {"next": logits.argmax(dim=-1)}

    return loss_fn


@torch.no_grad()
def greedy_generate(
    model_chunks: list,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    vocab_size: int,
    max_batch_size: int = 64,
    max_length: int | None = None,
    pad_multiple: int = 1,
) -> list[list[int]]:
    """Greedy continuations of `prompts` (token ids), each ending at its first EOS (kept) or after
    `max_new_tokens` tokens, or at `max_length` total tokens (the model's position limit).

    `pad_multiple`: sequence lengths the layout needs (sequence parallelism: a multiple of tp);
    sequences are right-padded to it, which causal attention keeps from reaching real positions.
    """
    from megatron.core import parallel_state

    for chunk in model_chunks:
        chunk.eval()
    eos = set(int(t) for t in eos_token_ids)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"greedy_generate: prompt {i} is empty")
        by_length[len(p)].append(i)
    outputs: list[list[int]] = [[] for _ in prompts]
    last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    loss_fn = _next_token_fn(vocab_size)
    try:
        for length in sorted(by_length):
            ids = by_length[length]
            for start in range(0, len(ids), max_batch_size):
                group = ids[start : start + max_batch_size]
                tokens = torch.tensor([list(prompts[i]) for i in group], dtype=torch.long)  # [b, s]
                done = torch.zeros(len(group), dtype=torch.bool)
                steps = max_new_tokens if max_length is None else min(max_new_tokens, max_length - length)
                for _ in range(max(0, steps)):
                    b, n = tokens.shape
                    s = -(-n // pad_multiple) * pad_multiple
                    padded = torch.nn.functional.pad(tokens, (0, s - n), value=0)  # [b, s]
                    batch = {
                        "tokens": padded,
                        "position_ids": torch.arange(s).unsqueeze(0).expand(b, s).contiguous(),  # [b, s]
                        "last": n - 1,
                    }
                    metrics = forward_backward(
                        model_chunks, [batch], loss_fn, seq_length=s, micro_batch_size=b, forward_only=True
                    )
                    nxt = metrics[0]["next"].to(torch.long) if last_stage else torch.empty(b, dtype=torch.long)
                    if pp > 1:
                        torch.distributed.broadcast(
                            nxt,
                            src=parallel_state.get_pipeline_model_parallel_last_rank(),
                            group=parallel_state.get_pipeline_model_parallel_group(),
                        )
                    for row, i in enumerate(group):
                        if not done[row]:
                            outputs[i].append(int(nxt[row]))
                            done[row] = int(nxt[row]) in eos
                    if bool(done.all()):
                        break
                    tokens = torch.cat([tokens, nxt.unsqueeze(1)], dim=1)  # [b, s + 1]
    finally:
        for chunk in model_chunks:
            chunk.train()
    return outputs
