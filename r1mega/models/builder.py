"""ModelConfig + ParallelConfig -> megatron-core GPTModel chunks for this rank.

The family modules (r1mega/models/<family>.py) say what the architecture is; this module adds where
it runs: parallel sizes, dtype, kernel fusions (TE on GPU, plain torch on CPU), the pipeline stage
and virtual stages. Call after `init_distributed` (it needs megatron's parallel_state).
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

import torch

from r1mega.models.config import ModelConfig
from r1mega.parallel.config import ParallelConfig

__all__ = ["family_module", "transformer_config", "build_model"]


def family_module(family: str):
    """r1mega.models.<family>: transformer_config_kwargs(cfg) and rope_kwargs(cfg)."""
    return importlib.import_module(f"r1mega.models.{family}")


def transformer_config(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    *,
    params_dtype: torch.dtype = torch.float32,
    use_te: Optional[bool] = None,
    **overrides: Any,
):
    """The megatron TransformerConfig (MLATransformerConfig for MLA) of this model and layout.

    `overrides` go straight to the config (e.g. recompute_granularity="full").
    """
    from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

    from r1mega.models.spec import transformer_engine_usable

    if use_te is None:
        use_te = transformer_engine_usable()
    if params_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"params_dtype: {params_dtype} is not one of float32, bfloat16, float16")
    if parallel_cfg.cp > 1 and not use_te:
        raise ValueError(
            "parallel.cp: context parallelism needs transformer-engine attention "
            "(CUDA + transformer-engine); the local spec has none"
        )
    if parallel_cfg.gradient_accumulation_fusion and not torch.cuda.is_available():
        raise ValueError(
            "parallel.gradient_accumulation_fusion: needs CUDA (a fused weight-gradient GEMM); set it false on CPU"
        )
    kwargs = family_module(model_cfg.family).transformer_config_kwargs(model_cfg)
    kwargs.update(
        **parallel_cfg.megatron_sizes(),
        sequence_parallel=parallel_cfg.sequence_parallel,
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,
        bf16=params_dtype == torch.bfloat16,
        fp16=params_dtype == torch.float16,
        # fusions: TE/jit kernels on GPU; on CPU the plain torch paths
        bias_activation_fusion=use_te,
        bias_dropout_fusion=use_te,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        moe_grouped_gemm=bool(use_te and model_cfg.is_moe),
        moe_permute_fusion=False,
        # gloo runs batch_isend_irecv as separate isend/irecv with one tag: at pp=2 the interleaved
        # schedule's activation and gradient to the same peer can then be matched crosswise. The
        # unbatched path sends the two directions over different communicators.
        batch_p2p_comm=torch.cuda.is_available(),
    )
    kwargs.update(parallel_cfg.transformer_config_kwargs())  # uneven split, recompute, GEMM fusion
    kwargs.update(overrides)
    cls = MLATransformerConfig if model_cfg.multi_latent_attention else TransformerConfig
    return cls(**kwargs)


def build_model(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    *,
    params_dtype: torch.dtype = torch.float32,
    use_te: Optional[bool] = None,
    config_overrides: Optional[dict[str, Any]] = None,
    score_head_seed: int = 0,
) -> list:
    """One GPTModel per virtual pipeline stage of this rank (a single one without VPP).

    The first chunk of the first stage owns the embedding (pre_process) and the last chunk of the
    last stage the final norm and output layer (post_process). The vocabulary is padded to
    `model_cfg.padded_vocab_size(tp)`. With `model_cfg.head == "score"` (a reward model) the
    last stage's output layer is a ScalarHead initialised from `score_head_seed`.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    from r1mega.models.spec import decoder_block_spec, transformer_engine_usable
    from r1mega.parallel.cpu import enable_cpu_support
    from r1mega.parallel.megatron_fixes import apply_megatron_fixes

    apply_megatron_fixes()  # every device: they fix megatron code, not the lack of CUDA
    if not torch.cuda.is_available():
        enable_cpu_support()
    if use_te is None:
        use_te = transformer_engine_usable()
    if not parallel_state.model_parallel_is_initialized():
        raise RuntimeError("build_model needs megatron's parallel state: call init_distributed first")
    parallel_cfg.check_model(model_cfg)
    config = transformer_config(
        model_cfg, parallel_cfg, params_dtype=params_dtype, use_te=use_te, **(config_overrides or {})
    )
    rope = family_module(model_cfg.family).rope_kwargs(model_cfg)
    vpp = parallel_cfg.vpp if (parallel_cfg.vpp or 1) > 1 else None
    chunks = []
    for vp_stage in range(vpp or 1):
        stage = vp_stage if vpp else None
        model = GPTModel(
            config=config,
            transformer_layer_spec=decoder_block_spec(config, use_te=use_te, vp_stage=stage),
            vocab_size=model_cfg.padded_vocab_size(parallel_cfg.tp),
            max_sequence_length=model_cfg.max_position_embeddings,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            share_embeddings_and_output_weights=model_cfg.tie_word_embeddings and model_cfg.head == "lm",
            position_embedding_type="rope",
            rotary_percent=1.0,
            vp_stage=stage,
            **rope,
        )
        if model_cfg.head == "score" and model.post_process:
            from r1mega.models.score_head import ScalarHead

            model.output_layer = ScalarHead(config, seed=score_head_seed)  # a reward model's head
        if params_dtype != torch.float32:
            model.to(params_dtype)  # torch norms are created in float32; keep one dtype per model
        chunks.append(model)
    return chunks
