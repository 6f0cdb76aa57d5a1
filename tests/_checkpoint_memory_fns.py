"""Rank functions for the checkpoint memory tests: a model large enough that its training state
dominates the process, saved and loaded under a meter."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path

import torch

SEED = 5
# ~34M parameters (untied 8000-token vocabulary, 4 layers of width 512): fp32 weights, gradient
# buffer and two Adam moments are ~0.55 GB on one rank, several times the process's own baseline.
MODEL_OVERRIDES = (
    "model.num_layers=4", "model.hidden_size=512", "model.ffn_hidden_size=2048", "model.num_attention_heads=8",
    "model.num_query_groups=4", "model.vocab_size=8000", "model.tie_word_embeddings=false",
)


def _build(layout: dict, model_overrides=MODEL_OVERRIDES):
    from r1mega.config import load_config
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed
    from r1mega.training.megatron_step import wrap_with_ddp
    from r1mega.training.optimizer import OptimizerConfig, build_optimizer

    cfg = load_config("examples/configs/tiny.yaml", ["data.max_prompt_tokens=128", *model_overrides])
    pcfg = ParallelConfig(**layout)
    init_distributed(pcfg, seed=SEED)
    chunks = wrap_with_ddp(build_model(cfg.model, pcfg), pcfg)
    optimizer = build_optimizer(OptimizerConfig(lr=1e-3), chunks, pcfg)
    return cfg.model, chunks, optimizer


def _moment_sums(optimizer) -> list[float]:
    inner = optimizer.chained_optimizers[0].optimizer
    return [float(v.double().sum()) for s in inner.state.values() for k, v in sorted(s.items()) if k != "step"]


def save_and_load(out_dir: str, layout: dict) -> dict:
    import logging, os
    if os.environ.get("R1MEGA_DEBUG_IO"):
        logging.basicConfig(level=logging.INFO)
    """Save then load under the meter; the weights after the load equal those saved."""
    from r1mega.parallel.distributed import destroy_distributed
    from r1mega.training import checkpoint as ckpt
    from r1mega.training.checkpoint_memory import training_state_bytes

    model_cfg, chunks, optimizer = _build(layout)
    ckpt._ensure_adam_state(optimizer)  # the moments exist before the meter starts, as after a step
    for s in optimizer.chained_optimizers[0].optimizer.state.values():
        s["exp_avg"].normal_()
        s["exp_avg_sq"].uniform_()
    state = training_state_bytes(chunks, optimizer)
    gc.collect()
    path = ckpt.save_checkpoint(Path(out_dir) / "ckpt", 3, chunks, optimizer, model_config=model_cfg)
    save = ckpt.last_io_stats()
    sums = [float(p.detach().double().sum()) for c in chunks for p in c.parameters()]
    moments = _moment_sums(optimizer)
    with torch.no_grad():
        for c in chunks:
            for p in c.parameters():
                p.zero_()
    gc.collect()
    loaded = ckpt.load_checkpoint(path, chunks, optimizer, model_config=model_cfg)
    load = ckpt.last_io_stats()
    same = sums == [float(p.detach().double().sum()) for c in chunks for p in c.parameters()]
    same = same and moments == _moment_sums(optimizer)
    destroy_distributed()
    return {"state_bytes": state, "save": dataclasses.asdict(save), "load": dataclasses.asdict(load),
            "step": loaded.step, "weights_back": same}


def meter_sees_a_copy(out_dir: str) -> dict:
    """The negative control: a full copy of the state made inside the meter is seen."""
    from r1mega.parallel.distributed import destroy_distributed
    from r1mega.training import checkpoint as ckpt
    from r1mega.training.checkpoint_memory import training_state_bytes
    from r1mega.training.host_memory import HostMemoryMeter

    _, chunks, optimizer = _build({})
    ckpt._ensure_adam_state(optimizer)
    state = training_state_bytes(chunks, optimizer)
    tensors = [p for c in chunks for p in c.parameters()] + [
        v for s in optimizer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1
    ]
    copied = sum(t.numel() * t.element_size() for t in tensors)
    with HostMemoryMeter() as meter:
        copy = [t.detach().clone() for t in tensors]
        del copy
    destroy_distributed()
    return {"state_bytes": state, "copied_bytes": copied, "peak_extra_bytes": meter.peak_extra_bytes}
