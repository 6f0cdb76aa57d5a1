"""DeepSeek-V3 / R1 <-> megatron-core: multi-latent attention, first-k dense layers, then MoE layers
with a shared expert and a sigmoid router with an expert-score correction bias.

| megatron-core (decoder.layers.{i}.)                  | HF (model.layers.{i}.)                   | layout  |
| ---------------------------------------------------- | ---------------------------------------- | ------- |
| self_attention.linear_q_down_proj.weight             | self_attn.q_a_proj.weight                | same    |
| self_attention.q_layernorm.weight (TE: linear_q_up_proj.layer_norm_weight) | self_attn.q_a_layernorm.weight | same |
| self_attention.linear_q_up_proj.weight               | self_attn.q_b_proj.weight                | same    |
| self_attention.linear_q_proj.weight (q_lora_rank None) | self_attn.q_proj.weight                | same    |
| self_attention.linear_kv_down_proj.weight            | self_attn.kv_a_proj_with_mqa.weight      | same    |
| self_attention.kv_layernorm.weight (TE: linear_kv_up_proj.layer_norm_weight) | self_attn.kv_a_layernorm.weight | same |
| self_attention.linear_kv_up_proj.weight              | self_attn.kv_b_proj.weight               | same    |
| self_attention.linear_proj.weight                    | self_attn.o_proj.weight                  | same    |
| mlp.linear_fc1 / fc2 (layers < first_k_dense_replace) | mlp.gate_proj + up_proj / down_proj     | gate_up |
| mlp.router.weight / mlp.router.expert_bias           | mlp.gate.weight / e_score_correction_bias | same   |
| mlp.experts.* (as Qwen3-MoE)                         | mlp.experts.{e}.*                        | gate_up |
| mlp.shared_experts.linear_fc1 / fc2                  | mlp.shared_experts.gate_proj + up_proj / down_proj | gate_up |

All MLA projections keep HF's row order: q_b/kv_b rows are per head [nope; rope] and [k_nope; v],
kv_a rows are [kv latent; k rope], and megatron's MLA de-interleaves the rope dims the way HF's
`rope_interleave=True` does, so no permutation is needed. Multi-token-prediction layers
(`num_nextn_predict_layers`) are not part of the megatron model and are left out.
"""

from __future__ import annotations

from typing import Any

from r1mega.convert import common
from r1mega.convert.rules import Rule, layer_rule
from r1mega.models.config import ModelConfig

FAMILY = "deepseek_v3"
MODEL_TYPES = ("deepseek_v3",)
HF_ARCHITECTURE = "DeepseekV3ForCausalLM"


def mla_rules(cfg: ModelConfig) -> list[Rule]:
    attn = "self_attention."
    if cfg.q_lora_rank is None:
        query = [layer_rule(attn + "linear_q_proj.weight", "self_attn.q_proj.weight")]
    else:
        query = [
            layer_rule(attn + "linear_q_down_proj.weight", "self_attn.q_a_proj.weight"),
            layer_rule(
                [attn + "q_layernorm.weight", attn + "linear_q_up_proj.layer_norm_weight"],
                "self_attn.q_a_layernorm.weight",
            ),
            layer_rule(attn + "linear_q_up_proj.weight", "self_attn.q_b_proj.weight"),
        ]
    return [
        layer_rule("input_layernorm.weight", "input_layernorm.weight"),
        *query,
        layer_rule(attn + "linear_kv_down_proj.weight", "self_attn.kv_a_proj_with_mqa.weight"),
        layer_rule(
            [attn + "kv_layernorm.weight", attn + "linear_kv_up_proj.layer_norm_weight"],
            "self_attn.kv_a_layernorm.weight",
        ),
        layer_rule(attn + "linear_kv_up_proj.weight", "self_attn.kv_b_proj.weight"),
        layer_rule(attn + "linear_proj.weight", "self_attn.o_proj.weight"),
    ]


def weight_rules(cfg: ModelConfig) -> list[Rule]:
    return [
        *common.embedding_rules(cfg),
        *mla_rules(cfg),
        common.pre_mlp_norm_rule(),
        *common.dense_mlp_rules(),  # the first moe_first_k_dense layers
        *common.moe_rules(cfg),
    ]


