"""Rank functions and a saver process for the checkpoint tests."""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from pathlib import Path

import torch

from tests._sft_fns import _reference_weights, sft_config

SEED = 21
STEPS_BEFORE = 2
STEPS_AFTER = 2


def _trainer(cfg, reference=None):
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.parallel.distributed import init_distributed
    from r1mega.training.sft import SupervisedTrainer
    from r1mega.training.sft_job import load_datasets
    from tests import parallel_equivalence as pe

    init_distributed(cfg.parallel, seed=SEED)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    train, held_out, _ = load_datasets(cfg, "sft", tokenizer)
    trainer = SupervisedTrainer(cfg, train, held_out, tokenizer=tokenizer)
    trainer.build(init_fn=None if reference is None else (lambda chunks: pe.load_sharded_(chunks, reference)))
    return trainer


def _steps(trainer, n: int) -> list[tuple]:
    """n training steps: (loss, lr) each, loss only on the last pipeline stage."""
    out = []
    for _ in range(n):
        m = trainer.train_step()
        trainer.step += 1
        out.append((m["loss"] if trainer.is_last_stage else None, m["lr"]))
    return out


def _config(out_dir: str, layout: dict):
    from r1mega.parallel.config import ParallelConfig

    cfg = sft_config(out_dir, [f"sft.steps={STEPS_BEFORE + STEPS_AFTER}", "optimizer.lr_warmup_steps=1", "optimizer.lr_decay_style=cosine"])
    return dataclasses.replace(cfg, parallel=ParallelConfig(**layout))


def save_then_continue(out_dir: str, layouts: list[dict]) -> list[dict]:
    """Per layout: the same start weights, STEPS_BEFORE steps, a checkpoint, STEPS_AFTER more steps."""
    from megatron.core import parallel_state

    from r1mega.parallel.distributed import destroy_distributed
    from r1mega.training.checkpoint import save_checkpoint

    reference = _reference_weights(_config(out_dir, {}).model, SEED)
    results = []
    for i, layout in enumerate(layouts):
        cfg = _config(out_dir, layout)
        trainer = _trainer(cfg, reference)
        before = _steps(trainer, STEPS_BEFORE)
        path = save_checkpoint(
            Path(out_dir) / f"ckpt{i}",
            trainer.step,
            trainer.model,
            trainer.optimizer,
            trainer.scheduler,
            {"sampler": trainer.sampler.state_dict()},
            model_config=cfg.model,
        )
        after = _steps(trainer, STEPS_AFTER)
        results.append({"layout": layout, "before": before, "after": after, "path": str(path)})
        parallel_state.destroy_model_parallel()
    destroy_distributed()
    return results


def uninterrupted_and_resumed(out_dir: str, paths: list[str]) -> dict:
    """One process: the uninterrupted run from the same start weights, then a fresh model (megatron's
    own random init) resumed from each checkpoint and trained to the end."""
    from megatron.core import parallel_state

    from r1mega.parallel.distributed import destroy_distributed
    from r1mega.training.checkpoint import load_checkpoint

    cfg = _config(out_dir, {})
    reference = _reference_weights(cfg.model, SEED)
    trainer = _trainer(cfg, reference)
    uninterrupted = _steps(trainer, STEPS_BEFORE + STEPS_AFTER)
    parallel_state.destroy_model_parallel()
    resumed = []
    for path in paths:
        trainer = _trainer(cfg)
        loaded = load_checkpoint(path, trainer.model, trainer.optimizer, trainer.scheduler, model_config=cfg.model)
        trainer.step = loaded.step
        trainer.sampler.load_state_dict(loaded.extra_state["sampler"])
        resumed.append({"step": loaded.step, "after": _steps(trainer, STEPS_AFTER), "rng_restored": loaded.rng_restored})
        parallel_state.destroy_model_parallel()
    destroy_distributed()
    return {"uninterrupted": uninterrupted, "resumed": resumed}


# ------------------------------------------------------------------------------------------------
# bad inputs (one process)
# ------------------------------------------------------------------------------------------------


