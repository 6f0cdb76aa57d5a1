"""Model architecture config: one dataclass for every supported family.

Field names follow megatron-core's TransformerConfig where one exists, so the family modules
(r1mega/models/<family>.py) map them 1:1. `family` fixes the HF architecture choices it implies
(Qwen2 -> QKV bias, Qwen3 -> per-head QK norm, ...): `validate()` rejects a contradicting value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from r1mega.configlib import ConfigError

Family = Literal["llama", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3"]
FAMILIES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3")


@dataclass(kw_only=True)
class ModelConfig:
    family: Family
    """Architecture family; decides the HF name map and family-specific layer choices."""
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    """Dense MLP intermediate size (SwiGLU: each of gate and up has this many columns)."""
    num_attention_heads: int
    num_query_groups: Optional[int] = None
    """KV heads for GQA; None = multi-head attention (as many KV heads as query heads)."""
    kv_channels: Optional[int] = None
    """Per-head dimension; None = hidden_size // num_attention_heads (Qwen3 sets it explicitly)."""
    vocab_size: int
    """Tokenizer/embedding rows as in the HF config (before megatron's padding)."""
    make_vocab_size_divisible_by: int = 128
    """Embedding rows are padded to a multiple of this times TP (megatron convention)."""
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: Optional[dict[str, Any]] = None
    """HF-style rope scaling dict (`rope_type`/`type`: llama3 for the llama family, yarn for
    deepseek_v3); None = plain RoPE. Keys follow the HF config.json."""
    norm_epsilon: float = 1e-6
    tie_word_embeddings: bool = False
    add_qkv_bias: bool = False
    """Bias on the Q/K/V projections (Qwen2/2.5)."""
    qk_layernorm: bool = False
    """RMSNorm on per-head queries and keys (Qwen3, Qwen3-MoE)."""
    init_method_std: float = 0.02
    attention_dropout: float = 0.0
    hidden_dropout: float = 0.0
    head: Literal["lm", "score"] = "lm"
    """Output head: `lm`, vocabulary logits (a causal LM); `score`, one scalar per position from a
    [1, hidden] linear layer (a reward model: r1mega/rm/), exported as the family's
    `...ForSequenceClassification` with num_labels=1. A score model never ties embeddings to a head."""

    # --- Mixture of experts (qwen3_moe, deepseek_v3) ---
    num_experts: Optional[int] = None
    """Routed experts per MoE layer; None = dense model."""
    moe_ffn_hidden_size: Optional[int] = None
    """Intermediate size of each routed expert."""
    moe_router_topk: int = 2
    moe_shared_expert_intermediate_size: Optional[int] = None
    """Total intermediate size of the shared expert(s) (DeepSeek-V3: n_shared_experts * moe size)."""
    moe_first_k_dense: int = 0
    """The first k layers use a dense MLP (DeepSeek-V3 first_k_dense_replace)."""
    moe_router_score_function: Literal["softmax", "sigmoid"] = "softmax"
    moe_router_enable_expert_bias: bool = False
    """Aux-loss-free load balancing bias (DeepSeek-V3 e_score_correction_bias)."""
    moe_router_topk_scaling_factor: Optional[float] = None
    """Scale applied to routing weights (DeepSeek-V3 routed_scaling_factor)."""
    moe_norm_topk_prob: bool = True
    """Renormalise the top-k routing weights to sum to 1 (HF norm_topk_prob). With softmax scores
    this picks megatron's softmax-over-the-selected-k (equal to softmax, top-k, renormalise); without
    it, softmax over all experts before top-k. Sigmoid scores are always renormalised (DeepSeek-V3)."""
    moe_router_bias_update_rate: float = 0.0
    """Aux-loss-free balancing: per-step update of the expert bias; 0 keeps the loaded bias fixed."""
    moe_router_num_groups: Optional[int] = None
    """Group-limited routing: expert groups (DeepSeek-V3 n_group)."""
    moe_router_group_topk: Optional[int] = None
    """Group-limited routing: groups kept per token (DeepSeek-V3 topk_group)."""
    moe_aux_loss_coeff: float = 0.0
    """Load-balancing loss weight; 0 disables it (megatron's load_balancing_type "none")."""
    moe_token_dispatcher_type: Literal["alltoall", "allgather"] = "alltoall"

    # --- Multi-latent attention (deepseek_v3) ---
    multi_latent_attention: bool = False
    q_lora_rank: Optional[int] = None
    """Rank of the query down-projection; None = full-rank queries (V2-Lite style)."""
    kv_lora_rank: int = 512
    qk_head_dim: int = 128
    """Non-rotary part of each query/key head (HF qk_nope_head_dim)."""
    qk_pos_emb_head_dim: int = 64
    """Rotary part of each query/key head (HF qk_rope_head_dim)."""
    v_head_dim: int = 128

    def validate(self) -> None:
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "vocab_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_query_groups is not None:
            if self.num_query_groups < 1 or self.num_attention_heads % self.num_query_groups:
                raise ConfigError(
                    f"num_query_groups: {self.num_query_groups} must divide "
                    f"num_attention_heads={self.num_attention_heads}"
                )
        if self.kv_channels is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"kv_channels: hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}; set kv_channels explicitly"
            )
        moe_family = self.family in ("qwen3_moe", "deepseek_v3")
        if moe_family and not self.num_experts:
            raise ConfigError(f"num_experts: required for family {self.family}")
        if self.num_experts:
            if not moe_family:
                raise ConfigError(f"num_experts: family {self.family} is dense; use qwen3_moe or deepseek_v3")
            if self.moe_ffn_hidden_size is None:
                raise ConfigError("moe_ffn_hidden_size: required when num_experts is set")
            if not 1 <= self.moe_router_topk <= self.num_experts:
                raise ConfigError(
                    f"moe_router_topk: {self.moe_router_topk} must be in [1, num_experts={self.num_experts}]"
                )
            if not 0 <= self.moe_first_k_dense <= self.num_layers:
                raise ConfigError(f"moe_first_k_dense: {self.moe_first_k_dense} out of [0, num_layers]")
            if self.moe_router_num_groups is not None:
                if self.num_experts % self.moe_router_num_groups:
                    raise ConfigError(
                        f"moe_router_num_groups: {self.moe_router_num_groups} must divide num_experts"
                    )
                if not self.moe_router_group_topk or self.moe_router_group_topk > self.moe_router_num_groups:
                    raise ConfigError("moe_router_group_topk: must be in [1, moe_router_num_groups]")
        self._validate_rope_scaling()
        self._validate_family()
        if self.multi_latent_attention and self.family != "deepseek_v3":
            raise ConfigError(f"multi_latent_attention: only the deepseek_v3 family uses MLA, not {self.family}")
        if self.family == "deepseek_v3" and not self.multi_latent_attention:
            raise ConfigError("multi_latent_attention: the deepseek_v3 family requires it (set true)")

    def _validate_rope_scaling(self) -> None:
        kind = self.rope_scaling_type
        if kind is None:
            return
        if kind == "llama3":
            if self.family != "llama":
                raise ConfigError(f"rope_scaling: llama3 scaling belongs to the llama family, not {self.family}")
            # megatron's RotaryEmbedding hard-codes the Llama-3.1 shape of the scaling curve
            fixed = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
            for key, want in fixed.items():
                if key in self.rope_scaling and float(self.rope_scaling[key]) != want:
                    raise ConfigError(
                        f"rope_scaling.{key}: megatron-core's llama3 RoPE fixes it to {want:g}, "
                        f"got {self.rope_scaling[key]}"
                    )
            if "factor" not in self.rope_scaling:
                raise ConfigError("rope_scaling.factor: required for llama3 scaling")
        elif kind == "yarn":
            if self.family != "deepseek_v3":
                raise ConfigError(
                    f"rope_scaling: yarn is supported for deepseek_v3 (MLA) only, not {self.family}"
                )
            for key in ("factor", "original_max_position_embeddings"):
                if key not in self.rope_scaling:
                    raise ConfigError(f"rope_scaling.{key}: required for yarn scaling")
        else:
            raise ConfigError(f"rope_scaling: unsupported type {kind!r} (supported: llama3, yarn, or null)")

    def _validate_family(self) -> None:
        """Each family's fixed HF architecture choices; a contradicting value is a config mistake."""
        fam = self.family
        if fam == "qwen2" and not self.add_qkv_bias:
            raise ConfigError("add_qkv_bias: Qwen2/2.5 always has a bias on q/k/v (set true)")
        if fam == "llama" and self.add_qkv_bias:
            raise ConfigError(
                "add_qkv_bias: HF Llama's attention_bias also biases o_proj, which megatron cannot "
                "express; llama configs must set it false"
            )
        if fam in ("qwen3", "qwen3_moe", "deepseek_v3") and not self.qk_layernorm:
            what = "latent q/kv RMSNorms" if fam == "deepseek_v3" else "per-head q/k RMSNorm"
            raise ConfigError(f"qk_layernorm: the {fam} family has the {what} (set true)")
        if fam in ("llama", "qwen2") and self.qk_layernorm:
            raise ConfigError(f"qk_layernorm: the {fam} family has no q/k norm (set false)")
        if fam in ("qwen3_moe", "qwen3", "llama", "qwen2") and self.moe_shared_expert_intermediate_size:
            raise ConfigError(f"moe_shared_expert_intermediate_size: the {fam} family has no shared expert")
        if self.moe_router_score_function == "sigmoid":
            if fam != "deepseek_v3":
                raise ConfigError(f"moe_router_score_function: sigmoid routing is DeepSeek-V3's, not {fam}'s")
            if not self.moe_norm_topk_prob:
                raise ConfigError(
                    "moe_norm_topk_prob: megatron always renormalises sigmoid top-k weights; "
                    "DeepSeek-V3 does too (set true)"
                )
        if self.moe_router_enable_expert_bias and self.moe_router_score_function != "sigmoid":
            raise ConfigError("moe_router_enable_expert_bias: needs moe_router_score_function=sigmoid")
        if self.moe_router_num_groups is not None and self.moe_router_group_topk:
            if self.moe_router_topk % self.moe_router_group_topk or self.moe_router_topk // self.moe_router_group_topk != 2:
                # HF scores a group by the sum of its top-2 experts; megatron by its top topk/group_topk
                raise ConfigError(
                    "moe_router_group_topk: HF DeepSeek-V3 scores each group by its top-2 experts, "
                    "megatron by its top (moe_router_topk / moe_router_group_topk); set them so that "
                    f"ratio is 2 (got {self.moe_router_topk}/{self.moe_router_group_topk})"
                )
        if self.moe_router_bias_update_rate < 0:
            raise ConfigError(f"moe_router_bias_update_rate: must be >= 0, got {self.moe_router_bias_update_rate}")

    @property
    def rope_scaling_type(self) -> Optional[str]:
        """'llama3', 'yarn' or None (no scaling; HF's 'default' counts as none)."""
        if not self.rope_scaling:
            return None
        kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))
        return None if kind in (None, "default") else str(kind)

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    def padded_vocab_size(self, tp: int) -> int:
        """Embedding rows after megatron's padding to a multiple of make_vocab_size_divisible_by * tp."""
        multiple = self.make_vocab_size_divisible_by * tp
        return ((self.vocab_size + multiple - 1) // multiple) * multiple
