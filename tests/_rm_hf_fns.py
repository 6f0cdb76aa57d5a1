"""Rank functions of the reward-model conversion tests: an HF ...ForSequenceClassification checkpoint
loaded into megatron (head: score) at a layout, its scores, and its export back."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

PAD = 0


def make_hf_reward_model(family: str, directory, seed: int) -> Path:
    """A float32 ...ForSequenceClassification (num_labels=1, pad_token_id=PAD) with random weights."""
    from transformers import AutoModelForSequenceClassification

    from tests.convert_helpers import tiny_hf_config
    from tests.rollout_helpers import randomize_

    cfg = tiny_hf_config(family, pad_token_id=PAD)
    cfg.num_labels = 1
    model = AutoModelForSequenceClassification.from_config(cfg, dtype=torch.float32)
    randomize_(model.eval(), seed, std=0.1)
    model.save_pretrained(str(directory))
    return Path(directory)


def rm_tokens(seed: int, batch: int = 3, seq: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded tokens without the pad id inside, and their lengths (one row full length)."""
    from tests.convert_helpers import VOCAB

    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, VOCAB, (batch, seq), generator=g)
    lengths = torch.tensor([seq] + [int(x) for x in torch.randint(3, seq, (batch - 1,), generator=g)])
    for row, n in enumerate(lengths.tolist()):
        tokens[row, n:] = PAD
    return tokens, lengths


@torch.no_grad()
def hf_scores(directory, tokens: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(directory), dtype=torch.float32, local_files_only=True)
    return model.eval()(tokens, use_cache=False).logits.float()[:, 0]  # [b]


def _megatron_scores(chunks, tokens: torch.Tensor, lengths: torch.Tensor) -> Optional[torch.Tensor]:
    from megatron.core import parallel_state as ps

    from r1mega.rm.loss import last_token_scores
    from r1mega.rm.trainer import rm_forward
    from r1mega.training.megatron_step import forward_backward

    b, s = tokens.shape
    batch = {"tokens": tokens, "position_ids": torch.arange(s).unsqueeze(0).expand(b, s).contiguous()}

    def keep(output: torch.Tensor, mb: dict):
        return output.sum() * 0.0, {"scores": last_token_scores(output, lengths).detach()}

    for c in chunks:
        c.eval()
    metrics = forward_backward(chunks, [batch], keep, seq_length=s, micro_batch_size=b, forward_only=True, forward_fn=rm_forward)
    return metrics[0]["scores"].clone() if ps.is_pipeline_last_stage(ignore_virtual=True) else None


def run_rm_cases(cases: list[dict]) -> list[dict]:
    """Each case: load `checkpoint` at `layout`, score `tokens`, export and compare bytes."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from r1mega.convert import export_hf_tensors, load_hf_into_model, model_config_from_hf
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed
    from tests.convert_helpers import bitwise_differences, safetensors_state

    out = []
    for case in cases:
        model_cfg = model_config_from_hf(case["checkpoint"])
        pcfg = ParallelConfig(**case["layout"])
        init_distributed(pcfg, seed=1)
        try:
            chunks = build_model(model_cfg, pcfg)
            with torch.no_grad():  # NaN first: a tensor the load misses poisons the scores
                for c in chunks:
                    for p in c.parameters():
                        p.fill_(float("nan"))
            load_hf_into_model(chunks, case["checkpoint"], model_cfg=model_cfg)
            scores = _megatron_scores(chunks, case["tokens"], case["lengths"])
            exported = {n: t for bucket in export_hf_tensors(chunks, 64 * 1024, model_cfg=model_cfg) for n, t in bucket}
            out.append({
                "name": case["name"], "rank": dist.get_rank(), "head": model_cfg.head, "scores": scores,
                "differences": bitwise_differences(safetensors_state(case["checkpoint"]), exported),
            })
        finally:
            ps.destroy_model_parallel()
    return out
