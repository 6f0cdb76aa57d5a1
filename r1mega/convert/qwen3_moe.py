"""Qwen3-MoE <-> megatron-core: Qwen3 attention, every layer a softmax top-k routed MoE.

| megatron-core                                              | HF                                   | layout  |
| ---------------------------------------------------------- | ------------------------------------ | ------- |
| decoder.layers.{i}.mlp.router.weight                       | mlp.gate.weight                      | same    |
| ...mlp.experts.local_experts.{e}.linear_fc1.weight (local) | mlp.experts.{e}.gate_proj + up_proj  | gate_up |
| ...mlp.experts.linear_fc1.weight{e}          (TEGroupedMLP)| (same)                               | gate_up |
| ...mlp.experts.local_experts.{e}.linear_fc2.weight / weight{e} | mlp.experts.{e}.down_proj.weight | same    |

Expert ids are global ({e} = EP rank * experts per rank + local index). No shared expert.
"""

from __future__ import annotations

from typing import Any

from r1mega.convert import common
from r1mega.convert.rules import Rule
from r1mega.models.config import ModelConfig

FAMILY = "qwen3_moe"
MODEL_TYPES = ("qwen3_moe",)
HF_ARCHITECTURE = "Qwen3MoeForCausalLM"


def weight_rules(cfg: ModelConfig) -> list[Rule]:
    return [
        *common.embedding_rules(cfg),
        *common.gqa_attention_rules(cfg),
        common.pre_mlp_norm_rule(),
        *common.moe_rules(cfg),
    ]


def model_kwargs_from_hf(hf: Any) -> dict[str, Any]:
    common.require(hf, "attention_bias", (False, None), "Qwen3-MoE has no attention biases in this map")
    common.refuse_sliding_window(hf)
    common.require(hf, "decoder_sparse_step", (1, None), "only an MoE block in every layer is mapped")
    if getattr(hf, "mlp_only_layers", None):
        raise ValueError(f"config.json mlp_only_layers={hf.mlp_only_layers} is not supported: every layer must be MoE")
    kwargs = common.decoder_from_hf(hf)
    kwargs["kv_channels"] = int(hf.head_dim)
    return {
        "family": FAMILY,
        **kwargs,
        "qk_layernorm": True,
        "num_experts": int(getattr(hf, "num_local_experts", None) or hf.num_experts),
        "moe_ffn_hidden_size": int(hf.moe_intermediate_size),
        "moe_router_topk": int(hf.num_experts_per_tok),
        "moe_norm_topk_prob": bool(hf.norm_topk_prob),
        "moe_router_score_function": "softmax",
    }


def hf_kwargs_from_model(cfg: ModelConfig) -> dict[str, Any]:
    return {
        **common.decoder_to_hf(cfg),
        "attention_bias": False,
        "use_sliding_window": False,
        "num_experts": cfg.num_experts,
        "moe_intermediate_size": cfg.moe_ffn_hidden_size,
        "num_experts_per_tok": cfg.moe_router_topk,
        "norm_topk_prob": cfg.moe_norm_topk_prob,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
    }
