"""Starting weights of a reward model (`checkpoint.init_from` of `r1mega rm`), from any checkpoint the
project writes: a run's checkpoint (`runs/NAME/checkpoints`, or an iter_N inside) or an HF directory
(config.json + safetensors, as `r1mega pretrain` or tools/convert_mcore_to_hf.py write them).

A causal LM's output layer is dropped and the score head keeps its fresh initialisation; a reward
model's checkpoint (head: score) is loaded whole, its head included. The architecture must match
the job's `model:` section (every differing field is named).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from r1mega.models.config import ModelConfig

__all__ = ["init_reward_model"]


def init_reward_model(path: str, chunks: list, model_cfg: ModelConfig) -> str:
    """Load `path` into the reward model's chunks (a collective); returns what was loaded."""
    p = Path(path)
    if (p / "config.json").is_file():
        from r1mega.convert.hf_config import check_config_matches, model_config_from_hf
        from r1mega.convert.load import load_hf_into_model

        base = model_config_from_hf(p)
        check_config_matches(dataclasses.replace(model_cfg, head=base.head), p, where=str(p / "config.json"))
        if base.head == "score":
            load_hf_into_model(chunks, p, model_cfg=model_cfg)
            return f"{p} (HF reward model)"
        load_hf_into_model(chunks, p, model_cfg=model_cfg, leave=r"^output_layer\.", ignore=("lm_head.weight",))
        return f"{p} (HF causal LM; LM head dropped, score head fresh)"
    from r1mega.training import checkpoint as ckpt

    resolved = ckpt.resolve_resume(str(p), p)
    saved = (ckpt.read_checkpoint_info(resolved).get("model_config") or {}).get("head", "lm")
    if saved == "score":
        ckpt.load_model_weights(resolved, chunks, model_config=model_cfg)
        return f"{resolved} (reward model)"
    ckpt.load_body_weights(resolved, chunks, model_config=model_cfg)
    return f"{resolved} (causal LM; LM head dropped, score head fresh)"
