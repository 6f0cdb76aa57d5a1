"""`sample` stages: n responses per prompt from a stage's checkpoint, on the rollout engine.

Output: runs/<recipe>/<stage>/samples.jsonl, one line per response, in (prompt, sample) order:

    prompt_id     the prompt's source (procedural:task:split:index or file:line)
    sample_index  0..n-1
    prompt        the question (no template); `reference` holds answer, task, metadata, source
    response      the generated text; `finish_reason`, `response_tokens`
    checkpoint    the checkpoint it was sampled from; `stage`: this stage's name

Resumable: prompts are generated `prompts_per_chunk` at a time and appended to samples.partial.jsonl
(flushed and fsynced per chunk); a rerun keeps the complete chunks and goes on from there. Every
sample draws from its own stream seeded by (sample.seed, prompt * n + i), and chunks are the same in
every run, so a resumed stage writes the same file as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1mega.config import Config
from r1mega.recipe.config import SampleConfig

__all__ = ["run_sample"]

PARTIAL = "samples.partial.jsonl"


def _complete_prompts(partial: Path, n: int, chunk: int, total: int) -> int:
    """Prompts fully written in whole chunks; a torn last line or chunk is cut off."""
    if not partial.is_file():
        return 0
    lines = partial.read_bytes().split(b"\n")
    good = []
    for line in lines:
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError:
            break
        good.append(line)
    written = len(good) // n
    keep_prompts = total if written >= total else written // chunk * chunk
    keep = good[: keep_prompts * n]
    partial.write_bytes(b"".join(line + b"\n" for line in keep))
    return keep_prompts


def run_sample(cfg: Config, sc: SampleConfig, checkpoint: Path, stage: str, out_dir: Path) -> Path:
    """Sample, write `out_dir/samples.jsonl` (renamed from the partial file when complete)."""
    from r1mega.data.prompts import load_prompt_dataset
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.recipe.hf import export_for_engine
    from r1mega.rollout.engines import make_engine
    from r1mega.rollout.types import SamplingParams

    tokenizer = load_tokenizer(cfg.data.tokenizer)
    prompts = load_prompt_dataset(cfg.data, sc.split, tokenizer)
    examples = list(prompts)[: sc.max_prompts] if sc.max_prompts else list(prompts)
    if not examples:
        raise ValueError(f"{stage}: no prompts in the {sc.split} split of the stage's data section")
    partial = out_dir / PARTIAL
    done = _complete_prompts(partial, sc.n, sc.prompts_per_chunk, len(examples))
    if done >= len(examples):
        os.replace(partial, out_dir / "samples.jsonl")
        return out_dir / "samples.jsonl"
    hf_dir = export_for_engine(checkpoint, out_dir / "hf_model")
    engine = make_engine(cfg.rollout, str(hf_dir), tokenizer=tokenizer, seed=sc.seed)
    print(f"{stage}: sampling {sc.n} responses for each of {len(examples)} prompts from {checkpoint}"
          + (f" (resuming after {done} prompts)" if done else ""), flush=True)
    with open(partial, "a", encoding="utf-8") as f:
        for start in range(done, len(examples), sc.prompts_per_chunk):
            chunk = examples[start:start + sc.prompts_per_chunk]
            ids = [ex.prompt_token_ids for ex in chunk for _ in range(sc.n)]
            params = SamplingParams(max_new_tokens=sc.max_new_tokens, temperature=sc.temperature, top_p=sc.top_p,
                                    stop=list(cfg.rollout.stop), stop_token_ids=list(cfg.rollout.stop_token_ids),
                                    seed=sc.seed, first_sample_index=start * sc.n)
            outs = engine.generate(ids, params)
            for j, out in enumerate(outs):
                ex = chunk[j // sc.n]
                row = {
                    "prompt_id": ex.reference["source"], "sample_index": j % sc.n, "prompt": ex.reference["prompt"],
                    "response": out.response_text, "finish_reason": out.finish_reason,
                    "response_tokens": out.response_length, "reference": ex.reference, "task": ex.reference["task"],
                    "checkpoint": str(checkpoint), "stage": stage,
                }
                f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    os.replace(partial, out_dir / "samples.jsonl")
    return out_dir / "samples.jsonl"
