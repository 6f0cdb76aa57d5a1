"""The recipe file (`r1mega recipe CONFIG`): shared job defaults, held-out evaluation, named stages.

    name: r1_tiny                       # runs/<name>/<stage>/ for every stage
    defaults: ../configs/tiny.yaml      # a job config every stage's job config is merged over
    eval: {config: {...EvalConfig}, data: procedural | [files]}
    stages:
      - {name: base, kind: pretrain, config: {...job config fragment...}}
      - {name: r1_zero, kind: rl, init: base, config: {...}}
      - {name: cold_start_samples, kind: sample, checkpoint: r1_zero, sample: {n: 4}}
      ...

A stage's job config is `defaults` <- `base` (a job config file of its own) <- `config` (a fragment
in the same keys `r1mega train/sft/pretrain` take), with the keys that wire stages together (run
directory, starting checkpoint, dataset) set by the pipeline; setting those in `config` is refused.
Loading never imports torch or megatron.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from r1mega.configlib import ConfigError

__all__ = [
    "is_path", "KINDS", "TRAINING_KINDS", "SampleConfig", "NonReasoningConfig", "GeneralRowsConfig", "SelectConfig", "StageConfig",
    "RecipeEvalConfig", "RecipeConfig", "load_recipe",
]

Kind = Literal["pretrain", "rl", "sft", "distill", "sample", "select", "eval", "rm"]
KINDS: tuple[str, ...] = ("pretrain", "rl", "sft", "distill", "sample", "select", "eval", "rm")
TRAINING_KINDS: tuple[str, ...] = ("pretrain", "rl", "sft", "distill")
"""Kinds that run a training job (and end with the held-out evaluation of their final checkpoint)."""

WIRED_KEYS: tuple[str, ...] = (
    "run.output_dir", "run.name", "checkpoint.dir", "checkpoint.init_from", "checkpoint.resume", "rl.base_config",
)
"""Job-config keys the pipeline sets itself (where each stage writes, what it starts from)."""


def is_path(ref: str) -> bool:
    """A stage input given as a directory (an external checkpoint or HF model), not a stage name."""
    return "/" in ref or ref.startswith("~") or bool(Path(ref).suffix)


@dataclass(kw_only=True)
class SampleConfig:
    """`sample` stages: n responses per prompt from a checkpoint, on the rollout engine."""

    n: int = 4
    """Responses per prompt (the paper's rejection sampling drew several per prompt)."""
    temperature: float = 1.0
    """R1's cold-start data was sampled from R1-Zero at T=1.0."""
    top_p: float = 1.0
    max_new_tokens: int = 48
    split: Literal["train", "test"] = "train"
    """Which split of the stage's `data` section the prompts come from."""
    max_prompts: Optional[int] = None
    """Use the first this many prompts (None: the whole split)."""
    seed: int = 0
    """Sample i of prompt p is drawn with its own stream seeded by (seed, p * n + i): a resumed
    stage draws exactly what an uninterrupted one would."""
    prompts_per_chunk: int = 64
    """Prompts generated (and appended to the partial output) at a time: the resume granularity."""

    def validate(self) -> None:
        for name in ("n", "max_new_tokens", "prompts_per_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"max_prompts: must be >= 1 or null, got {self.max_prompts}")


@dataclass(kw_only=True)
class NonReasoningConfig:
    """Non-reasoning data mixed into an SFT set: trivial queries answered without reasoning (R1's
    ~200K non-reasoning samples), generated here for the tiny arithmetic task."""

    count: int = 0
    """Rows to add (0: none)."""
    operands: int = 2
    """Operands of the trivial additions (`Calculate 3+4`); the reasoning tasks have more."""
    max_digits: int = 1
    seed: int = 0

    def validate(self) -> None:
        if self.count < 0:
            raise ConfigError(f"count: must be >= 0, got {self.count}")
        if not 2 <= self.operands <= 10:
            raise ConfigError(f"operands: must be in [2, 10], got {self.operands}")
        if not 1 <= self.max_digits <= 6:
            raise ConfigError(f"max_digits: must be in [1, 6], got {self.max_digits}")


@dataclass(kw_only=True)
class GeneralRowsConfig:
    """General prompts mixed into an SFT set (R1's non-reasoning SFT data, which a final RL stage's
    reward models later sharpen): the embedded general prompts of r1mega/rm/tiny_data.py answered as
    `<think>reasoning</think> summary`, in the mixed quality such data has: a share of summaries the
    hidden helpfulness rule prefers, the rest not, and a share of responses carrying the unsafe
    marker. Generated for the tiny recipe."""

    count: int = 0
    """Rows to add (0: none)."""
    preferred_fraction: float = 0.3
    """Share whose summary satisfies the helpfulness rule (one short sentence with the answer)."""
    unsafe_fraction: float = 0.1
    """Share carrying the unsafe marker somewhere in the response."""
    problems: Literal["two_operand", "task"] = "task"
    seed: int = 0

    def validate(self) -> None:
        if self.count < 0:
            raise ConfigError(f"count: must be >= 0, got {self.count}")
        for name in ("preferred_fraction", "unsafe_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}: must be in [0, 1], got {getattr(self, name)}")


@dataclass(kw_only=True)
class SelectConfig:
    """`select` stages: filters over a sample stage's output, then the SFT dataset."""

    filters: list[str] = field(default_factory=list)
    """Filter names in order (r1mega.recipe.filters): correct, closed_reasoning, language,
    paragraphs, code_blocks, repetition. A dropped sample is counted under the first it fails."""
    filter: dict[str, Any] = field(default_factory=dict)
    """FilterConfig fields (thresholds), validated when the stage is checked."""
    readable: bool = False
    """Reformat kept responses with `to_readable` (the cold-start reasoning + summary format); a
    response that cannot be reformatted is dropped and counted as `readable`."""
    judge: Optional[dict[str, Any]] = None
    """JudgeConfig fields: a generative judge for kept samples (None: no judge)."""
    judge_model: Optional[str] = None
    """The judge: a stage name (its final checkpoint) or an HF directory; needed with `judge`."""
    max_per_prompt: Optional[int] = None
    """Keep at most this many responses per prompt (the first by sample index); None: all."""
    nonreasoning: NonReasoningConfig = field(default_factory=NonReasoningConfig)
    general: GeneralRowsConfig = field(default_factory=GeneralRowsConfig)

    def validate(self) -> None:
        if len(set(self.filters)) != len(self.filters):
            raise ConfigError(f"filters: {self.filters} has duplicates")
        if self.judge is not None and not self.judge_model:
            raise ConfigError("judge_model: a judge needs a model (a stage name or an HF directory)")
        if self.max_per_prompt is not None and self.max_per_prompt < 1:
            raise ConfigError(f"max_per_prompt: must be >= 1 or null, got {self.max_per_prompt}")


@dataclass(kw_only=True)
class StageConfig:
    name: str
    """Directory name under runs/<recipe>/ and the handle other stages use."""
    kind: Kind
    base: Optional[str] = None
    """A job config file merged over the recipe's `defaults` before `config` (training stages)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Job config fragment (the sections `r1mega pretrain/sft/train` take); for sample stages, the
    `data` and `rollout` sections that say where prompts come from and how they are templated."""
    init: Optional[str] = None
    """Training stages: the stage whose final checkpoint gives the starting weights, or a directory
    (a megatron checkpoint of a base model converted with tools/convert_hf_to_mcore.py); pretraining
    starts from random weights."""
    data: Optional[str] = None
    """sft/distill: the select stage whose dataset to train on."""
    checkpoint: Optional[str] = None
    """sample/eval: the stage whose final checkpoint to use (or an HF directory, for eval)."""
    samples: Optional[str] = None
    """select: the sample stage whose samples to filter."""
    sample: SampleConfig = field(default_factory=SampleConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    eval: bool = True
    """Training stages: evaluate the final checkpoint on the recipe's held-out sets (an rm stage
    reports its own held-out pairwise accuracy / AUC instead)."""
    reward_models: dict[str, str] = field(default_factory=dict)
    """rl stages: reward model name (an entry of the job's `rewards.models`) -> the rm stage whose
    final checkpoint it loads (or a checkpoint directory). The final RL stage's frozen RMs."""

    def validate(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"name: {self.name!r} must be letters, digits, '_' or '-'")
        if self.reward_models and self.kind != "rl":
            raise ConfigError(f"reward_models: only an rl stage takes reward models, not a {self.kind} stage")
        for rm_name, ref in self.reward_models.items():
            if not isinstance(ref, str) or not ref:
                raise ConfigError(f"reward_models.{rm_name}: must name an rm stage or a checkpoint directory")
        need = {"rl": ("init",), "sft": ("init", "data"), "distill": ("init", "data"),
                "sample": ("checkpoint",), "select": ("samples",), "eval": ("checkpoint",)}.get(self.kind, ())
        for key in need:
            if not getattr(self, key):
                raise ConfigError(f"{key}: a {self.kind} stage needs `{key}`")
        allowed = {"pretrain": (), "rl": ("init",), "sft": ("init", "data"), "distill": ("init", "data"),
                   "sample": ("checkpoint",), "select": ("samples",), "eval": ("checkpoint",),
                   "rm": ("init",)}[self.kind]
        for key in ("init", "data", "checkpoint", "samples"):
            if getattr(self, key) is not None and key not in allowed:
                raise ConfigError(f"{key}: a {self.kind} stage takes no `{key}`")
        for dotted in WIRED_KEYS:
            section, key = dotted.split(".")
            if isinstance(self.config.get(section), dict) and key in self.config[section]:
                raise ConfigError(f"config.{dotted}: set by the pipeline (where stages write and what they read)")

    @property
    def inputs(self) -> dict[str, str]:
        """Role -> stage name of every artifact this stage reads (HF paths excluded)."""
        roles = {"init": self.init, "data": self.data, "checkpoint": self.checkpoint, "samples": self.samples,
                 "judge_model": self.select.judge_model if self.kind == "select" else None}
        roles.update({f"reward_model:{name}": ref for name, ref in self.reward_models.items()})
        return {k: v for k, v in roles.items() if v}


@dataclass(kw_only=True)
class RecipeEvalConfig:
    config: dict[str, Any] = field(default_factory=dict)
    """EvalConfig fields (samples per prompt, temperature, top_p, ...)."""
    data: Any = "procedural"
    """`procedural`: the held-out split of the defaults' `data.procedural` (written once to
    runs/<recipe>/heldout/), or a list of jsonl/parquet files."""
    greedy: bool = True
    """Also measure greedy accuracy (one sample per prompt at temperature 0): the report's
    `accuracy` column, beside the sampled pass@1 / cons@k of `config`."""

    def validate(self) -> None:
        if self.data == "procedural":
            return
        if not isinstance(self.data, list) or not self.data or not all(isinstance(p, str) for p in self.data):
            raise ConfigError("data: 'procedural' or a non-empty list of held-out files")


@dataclass(kw_only=True)
class RecipeConfig:
    name: str
    """The recipe's run directory under output_dir."""
    output_dir: str = "runs"
    defaults: Optional[str] = None
    """A job config file (r1mega train/sft/pretrain) under every stage's job config."""
    common: dict[str, Any] = field(default_factory=dict)
    """A job config fragment merged over `defaults` for every stage (before a stage's `base` and
    `config`), e.g. rollout batch sizes."""
    eval: RecipeEvalConfig = field(default_factory=RecipeEvalConfig)
    stages: list[StageConfig] = field(default_factory=list)
    compare: list[list[str]] = field(default_factory=list)
    """Pairs of stages the report sets side by side with their training compute, e.g.
    [distill_student, rl_student] (the paper's distillation vs RL comparison)."""
    base_dir: str = "."
    """Set by the loader: the recipe file's directory (relative config paths resolve against it)."""

    def validate(self) -> None:
        if not self.stages:
            raise ConfigError("stages: a recipe needs at least one stage")
        seen: dict[str, str] = {}
        for i, st in enumerate(self.stages):
            if st.name in seen:
                raise ConfigError(f"stages[{i}].name: {st.name!r} is used twice")
            for role, ref in st.inputs.items():
                if ref in seen:
                    continue
                if (role in ("init", "checkpoint", "judge_model") or role.startswith("reward_model:")) and is_path(ref):
                    continue  # a directory, not a stage
                later = [s.name for s in self.stages[i + 1:]]
                where = "a later stage" if ref in later else "no stage"
                raise ConfigError(f"stages[{i}] ({st.name}).{role}: {ref!r} is {where}; known earlier stages: {list(seen)}")
            seen[st.name] = st.kind
        for i, pair in enumerate(self.compare):
            if len(pair) != 2 or any(p not in seen for p in pair):
                raise ConfigError(f"compare[{i}]: {pair} must name two stages of the recipe")
        for i, st in enumerate(self.stages):
            for role, ref in st.inputs.items():
                want = ("rm",) if role.startswith("reward_model:") else {
                    "init": TRAINING_KINDS, "checkpoint": TRAINING_KINDS, "judge_model": TRAINING_KINDS,
                    "data": ("select",), "samples": ("sample",)}[role]
                if ref in seen and seen[ref] not in want:
                    raise ConfigError(f"stages[{i}] ({st.name}).{role}: {ref!r} is a {seen[ref]} stage; needs one of {list(want)}")

    def stage(self, name: str) -> StageConfig:
        for st in self.stages:
            if st.name == name:
                return st
        raise ConfigError(f"unknown stage {name!r}; the recipe's stages: {[s.name for s in self.stages]}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def load_recipe(path: str, overrides: Optional[list[str]] = None) -> RecipeConfig:
    """Recipe YAML + dotted overrides (`stages.r1_zero.config.rl.steps=10` addresses a stage by
    name) -> validated RecipeConfig; ConfigError on mistakes."""
    from r1mega.configlib import apply_overrides, from_dict, load_yaml_tree

    raw = load_yaml_tree(path)
    base_dir = Path(path).resolve().parent
    stages = raw.get("stages")
    if isinstance(stages, list):
        # stages are a list in the file; overrides name them: stages.<name>.key=value
        by_name = {s.get("name"): s for s in stages if isinstance(s, dict)}
        raw = {**raw, "stages": by_name}
    raw = apply_overrides(raw, list(overrides or []))
    if isinstance(raw.get("stages"), dict):
        unknown = [k for k in raw["stages"] if k not in (by_name if isinstance(stages, list) else {}) and k != "__dir__"]
        if unknown:
            raise ConfigError(f"stages.{unknown[0]}: no stage of that name in {path}")
        raw["stages"] = [v for k, v in raw["stages"].items() if k != "__dir__"]
    raw["base_dir"] = str(base_dir)
    return from_dict(RecipeConfig, raw, base_dir=base_dir)
