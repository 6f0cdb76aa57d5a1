"""Choose the layer spec: transformer-engine's when it can run (CUDA + TE importable), else the local
spec with the CPU modules of r1mega/models/cpu_spec.py swapped in."""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig


def transformer_engine_usable() -> bool:
    """TE spec only with a GPU and transformer-engine installed; the local spec otherwise."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def decoder_block_spec(
    config: TransformerConfig, *, use_te: bool, vp_stage: Optional[int] = None
) -> TransformerBlockSubmodules:
    """The layer specs of this pipeline stage (and virtual stage) plus the final norm."""
    block = get_gpt_decoder_block_spec(
        config, use_transformer_engine=use_te, normalization=config.normalization, vp_stage=vp_stage
    )
    if use_te:
        return block
    return _local_spec_for_cpu(block)


def _local_spec_for_cpu(block: TransformerBlockSubmodules) -> TransformerBlockSubmodules:
    from r1mega.models.cpu_spec import HeadNorm, LatentNorm, SDPACoreAttention, SequenceParallelNorm

    def swap_norm(current, replacement):
        return current if current is IdentityOp else replacement

    layers = []
    for spec in block.layer_specs:
        sub = spec.submodules
        attn = sub.self_attention
        attn_sub = attn.submodules
        if hasattr(attn_sub, "kv_layernorm"):  # MLA
            attn_sub = dataclasses.replace(
                attn_sub,
                q_layernorm=swap_norm(attn_sub.q_layernorm, LatentNorm),
                kv_layernorm=swap_norm(attn_sub.kv_layernorm, LatentNorm),
                core_attention=SDPACoreAttention,
            )
        else:
            attn_sub = dataclasses.replace(
                attn_sub,
                q_layernorm=swap_norm(attn_sub.q_layernorm, HeadNorm),
                k_layernorm=swap_norm(attn_sub.k_layernorm, HeadNorm),
                core_attention=SDPACoreAttention,
            )
        sub = dataclasses.replace(
            sub,
            input_layernorm=swap_norm(sub.input_layernorm, SequenceParallelNorm),
            pre_mlp_layernorm=swap_norm(sub.pre_mlp_layernorm, SequenceParallelNorm),
            self_attention=ModuleSpec(module=attn.module, params=dict(attn.params), submodules=attn_sub),
        )
        layers.append(ModuleSpec(module=spec.module, params=dict(spec.params), submodules=sub))
    # the final norm: megatron would build WrappedTorchNorm, which refuses sequence parallelism
    return TransformerBlockSubmodules(layer_specs=layers, layer_norm=SequenceParallelNorm)
