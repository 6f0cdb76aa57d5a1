"""`run_eval`: DeepSeek-R1's evaluation of one model on held-out prompt files (docs/eval.md).

    prompt files (jsonl/parquet, the `data` section's fields and template)
      -> k samples per prompt on the rollout engine (T=0.6, top-p 0.95 by default, seeded)
      -> per sample: rule accuracy, strict format, language consistency, the extracted answer
      -> per prompt: pass@j (unbiased), cons@k (majority vote on the extracted answers)
      -> METRICS per task and per file, and over everything: eval.json, eval.md, samples.jsonl

Scoring uses the rewards' own code, in process (r1mega.rewards): the completion judged is the
prompt's response prefix + the decoded response, as in RL. Answers are compared for the vote after
normalisation: whitespace collapsed, and plain numbers (`1,000`, `2.50`, `5/2`) reduced to their
exact value, so `1000` and `1,000` vote together.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

from r1mega.eval.config import EvalConfig
from r1mega.eval.metrics import PromptResult, aggregate, metric_keys

__all__ = ["run_eval", "vote_key", "score_sample", "write_markdown"]


def vote_key(answer: Optional[str]) -> Optional[str]:
    """The form an extracted answer votes under in cons@k."""
    from r1mega.rewards.accuracy import _plain_number

    if answer is None:
        return None
    text = " ".join(answer.split())
    value = _plain_number(text)
    return str(value) if value is not None else text


def score_sample(example: Any, response_text: str, n_tokens: int, suite: Any, cfg: EvalConfig) -> dict:
    """One sample's verdicts: correct, formatted, language share, vote key, length."""
    from r1mega.rewards.format import is_well_formatted
    from r1mega.rewards.language import language_share
    from r1mega.rewards.parse import completion_text, extract_answer, parse_completion
    from r1mega.rewards.types import SampleView

    view = SampleView(prompt_token_ids=list(example.prompt_token_ids), response_token_ids=[],
                      response_logprobs=[], finish_reason="stop", response_text=response_text)
    completion = completion_text(view, example.reference)
    parsed = parse_completion(completion)
    answer, _ = extract_answer(parsed, boxed_fallback=suite.cfg.boxed_fallback)
    return {
        "correct": suite.run("accuracy", view, example.reference)["accuracy"] >= 1.0,
        "formatted": is_well_formatted(completion),
        "language": None if parsed.think is None else language_share(parsed.think, cfg.target_language),
        "answer": vote_key(answer),
        "length": n_tokens,
        "completion": completion,
    }


def _file_keys(data_files: Sequence[Path]) -> list[str]:
    """Names of the files in the report: the base name, or the path as given when names collide."""
    names = [Path(f).name for f in data_files]
    return [n if names.count(n) == 1 else str(f) for n, f in zip(names, data_files)]


def _load_prompts(path: Path, data_cfg: Any, tokenizer: Any, rewards: Any, max_prompts: Optional[int]):
    from r1mega.data.prompts import load_prompt_dataset
    from r1mega.rewards.accuracy import BUILTIN_CHECKS

    if not path.is_file():
        raise ValueError(f"--data {path}: no such file")
    if path.suffix not in (".jsonl", ".json", ".parquet"):
        raise ValueError(f"--data {path}: must end with .jsonl, .json or .parquet")
    one = dataclasses.replace(data_cfg, source="files", train_files=[str(path)], test_files=[str(path)])
    examples = list(load_prompt_dataset(one, "test", tokenizer).examples)
    if max_prompts is not None:
        examples = examples[:max_prompts]
    known = set(BUILTIN_CHECKS) | set(rewards.task_accuracy)
    for ex in examples:
        if ex.reference["task"] not in known:
            raise ValueError(
                f"{ex.reference['source']}: unknown task {ex.reference['task']!r}; tasks with an accuracy "
                f"check: {sorted(known)} (add one under rewards.task_accuracy)"
            )
    return examples


