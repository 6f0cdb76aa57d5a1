"""Rank functions of the eval tests (spawned processes import them by module path)."""

from __future__ import annotations

import json
from pathlib import Path

SEED = 11
ROWS = [
    {"prompt": "Calculate 1+7+2", "answer": "10", "task": "arithmetic"},
    {"prompt": "Calculate 4+4+9", "answer": "17", "task": "arithmetic"},
    {"prompt": "Calculate 3+5+6", "answer": "14", "task": "arithmetic"},
    {"prompt": "Reach 22 with 3 8 2", "answer": "22", "task": "countdown", "metadata": {"numbers": [3, 8, 2]}},
]


def save_both_ways_and_evaluate(out_dir: str) -> dict:
    """One process: a randomly initialised tiny model saved as a training checkpoint (step 3) and as
    an HF export, then `run_eval` on each with the same seed; both reports and sample files."""
    from megatron.core import parallel_state

    from r1mega.config import load_config
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.eval.runner import run_eval
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.checkpoint import save_checkpoint
    from r1mega.training.hf_export import write_hf_export
    from tests import parallel_equivalence as pe

    out = Path(out_dir)
    cfg = load_config("examples/configs/tiny.yaml", [
        f"run.output_dir={out}", "run.name=run", "eval.samples_per_prompt=3", "eval.pass_k=[2]",
        "eval.max_new_tokens=12", f"eval.seed={SEED}", "rollout.max_batch_size=5",
    ])
    data = out / "heldout.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    init_distributed(ParallelConfig(), seed=SEED)
    (model,) = build_model(cfg.model, ParallelConfig())
    pe.randomize_(model, SEED)
    save_checkpoint(cfg.run.run_dir / "checkpoints", 3, [model], model_config=cfg.model)
    write_hf_export([model], cfg.model, load_tokenizer(cfg.data.tokenizer), out / "hf")
    del model
    parallel_state.destroy_model_parallel()
    destroy_distributed()

    result = {}
    for kind, model_dir in (("megatron", cfg.run.run_dir), ("hf", out / "hf")):
        report = run_eval(cfg.eval, model_dir, [data], out / f"eval_{kind}", run_config=cfg)
        samples = (out / f"eval_{kind}" / "samples.jsonl").read_text(encoding="utf-8")
        result[kind] = {"report": report, "samples": samples}
    return result
