"""Qwen3 (dense) <-> megatron-core: the llama map plus the per-head q/k RMSNorm.

| megatron-core                                     | HF                       | layout |
| ------------------------------------------------- | ------------------------ | ------ |
| decoder.layers.{i}.self_attention.q_layernorm.weight | self_attn.q_norm.weight | same   |
| decoder.layers.{i}.self_attention.k_layernorm.weight | self_attn.k_norm.weight | same   |

Everything else as in r1mega/convert/llama.py; head_dim is explicit in Qwen3 configs.
"""

from __future__ import annotations

from typing import Any

from r1mega.convert import common
from r1mega.convert.rules import Rule
from r1mega.models.config import ModelConfig

FAMILY = "qwen3"
MODEL_TYPES = ("qwen3",)
HF_ARCHITECTURE = "Qwen3ForCausalLM"


def weight_rules(cfg: ModelConfig) -> list[Rule]:
    return [
        *common.embedding_rules(cfg),
        *common.gqa_attention_rules(cfg),
        common.pre_mlp_norm_rule(),
        *common.dense_mlp_rules(),
    ]


def model_kwargs_from_hf(hf: Any) -> dict[str, Any]:
    common.require(hf, "attention_bias", (False, None), "Qwen3 has no attention biases in this map")
    common.refuse_sliding_window(hf)
    kwargs = common.decoder_from_hf(hf)
    kwargs["kv_channels"] = int(hf.head_dim)  # explicit in Qwen3, whatever hidden/heads is
    return {"family": FAMILY, **kwargs, "qk_layernorm": True}


def hf_kwargs_from_model(cfg: ModelConfig) -> dict[str, Any]:
    return {**common.decoder_to_hf(cfg), "attention_bias": False, "use_sliding_window": False}
