"""Llama (2/3/3.1/3.2) <-> megatron-core: GQA attention without biases, SwiGLU MLP.

| megatron-core                                  | HF                                        | layout  |
| ---------------------------------------------- | ----------------------------------------- | ------- |
| embedding.word_embeddings.weight               | model.embed_tokens.weight                 | vocab   |
| decoder.layers.{i}.input_layernorm.weight      | model.layers.{i}.input_layernorm.weight   | same    |
| decoder.layers.{i}.self_attention.linear_qkv   | self_attn.q_proj / k_proj / v_proj        | qkv     |
| decoder.layers.{i}.self_attention.linear_proj  | self_attn.o_proj                          | same    |
| decoder.layers.{i}.pre_mlp_layernorm.weight    | post_attention_layernorm.weight           | same    |
| decoder.layers.{i}.mlp.linear_fc1 / fc2        | mlp.gate_proj + up_proj / mlp.down_proj   | gate_up |
| decoder.final_layernorm.weight                 | model.norm.weight                         | same    |
| output_layer.weight                            | lm_head.weight (absent when tied)         | vocab   |
"""

from __future__ import annotations

from typing import Any

from r1mega.convert import common
from r1mega.convert.rules import Rule
from r1mega.models.config import ModelConfig

FAMILY = "llama"
MODEL_TYPES = ("llama",)
HF_ARCHITECTURE = "LlamaForCausalLM"


def weight_rules(cfg: ModelConfig) -> list[Rule]:
    return [
        *common.embedding_rules(cfg),
        *common.gqa_attention_rules(cfg),
        common.pre_mlp_norm_rule(),
        *common.dense_mlp_rules(),
    ]


def model_kwargs_from_hf(hf: Any) -> dict[str, Any]:
    # HF attention_bias adds a bias to o_proj as well, which megatron's add_qkv_bias cannot express
    common.require(hf, "attention_bias", (False, None), "llama with attention biases (o_proj bias) has no megatron map")
    common.require(hf, "mlp_bias", (False, None), "MLP biases are not part of the llama map")
    return {"family": FAMILY, **common.decoder_from_hf(hf)}


def hf_kwargs_from_model(cfg: ModelConfig) -> dict[str, Any]:
    return {**common.decoder_to_hf(cfg), "attention_bias": False, "mlp_bias": False}
