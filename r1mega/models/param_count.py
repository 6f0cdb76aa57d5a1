"""Analytic parameter counts of a ModelConfig, as HF counts them (unpadded vocabulary).

Used to check the shipped real-size configs against the published totals, and by memory planning.
`active=True` counts what one token uses in an MoE model: the top-k routed experts instead of all.
"""

from __future__ import annotations

from r1mega.models.config import ModelConfig

__all__ = ["count_parameters"]


def _attention(cfg: ModelConfig) -> int:
    h, n = cfg.hidden_size, cfg.num_attention_heads
    if cfg.multi_latent_attention:
        q_head = cfg.qk_head_dim + cfg.qk_pos_emb_head_dim
        if cfg.q_lora_rank is None:
            q = h * n * q_head
        else:  # down-projection, latent norm, up-projection
            q = h * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * n * q_head
        kv = h * (cfg.kv_lora_rank + cfg.qk_pos_emb_head_dim) + cfg.kv_lora_rank
        kv += cfg.kv_lora_rank * n * (cfg.qk_head_dim + cfg.v_head_dim)
        return q + kv + n * cfg.v_head_dim * h
    d, g = cfg.head_dim, cfg.num_query_groups or n
    q, kv = n * d, 2 * g * d
    count = h * (q + kv) + q * h
    if cfg.add_qkv_bias:
        count += q + kv
    if cfg.qk_layernorm:
        count += 2 * d
    return count


def _mlp(hidden: int, ffn: int) -> int:
    return 3 * hidden * ffn  # SwiGLU: gate, up, down


def _layer(cfg: ModelConfig, index: int, active: bool) -> int:
    count = 2 * cfg.hidden_size + _attention(cfg)  # two RMSNorms
    if not cfg.is_moe or index < cfg.moe_first_k_dense:
        return count + _mlp(cfg.hidden_size, cfg.ffn_hidden_size)
    experts = cfg.moe_router_topk if active else cfg.num_experts
    count += cfg.num_experts * cfg.hidden_size  # router
    count += experts * _mlp(cfg.hidden_size, cfg.moe_ffn_hidden_size)
    if cfg.moe_shared_expert_intermediate_size:
        count += _mlp(cfg.hidden_size, cfg.moe_shared_expert_intermediate_size)
    return count


def count_parameters(cfg: ModelConfig, *, active: bool = False, embedding: bool = True) -> int:
    """Total (or per-token active) parameters. `embedding=False` leaves out the input embedding
    lookup (a tied matrix still counts once, as the output layer), as active counts usually do."""
    count = sum(_layer(cfg, i, active) for i in range(cfg.num_layers))
    count += cfg.hidden_size  # final norm
    if embedding:
        count += cfg.vocab_size * cfg.hidden_size
    if not cfg.tie_word_embeddings or not embedding:
        count += cfg.vocab_size * cfg.hidden_size  # output layer (the embedding itself when tied)
    return count
