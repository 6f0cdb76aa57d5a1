"""Parameters held by one rank of a megatron layout: which layers its pipeline stage has (uneven
splits included), what TP/EP/ETP leave of each, and which of them are expert parameters (sharded
by the distributed optimizer over the expert-data-parallel group instead of the data-parallel one).

Counts follow megatron-core 0.16.1's GPTModel shapes (padded vocabulary, SwiGLU fc1 = [gate; up],
the output layer on the last stage even when tied). `spec="te"` is the transformer-engine layer spec
used on GPUs (MLA down-projections duplicated on every TP rank); `spec="local"` the CPU spec
(column-parallel down-projections). tests/test_plan.py builds the models and compares every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from r1mega.models.config import ModelConfig
from r1mega.parallel.config import ParallelConfig

__all__ = ["RankParams", "rank_params", "stage_layers", "largest_stage"]

Spec = Literal["te", "local"]


@dataclass(frozen=True)
class RankParams:
    """Parameter counts of one rank (one TP/EP coordinate of one pipeline stage)."""

    dense: int
    """Non-expert parameters (reduced and sharded over the data-parallel group)."""
    expert: int
    """Routed-expert parameters (reduced and sharded over the expert-data-parallel group)."""
    layers: int
    """Transformer layers on this rank (all its virtual stages)."""

    @property
    def total(self) -> int:
        return self.dense + self.expert


def stage_layers(model: ModelConfig, parallel: ParallelConfig, pp_rank: int) -> list[int]:
    """Global (0-based) indices of the layers on pipeline rank `pp_rank`, over its virtual stages."""
    counts = parallel.stage_layer_counts(model.num_layers)
    vpp = len(counts[0])
    out, offset = [], 0
    for v in range(vpp):  # megatron numbers layers chunk by chunk: vp stage major, then pp rank
        for r in range(parallel.pp):
            n = counts[r][v]
            if r == pp_rank:
                out.extend(range(offset, offset + n))
            offset += n
    return out


def _attention(m: ModelConfig, tp: int, spec: Spec) -> int:
    h, n = m.hidden_size, m.num_attention_heads
    if m.multi_latent_attention:
        q_head = m.qk_head_dim + m.qk_pos_emb_head_dim
        down_split = tp if spec == "local" else 1  # TE duplicates the down-projections
        count = 0
        if m.q_lora_rank is None:
            count += h * n * q_head // tp
        else:
            count += h * m.q_lora_rank // down_split + m.q_lora_rank + m.q_lora_rank * n * q_head // tp
        count += h * (m.kv_lora_rank + m.qk_pos_emb_head_dim) // down_split + m.kv_lora_rank
        count += m.kv_lora_rank * n * (m.qk_head_dim + m.v_head_dim) // tp
        return count + n * m.v_head_dim * h // tp + h  # + input norm
    d, g = m.head_dim, m.num_query_groups or n
    qkv = (n + 2 * g) * d
    count = h * qkv // tp + n * d * h // tp + h  # qkv, proj, input norm
    if m.add_qkv_bias:
        count += qkv // tp
    if m.qk_layernorm:
        count += 2 * d
    return count


def _layer(m: ModelConfig, index: int, parallel: ParallelConfig, spec: Spec) -> tuple[int, int]:
    """(dense, expert) parameters of layer `index` on one rank."""
    tp, h = parallel.tp, m.hidden_size
    dense = _attention(m, tp, spec) + h  # + pre-MLP norm
    if not m.is_moe or index < m.moe_first_k_dense:
        return dense + 3 * h * m.ffn_hidden_size // tp, 0
    dense += m.num_experts * h  # router (replicated)
    if m.moe_shared_expert_intermediate_size:
        dense += 3 * h * m.moe_shared_expert_intermediate_size // tp
    local_experts = m.num_experts // parallel.ep
    expert = local_experts * 3 * h * m.moe_ffn_hidden_size // parallel.expert_tp
    return dense, expert


def rank_params(model: ModelConfig, parallel: ParallelConfig, pp_rank: int, *, spec: Spec = "te") -> RankParams:
    """Parameters on every rank of pipeline stage `pp_rank` (TP/EP ranks hold equal shares)."""
    layers = stage_layers(model, parallel, pp_rank)
    dense = expert = 0
    for i in layers:
        d, e = _layer(model, i, parallel, spec)
        dense += d
        expert += e
    embedding = model.padded_vocab_size(parallel.tp) * model.hidden_size // parallel.tp
    if pp_rank == 0:
        dense += embedding
    if pp_rank == parallel.pp - 1:
        dense += model.hidden_size  # final norm
        if not (model.tie_word_embeddings and parallel.pp == 1):
            dense += embedding  # output layer (a copy of the embedding when tied across stages)
    return RankParams(dense=dense, expert=expert, layers=len(layers))


def largest_stage(model: ModelConfig, parallel: ParallelConfig, *, spec: Spec = "te") -> int:
    """The pipeline rank holding the most parameters (what bounds the memory of an uneven split)."""
    return max(range(parallel.pp), key=lambda r: rank_params(model, parallel, r, spec=spec).total)