def run_eval(
    cfg: EvalConfig,
    model: str | os.PathLike,
    data_files: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    run_config: Any = None,
) -> dict:
    """Evaluate `model` on `data_files`; writes out_dir/eval.json, eval.md and samples.jsonl and
    returns the eval.json dict (schema in docs/eval.md). `run_config`: the job Config whose `data`
    (tokenizer, template, fields), `rollout` (engine, batch sizes, stop strings) and `rewards`
    (task checks) sections apply; None = their defaults."""
    from r1mega.data.config import DataConfig
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.eval.model_source import build_engine, resolve_model
    from r1mega.rewards.config import RewardConfig
    from r1mega.rewards.suite import RewardSuite
    from r1mega.rollout.config import RolloutConfig

    start = time.perf_counter()
    data_cfg = run_config.data if run_config is not None else DataConfig()
    rollout_cfg = run_config.rollout if run_config is not None else RolloutConfig()
    rewards_cfg = run_config.rewards if run_config is not None else RewardConfig()
    if not data_files:
        raise ValueError("--data: at least one prompt file is needed")
    files = [Path(os.path.expanduser(str(f))) for f in data_files]
    source = resolve_model(model)  # before any data or model work: a wrong path fails in a second
    tokenizer = load_tokenizer(data_cfg.tokenizer)
    prompts = [_load_prompts(f, data_cfg, tokenizer, rewards_cfg, cfg.max_prompts) for f in files]
    suite = RewardSuite(dataclasses.replace(rewards_cfg, weights={"accuracy": 1.0}))
    engine = build_engine(source, rollout_cfg, tokenizer, seed=cfg.seed)
    k = cfg.samples_per_prompt
    sampling = rollout_cfg.sampling_params(
        temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
        max_new_tokens=cfg.max_new_tokens or rollout_cfg.max_new_tokens,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"model": str(model), "model_kind": source.kind, "model_path": str(source.path),
                              "step": source.step, "files": {}}
    everything: list[PromptResult] = []
    with open(out_dir / "samples.jsonl", "w", encoding="utf-8") as rows:
        for name, examples in zip(_file_keys(files), prompts):
            repeated = [ex for ex in examples for _ in range(k)]
            samples = engine.generate([ex.prompt_token_ids for ex in repeated], sampling)
            results: list[PromptResult] = []
            for p, ex in enumerate(examples):
                scored = []
                for i in range(k):
                    s = samples[p * k + i]
                    v = score_sample(ex, s.response_text, len(s.response_token_ids), suite, cfg)
                    scored.append(v)
                    rows.write(json.dumps({"file": name, "source": ex.reference["source"], "task": ex.reference["task"],
                                           "sample_index": i, "finish_reason": s.finish_reason, **v},
                                          ensure_ascii=False) + "\n")
                results.append(PromptResult(
                    task=ex.reference["task"],
                    correct=tuple(v["correct"] for v in scored), answers=tuple(v["answer"] for v in scored),
                    formatted=tuple(v["formatted"] for v in scored), language=tuple(v["language"] for v in scored),
                    lengths=tuple(v["length"] for v in scored),
                ))
            by_task: dict[str, list[PromptResult]] = defaultdict(list)
            for r in results:
                by_task[r.task].append(r)
            report["files"][name] = {
                "tasks": {t: aggregate(rs, cfg.pass_ks, k) for t, rs in sorted(by_task.items())},
                "all": aggregate(results, cfg.pass_ks, k),
            }
            everything += results
    report["all"] = aggregate(everything, cfg.pass_ks, k)
    report["config"] = {**dataclasses.asdict(cfg), "pass_k": cfg.pass_ks,
                        "max_new_tokens": sampling.max_new_tokens, "top_k": sampling.top_k}
    report["seconds"] = time.perf_counter() - start
    (out_dir / "eval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "eval.md").write_text(write_markdown(report, cfg), encoding="utf-8")
    return report


def write_markdown(report: dict, cfg: EvalConfig) -> str:
    """The eval.json numbers as one table: a row per file and task, per file, and overall."""
    keys = metric_keys(cfg.pass_ks, cfg.samples_per_prompt)

    def cells(m: dict) -> str:
        out = []
        for key in keys:
            v = m[key]
            if key in ("prompts", "samples"):
                out.append(str(int(v)))
            elif key == "mean_length":
                out.append(f"{v:.1f}")
            else:
                out.append(f"{100 * v:.1f}%")
        return " | ".join(out)

    lines = [
        f"# Evaluation of `{report['model']}`",
        "",
        f"{cfg.samples_per_prompt} samples per prompt at temperature {cfg.temperature}, top-p {cfg.top_p}, "
        f"seed {cfg.seed}; pass@1 averaged over the samples, cons@{cfg.samples_per_prompt} by majority vote.",
        "",
        "| file | task | " + " | ".join(keys) + " |",
        "| --- | --- | " + " | ".join("---" for _ in keys) + " |",
    ]
    for name, entry in report["files"].items():
        for task, m in entry["tasks"].items():
            lines.append(f"| {name} | {task} | {cells(m)} |")
        lines.append(f"| {name} | all | {cells(entry['all'])} |")
    lines.append(f"| all | all | {cells(report['all'])} |")
    return "\n".join(lines) + "\n"
