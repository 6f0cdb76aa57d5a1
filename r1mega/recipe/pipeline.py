"""`r1mega recipe CONFIG [--from STAGE] [--only STAGE]`: the R1 stages as one resumable pipeline.

Every stage writes under runs/<recipe>/<stage>/ and is done when its stage.json exists (markers.py).
A run goes:

1. check everything before touching anything: every stage's job config (the single commands'
   validation), the stage names given, for each stage to run that its inputs exist or are made
   earlier in this run and come from the same model, and for each completed stage that its config
   and inputs are still the ones it ran with. A mistake is one line (RecipeError), nothing changed.
2. `--from STAGE`: delete that stage's directory and those of every later stage (with `--only`, just
   that one), so they run again.
3. run the stages in order: a completed one is skipped; an interrupted one (stage_started.json but
   no stage.json) continues, training from its last checkpoint, sampling from its last chunk; a
   signal (SIGTERM/SIGUSR1) inside a training stage saves a checkpoint and stops the pipeline.
4. write the report of every completed stage (report.py).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from r1mega.config import Config
from r1mega.configlib import strip_internal, to_dict
from r1mega.recipe import markers
from r1mega.recipe.config import TRAINING_KINDS, RecipeConfig, StageConfig, is_path
from r1mega.recipe.jobconfig import build_job_config, job_record, stage_dir

__all__ = ["RecipeError", "Stage", "prepare", "run_recipe", "RecipeResult"]


class RecipeError(ValueError):
    """A recipe-level mistake (unknown stage, missing or mismatched input, changed config)."""


@dataclass
class Stage:
    cfg: StageConfig
    job: Config
    dir: Path
    config_fp: str
    config_record: dict


@dataclass
class RecipeResult:
    ran: list[str]
    skipped: list[str]
    stopped_in: Optional[str]
    """The stage a signal stopped (rerun to continue), None when the run went to the end."""


def say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------------------
# step 1: build and check
# ------------------------------------------------------------------------------------------------


def _model_dict(cfg: Config) -> dict:
    from r1mega.training.checkpoint import _MODEL_FIELDS_FREE_TO_CHANGE

    return {k: v for k, v in to_dict(cfg.model).items() if k not in _MODEL_FIELDS_FREE_TO_CHANGE}


def prepare(recipe: RecipeConfig) -> dict[str, Stage]:
    """Every stage's validated job config and config fingerprint (ConfigError on a mistake)."""
    from r1mega.recipe.evaluate import eval_config

    evaluated = [st for st in recipe.stages if st.kind == "eval" or (st.kind in TRAINING_KINDS and st.eval)]
    ev = to_dict(eval_config(recipe)) if evaluated else None
    out: dict[str, Stage] = {}
    for st in recipe.stages:
        job = build_job_config(recipe, st)
        _check_stage_sections(st)
        _check_schedule(st, job)
        section = {k: v for k, v in strip_internal(to_dict(st)).items() if k != "config"}
        job_part = {k: v for k, v in job_record(job).items() if k != "logging"}
        record = {"kind": st.kind, "stage": section, "job": markers.relative_to_run(job_part, recipe.run_dir)}
        if st in evaluated:
            record["eval"] = {"config": ev, "data": recipe.eval.data}
        out[st.name] = Stage(st, job, stage_dir(recipe, st.name), markers.fingerprint(record), record)
    return out


def _check_schedule(st: StageConfig, job: Config) -> None:
    """What the rm and rl jobs check at their start that the config alone does not: the learning-rate
    schedule fits the stage's known number of steps (sft stages count theirs from the data)."""
    from r1mega.configlib import ConfigError
    from r1mega.training.schedule import decay_steps

    steps = {"rm": job.rm.steps, "rl": job.rl.steps}.get(st.kind)
    if steps is None:
        return
    if st.kind == "rm":
        job.rm.check_for_job()
    try:
        decay_steps(job.optimizer, steps)
    except ConfigError as e:
        raise ConfigError(f"stages.{st.name}.config.{e}") from None


def _check_stage_sections(st: StageConfig) -> None:
    """The select stage's filter and judge sections, typed by their own modules."""
    if st.kind != "select":
        return
    from r1mega.configlib import from_dict
    from r1mega.recipe.filters import FilterConfig

    from_dict(FilterConfig, st.select.filter, where=f"stages.{st.name}.select.filter")
    if st.select.judge is not None:
        from r1mega.recipe.judge import JudgeConfig

        from_dict(JudgeConfig, st.select.judge, where=f"stages.{st.name}.select.judge")