def _model(model_overrides=()):
    from r1mega.config import load_config
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed
    from r1mega.training.megatron_step import wrap_with_ddp
    from r1mega.training.optimizer import OptimizerConfig, build_optimizer

    cfg = load_config("examples/configs/tiny.yaml", ["model=models/tiny_llama.yaml", "data.max_prompt_tokens=128", *model_overrides])
    pcfg = ParallelConfig()
    init_distributed(pcfg, seed=SEED)
    chunks = wrap_with_ddp(build_model(cfg.model, pcfg), pcfg)
    return cfg.model, chunks, build_optimizer(OptimizerConfig(lr=1e-3), chunks, pcfg)


def _snapshot(path: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime) for p in sorted(path.rglob("*"))}


def bad_inputs(out_dir: str) -> dict:
    """Each damaged or mismatched checkpoint, and each failing save: the error message, and whether
    the directories were left as they were."""
    import shutil

    from megatron.core import dist_checkpointing, parallel_state

    from r1mega.parallel.distributed import destroy_distributed
    from r1mega.training import checkpoint as ckpt

    root = Path(out_dir) / "bad"
    model_cfg, chunks, optimizer = _model()
    good = ckpt.save_checkpoint(root, 5, chunks, optimizer, None, {"k": 1}, model_config=model_cfg)
    no_optim = ckpt.save_checkpoint(Path(out_dir) / "no_optim", 5, chunks, None, None, {}, model_config=model_cfg)

    def damaged(name: str) -> Path:
        copy = Path(out_dir) / name / good.name
        shutil.copytree(good, copy)
        return copy

    errors: dict[str, str] = {}
    unchanged: dict[str, bool] = {}

    def attempt(label: str, path: Path, model=None, **kwargs) -> None:
        before = _snapshot(path)
        m_cfg, m_chunks, m_opt = model or (model_cfg, chunks, optimizer)
        try:
            ckpt.load_checkpoint(path, m_chunks, m_opt, None, model_config=m_cfg, **kwargs)
            errors[label] = ""
        except ckpt.CheckpointError as e:
            errors[label] = str(e)
        unchanged[label] = _snapshot(path) == before

    shard = damaged("missing_shard")
    next(shard.glob("*.distcp")).unlink()
    attempt("missing shard", shard)

    truncated = damaged("truncated")
    victim = max(truncated.glob("*.distcp"), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    attempt("truncated file", truncated)

    common = damaged("no_common")
    (common / "common.pt").unlink()
    attempt("missing common.pt", common)

    attempt("no optimizer state", no_optim)
    incomplete = Path(out_dir) / "incomplete" / "iter_0000005.incomplete"
    shutil.copytree(good, incomplete)
    attempt("incomplete directory", incomplete)

    # an object in the RNG shard that would run code when unpickled: refused, and it never runs
    real_rng_state = ckpt._rng_state
    marker = Path(out_dir) / "code_ran"
    ckpt._rng_state = lambda: {**real_rng_state(), "python": OpensAFile(str(marker))}
    try:
        poisoned = ckpt.save_checkpoint(Path(out_dir) / "poisoned", 5, chunks, optimizer, None, {}, model_config=model_cfg)
    finally:
        ckpt._rng_state = real_rng_state
    attempt("pickled object", poisoned)
    code_ran = marker.exists()

    parallel_state.destroy_model_parallel()
    wider = _model(["model.ffn_hidden_size=96"])
    attempt("wrong shape", good, wider)
    parallel_state.destroy_model_parallel()
    other = _model(["model.rope_theta=10000.0"])
    attempt("mismatched config", good, other)
    parallel_state.destroy_model_parallel()

    # a checkpoint without the model-config record (another tool wrote it): megatron's shape check
    foreign = damaged("foreign")
    info = ckpt.read_checkpoint_info(foreign)
    info["model_config"] = None
    (foreign / ckpt.INFO_FILE).write_text(__import__("json").dumps(info))
    wider = _model(["model.ffn_hidden_size=96"])
    attempt("wrong shape, no config record", foreign, wider)
    parallel_state.destroy_model_parallel()

    # failing saves leave no checkpoint, no .incomplete directory, and `latest` as it was
    model_cfg, chunks, optimizer = _model()
    latest_before = (root / "latest").read_text()
    listing_before = sorted(p.name for p in root.iterdir())
    save_errors = {}
    try:
        ckpt.save_checkpoint(root, 6, chunks, optimizer, None, {"fn": lambda: 0}, model_config=model_cfg)
    except ckpt.CheckpointError as e:
        save_errors["unpicklable extra_state"] = str(e)
    try:
        ckpt.save_checkpoint(root, 6, chunks, optimizer, None, {"started": datetime.date(2026, 1, 1)}, model_config=model_cfg)
    except ckpt.CheckpointError as e:
        save_errors["not weights-only loadable extra_state"] = str(e)
    real_save = dist_checkpointing.save

    def failing_save(state, directory, *args, **kwargs):
        real_save(state, directory, *args, **kwargs)  # every file written ...
        raise OSError(28, "No space left on device")  # ... then the disk fills up

    dist_checkpointing.save = failing_save
    try:
        ckpt.save_checkpoint(root, 7, chunks, optimizer, None, {}, model_config=model_cfg)
    except OSError as e:
        save_errors["disk full"] = str(e)
    finally:
        dist_checkpointing.save = real_save
    after = {
        "latest_unchanged": (root / "latest").read_text() == latest_before,
        "listing_unchanged": sorted(p.name for p in root.iterdir()) == listing_before,
        "still_loads": ckpt.load_checkpoint(good, chunks, optimizer, None, model_config=model_cfg).step,
    }
    destroy_distributed()
    return {"errors": errors, "unchanged": unchanged, "save_errors": save_errors, "after": after, "code_ran": code_ran}


class OpensAFile:
    """Unpickling this creates `path`: proof that a loader ran code from the checkpoint."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


# ------------------------------------------------------------------------------------------------
# the saver process killed during a save (python -m tests._checkpoint_fns ROOT)
# ------------------------------------------------------------------------------------------------


def deterministic_weights_(chunks, step: int) -> None:
    """Every parameter a function of `step` alone, so a loaded checkpoint tells which step it is."""
    gen = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for chunk in chunks:
            for _, p in sorted(chunk.named_parameters()):
                p.copy_(torch.randn(p.shape, generator=gen))


def saver_main(root: str) -> None:
    """Save steps 1, 2, 3, ... forever (each with its own weights); print each completed step."""
    from r1mega.training.checkpoint import save_checkpoint

    model_cfg, chunks, optimizer = _model()
    step = 0
    while True:
        step += 1
        deterministic_weights_(chunks, step)
        save_checkpoint(root, step, chunks, optimizer, None, {"step": step}, model_config=model_cfg, keep_last=2)
        print(f"saved {step}", flush=True)


def check_latest(root: str) -> dict:
    """Rank function: load the latest complete checkpoint and compare it with the weights of its step."""
    from r1mega.parallel.distributed import destroy_distributed
    from r1mega.training.checkpoint import find_latest_checkpoint, load_checkpoint

    model_cfg, chunks, optimizer = _model()
    latest = find_latest_checkpoint(root)
    loaded = load_checkpoint(latest, chunks, optimizer, None, model_config=model_cfg)
    got = {n: p.detach().clone() for n, p in chunks[0].named_parameters()}
    deterministic_weights_(chunks, loaded.step)
    want = {n: p.detach().clone() for n, p in chunks[0].named_parameters()}
    destroy_distributed()
    return {
        "path": str(latest),
        "step": loaded.step,
        "extra": loaded.extra_state,
        "equal": all(torch.equal(got[n], want[n]) for n in want),
    }


if __name__ == "__main__":  # the spawn-context Manager of torch_dist saves re-imports __main__
    sys.path.insert(0, os.getcwd())
    saver_main(sys.argv[1])
