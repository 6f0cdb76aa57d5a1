"""Qwen2 / Qwen2.5 <-> megatron-core: the llama map plus the q/k/v biases (fused like the weight).

| megatron-core                                   | HF                                          | layout |
| ----------------------------------------------- | ------------------------------------------- | ------ |
| decoder.layers.{i}.self_attention.linear_qkv.bias | self_attn.q_proj.bias / k_proj / v_proj   | qkv    |

Everything else as in r1mega/convert/llama.py. Small Qwen2.5 models tie their embeddings.
"""

from __future__ import annotations

from typing import Any

from r1mega.convert import common
from r1mega.convert.rules import Rule
from r1mega.models.config import ModelConfig

FAMILY = "qwen2"
MODEL_TYPES = ("qwen2",)
HF_ARCHITECTURE = "Qwen2ForCausalLM"


def weight_rules(cfg: ModelConfig) -> list[Rule]:
    return [
        *common.embedding_rules(cfg),
        *common.gqa_attention_rules(cfg),
        common.pre_mlp_norm_rule(),
        *common.dense_mlp_rules(),
    ]


def model_kwargs_from_hf(hf: Any) -> dict[str, Any]:
    common.refuse_sliding_window(hf)
    return {"family": FAMILY, **common.decoder_from_hf(hf), "add_qkv_bias": True}


def hf_kwargs_from_model(cfg: ModelConfig) -> dict[str, Any]:
    kwargs = common.decoder_to_hf(cfg)
    kwargs.pop("head_dim")  # Qwen2 derives it from hidden_size / num_attention_heads
    return {**kwargs, "use_sliding_window": False}
