"""Rank functions for the checkpoint memory tests: a model large enough that its training state
dominates the process, saved and loaded under the meter, then saved again by megatron's own path
(the negative control: the meter must see its copies)."""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import torch

SEED = 5
# ~62M parameters (untied 16000-token vocabulary, 4 layers of width 768): at TP=2 each rank holds
# ~0.35 GiB of weights, gradient buffer and Adam moments, several times the process's own baseline
MODEL_OVERRIDES = (
    "model.num_layers=4", "model.hidden_size=768", "model.ffn_hidden_size=3072", "model.num_attention_heads=12",
    "model.num_query_groups=4", "model.vocab_size=16000", "model.tie_word_embeddings=false",
)


def _build(layout: dict):
    from r1mega.config import load_config
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed
    from r1mega.training.megatron_step import wrap_with_ddp
    from r1mega.training.optimizer import OptimizerConfig, build_optimizer

    cfg = load_config("examples/configs/tiny.yaml", ["data.max_prompt_tokens=128", *MODEL_OVERRIDES])
    pcfg = ParallelConfig(**layout)
    init_distributed(pcfg, seed=SEED)
    chunks = wrap_with_ddp(build_model(cfg.model, pcfg), pcfg)
    optimizer = build_optimizer(OptimizerConfig(lr=1e-3), chunks, pcfg)
    return cfg.model, chunks, optimizer


def _adam_states(optimizer) -> list[dict]:
    return [s for part in optimizer.chained_optimizers for s in part.optimizer.state.values()]


def _sums(chunks, optimizer) -> list[float]:
    """A fingerprint of every parameter and moment (sums in float64)."""
    out = [float(p.detach().double().sum()) for c in chunks for p in c.parameters()]
    return out + [float(s[k].double().sum()) for s in _adam_states(optimizer) for k in ("exp_avg", "exp_avg_sq")]


def save_and_load(out_dir: str, layout: dict) -> dict:
    """Bounded save and load (weights and moments must come back), then the controls."""
    from r1mega.parallel.distributed import destroy_distributed
    from r1mega.training import checkpoint as ckpt
    from r1mega.training.checkpoint_memory import training_state_bytes
    from r1mega.training.host_memory import HostMemoryMeter

    model_cfg, chunks, optimizer = _build(layout)
    ckpt._ensure_adam_state(optimizer)  # the moments exist before any meter starts, as after a step
    gen = torch.Generator().manual_seed(SEED)
    for s in _adam_states(optimizer):  # distinct values, so that a load that misses one is seen
        s["exp_avg"].copy_(torch.randn(s["exp_avg"].shape, generator=gen))
        s["exp_avg_sq"].copy_(torch.rand(s["exp_avg_sq"].shape, generator=gen))
    state = training_state_bytes(chunks, optimizer)
    before = _sums(chunks, optimizer)
    gc.collect()
    path = ckpt.save_checkpoint(Path(out_dir) / "bounded", 3, chunks, optimizer, model_config=model_cfg)
    save = ckpt.last_io_stats().record()
    with torch.no_grad():
        for p in (p for c in chunks for p in c.parameters()):
            p.zero_()
        for s in _adam_states(optimizer):
            s["exp_avg"].zero_()
            s["exp_avg_sq"].zero_()
    gc.collect()
    ckpt.load_checkpoint(path, chunks, optimizer, model_config=model_cfg)
    load = ckpt.last_io_stats().record()
    restored = _sums(chunks, optimizer) == before

    # negative controls: a plain copy of the state, and megatron's own save path (its copies)
    tensors = [p for c in chunks for p in c.parameters()]
    tensors += [s[k] for s in _adam_states(optimizer) for k in ("exp_avg", "exp_avg_sq")]
    gc.collect()
    with HostMemoryMeter() as meter:
        copy = [t.detach().clone() for t in tensors]
        del copy
    original = ckpt._bounded_memory
    ckpt._bounded_memory = lambda optimizer: contextlib.nullcontext()
    try:
        gc.collect()
        ckpt.save_checkpoint(Path(out_dir) / "unbounded", 3, chunks, optimizer, model_config=model_cfg)
        unbounded = ckpt.last_io_stats().record()
    finally:
        ckpt._bounded_memory = original
    destroy_distributed()
    return {
        "state_bytes": state, "save": save, "load": load, "restored": restored, "unbounded_save": unbounded,
        "copy": {"bytes": sum(t.numel() * t.element_size() for t in tensors), "peak_extra_bytes": meter.peak_extra_bytes},
    }


def megatron_path_save_and_load(out_dir: str, layout: dict) -> dict:
    """The "before" of docs/checkpoints.md: save and load with r1mega's memory measures switched
    off (megatron-core's own copies), under the same meter."""
    from r1mega.parallel.distributed import destroy_distributed
    from r1mega.training import checkpoint as ckpt
    from r1mega.training import checkpoint_memory

    ckpt._bounded_memory = lambda optimizer: contextlib.nullcontext()
    checkpoint_memory.merges_in_place = lambda request: None
    model_cfg, chunks, optimizer = _build(layout)
    ckpt._ensure_adam_state(optimizer)
    gc.collect()
    path = ckpt.save_checkpoint(Path(out_dir) / "megatron_path", 3, chunks, optimizer, model_config=model_cfg)
    save = ckpt.last_io_stats().record()
    gc.collect()
    ckpt.load_checkpoint(path, chunks, optimizer, model_config=model_cfg)
    load = ckpt.last_io_stats().record()
    destroy_distributed()
    return {"save": save, "load": load}
