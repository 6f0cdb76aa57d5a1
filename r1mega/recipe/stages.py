"""What each stage kind runs, and what it leaves behind (artifacts, output fingerprint, info).

    pretrain         `r1mega pretrain` on the stage's job config (the tiny base)
    rl               `r1mega train` from the init stage's checkpoint (R1-Zero, or reasoning RL with
                     the language-consistency reward in `rewards.weights`)
    sft, distill     `r1mega sft` of the init stage's model on a select stage's dataset (distill: a
                     student of another family, from its own base stage)
    sample           n responses per prompt from a stage's checkpoint (sample.py)
    select           filters, readable reformat, judge, non-reasoning rows (select.py)
    eval             the held-out evaluation of a stage's checkpoint or an HF directory
    rm               `r1mega rm`: a reward model (an rl stage's `reward_models` loads it, frozen)
Training stages end with the same held-out evaluation (`eval: true`, the default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from r1mega.recipe import markers
from r1mega.recipe.config import RecipeConfig, is_path
from r1mega.recipe.jobconfig import checkpoint_root, dataset_path, samples_path

if TYPE_CHECKING:
    from r1mega.recipe.pipeline import Stage

__all__ = ["StageOutcome", "run_stage"]


@dataclass
class StageOutcome:
    artifacts: dict[str, str]
    output_fp: str
    info: dict = field(default_factory=dict)


def run_stage(recipe: RecipeConfig, stage: "Stage", heldout: list[Path]) -> Optional[StageOutcome]:
    """Run one stage to its end; None when a signal stopped it (its checkpoint is saved)."""
    kind = stage.cfg.kind
    if kind in ("pretrain", "rl", "sft", "distill"):
        return _train(recipe, stage, heldout)
    if kind == "sample":
        return _sample(recipe, stage)
    if kind == "select":
        return _select(recipe, stage)
    if kind == "eval":
        return _eval_stage(recipe, stage, heldout)
    if kind == "rm":
        return _reward_model(recipe, stage)
    raise AssertionError(f"unknown stage kind {kind}")  # the config's Literal rules this out


def _train(recipe: RecipeConfig, stage: "Stage", heldout: list[Path]) -> Optional[StageOutcome]:
    from r1mega.recipe.hf import final_checkpoint

    job = stage.job
    if stage.cfg.kind == "rl":
        from r1mega.training.rl_job import run_rl

        result = run_rl(job)
        sequences = result.step * job.rl.prompts_per_step * job.algorithm.group_size
    else:
        from r1mega.training.sft_job import run_supervised

        result = run_supervised(job, "pretrain" if stage.cfg.kind == "pretrain" else "sft")
        sequences = result.step * job.sft.global_batch_size
    if result.preempted:
        return None
    ckpt = final_checkpoint(checkpoint_root(recipe, stage.cfg.name))
    artifacts = {"checkpoint": str(ckpt)}
    info = {"steps": result.step, "trained_sequences": sequences, "model_family": job.model.family,
            "parameters": _parameters(job)}
    if stage.cfg.kind == "rl" and job.rl.general_check:
        info["general_check"] = _general_check_curve(job.run.run_dir / "metrics.jsonl")
    if stage.cfg.eval:
        from r1mega.recipe.evaluate import evaluate

        evaluate(recipe, checkpoint_root(recipe, stage.cfg.name), heldout, stage.dir / "eval", job)
        artifacts["eval"] = str(stage.dir / "eval" / "eval.json")
    return StageOutcome(artifacts, markers.checkpoint_fingerprint(ckpt), info)


def _reward_model(recipe: RecipeConfig, stage: "Stage") -> Optional[StageOutcome]:
    from r1mega.recipe.hf import final_checkpoint
    from r1mega.rm.job import run_reward_model

    result = run_reward_model(stage.job)
    if result.preempted:
        return None
    ckpt = final_checkpoint(checkpoint_root(recipe, stage.cfg.name))
    heldout = {k: v for k, v in result.metrics.items() if k.startswith("eval/")}
    info = {"steps": result.step, "model_family": stage.job.model.family, "heldout": heldout}
    return StageOutcome({"checkpoint": str(ckpt)}, markers.checkpoint_fingerprint(ckpt), info)


def _general_check_curve(path: Path) -> dict:
    """The held-out hidden-rule rates of an RL stage's evaluations (rl.general_check): first and
    last, greedy and sampled, with their steps."""
    from r1mega.training.logging import read_metrics

    rows = [r for r in read_metrics(path) if "eval/general_check" in r] if path.is_file() else []
    if not rows:
        return {}
    first, last = rows[0], rows[-1]
    out = {"first_step": first.get("step"), "last_step": last.get("step")}
    for key in ("general_check", "general_check_sampled", "pass@1", "greedy_accuracy"):
        if f"eval/{key}" in first:
            out[key] = [first[f"eval/{key}"], last.get(f"eval/{key}")]
    return out


def _parameters(job) -> Optional[int]:
    try:
        from r1mega.models.param_count import count_parameters

        return int(count_parameters(job.model))
    except Exception:  # the count is informational; a family it does not know is not an error
        return None


def _sample(recipe: RecipeConfig, stage: "Stage") -> StageOutcome:
    from r1mega.recipe.hf import final_checkpoint
    from r1mega.recipe.sample import run_sample

    src = stage.cfg.checkpoint
    ckpt = final_checkpoint(checkpoint_root(recipe, src))
    path = run_sample(stage.job, stage.cfg.sample, ckpt, stage.cfg.name, stage.dir)
    n_rows = sum(1 for line in open(path, encoding="utf-8") if line.strip())
    return StageOutcome({"samples": str(path), "checkpoint": str(ckpt)}, markers.file_sha256(path),
                        {"samples": n_rows, "source_stage": src})


def _select(recipe: RecipeConfig, stage: "Stage") -> StageOutcome:
    from r1mega.recipe.select import run_select

    sc = stage.cfg.select
    engine = tokenizer = None
    if sc.judge is not None:
        engine, tokenizer = _judge_engine(recipe, stage)
    counts = run_select(sc, samples_path(recipe, stage.cfg.samples), stage.cfg.name, stage.dir,
                        judge_engine=engine, tokenizer=tokenizer)
    path = dataset_path(recipe, stage.cfg.name)
    return StageOutcome({"dataset": str(path), "counts": str(stage.dir / "select.json")}, markers.file_sha256(path), counts)


def _judge_engine(recipe: RecipeConfig, stage: "Stage"):
    """The judge on the rollout engine: a stage's final checkpoint (exported) or an HF directory."""
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.recipe.hf import export_for_engine, final_checkpoint
    from r1mega.rollout.engines import make_engine

    ref = stage.cfg.select.judge_model
    if is_path(ref):
        model_dir = Path(ref)
        tokenizer = load_tokenizer(str(model_dir))
    else:
        model_dir = export_for_engine(final_checkpoint(checkpoint_root(recipe, ref)), stage.dir / "judge_model")
        tokenizer = load_tokenizer(stage.job.data.tokenizer)
    return make_engine(stage.job.rollout, str(model_dir), tokenizer=tokenizer, seed=stage.job.run.seed), tokenizer


def _eval_stage(recipe: RecipeConfig, stage: "Stage", heldout: list[Path]) -> StageOutcome:
    from r1mega.recipe.evaluate import evaluate

    ref = stage.cfg.checkpoint
    model = Path(ref) if is_path(ref) else checkpoint_root(recipe, ref)
    evaluate(recipe, model, heldout, stage.dir / "eval", stage.job)
    path = stage.dir / "eval" / "eval.json"
    return StageOutcome({"eval": str(path)}, markers.file_sha256(path), {"model": str(model)})

