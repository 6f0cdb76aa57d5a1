"""Shared-prompt microbatches: a group's prompt goes through the policy once, not once per sample.

GRPO samples `group_size` responses per prompt, and in a padded batch every response carries its
own copy of the prompt: with the tiny default's 40-token prompts and ~15-token responses, ~70% of
the trained tokens are prompt copies whose hidden states are identical. Here a row holds one prompt
followed by all its responses,

    tokens    [p0 .. pP-1 | a0 .. a_ra-1 | b0 .. b_rb-1 | ... | pad]
    positions [0  .. P-1  | P  .. P+ra-1 | P  .. P+rb-1 | ... | 0  ]

and an attention mask lets each response see the prompt and itself only (causally), so every
response token computes exactly what it computes in its own padded row: same keys, same positions
(rotary embeddings follow `position_ids`, see `rope_at_positions`). Gradients are the same sums (the
prompt's activations receive the gradient of every response at once instead of copy by copy): the
result equals the padded layout's up to float rounding (tests/test_shared_prompt.py), with ~3x
fewer tokens through the transformer on the tiny default.

Per response everything stays as `make_rl_microbatch` lays it out ([n, L] log-probs, masks,
advantages), plus `resp_row` [n]: the row holding the response. Needs attention that takes a dense
mask: megatron's local spec (CPU, or a GPU without transformer-engine); `check_supported` refuses
the rest, and context parallelism.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch

from r1mega.training.batching import _padded
from r1mega.training.rl_batch import IGNORE_INDEX, Trajectory

__all__ = ["plan_shared_prompt", "make_shared_prompt_microbatch", "build_shared_prompt_microbatches",
           "rope_at_positions", "check_supported"]


def _units(items: Sequence[Trajectory], micro_batch_size: int) -> list[list[int]]:
    """Positions of `items` grouped by identical prompt (first appearance order), each group cut
    into pieces of at most micro_batch_size responses."""
    by_prompt: dict[tuple, list[int]] = {}
    for i, t in enumerate(items):
        by_prompt.setdefault(tuple(t.prompt_token_ids), []).append(i)
    units = []
    for members in by_prompt.values():
        for s in range(0, len(members), micro_batch_size):
            units.append(members[s : s + micro_batch_size])
    return units


def _row_length(items: Sequence[Trajectory], unit: list[int]) -> int:
    return len(items[unit[0]].prompt_token_ids) + sum(len(items[i].response_token_ids) for i in unit)


def plan_shared_prompt(
    items: Sequence[Trajectory], *, micro_batch_size: int, micro_batch_tokens: Optional[int] = None, multiple: int = 1
) -> list[list[list[int]]]:
    """Microbatches of rows (each row: positions of items sharing one prompt), longest row first; a
    microbatch holds at most `micro_batch_size` responses and rows x padded width <= the token budget."""
    units = sorted(_units(items, micro_batch_size), key=lambda u: (-_row_length(items, u), u[0]))
    plan: list[list[list[int]]] = []
    current: list[list[int]] = []
    count = width = 0
    for unit in units:
        need = _padded(_row_length(items, unit), multiple)
        if micro_batch_tokens is not None and need > micro_batch_tokens:
            raise ValueError(f"rl.micro_batch_tokens: {micro_batch_tokens} is smaller than one shared-prompt row "
                             f"of {need} tokens (lower rl.micro_batch_size or raise the budget)")
        if current and (count + len(unit) > micro_batch_size
                        or (micro_batch_tokens is not None and (len(current) + 1) * width > micro_batch_tokens)):
            plan.append(current)
            current, count = [], 0
        if not current:
            width = need
        current.append(unit)
        count += len(unit)
    if current:
        plan.append(current)
    return plan


def make_shared_prompt_microbatch(items: Sequence[Trajectory], rows: list[list[int]], pad_id: int,
                                  multiple: int = 1) -> dict:
    """tokens / position_ids [R, S], attention_mask [R, 1, S, S] (True = masked, megatron's
    convention); per response [n, L]: resp_row, resp_pos, resp_targets, resp_mask, rollout_logp,
    old_logp / ref_logp (when every item has them); advantages, index [n] (see the module docstring)."""
    order = [i for row in rows for i in row]
    chosen = [items[i] for i in order]
    width = _padded(max(_row_length(items, row) for row in rows), multiple)
    length = max(max(len(t.response_token_ids) for t in chosen), 1)
    n, r_count = len(chosen), len(rows)
    tokens = torch.full((r_count, width), pad_id, dtype=torch.long)  # [R, S]
    positions = torch.zeros((r_count, width), dtype=torch.long)  # [R, S]
    segment = torch.full((r_count, width), -1, dtype=torch.long)  # [R, S]: 0 prompt, k >= 1 response k, -1 pad
    resp_row = torch.zeros(n, dtype=torch.long)  # [n]
    resp_pos = torch.zeros((n, length), dtype=torch.long)  # [n, L]
    targets = torch.full((n, length), IGNORE_INDEX, dtype=torch.long)  # [n, L]
    mask = torch.zeros((n, length), dtype=torch.float32)  # [n, L]
    rollout = torch.zeros((n, length), dtype=torch.float32)  # [n, L]
    old = torch.zeros((n, length), dtype=torch.float32) if all(t.old_logprobs is not None for t in chosen) else None
    ref = torch.zeros((n, length), dtype=torch.float32) if all(t.ref_logprobs is not None for t in chosen) else None
    k = 0
    for row, unit in enumerate(rows):
        prompt = items[unit[0]].prompt_token_ids
        p = len(prompt)
        if p == 0:
            raise ValueError(f"trajectory {items[unit[0]].index}: empty prompt")
        tokens[row, :p] = torch.as_tensor(prompt, dtype=torch.long)
        positions[row, :p] = torch.arange(p)
        segment[row, :p] = 0
        start = p
        for seg, i in enumerate(unit, start=1):
            t = items[i]
            r = len(t.response_token_ids)
            resp_row[k] = row
            if r:
                ids = torch.as_tensor(t.response_token_ids, dtype=torch.long)
                tokens[row, start : start + r] = ids
                positions[row, start : start + r] = torch.arange(p, p + r)
                segment[row, start : start + r] = seg
                # token 0 is predicted by the prompt's last position, token j > 0 by its predecessor
                resp_pos[k, 0] = p - 1
                resp_pos[k, 1:r] = torch.arange(start, start + r - 1)
                targets[k, :r] = ids
                mask[k, :r] = 1.0
                rollout[k, :r] = torch.as_tensor(t.rollout_logprobs, dtype=torch.float32)
                if old is not None:
                    old[k, :r] = torch.as_tensor(t.old_logprobs, dtype=torch.float32)
                if ref is not None:
                    ref[k, :r] = torch.as_tensor(t.ref_logprobs, dtype=torch.float32)
            start += r
            k += 1
    idx = torch.arange(width)
    causal = idx.unsqueeze(0) <= idx.unsqueeze(1)  # [S_q, S_k]: key at or before the query
    q_seg, k_seg = segment.unsqueeze(2), segment.unsqueeze(1)  # [R, S, 1], [R, 1, S]
    allowed = causal & ((k_seg == 0) | (k_seg == q_seg)) & (k_seg >= 0)  # [R, S, S]
    allowed |= torch.eye(width, dtype=torch.bool)  # padding queries see themselves: no empty softmax row
    batch = {
        "tokens": tokens,
        "position_ids": positions,
        "attention_mask": (~allowed).unsqueeze(1),  # [R, 1, S, S]
        "rope_positions": True,
        "resp_row": resp_row,
        "resp_pos": resp_pos,
        "resp_targets": targets,
        "resp_mask": mask,
        "rollout_logp": rollout,
        "advantages": torch.tensor([t.advantage for t in chosen], dtype=torch.float32),  # [n]
        "index": torch.tensor([t.index for t in chosen], dtype=torch.long),  # [n]
    }
    if old is not None:
        batch["old_logp"] = old
    if ref is not None:
        batch["ref_logp"] = ref
    return batch


def build_shared_prompt_microbatches(items: Sequence[Trajectory], *, pad_id: int, micro_batch_size: int,
                                     micro_batch_tokens: Optional[int] = None, multiple: int = 1) -> list[dict]:
    if not items:
        return []
    plan = plan_shared_prompt(items, micro_batch_size=micro_batch_size, micro_batch_tokens=micro_batch_tokens,
                              multiple=multiple)
    return [make_shared_prompt_microbatch(items, rows, pad_id, multiple) for rows in plan]


@contextlib.contextmanager
def rope_at_positions(gpt, position_ids: torch.Tensor) -> Iterator[None]:
    """For one forward: GPTModel's rotary embedding at `position_ids` [b, s] instead of 0..s-1.

    megatron's RotaryEmbedding returns [s, 1, 1, d] for positions 0..s-1 and the attention layers
    broadcast it over the batch; here it returns [s, b, 1, d], row b at its own positions (the
    unfused rotary path multiplies elementwise, so a per-row table broadcasts the same way).
    """
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    rope = getattr(gpt, "rotary_pos_emb", None)
    if type(rope) is not RotaryEmbedding:
        raise ValueError(f"rl.share_prompts: needs plain rotary embeddings, the model has {type(rope).__name__}")
    plain = rope.forward
    top = int(position_ids.max()) + 1

    def at_positions(max_seq_len: int, *args, **kwargs) -> torch.Tensor:
        table = plain(max(top, max_seq_len), *args, **kwargs)  # [T, 1, 1, d]
        return table[:, 0, 0, :][position_ids.t().to(table.device)].unsqueeze(2)  # [s, b, 1, d]

    rope.forward = at_positions
    try:
        yield
    finally:
        del rope.forward  # back to the class's method


def check_supported(cfg) -> None:
    """Refuse rl.share_prompts where the attention would ignore the dense mask."""
    from r1mega.configlib import ConfigError
    from r1mega.models.spec import transformer_engine_usable

    if cfg.parallel.cp > 1:
        raise ConfigError("rl.share_prompts: not with context parallelism (parallel.cp > 1)")
    if transformer_engine_usable():
        raise ConfigError("rl.share_prompts: transformer-engine attention takes no dense mask here; set "
                          "rl.share_prompts=false on GPUs with transformer-engine")
    if cfg.model.multi_latent_attention or cfg.model.rope_scaling_type == "yarn":
        raise ConfigError("rl.share_prompts: needs megatron's plain rotary embeddings (no MLA, no YaRN)")