def model_kwargs_from_hf(hf: Any) -> dict[str, Any]:
    common.require(hf, "attention_bias", (False, None), "MLA projections have no biases in this map")
    # megatron's MLA de-interleaves the rope dims of q/k before rotating, as HF does with this flag
    common.require(hf, "rope_interleave", (True, None), "megatron's MLA applies RoPE to interleaved pairs")
    common.require(hf, "scoring_func", ("sigmoid", None), "DeepSeek-V3 routing is sigmoid")
    common.require(hf, "topk_method", ("noaux_tc", None), "only aux-loss-free (noaux_tc) routing is mapped")
    common.require(hf, "moe_layer_freq", (1, None), "only MoE in every layer after the first k is mapped")
    kwargs = common.decoder_from_hf(hf)
    kwargs.update(num_query_groups=None, kv_channels=None)  # MLA sizes its own heads
    rope = kwargs["rope_scaling"]
    if rope is not None:
        if rope.get("rope_type") != "yarn":
            raise ValueError(f"config.json rope_parameters.rope_type={rope.get('rope_type')!r}: DeepSeek-V3 maps yarn only")
        if rope.get("truncate", True) is not True or rope.get("attention_factor") is not None:
            raise ValueError("config.json rope_parameters: truncate=false / attention_factor have no megatron YaRN option")
        if float(rope.get("mscale", 1.0)) != 1.0 and not rope.get("mscale_all_dim"):
            # HF then ignores mscale for the cos/sin factor; megatron does not
            raise ValueError("config.json rope_parameters: mscale != 1 needs mscale_all_dim set")
    groups = getattr(hf, "n_group", None) or 1
    shared = int(getattr(hf, "n_shared_experts", 0) or 0)
    return {
        "family": FAMILY,
        **kwargs,
        "qk_layernorm": True,
        "multi_latent_attention": True,
        "q_lora_rank": None if hf.q_lora_rank is None else int(hf.q_lora_rank),
        "kv_lora_rank": int(hf.kv_lora_rank),
        "qk_head_dim": int(hf.qk_nope_head_dim),
        "qk_pos_emb_head_dim": int(hf.qk_rope_head_dim),
        "v_head_dim": int(hf.v_head_dim),
        "num_experts": int(hf.n_routed_experts),
        "moe_ffn_hidden_size": int(hf.moe_intermediate_size),
        "moe_router_topk": int(hf.num_experts_per_tok),
        "moe_shared_expert_intermediate_size": shared * int(hf.moe_intermediate_size) or None,
        "moe_first_k_dense": int(getattr(hf, "first_k_dense_replace", 0) or 0),
        "moe_router_score_function": "sigmoid",
        "moe_router_enable_expert_bias": True,
        "moe_router_topk_scaling_factor": float(hf.routed_scaling_factor),
        "moe_norm_topk_prob": bool(hf.norm_topk_prob),
        # a single group is no group limit
        "moe_router_num_groups": int(groups) if groups > 1 else None,
        "moe_router_group_topk": int(hf.topk_group) if groups > 1 else None,
    }


def hf_kwargs_from_model(cfg: ModelConfig) -> dict[str, Any]:
    kwargs = common.decoder_to_hf(cfg)
    shared = cfg.moe_shared_expert_intermediate_size or 0
    if shared % cfg.moe_ffn_hidden_size:
        raise ValueError(
            f"moe_shared_expert_intermediate_size={shared} is not a multiple of moe_ffn_hidden_size="
            f"{cfg.moe_ffn_hidden_size}: HF DeepSeek-V3 sizes the shared expert as n_shared_experts * it"
        )
    kwargs.update(
        num_key_value_heads=cfg.num_attention_heads,
        head_dim=cfg.qk_pos_emb_head_dim,  # HF's rotary size for MLA
        attention_bias=False,
        rope_interleave=True,
        q_lora_rank=cfg.q_lora_rank,
        kv_lora_rank=cfg.kv_lora_rank,
        qk_nope_head_dim=cfg.qk_head_dim,
        qk_rope_head_dim=cfg.qk_pos_emb_head_dim,
        v_head_dim=cfg.v_head_dim,
        n_routed_experts=cfg.num_experts,
        moe_intermediate_size=cfg.moe_ffn_hidden_size,
        num_experts_per_tok=cfg.moe_router_topk,
        n_shared_experts=shared // cfg.moe_ffn_hidden_size,
        first_k_dense_replace=cfg.moe_first_k_dense,
        routed_scaling_factor=cfg.moe_router_topk_scaling_factor or 1.0,
        norm_topk_prob=cfg.moe_norm_topk_prob,
        n_group=cfg.moe_router_num_groups or 1,
        topk_group=cfg.moe_router_group_topk or 1,
        num_nextn_predict_layers=0,
    )
    return kwargs
