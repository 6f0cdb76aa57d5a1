"""HF `transformers` reference for the tiny models: same weights, same logits.

A deliberately small, test-only HF -> megatron (TP=PP=1, local spec) name map, enough to check that
each family's TransformerConfig choices reproduce transformers' forward pass. The real, sharded
conversion lives in r1mega/convert/.
"""

from __future__ import annotations

import torch

from tests import parallel_equivalence as pe


def hf_config(cfg):
    """A transformers config with the same architecture as a ModelConfig."""
    import transformers

    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling_type:
        rope = {**{k: v for k, v in cfg.rope_scaling.items() if k != "type"}, "rope_type": cfg.rope_scaling_type, "rope_theta": cfg.rope_theta}
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.ffn_hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_query_groups or cfg.num_attention_heads,
        rms_norm_eps=cfg.norm_epsilon,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        rope_parameters=rope,
        attention_dropout=0.0,
    )
    if cfg.family == "llama":
        return transformers.LlamaConfig(**common, head_dim=cfg.head_dim, attention_bias=False, mlp_bias=False)
    if cfg.family == "qwen2":
        return transformers.Qwen2Config(**common, use_sliding_window=False)
    if cfg.family == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=cfg.head_dim, attention_bias=False)
    if cfg.family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(
            **common,
            head_dim=cfg.head_dim,
            moe_intermediate_size=cfg.moe_ffn_hidden_size,
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.moe_router_topk,
            norm_topk_prob=cfg.moe_norm_topk_prob,
            decoder_sparse_step=1,
            mlp_only_layers=[],
        )
    if cfg.family == "deepseek_v3":
        return transformers.DeepseekV3Config(
            **common,
            moe_intermediate_size=cfg.moe_ffn_hidden_size,
            n_routed_experts=cfg.num_experts,
            n_shared_experts=cfg.moe_shared_expert_intermediate_size // cfg.moe_ffn_hidden_size,
            num_experts_per_tok=cfg.moe_router_topk,
            n_group=cfg.moe_router_num_groups,
            topk_group=cfg.moe_router_group_topk,
            routed_scaling_factor=cfg.moe_router_topk_scaling_factor,
            first_k_dense_replace=cfg.moe_first_k_dense,
            norm_topk_prob=cfg.moe_norm_topk_prob,
            q_lora_rank=cfg.q_lora_rank,
            kv_lora_rank=cfg.kv_lora_rank,
            qk_nope_head_dim=cfg.qk_head_dim,
            qk_rope_head_dim=cfg.qk_pos_emb_head_dim,
            v_head_dim=cfg.v_head_dim,
            rope_interleave=True,
        )
    raise ValueError(cfg.family)