def _output_fp(recipe: RecipeConfig, name: str) -> Optional[str]:
    m = markers.read_marker(stage_dir(recipe, name))
    return None if m is None else m["output_fingerprint"]


def _input_fps(recipe: RecipeConfig, st: StageConfig) -> dict[str, Optional[str]]:
    out = {}
    for role, ref in st.inputs.items():
        if is_path(ref):
            out[role] = markers.fingerprint({"path": str(Path(ref).resolve())})
        else:
            out[role] = _output_fp(recipe, ref)
    return out


def _check_inputs(recipe: RecipeConfig, stages: dict[str, Stage], st: StageConfig, made_here: set[str]) -> None:
    """Inputs of a stage that will run: present (or made earlier in this run), same model."""
    for role, ref in st.inputs.items():
        if is_path(ref):
            if not Path(ref).is_dir():
                raise RecipeError(f"stage {st.name}: {role} {ref} does not exist")
            continue
        if ref in made_here:
            continue
        marker = markers.read_marker(stage_dir(recipe, ref))
        if marker is None:
            raise RecipeError(
                f"stage {st.name}: input {role} comes from stage {ref}, which has not completed "
                f"(no {stage_dir(recipe, ref) / markers.MARKER}); run it first (r1mega recipe CONFIG --only {ref})"
            )
        for key in marker.get("artifacts", {}):
            path = markers.artifact_path(marker, key, recipe.run_dir)
            if not path.exists():
                raise RecipeError(
                    f"stage {st.name}: input {role}: {path} ({key} of stage {ref}) is missing; "
                    f"rerun that stage with --from {ref}"
                )
    if st.init and is_path(st.init):
        from r1mega.training.checkpoint import INFO_FILE, find_latest_checkpoint

        ckpt = Path(st.init) if (Path(st.init) / INFO_FILE).is_file() else find_latest_checkpoint(st.init)
        if ckpt is not None:  # a training checkpoint records its model; a converted base is checked on load
            _check_checkpoint_model(st, ckpt, stages[st.name].job)
    elif st.init:
        here, there = _model_dict(stages[st.name].job), _model_dict(stages[st.init].job)
        diffs = [k for k in sorted(set(here) | set(there)) if here.get(k) != there.get(k)]
        if diffs:
            raise RecipeError(
                f"stage {st.name}: init stage {st.init} trains another model (differs in {', '.join(diffs)}); "
                "a stage continues the weights of the same model (distill a student from its own base stage)"
            )
        marker = markers.read_marker(stage_dir(recipe, st.init))
        if marker is not None and st.init not in made_here:
            _check_checkpoint_model(st, markers.artifact_path(marker, "checkpoint", recipe.run_dir), stages[st.name].job)


def _check_checkpoint_model(st: StageConfig, ckpt: Path, job: Config) -> None:
    from r1mega.training.checkpoint import CheckpointError, check_checkpoint_model

    if not ckpt.is_dir():
        raise RecipeError(f"stage {st.name}: input checkpoint {ckpt} is missing (stage {st.init} says it wrote it)")
    try:
        check_checkpoint_model(ckpt, job.model)
    except CheckpointError as e:
        raise RecipeError(f"stage {st.name}: input checkpoint of stage {st.init} is for another model: {e}") from None


def _plan(recipe: RecipeConfig, stages: dict[str, Stage], selected: list[str], rerun: set[str]) -> None:
    """Refuse, before anything changes, what the run cannot do (see the module docstring)."""
    made_here: set[str] = set()
    for name in selected:
        stage = stages[name]
        done = None if name in rerun else markers.read_marker(stage.dir)
        if done is not None:
            if done.get("config_fingerprint") != stage.config_fp:
                keys = markers.changed_keys(done.get("config", {}), stage.config_record)
                raise RecipeError(
                    f"stage {name}: completed with another config (changed: {', '.join(keys[:8]) or 'unknown'}); "
                    f"rerun it and the stages after it with --from {name}"
                )
            continue
        started = None if name in rerun else markers.read_marker(stage.dir, markers.STARTED)
        if started is not None and started.get("config_fingerprint") != stage.config_fp:
            keys = markers.changed_keys(started.get("config", {}), stage.config_record)
            raise RecipeError(
                f"stage {name}: an interrupted run of it used another config (changed: {', '.join(keys[:8]) or 'unknown'}); "
                f"start it over with --from {name}"
            )
        _check_inputs(recipe, stages, stage.cfg, made_here)
        made_here.add(name)


