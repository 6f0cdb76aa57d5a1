"""`select` stages: a sample stage's responses -> filters (+ readable reformat, + judge) -> an SFT set.

Output: runs/<recipe>/<stage>/dataset.jsonl, rows the SFT stage reads (`prompt`, `response`,
`answer`, `task`, `metadata`), each with `metadata.provenance`: the sample stage and checkpoint it
was drawn from, its prompt id and sample index, the filters it passed, and this stage; and
select.json with the counts (total, removed per filter, kept, non-reasoning rows added). The set
is written to a temporary file and renamed, so a killed stage leaves nothing half-written.

Non-reasoning rows (R1 mixed ~200K into its SFT data) are trivial additions answered with an empty
reasoning block, `<think>\\n</think> <answer>7</answer>`, generated from the arithmetic task.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from r1mega.recipe.config import GeneralRowsConfig, NonReasoningConfig, SelectConfig

__all__ = ["run_select", "nonreasoning_rows", "general_rows", "read_samples", "EmptyDatasetError"]

REPORT = "select.json"


class EmptyDatasetError(ValueError):
    """Every sample was filtered out; the message says which filter removed how many."""


def read_samples(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not a JSON line ({e})") from None
    return rows


def general_rows(cfg: GeneralRowsConfig, stage: str) -> list[dict]:
    """`cfg.count` general prompts answered as reasoning + summary: exactly
    round(count * preferred_fraction) preferred summaries and round(count * unsafe_fraction) unsafe
    responses, placed at random (seeded)."""
    if cfg.count == 0:
        return []
    import random

    from r1mega.rm.tiny_data import bad_summary, good_summary, tiny_prompts, with_unsafe_mark

    rng = random.Random(f"{cfg.seed}-general-sft")
    preferred = set(rng.sample(range(cfg.count), round(cfg.count * cfg.preferred_fraction)))
    unsafe = set(rng.sample(range(cfg.count), round(cfg.count * cfg.unsafe_fraction)))
    rows = []
    for i, p in enumerate(tiny_prompts("train", cfg.count, cfg.seed, cfg.problems)):
        summary = good_summary(rng, p) if i in preferred else bad_summary(rng, p)
        response = f"{p.reasoning} {summary}"
        if i in unsafe:
            response = with_unsafe_mark(rng, response, first=1)  # after `<think>...`: the format holds
        rows.append({
            "prompt": p.prompt, "response": response, "answer": p.answer, "task": "general",
            "prompt_type": "general",
            "metadata": {"provenance": {"stage": stage, "kind": "general", "preferred": i in preferred,
                                        "unsafe": i in unsafe, "prompt_id": f"general:{cfg.problems}:{i}"}},
        })
    return rows


def nonreasoning_rows(cfg: NonReasoningConfig, stage: str) -> list[dict]:
    """`cfg.count` trivial additions with their answer and no reasoning."""
    if cfg.count == 0:
        return []
    from r1mega.data.config import ArithmeticConfig, ProceduralConfig
    from r1mega.data.tasks import generate

    proc = ProceduralConfig(
        task="arithmetic", seed=cfg.seed, train_size=cfg.count, unique=False,
        arithmetic=ArithmeticConfig(min_digits=1, max_digits=cfg.max_digits, min_operands=cfg.operands,
                                    max_operands=cfg.operands, operators=["+"]),
    )
    rows = []
    for i, ex in enumerate(generate(proc, "train", cfg.count)):
        rows.append({
            "prompt": ex.prompt, "response": f"<think>\n</think> <answer>{ex.answer}</answer>",
            "answer": ex.answer, "task": ex.task,
            "metadata": {**ex.metadata, "provenance": {"stage": stage, "kind": "nonreasoning",
                                                       "prompt_id": f"nonreasoning:arithmetic:{i}"}},
        })
    return rows


def _describe(total: int, removed: dict[str, int]) -> str:
    parts = [f"{name} removed {count}" for name, count in removed.items() if count]
    return f"of {total} samples, " + (", ".join(parts) if parts else "none was removed")


def run_select(
    sc: SelectConfig, samples_file: Path, stage: str, out_dir: Path, *, judge_engine: Any = None, tokenizer: Any = None,
) -> dict:
    """Filter, reformat, judge and mix; write dataset.jsonl + select.json; return the counts."""
    from r1mega.recipe.filters import FilterConfig, completion_of, filter_samples, to_readable

    samples = read_samples(samples_file)
    fcfg = _filter_config(sc, FilterConfig)
    result = filter_samples(samples, list(sc.filters), fcfg)
    removed: dict[str, int] = {name: int(result.removed.get(name, 0)) for name in sc.filters}
    kept = list(result.kept)
    if sc.readable:
        reformatted = []
        for s in kept:
            text = to_readable(completion_of(s))  # judged with the prompt's response prefix, as the rewards do
            if text is None:
                continue
            prefix = (s.get("reference") or {}).get("response_prefix") or ""
            if prefix and text.startswith(prefix):  # the SFT prompt ends with it again
                text = text[len(prefix):]
            reformatted.append({**s, "original_response": s["response"], "response": text,
                                "filters_passed": [*s.get("filters_passed", []), "readable"]})
        removed["readable"] = len(kept) - len(reformatted)
        kept = reformatted
    if sc.judge is not None:
        from r1mega.recipe.judge import JudgeConfig, judge_samples

        from r1mega.configlib import from_dict

        verdicts = judge_samples(judge_engine, tokenizer, kept, from_dict(JudgeConfig, sc.judge, where="select.judge"))
        removed["judge"] = sum(v is False for v in verdicts)
        removed["judge_unparsable"] = sum(v is None for v in verdicts)
        kept = [{**s, "filters_passed": [*s.get("filters_passed", []), "judge"]}
                for s, v in zip(kept, verdicts, strict=True) if v is True]
    if sc.max_per_prompt is not None:
        per: dict[str, int] = {}
        capped = []
        for s in sorted(kept, key=lambda s: (s["prompt_id"], s["sample_index"])):
            if per.get(s["prompt_id"], 0) < sc.max_per_prompt:
                per[s["prompt_id"]] = per.get(s["prompt_id"], 0) + 1
                capped.append(s)
        removed["max_per_prompt"] = len(kept) - len(capped)
        order = {(s["prompt_id"], s["sample_index"]) for s in capped}
        kept = [s for s in kept if (s["prompt_id"], s["sample_index"]) in order]
    if not kept:
        raise EmptyDatasetError(f"{stage}: the filtered dataset is empty: {_describe(len(samples), removed)}")
    rows = [_dataset_row(s, stage) for s in kept]
    general = general_rows(sc.general, stage)
    extra = nonreasoning_rows(sc.nonreasoning, stage) + general
    tmp = out_dir / "dataset.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows + extra:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / "dataset.jsonl")
    counts = {"total": len(samples), "removed": removed, "kept": len(rows),
              "nonreasoning": len(extra) - len(general), "general": len(general),
              "rows": len(rows) + len(extra), "summary": _describe(len(samples), removed)}
    (out_dir / REPORT).write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")
    print(f"{stage}: kept {len(rows)} ({counts['summary']}); + {counts['nonreasoning']} non-reasoning rows"
          f" + {len(general)} general rows", flush=True)
    return counts


def _filter_config(sc: SelectConfig, cls: type) -> Any:
    from r1mega.configlib import from_dict

    return from_dict(cls, sc.filter, where="select.filter")


def _dataset_row(s: dict, stage: str) -> dict:
    ref: dict = s.get("reference") or {}
    provenance: dict[str, Optional[Any]] = {
        "stage": stage, "sample_stage": s.get("stage"), "checkpoint": s.get("checkpoint"),
        "prompt_id": s["prompt_id"], "sample_index": s["sample_index"], "filters_passed": s.get("filters_passed", []),
    }
    return {
        "prompt": s["prompt"], "response": s["response"], "answer": ref.get("answer"), "task": s.get("task") or ref.get("task"),
        "metadata": {**(ref.get("metadata") or {}), "provenance": provenance},
    }
