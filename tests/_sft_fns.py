"""Rank functions for the supervised-trainer tests (run under run_distributed)."""

from __future__ import annotations

from typing import Optional

import torch

TINY = "examples/configs/tiny.yaml"


def sft_config(out_dir: str, overrides: Optional[list[str]] = None):
    """A small, fast SFT job: arithmetic worked solutions with the raw template (~30 tokens each)."""
    from r1mega.config import load_config

    return load_config(
        TINY,
        [
            "data.template=raw",
            "data.procedural.task=arithmetic",
            "data.procedural.arithmetic.max_digits=2",
            "data.procedural.arithmetic.operators=[+, -]",
            "data.procedural.train_size=96",
            "data.procedural.test_size=16",
            "sft.steps=3",
            "sft.global_batch_size=8",
            "sft.micro_batch_size=4",
            "sft.eval_every=0",
            "sft.eval_samples=16",
            "optimizer.lr=1e-3",
            "optimizer.clip_grad=1.0",
            f"run.output_dir={out_dir}",
            "logging.tensorboard=false",
            "logging.print_every=0",
            *(overrides or []),
        ],
    )


def _reference_weights(model_cfg, seed: int) -> dict[str, torch.Tensor]:
    """Fresh random single-process weights (norms and biases included), same on every rank."""
    from megatron.core import parallel_state

    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed
    from tests import parallel_equivalence as pe

    init_distributed(ParallelConfig(), seed=seed)
    (ref,) = build_model(model_cfg, ParallelConfig())
    pe.randomize_(ref, seed)
    weights = {n: p.detach().clone() for n, p in ref.named_parameters()}
    parallel_state.destroy_model_parallel()
    return weights


def train_layouts(out_dir: str, layouts: list[dict], overrides: Optional[list[str]] = None, seed: int = 11) -> list[dict]:
    """For each layout (ParallelConfig fields): the same random start weights, train `sft.steps`
    steps, then the held-out loss. Returns per-layout losses plus each DP rank's local token sums."""
    import dataclasses

    from megatron.core import parallel_state

    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.sft import SupervisedTrainer
    from r1mega.training.sft_job import load_datasets
    from tests import parallel_equivalence as pe

    base = sft_config(out_dir, overrides)
    reference = _reference_weights(base.model, seed)
    tokenizer = load_tokenizer(base.data.tokenizer)
    out = []
    for i, layout in enumerate(layouts):
        cfg = dataclasses.replace(base, parallel=ParallelConfig(**layout))
        cfg.run = dataclasses.replace(cfg.run, name=f"layout{i}")
        init_distributed(cfg.parallel, seed=seed)
        train, held_out, _ = load_datasets(cfg, "sft", tokenizer)
        trainer = SupervisedTrainer(cfg, train, held_out, tokenizer=tokenizer)
        trainer.build(init_fn=lambda chunks: pe.load_sharded_(chunks, reference))
        local: list[tuple[float, float]] = []
        shapes: list[list[list[int]]] = []  # per training step: [b, s] of each microbatch
        run = trainer._run

        def recording_run(microbatches, forward_only):
            result = run(microbatches, forward_only)
            if not forward_only:
                local.append(result)
                shapes.append([list(mb["tokens"].shape) for mb in microbatches])
            return result

        trainer._run = recording_run
        losses, grad_norms = [], []
        while trainer.step < trainer.total_steps:
            metrics = trainer.train_step()
            trainer.step += 1
            losses.append(metrics["loss"] if trainer.is_last_stage else None)
            grad_norms.append(metrics["grad_norm"])
        held_out = trainer.evaluate_loss()  # a collective: every rank runs it
        eval_loss = held_out["eval/loss"] if trainer.is_last_stage else None
        out.append(
            {
                "layout": layout,
                "losses": losses,
                "grad_norms": grad_norms,
                "shapes": shapes,
                "eval_loss": eval_loss,
                "local": local if trainer.is_last_stage else None,
                "dp_rank": parallel_state.get_data_parallel_rank(),
            }
        )
        parallel_state.destroy_model_parallel()
    destroy_distributed()
    return out


def loss_curve(out_dir: str, steps: int, overrides: Optional[list[str]] = None) -> dict:
    """Train the embedded default model from megatron's own init through the full job path."""
    from r1mega.training.logging import read_metrics
    from r1mega.training.sft_job import run_supervised

    cfg = sft_config(out_dir, [f"sft.steps={steps}", "sft.eval_every=0", *(overrides or [])])
    result = run_supervised(cfg, "sft")
    return {"rows": read_metrics(cfg.run.run_dir / "metrics.jsonl"), "step": result.step, "checkpoint": str(result.checkpoint)}
