"""Rank functions of the HF-export tests (spawned processes import them by module path)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

SEED = 5
# vocab 520 is not a multiple of the padding (64 per TP rank): the export must drop the padded rows
OVERRIDES = [
    "model.vocab_size=520",
    "data.procedural.train_size=64",
    "data.procedural.test_size=8",
    "sft.steps=2",
    "optimizer.lr_warmup_steps=1",
    "sft.global_batch_size=8",
    "sft.micro_batch_size=8",
    "sft.eval_every=0",
    "sft.accuracy_every=0",
    "checkpoint.save_every=0",
    "logging.tensorboard=false",
    "logging.print_every=0",
    "pretrain.export_hf=true",
]
BUCKET_BYTES = 64 * 1024  # several buckets for the tiny model
MAX_SHARD_BYTES = 512 * 1024  # several safetensors files and an index


def pretrain_config(out_dir: str):
    from r1mega.config import load_config

    return load_config("examples/configs/tiny_pretrain.yaml", [*OVERRIDES, f"run.output_dir={out_dir}"])


def pretrain_and_export(out_dir: str, tokens: torch.Tensor) -> dict:
    """One process: the `r1mega pretrain` job body (2 steps, HF export at the end), then the saved
    final checkpoint loaded into a fresh megatron model for its logits on `tokens`."""
    from megatron.core import parallel_state

    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.checkpoint import load_model_weights
    from r1mega.training.sft_job import run_supervised
    from tests._convert_fns import _forward_logits

    cfg = pretrain_config(out_dir)
    result = run_supervised(cfg, "pretrain")
    assert result.step == 2 and not result.preempted

    init_distributed(ParallelConfig(), seed=SEED)
    chunks = build_model(cfg.model, ParallelConfig())
    load_model_weights(result.checkpoint, chunks, model_config=cfg.model)
    logits = _forward_logits(chunks, tokens, cfg.model.vocab_size)
    parallel_state.destroy_model_parallel()
    destroy_distributed()
    return {"hf_dir": str(cfg.run.run_dir / "hf"), "logits": logits, "checkpoint": str(result.checkpoint)}


def export_reference(out_dir: str) -> str:
    """One process: random weights (norms and biases included) exported with `write_hf_export`."""
    from megatron.core import parallel_state

    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.hf_export import write_hf_export
    from tests import parallel_equivalence as pe

    cfg = pretrain_config(out_dir)
    init_distributed(ParallelConfig(), seed=SEED)
    (model,) = build_model(cfg.model, ParallelConfig())
    pe.randomize_(model, SEED)
    path = write_hf_export([model], cfg.model, load_tokenizer(cfg.data.tokenizer), Path(out_dir) / "single")
    parallel_state.destroy_model_parallel()
    destroy_distributed()
    return str(path)


def export_sharded(out_dir: str, source: str, layouts: list[dict]) -> list[str]:
    """Per layout (ParallelConfig fields): the HF checkpoint `source` loaded into the sharded model
    (each rank its own shards, vocabulary padded for that layout), then `write_hf_export` of the
    sharded model into out_dir/layout<i> with small buckets and shards."""
    from megatron.core import parallel_state

    from r1mega.convert import load_hf_into_model
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.hf_export import write_hf_export

    cfg = pretrain_config(out_dir)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    written = []
    for i, layout in enumerate(layouts):
        pcfg = dataclasses.replace(ParallelConfig(), **layout)
        init_distributed(pcfg, seed=SEED)
        chunks = build_model(cfg.model, pcfg)
        with torch.no_grad():  # NaN everywhere first: a tensor the load misses would show
            for c in chunks:
                for p in c.parameters():
                    p.fill_(float("nan"))
        load_hf_into_model(chunks, source, model_cfg=cfg.model)
        path = write_hf_export(
            chunks, cfg.model, tokenizer, Path(out_dir) / f"layout{i}",
            bucket_bytes=BUCKET_BYTES, max_shard_bytes=MAX_SHARD_BYTES,
        )
        written.append(str(path))
        parallel_state.destroy_model_parallel()
    destroy_distributed()
    return written


def random_export_and_evaluate(out_dir: str) -> dict:
    """One process: the tiny default's model (vocabulary = the tiny tokenizer's 512) with random
    weights, exported with `write_hf_export`, and r1mega's own greedy evaluation of the same model on
    the held-out prompts (greedy_generate + score_completions, as the trainer's evaluate_accuracy
    runs them), whose completions go to a jsonl file."""
    from megatron.core import parallel_state

    from r1mega.config import load_config
    from r1mega.data.prompts import load_prompt_dataset
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.eval_accuracy import score_completions
    from r1mega.training.greedy import greedy_generate
    from r1mega.training.hf_export import write_hf_export
    from tests import parallel_equivalence as pe

    # 24 new tokens: enough for completions that differ, short enough for a test of seconds
    overrides = [o for o in OVERRIDES if not o.startswith("model.vocab_size=")] + ["sft.max_new_tokens=24"]
    cfg = load_config("examples/configs/tiny_pretrain.yaml", [*overrides, f"run.output_dir={out_dir}"])
    init_distributed(ParallelConfig(), seed=SEED)
    (model,) = build_model(cfg.model, ParallelConfig())
    pe.randomize_(model, SEED + 1)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    path = write_hf_export([model], cfg.model, tokenizer, Path(out_dir) / "random_hf")
    prompts = load_prompt_dataset(cfg.data, "test", tokenizer).examples
    outputs = greedy_generate(
        [model],
        [ex.prompt_token_ids for ex in prompts],
        max_new_tokens=cfg.sft.max_new_tokens,
        eos_token_ids=[tokenizer.eos_token_id],
        vocab_size=cfg.model.vocab_size,
        max_length=cfg.model.max_position_embeddings,
    )
    samples = Path(out_dir) / "eval_samples.jsonl"
    score_completions(prompts, outputs, tokenizer, cfg.rewards, samples_path=samples)
    parallel_state.destroy_model_parallel()
    destroy_distributed()
    return {"hf_dir": str(path), "samples": str(samples), "max_new_tokens": cfg.sft.max_new_tokens}