def hf_to_megatron(hf_state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """HF state dict -> single-process megatron GPTModel state (parameters + router expert bias)."""
    out: dict[str, torch.Tensor] = {"embedding.word_embeddings.weight": hf_state["model.embed_tokens.weight"]}
    out["decoder.final_layernorm.weight"] = hf_state["model.norm.weight"]
    if not cfg.tie_word_embeddings:
        out["output_layer.weight"] = hf_state["lm_head.weight"]
    heads, groups, d = cfg.num_attention_heads, cfg.num_query_groups or cfg.num_attention_heads, cfg.head_dim
    for i in range(cfg.num_layers):
        h, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[m + "input_layernorm.weight"] = hf_state[h + "input_layernorm.weight"]
        out[m + "pre_mlp_layernorm.weight"] = hf_state[h + "post_attention_layernorm.weight"]
        out[m + "self_attention.linear_proj.weight"] = hf_state[h + "self_attn.o_proj.weight"]
        if cfg.multi_latent_attention:
            a = h + "self_attn."
            out[m + "self_attention.linear_q_down_proj.weight"] = hf_state[a + "q_a_proj.weight"]
            out[m + "self_attention.q_layernorm.weight"] = hf_state[a + "q_a_layernorm.weight"]
            out[m + "self_attention.linear_q_up_proj.weight"] = hf_state[a + "q_b_proj.weight"]
            out[m + "self_attention.linear_kv_down_proj.weight"] = hf_state[a + "kv_a_proj_with_mqa.weight"]
            out[m + "self_attention.kv_layernorm.weight"] = hf_state[a + "kv_a_layernorm.weight"]
            out[m + "self_attention.linear_kv_up_proj.weight"] = hf_state[a + "kv_b_proj.weight"]
        else:
            for kind in ("weight", "bias"):
                q = hf_state.get(h + f"self_attn.q_proj.{kind}")
                if q is None:
                    continue
                k, v = hf_state[h + f"self_attn.k_proj.{kind}"], hf_state[h + f"self_attn.v_proj.{kind}"]
                # megatron groups q/k/v per query group: [g0: q heads, k, v | g1: ...]
                q = q.reshape(groups, heads // groups * d, *q.shape[1:])
                k, v = k.reshape(groups, d, *k.shape[1:]), v.reshape(groups, d, *v.shape[1:])
                out[m + f"self_attention.linear_qkv.{kind}"] = torch.cat([q, k, v], dim=1).reshape(-1, *q.shape[2:])
            if cfg.qk_layernorm:
                out[m + "self_attention.q_layernorm.weight"] = hf_state[h + "self_attn.q_norm.weight"]
                out[m + "self_attention.k_layernorm.weight"] = hf_state[h + "self_attn.k_norm.weight"]
        moe = cfg.is_moe and i >= cfg.moe_first_k_dense
        if not moe:
            out[m + "mlp.linear_fc1.weight"] = torch.cat([hf_state[h + "mlp.gate_proj.weight"], hf_state[h + "mlp.up_proj.weight"]])
            out[m + "mlp.linear_fc2.weight"] = hf_state[h + "mlp.down_proj.weight"]
            continue
        out[m + "mlp.router.weight"] = hf_state[h + "mlp.gate.weight"]
        if h + "mlp.gate.e_score_correction_bias" in hf_state:
            out[m + "mlp.router.expert_bias"] = hf_state[h + "mlp.gate.e_score_correction_bias"]
        gate_up, down = hf_state[h + "mlp.experts.gate_up_proj"], hf_state[h + "mlp.experts.down_proj"]
        for e in range(cfg.num_experts):  # gate_up_proj[e] is [gate; up], as megatron's fc1
            out[m + f"mlp.experts.local_experts.{e}.linear_fc1.weight"] = gate_up[e]
            out[m + f"mlp.experts.local_experts.{e}.linear_fc2.weight"] = down[e]
        if cfg.moe_shared_expert_intermediate_size:
            s = h + "mlp.shared_experts."
            out[m + "mlp.shared_experts.linear_fc1.weight"] = torch.cat([hf_state[s + "gate_proj.weight"], hf_state[s + "up_proj.weight"]])
            out[m + "mlp.shared_experts.linear_fc2.weight"] = hf_state[s + "down_proj.weight"]
    return out


def compare_with_transformers(
    model_yamls: list[str], seq: int = 16, mbs: int = 2, megatron_overrides: dict[str, list[str]] | None = None
) -> dict:
    """Rank function (world 1): max |logits - HF logits| / max |HF logits| per tiny model.

    `megatron_overrides[name]` changes the megatron side only (negative controls: the comparison
    must notice a wrong option)."""
    import transformers

    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed

    out = {}
    for key in model_yamls:
        name = key.split(":")[0]
        cfg = pe._model_cfg(name)
        mcfg = pe._model_cfg(name, (megatron_overrides or {}).get(key))
        torch.manual_seed(0)
        hf = transformers.AutoModelForCausalLM.from_config(hf_config(cfg), attn_implementation="eager").float().eval()
        pe.randomize_(hf, 21)  # every weight random: norms near 1, biases and expert bias non-zero
        state = {**dict(hf.named_parameters()), **dict(hf.named_buffers())}
        (mb,) = pe.make_microbatches(1, mbs, seq, cfg.vocab_size, 22)
        with torch.no_grad():
            want = hf(input_ids=mb["tokens"]).logits

        init_distributed(ParallelConfig(), seed=0)
        (model,) = build_model(mcfg, ParallelConfig())
        model.eval()
        mapped = hf_to_megatron({k: v.detach() for k, v in state.items()}, cfg)
        local = {**dict(model.named_parameters()), **{n: b for n, b in model.named_buffers() if n.endswith("expert_bias")}}
        missing = sorted(set(local) - set(mapped))
        unused = sorted(set(mapped) - set(local))
        with torch.no_grad():
            for n, t in local.items():
                if n in mapped:
                    t.copy_(mapped[n])
            got = model(mb["tokens"], mb["position_ids"], None)[..., : cfg.vocab_size]
        out[key] = {
            "rel_err": ((got - want).abs().max() / want.abs().max()).item(),
            "missing": missing,
            "unused": unused,
            "argmax_agree": (got.argmax(-1) == want.argmax(-1)).float().mean().item(),
        }
        destroy_distributed()
    return out
