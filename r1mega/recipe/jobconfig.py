"""A stage's job config: the recipe's `defaults` <- `common` <- the stage's `base` <- its `config` fragment, plus
the keys that wire it into the pipeline (run directory, starting checkpoint, dataset).

The result is the same `Config` the single commands (`r1mega pretrain/sft/train`) run, so a stage
section takes exactly their keys and is validated by the same code, with the same messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1mega.config import Config
from r1mega.configlib import ConfigError, deep_merge, from_dict, load_yaml_tree, resolve_path, strip_internal, to_dict
from r1mega.recipe.config import RecipeConfig, StageConfig, is_path

__all__ = ["stage_dir", "checkpoint_root", "dataset_path", "samples_path", "build_job_config", "job_record"]

DATASET_FILE = "dataset.jsonl"
SAMPLES_FILE = "samples.jsonl"


def stage_dir(recipe: RecipeConfig, name: str) -> Path:
    return recipe.run_dir / name


def checkpoint_root(recipe: RecipeConfig, name: str) -> Path:
    return stage_dir(recipe, name) / "checkpoints"


def dataset_path(recipe: RecipeConfig, name: str) -> Path:
    return stage_dir(recipe, name) / DATASET_FILE


def samples_path(recipe: RecipeConfig, name: str) -> Path:
    return stage_dir(recipe, name) / SAMPLES_FILE


def _load(ref: str, base_dir: Path, where: str) -> dict:
    path = resolve_path(ref, base_dir)
    if not path.is_file():
        raise ConfigError(f"{where}: config file {ref!r} not found (looked in {base_dir} and examples/configs)")
    return load_yaml_tree(path)


def _merge_layer(raw: dict, layer: dict, base_dir: Path, where: str) -> dict:
    """Merge a layer over `raw`. A section the layer gives as a file path (`model:
    models/tiny_llama.yaml`) is loaded relative to the layer's own file and replaces the section
    below it whole (a student's model must not inherit the teacher's fields); mappings deep-merge."""
    import dataclasses

    layer_dir = Path(layer.get("__dir__", base_dir))
    out = deep_merge(raw, {k: v for k, v in layer.items() if not isinstance(v, str) or k == "__dir__"})
    for f in dataclasses.fields(Config):
        if isinstance(layer.get(f.name), str):
            out[f.name] = _load(layer[f.name], layer_dir, f"{where}.{f.name}")
    return out


def _raw_job_config(recipe: RecipeConfig, st: StageConfig) -> dict:
    base_dir = Path(recipe.base_dir)
    raw: dict[str, Any] = {}
    if recipe.defaults:
        raw = _merge_layer(raw, _load(recipe.defaults, base_dir, "defaults"), base_dir, "defaults")
    if recipe.common:
        raw = _merge_layer(raw, {"__dir__": str(base_dir), **recipe.common}, base_dir, "common")
    if st.base:
        raw = _merge_layer(raw, _load(st.base, base_dir, f"stages.{st.name}.base"), base_dir, f"stages.{st.name}.base")
    fragment = {"__dir__": str(base_dir), **st.config}
    return _merge_layer(raw, fragment, base_dir, f"stages.{st.name}.config")


def _wire(recipe: RecipeConfig, st: StageConfig, raw: dict) -> dict:
    """The pipeline's keys: where the stage writes and what it reads (paths as the stage will see them)."""
    raw = deep_merge(raw, {
        "run": {"output_dir": str(recipe.run_dir), "name": st.name},
        "checkpoint": {"dir": None, "resume": "auto", "init_from": None},
    })
    if st.kind == "rl":
        raw = deep_merge(raw, {"rl": {"base_config": None}})
    if st.init:
        raw["checkpoint"]["init_from"] = st.init if is_path(st.init) else str(checkpoint_root(recipe, st.init))
    if st.reward_models:
        raw = _wire_reward_models(recipe, st, raw)
    if st.kind in ("sft", "distill"):
        raw = deep_merge(raw, {"data": {"source": "files", "train_files": [str(dataset_path(recipe, st.data))],
                                        "test_files": []},
                               # held-out quality is the recipe's evaluation, not the SFT loop's
                               "sft": {"accuracy_every": 0}})
    return raw


def _wire_reward_models(recipe: RecipeConfig, st: StageConfig, raw: dict) -> dict:
    """Point each named entry of `rewards.models` at its rm stage's checkpoints."""
    import copy

    models = copy.deepcopy((raw.get("rewards") or {}).get("models") or [])
    names = [m.get("name") for m in models if isinstance(m, dict)]
    for rm_name, ref in st.reward_models.items():
        if rm_name not in names:
            raise ConfigError(f"stages.{st.name}.reward_models.{rm_name}: no reward model of that name in "
                              f"the stage's rewards.models (it has {names})")
        for m in models:
            if isinstance(m, dict) and m.get("name") == rm_name:
                m["checkpoint"] = ref if is_path(ref) else str(checkpoint_root(recipe, ref))
    return deep_merge(raw, {"rewards": {"models": models}})


def build_job_config(recipe: RecipeConfig, st: StageConfig) -> Config:
    """The validated job config of a stage (every kind has one: sample/select/eval stages use its
    model, data, rollout and rewards sections)."""
    raw = _wire(recipe, st, _raw_job_config(recipe, st))
    if "model" not in raw:
        raise ConfigError(f"stages.{st.name}: no `model` section (set it in the recipe's defaults or the stage's config)")
    try:
        return from_dict(Config, raw, base_dir=Path(recipe.base_dir))
    except ConfigError as e:
        raise ConfigError(f"stages.{st.name}.config.{e}") from None


def job_record(cfg: Config) -> dict:
    """The resolved job config as plain data (what the config fingerprint covers)."""
    return strip_internal(to_dict(cfg))