# ------------------------------------------------------------------------------------------------
# steps 2-4
# ------------------------------------------------------------------------------------------------


def run_recipe(recipe: RecipeConfig, *, from_stage: Optional[str] = None, only: Optional[str] = None) -> RecipeResult:
    from r1mega.parallel.distributed import launch_env

    if launch_env().world_size > 1:
        raise RecipeError(
            "r1mega recipe runs in one process (its records and data stages are not shared between ranks); "
            "launch a multi-node stage with its single command on `r1mega recipe CONFIG --print-config STAGE`, "
            "then record it with `r1mega recipe CONFIG --only STAGE` (docs/recipe.md)"
        )
    names = [s.name for s in recipe.stages]
    for flag, value in (("--from", from_stage), ("--only", only)):
        if value is not None and value not in names:
            raise RecipeError(f"{flag} {value}: unknown stage; the recipe's stages: {', '.join(names)}")
    stages = prepare(recipe)
    selected = [only] if only else names
    rerun: set[str] = set()
    if from_stage is not None:
        rerun = {from_stage} if only else set(names[names.index(from_stage):])
        if only and only != from_stage:
            raise RecipeError(f"--only {only} with --from {from_stage}: give the same stage to both, or only one flag")
    from r1mega.recipe.evaluate import heldout_files

    defaults_job = stages[names[0]].job
    heldout_files(recipe, defaults_job, write=False)  # a held-out set on disk that differs: refuse now
    # inputs changed since a completed stage ran (an earlier stage was rerun): that stage reruns too
    for name in selected:
        if name in rerun:
            continue
        done = markers.read_marker(stages[name].dir)
        if done is not None and done.get("config_fingerprint") == stages[name].config_fp:
            now = _input_fps(recipe, stages[name].cfg)
            stale = [role for role, fp in now.items() if fp != done.get("inputs", {}).get(role)]
            if stale:
                say(f"stage {name}: its input {', '.join(stale)} changed since it completed; it runs again")
                rerun.add(name)
    _plan(recipe, stages, selected, rerun)

    for name in names:
        if name in rerun and stages[name].dir.exists():
            say(f"stage {name}: removing {stages[name].dir} to run it again")
            shutil.rmtree(stages[name].dir)
    files = heldout_files(recipe, defaults_job, write=True)
    ran, skipped = [], []
    for name in selected:
        stage = stages[name]
        if markers.read_marker(stage.dir) is not None:
            say(f"stage {name} ({stage.cfg.kind}): complete, skipped")
            skipped.append(name)
            continue
        resumed = markers.read_marker(stage.dir, markers.STARTED) is not None
        # an upstream stage finished in this run: check the model of its checkpoint now
        if stage.cfg.init and not is_path(stage.cfg.init):
            marker = markers.read_marker(stage_dir(recipe, stage.cfg.init))
            _check_checkpoint_model(stage.cfg, markers.artifact_path(marker, "checkpoint", recipe.run_dir), stage.job)
        inputs = _input_fps(recipe, stage.cfg)
        say(f"stage {name} ({stage.cfg.kind}): {'continuing an interrupted run' if resumed else 'running'}")
        stage.dir.mkdir(parents=True, exist_ok=True)
        markers.write_json_atomic(stage.dir / markers.STARTED, {
            "stage": name, "config_fingerprint": stage.config_fp, "config": stage.config_record, "inputs": inputs,
        })
        t0 = time.perf_counter()
        from r1mega.recipe.stages import run_stage

        outcome = run_stage(recipe, stage, files)
        if outcome is None:
            say(f"stage {name}: stopped by a signal; its checkpoint is saved. Rerun the same command to continue")
            _report(recipe)
            return RecipeResult(ran, skipped, stopped_in=name)
        markers.write_json_atomic(stage.dir / markers.MARKER, {
            "stage": name, "kind": stage.cfg.kind, "config_fingerprint": stage.config_fp, "config": stage.config_record,
            "inputs": inputs, "artifacts": markers.relative_to_run(outcome.artifacts, recipe.run_dir), "output_fingerprint": outcome.output_fp,
            "info": outcome.info, "wall_s": round(time.perf_counter() - t0, 1), "resumed": resumed,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        say(f"stage {name} ({stage.cfg.kind}): complete")
        ran.append(name)
    _report(recipe)
    return RecipeResult(ran, skipped, stopped_in=None)


def _report(recipe: RecipeConfig) -> None:
    from r1mega.recipe.report import write_report

    path = write_report(recipe)
    if path is not None:
        say(f"report: {path}")

