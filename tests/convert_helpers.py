"""Tiny random HF checkpoints of every family (made locally with transformers, never downloaded),
their reference logits, and the byte-level comparison the conversion tests use.

Each tiny config exercises what its family's map must get right: GQA grouping, vocabulary padding
(vocab 300 is not a multiple of the padding), tied and untied embeddings, QKV biases, per-head q/k
norms, llama3 and YaRN RoPE scaling, MoE with EP-divisible experts, DeepSeek-V3's first dense layer,
shared expert, grouped sigmoid routing with a correction bias and a routed scaling factor.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.rollout_helpers import randomize_

FAMILIES = ("llama", "qwen2", "qwen3", "qwen3_moe", "deepseek_v3")
VOCAB = 300
SEQ = 12


def tiny_hf_config(family: str, **overrides):
    from transformers import DeepseekV3Config, LlamaConfig, Qwen2Config, Qwen3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    if family == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        cfg = LlamaConfig(num_key_value_heads=2, tie_word_embeddings=False, rope_parameters=rope,
                          **{**common, "max_position_embeddings": 16384})
    elif family == "qwen2":
        cfg = Qwen2Config(num_key_value_heads=2, tie_word_embeddings=True, **common)
    elif family == "qwen3":
        cfg = Qwen3Config(num_key_value_heads=2, head_dim=32, tie_word_embeddings=True,
                          rope_parameters={"rope_type": "default", "rope_theta": 1e6}, **common)
    elif family == "qwen3_moe":
        cfg = Qwen3MoeConfig(num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=8,
                             num_experts_per_tok=2, norm_topk_prob=True, tie_word_embeddings=False, **common)
    elif family == "deepseek_v3":
        rope = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64,
                "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}
        cfg = DeepseekV3Config(
            num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
            num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1, routed_scaling_factor=2.5,
            q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
            rope_parameters=rope, num_nextn_predict_layers=0, tie_word_embeddings=False, **common,
        )
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_hf_checkpoint(family: str, directory, seed: int = 0, **overrides) -> Path:
    """save_pretrained of a float32 model with fresh random weights (biases, norms, router bias too)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_hf_config(family, **overrides), dtype=torch.float32)
    randomize_(model.eval(), seed, std=0.1)
    model.save_pretrained(str(directory))
    return Path(directory)


def random_tokens(batch: int = 2, seq: int = SEQ, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def hf_logits(directory, tokens: torch.Tensor) -> torch.Tensor:
    """transformers' own forward on the checkpoint, float32, eager experts: [b, s, vocab]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, local_files_only=True)
    return model.eval()(tokens, use_cache=False).logits.float()


def safetensors_state(directory) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint directory, read with safetensors."""
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for path in sorted(Path(directory).glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def bitwise_differences(want: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> list[str]:
    """Names whose bytes, dtype or shape differ (and names present on one side only)."""
    bad = [f"missing {n}" for n in sorted(set(want) - set(got))]
    bad += [f"unexpected {n}" for n in sorted(set(got) - set(want))]
    for name in sorted(set(want) & set(got)):
        a, b = want[name], got[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            bad.append(f"{name}: {a.dtype}{tuple(a.shape)} vs {b.dtype}{tuple(b.shape)}")
        elif not torch.equal(a.contiguous().view(torch.uint8), b.detach().cpu().contiguous().view(torch.uint8)):
            bad.append(f"{name}: bytes differ")
    return bad


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (the logits tolerance is 1e-4 of this)."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def free_env() -> dict[str, str]:
    """Ranks of the multi-process tests run one torch thread each (the machine has 2 shared cores)."""
    return {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", "ignore")}


REPO = Path(__file__).resolve().parents[1]


def run_tool(name: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """tools/<name> as a user runs it: a fresh process, one thread per rank, no progress bars."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, str(REPO / "tools" / name), "--no-progress", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def tool_error(proc: subprocess.CompletedProcess) -> str:
    """The first `error: ` line of a run that must have refused (exit 1)."""
    assert proc.returncode == 1, f"expected a refusal, got exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert lines, proc.stderr
    return lines[0]


def assert_nothing_written(out: Path) -> None:
    """Neither the output directory nor a temporary beside it exists."""
    assert not out.exists(), f"{out} was created"
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "temporary left behind"
