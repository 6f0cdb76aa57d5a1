"""ModelConfig <-> HF config.json, both ways, and the field-by-field check between the two.

`model_config_from_hf` refuses HF options the megatron model cannot reproduce (naming the
config.json field); `hf_config_from_model_config` builds the transformers config object the rollout
engine and the mcore -> HF tool use; `config_mismatches` lists every architecture field on which a
given ModelConfig and a checkpoint's config.json disagree (fields that only affect training, such
as dropout or vocabulary padding, are not compared).
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any, Optional, Union

from r1mega.configlib import ConfigError, from_dict
from r1mega.models.config import FAMILIES, ModelConfig

__all__ = [
    "family_map",
    "family_of_model_type",
    "load_hf_config",
    "model_config_from_hf",
    "hf_config_from_model_config",
    "config_mismatches",
    "check_config_matches",
    "ARCHITECTURE_FIELDS",
]

HFConfigLike = Union["PretrainedConfig", dict, str, Path]  # noqa: F821


def family_map(family: str):
    """r1mega.convert.<family>: weight_rules, model_kwargs_from_hf, hf_kwargs_from_model."""
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} has no conversion map (known: {', '.join(FAMILIES)})")
    return importlib.import_module(f"r1mega.convert.{family}")


def family_of_model_type(model_type: str) -> str:
    for family in FAMILIES:
        if model_type in family_map(family).MODEL_TYPES:
            return family
    known = sorted(t for f in FAMILIES for t in family_map(f).MODEL_TYPES)
    raise ValueError(f"config.json model_type {model_type!r} is not supported (supported: {', '.join(known)})")


def load_hf_config(source: HFConfigLike):
    """A transformers config object from an object, a config.json dict, a file or a checkpoint dir.

    Nothing is downloaded: paths must be local. Legacy keys (rope_theta / rope_scaling at top level)
    are standardised by transformers itself.
    """
    from transformers import CONFIG_MAPPING, PretrainedConfig

    if isinstance(source, PretrainedConfig):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ValueError(f"{path}: no HF config.json there")
        try:
            source = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(source, dict) or "model_type" not in source:
        raise ValueError("HF config: expected a dict with a 'model_type' key")
    family_of_model_type(source["model_type"])  # clear error for an unsupported type
    return CONFIG_MAPPING[source["model_type"]].from_dict(dict(source))


def model_config_from_hf(hf_config: HFConfigLike, **overrides: Any) -> ModelConfig:
    """The ModelConfig of an HF model; `overrides` set fields HF does not describe (e.g.
    make_vocab_size_divisible_by). Raises ValueError naming the config.json field it cannot map."""
    hf = load_hf_config(hf_config)
    family = family_of_model_type(hf.model_type)
    kwargs = family_map(family).model_kwargs_from_hf(hf)
    architectures = getattr(hf, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        if getattr(hf, "num_labels", 1) != 1:
            raise ValueError(f"config.json: num_labels={hf.num_labels}; a reward model has one score (num_labels=1)")
        kwargs["head"] = "score"
    kwargs.update(overrides)
    try:
        return from_dict(ModelConfig, kwargs, where="model")
    except ConfigError as e:
        raise ValueError(f"config.json ({hf.model_type}) maps to an invalid model config: {e}") from None


def hf_config_from_model_config(model_cfg: ModelConfig, base: Optional[HFConfigLike] = None):
    """The transformers config object of a ModelConfig.

    `base` (the original config.json) keeps what ModelConfig does not describe: token ids, dtype,
    generation defaults. Architecture fields always come from `model_cfg`.
    """
    from transformers import CONFIG_MAPPING

    model_cfg.validate()
    fam = family_map(model_cfg.family)
    kwargs = fam.hf_kwargs_from_model(model_cfg)
    merged: dict[str, Any] = {}
    if base is not None:
        base_cfg = load_hf_config(base)
        if family_of_model_type(base_cfg.model_type) != model_cfg.family:
            raise ValueError(
                f"hf_config_from_model_config: base config is {base_cfg.model_type}, the model is {model_cfg.family}"
            )
        merged = {k: v for k, v in base_cfg.to_dict().items() if k not in ("rope_scaling", "rope_theta")}
    merged.update(kwargs)
    if model_cfg.head == "score":
        # a reward model: transformers' sequence classification head, one label, read at the last
        # non-pad token (the exporter sets pad_token_id)
        merged["architectures"] = [fam.HF_ARCHITECTURE.replace("ForCausalLM", "ForSequenceClassification")]
        merged["num_labels"] = 1
        merged.pop("id2label", None)
        merged.pop("label2id", None)
    else:
        merged["architectures"] = [fam.HF_ARCHITECTURE]
    model_type = fam.MODEL_TYPES[0]
    merged["model_type"] = model_type
    return CONFIG_MAPPING[model_type].from_dict(merged)


# ------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------

ARCHITECTURE_FIELDS: tuple[str, ...] = (
    "family",
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "head_dim",
    "vocab_size",
    "rope_theta",
    "rope_scaling",
    "norm_epsilon",
    "tie_word_embeddings",
    "add_qkv_bias",
    "qk_layernorm",
    "num_experts",
    "moe_ffn_hidden_size",
    "moe_router_topk",
    "moe_shared_expert_intermediate_size",
    "moe_first_k_dense",
    "moe_router_score_function",
    "moe_router_enable_expert_bias",
    "moe_router_topk_scaling_factor",
    "moe_norm_topk_prob",
    "moe_router_num_groups",
    "moe_router_group_topk",
    "multi_latent_attention",
    "head",
    "q_lora_rank",
    "kv_lora_rank",
    "qk_head_dim",
    "qk_pos_emb_head_dim",
    "v_head_dim",
)
"""ModelConfig fields that decide the weights' shapes or the forward pass (head_dim is the
property: kv_channels or hidden_size / heads)."""


def _normalised(cfg: ModelConfig) -> dict[str, Any]:
    """Architecture fields with equivalent spellings made equal (None groups = heads, ...)."""
    out = {f: getattr(cfg, f) for f in ARCHITECTURE_FIELDS}
    out["num_query_groups"] = cfg.num_query_groups or cfg.num_attention_heads
    out["moe_router_topk_scaling_factor"] = cfg.moe_router_topk_scaling_factor or 1.0
    out["moe_router_num_groups"] = cfg.moe_router_num_groups or 1
    out["moe_router_group_topk"] = cfg.moe_router_group_topk if cfg.moe_router_num_groups else 1
    out["rope_scaling"] = _normalised_rope(cfg)
    if cfg.multi_latent_attention:  # MLA sizes heads itself; num_query_groups/head_dim are unused
        out.pop("num_query_groups")
        out.pop("head_dim")
    else:
        for f in ("q_lora_rank", "kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim"):
            out.pop(f)
    if not cfg.is_moe:
        for f in [f for f in out if f.startswith("moe_")]:
            out.pop(f)
    elif cfg.moe_first_k_dense == 0:  # no dense layer: the dense MLP size is never used
        out.pop("ffn_hidden_size")
    return out


def _normalised_rope(cfg: ModelConfig) -> Optional[dict[str, Any]]:
    kind = cfg.rope_scaling_type
    if kind is None:
        return None
    out: dict[str, Any] = {"rope_type": kind}
    for k, v in cfg.rope_scaling.items():
        if k in ("type", "rope_type"):
            continue
        out[k] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    return out


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return not math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() != b.keys() or any(_differs(a[k], b[k]) for k in a)
    return a != b


def config_mismatches(model_cfg: ModelConfig, hf_config: HFConfigLike) -> list[str]:
    """One line per architecture field on which `model_cfg` and the HF config disagree."""
    from_hf = model_config_from_hf(hf_config)
    mine, theirs = _normalised(model_cfg), _normalised(from_hf)
    lines = []
    for field in ARCHITECTURE_FIELDS:
        if field not in mine and field not in theirs:
            continue
        a, b = mine.get(field, "<unused>"), theirs.get(field, "<unused>")
        if _differs(a, b):
            lines.append(f"{field}: model config has {a!r}, config.json gives {b!r}")
    return lines


def check_config_matches(model_cfg: ModelConfig, hf_config: HFConfigLike, *, where: str = "config.json") -> None:
    """ValueError naming every differing field (a silently mismatched conversion is worse than none)."""
    lines = config_mismatches(model_cfg, hf_config)
    if lines:
        raise ValueError(
            f"the model config does not match {where} ({len(lines)} field(s) differ):\n  " + "\n  ".join(lines)
        )
