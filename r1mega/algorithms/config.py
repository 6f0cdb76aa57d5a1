"""The `algorithm:` config section: which RL algorithm trains the policy, as a preset plus overrides.

Each name selects a preset (advantage estimator, policy-loss form, clip range, aggregation, KL
placement, data-side shaping) taken from its paper; any field left at None takes the preset's
value, any field set replaces it. `AlgorithmConfig.resolved(max_new_tokens)` applies the preset and
returns a frozen `ResolvedAlgorithm` with every value the RL loop needs. Formulas and sources are in
docs/algorithms.md.

This module stays torch-free (config loading must not import torch): `loss_options` imports the
kernels' `PolicyLossOptions` when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional

from r1mega.configlib import ConfigError

if TYPE_CHECKING:  # keep config loading free of the torch import
    from r1mega.kernels.policy_loss import PolicyLossOptions

__all__ = ["ALGORITHMS", "AGG_MODES", "KL_TYPES", "AlgorithmConfig", "ResolvedAlgorithm", "PRESETS", "Preset"]

ALGORITHMS = ("grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce++")
# the same choices as r1mega.kernels.policy_loss (which imports torch, so they are spelled out here)
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_TYPES = ("k1", "k2", "k3", "low_var_kl")

AlgorithmName = Literal["grpo", "dr_grpo", "dapo", "gspo", "cispo", "rloo", "reinforce++"]
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
KLType = Literal["k1", "k2", "k3", "low_var_kl"]


@dataclass(frozen=True, kw_only=True)
class Preset:
    """One algorithm's defaults, as its paper specifies them (sources in `PRESETS`' comments)."""

    advantage_mode: str
    loss_type: Literal["ppo_clip", "cispo"]
    ratio_level: Literal["token", "sequence"]
    clip_eps_low: float
    clip_eps_high: float
    agg_mode: str
    kl_type: Optional[str]
    kl_coef: float
    dynamic_sampling: bool = False
    overlong_buffer_divisor: int = 0
    """Soft overlong buffer = max_new_tokens // this (0 = no length shaping)."""


PRESETS: dict[str, Preset] = {
    # DeepSeekMath (Shao et al. 2024) eq. 3: per-token clipped ratio, eps 0.2, KL in the loss with
    # the k3 estimator, mean over each response's tokens then over responses. KL weight 0.001 is
    # DeepSeek-R1-Zero's (DeepSeek-AI 2025); DeepSeekMath itself used 0.04.
    "grpo": Preset(advantage_mode="grpo", loss_type="ppo_clip", ratio_level="token", clip_eps_low=0.2,
                   clip_eps_high=0.2, agg_mode="seq-mean-token-mean", kl_type="k3", kl_coef=0.001),
    # Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): no std division, no
    # per-response length division (a constant, the max generation length, instead), no KL.
    "dr_grpo": Preset(advantage_mode="dr_grpo", loss_type="ppo_clip", ratio_level="token", clip_eps_low=0.2,
                      clip_eps_high=0.2, agg_mode="seq-mean-token-sum-norm", kl_type=None, kl_coef=0.0),
    # DAPO (Yu et al. 2025): clip-higher 0.2/0.28, token-level mean, no KL, dynamic sampling, soft
    # overlong punishment with a 4096-token buffer out of 20480 generated tokens (1/5).
    "dapo": Preset(advantage_mode="grpo", loss_type="ppo_clip", ratio_level="token", clip_eps_low=0.2,
                   clip_eps_high=0.28, agg_mode="token-mean", kl_type=None, kl_coef=0.0,
                   dynamic_sampling=True, overlong_buffer_divisor=5),
    # GSPO (Zheng et al. 2025): length-normalised sequence ratio, clip 3e-4 / 4e-4, mean over
    # responses, group-normalised advantages, no KL.
    "gspo": Preset(advantage_mode="grpo", loss_type="ppo_clip", ratio_level="sequence", clip_eps_low=3e-4,
                   clip_eps_high=4e-4, agg_mode="seq-mean-token-mean", kl_type=None, kl_coef=0.0),
    # CISPO (MiniMax-M1, MiniMax 2025): stop-gradient clipped IS weight times logp; no lower bound
    # on the weight (eps_low large: 1.0 puts the floor at 0), only eps_high tuned (the paper gives
    # no value; 0.28 is DAPO's clip-higher), token-level mean, group-normalised advantages, no KL.
    "cispo": Preset(advantage_mode="grpo", loss_type="cispo", ratio_level="token", clip_eps_low=1.0,
                    clip_eps_high=0.28, agg_mode="token-mean", kl_type=None, kl_coef=0.0),
    # RLOO (Ahmadian et al. 2024, "Back to Basics"): leave-one-out baseline, the whole response is one
    # action (sum of token log-probs, mean over responses); PPO's clip guards the off-policy case.
    "rloo": Preset(advantage_mode="rloo", loss_type="ppo_clip", ratio_level="token", clip_eps_low=0.2,
                   clip_eps_high=0.2, agg_mode="seq-mean-token-sum", kl_type=None, kl_coef=0.0),
    # REINFORCE++ (Hu et al. 2025): advantages normalised over the global batch, PPO's clipped loss,
    # token-level mean; for group-sampled reasoning runs the paper puts KL in the loss with the k2
    # estimator (its RLHF variant subtracts k1 from the reward: kl_in=reward, kl_type=k1).
    "reinforce++": Preset(advantage_mode="reinforce++", loss_type="ppo_clip", ratio_level="token",
                          clip_eps_low=0.2, clip_eps_high=0.2, agg_mode="token-mean", kl_type="k2",
                          kl_coef=0.001),
}


@dataclass(frozen=True, kw_only=True)
class ResolvedAlgorithm:
    """Every value the RL loop needs, presets applied (built by `AlgorithmConfig.resolved`)."""

    name: str
    group_size: int
    advantage_mode: str
    """`r1mega.kernels.group_advantages` mode."""
    adv_eps: float
    loss_type: Literal["ppo_clip", "cispo"]
    ratio_level: Literal["token", "sequence"]
    clip_eps_low: float
    clip_eps_high: float
    dual_clip_c: Optional[float]
    agg_mode: str
    norm_length: Optional[int]
    """Constant divisor of seq-mean-token-sum-norm; None only when max_new_tokens was not given
    (then `policy_loss` falls back to the padded length)."""
    kl_type: Optional[str]
    kl_coef: float
    kl_in: Literal["loss", "reward"]
    entropy_coef: float
    tis_cap: Optional[float]
    dynamic_sampling: bool
    max_resample_rounds: int
    overlong_buffer: int
    """Soft overlong buffer in tokens; 0 = no length shaping."""
    overlong_penalty: float
    ref_refresh_every: int
    updates_per_batch: int
    max_new_tokens: Optional[int]

    @property
    def uses_kl(self) -> bool:
        return self.kl_type is not None and self.kl_coef > 0

    @property
    def needs_reference(self) -> bool:
        """A reference model's log-probs are needed (KL in the loss or in the reward)."""
        return self.uses_kl

    @property
    def kl_in_loss(self) -> bool:
        return self.uses_kl and self.kl_in == "loss"

    @property
    def kl_in_reward(self) -> bool:
        return self.uses_kl and self.kl_in == "reward"

    @property
    def overlong_shaping(self) -> bool:
        return self.overlong_buffer > 0 and self.overlong_penalty > 0

    def loss_options(self) -> "PolicyLossOptions":
        """The kernels' `PolicyLossOptions` for this algorithm (no KL term when KL is in the reward)."""
        from r1mega.kernels.policy_loss import PolicyLossOptions

        opts = PolicyLossOptions(
            loss_type=self.loss_type,
            clip_eps_low=self.clip_eps_low,
            clip_eps_high=self.clip_eps_high,
            dual_clip_c=self.dual_clip_c,
            ratio_level=self.ratio_level,
            kl_type=self.kl_type if self.kl_in_loss else None,
            kl_coef=self.kl_coef if self.kl_in_loss else 0.0,
            entropy_coef=self.entropy_coef,
            tis_cap=self.tis_cap,
            agg_mode=self.agg_mode,
            norm_length=self.norm_length,
        )
        opts.validate()
        return opts


@dataclass(kw_only=True)
class AlgorithmConfig:
    name: AlgorithmName = "grpo"
    """RL algorithm preset: grpo, dr_grpo, dapo, gspo, cispo, rloo, reinforce++ (docs/algorithms.md)."""
    group_size: int = 8
    """G: responses sampled per prompt (>= 1; rloo needs >= 2). R1-Zero used 16."""
    clip_eps_low: Optional[float] = None
    """Ratio floor 1 - clip_eps_low (in [0, 1]); None = the preset's (0.2; GSPO 3e-4; CISPO 1.0)."""
    clip_eps_high: Optional[float] = None
    """Ratio ceiling 1 + clip_eps_high; None = the preset's (0.2; DAPO/CISPO 0.28; GSPO 4e-4)."""
    agg_mode: Optional[AggMode] = None
    """How per-token losses become one scalar (token-mean, seq-mean-token-mean, seq-mean-token-sum,
    seq-mean-token-sum-norm); None = the preset's."""
    kl_type: Optional[KLType] = None
    """KL(pi || pi_ref) estimator: k1, k2, k3, low_var_kl; None = the preset's (grpo k3,
    reinforce++ k2, others none)."""
    kl_coef: Optional[float] = None
    """KL weight; None = the preset's (grpo/reinforce++ 0.001, others 0). > 0 needs a kl_type."""
    kl_in: Literal["loss", "reward"] = "loss"
    """Where the KL goes: "loss" adds kl_coef * k(pi, pi_ref) per token to the loss; "reward"
    subtracts kl_coef * sum_t k(pi_old, pi_ref) from each response's reward before advantages."""
    dynamic_sampling: Optional[bool] = None
    """DAPO's dynamic sampling: drop groups whose accuracy is the same for every response (all right or
    all wrong, before length shaping) and refill the batch with more rollouts; None = the preset's
    (on for dapo)."""
    overlong_buffer: Optional[int] = None
    """DAPO's soft overlong punishment: the last this-many tokens before max_new_tokens are penalised
    linearly (0 = off); None = the preset's (dapo: max_new_tokens // 5, DAPO's 4096 of 20480)."""
    dual_clip_c: Optional[float] = None
    """Dual-clip bound c > 1 for negative advantages (ppo_clip losses only); None = off."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (loss -= entropy_coef * entropy); 0 = off, as in every preset."""
    tis_cap: Optional[float] = None
    """Truncated importance sampling cap C on pi_old / pi_rollout for rollout/training mismatch
    (Yao et al. 2025 use 2.0); None = off."""
    norm_length: Optional[int] = None
    """Dr. GRPO's constant length divisor (seq-mean-token-sum-norm); None = rollout max_new_tokens."""
    adv_eps: float = 1e-6
    """Added to the std in the normalised advantages (grpo, reinforce++)."""
    overlong_penalty: float = 1.0
    """Penalty at max_new_tokens of the soft overlong punishment (DAPO: 1)."""
    max_resample_rounds: int = 3
    """DAPO over-sampling: extra rollout rounds to refill groups dropped by dynamic sampling."""
    ref_refresh_every: int = 0
    """Copy the policy into the reference model every N steps; 0 = never (R1-Zero: 400)."""
    updates_per_batch: int = 1
    """Optimizer steps per rollout batch (the batch is split into this many mini-batches); > 1 makes
    the ratio to the old log-probs non-trivial."""

    # ------------------------------------------------------------------------------------------

    @property
    def preset(self) -> Preset:
        if self.name not in PRESETS:
            raise ConfigError(f"name: {self.name!r} is not one of {list(ALGORITHMS)}")
        return PRESETS[self.name]

    @property
    def advantage_mode(self) -> str:
        """The `group_advantages` mode of this algorithm."""
        return self.preset.advantage_mode

    def _pick(self, field_name: str):
        value = getattr(self, field_name)
        return getattr(self.preset, field_name) if value is None else value

    @property
    def needs_reference(self) -> bool:
        """A reference model is needed: KL (in the loss or the reward) with a coefficient > 0."""
        return self._pick("kl_type") is not None and self._pick("kl_coef") > 0

    def validate(self) -> None:
        if self.name not in ALGORITHMS:
            raise ConfigError(f"name: {self.name!r} is not one of {list(ALGORITHMS)}")
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ConfigError(f"group_size: must be an integer >= 1, got {self.group_size!r}")
        if self.name == "rloo" and self.group_size < 2:
            raise ConfigError(f"group_size: rloo's leave-one-out baseline needs >= 2 responses per prompt, "
                              f"got {self.group_size}")
        low, high = self._pick("clip_eps_low"), self._pick("clip_eps_high")
        if not 0 <= low <= 1:
            raise ConfigError(f"clip_eps_low: must be in [0, 1] (ratio floor 1 - eps >= 0), got {low}")
        if not high >= 0:
            raise ConfigError(f"clip_eps_high: must be >= 0, got {high}")
        if self.agg_mode is not None and self.agg_mode not in AGG_MODES:
            raise ConfigError(f"agg_mode: {self.agg_mode!r} is not one of {list(AGG_MODES)}")
        if self.kl_type is not None and self.kl_type not in KL_TYPES:
            raise ConfigError(f"kl_type: {self.kl_type!r} is not one of {list(KL_TYPES)}")
        if self.kl_in not in ("loss", "reward"):
            raise ConfigError(f"kl_in: {self.kl_in!r} is not one of ['loss', 'reward']")
        kl_coef = self._pick("kl_coef")
        if not kl_coef >= 0:
            raise ConfigError(f"kl_coef: must be >= 0, got {kl_coef}")
        if kl_coef > 0 and self._pick("kl_type") is None:
            raise ConfigError(f"kl_type: kl_coef={kl_coef} needs an estimator and the {self.name} preset has "
                              f"none; set kl_type to one of {list(KL_TYPES)}")
        if self.dual_clip_c is not None:
            if self.preset.loss_type != "ppo_clip":
                raise ConfigError(f"dual_clip_c: applies to ppo_clip losses only, not {self.name}'s "
                                  f"{self.preset.loss_type}")
            if not self.dual_clip_c > 1:
                raise ConfigError(f"dual_clip_c: must be > 1, got {self.dual_clip_c}")
        if not self.entropy_coef >= 0:
            raise ConfigError(f"entropy_coef: must be >= 0, got {self.entropy_coef}")
        if self.tis_cap is not None and not self.tis_cap > 0:
            raise ConfigError(f"tis_cap: must be > 0 or null, got {self.tis_cap}")
        if self.norm_length is not None and self.norm_length < 1:
            raise ConfigError(f"norm_length: must be >= 1 or null, got {self.norm_length}")
        if not self.adv_eps >= 0:
            raise ConfigError(f"adv_eps: must be >= 0, got {self.adv_eps}")
        if self.overlong_buffer is not None and self.overlong_buffer < 0:
            raise ConfigError(f"overlong_buffer: must be >= 0 tokens (0 = off), got {self.overlong_buffer}")
        if not self.overlong_penalty >= 0:
            raise ConfigError(f"overlong_penalty: must be >= 0, got {self.overlong_penalty}")
        if self.max_resample_rounds < 0:
            raise ConfigError(f"max_resample_rounds: must be >= 0, got {self.max_resample_rounds}")
        if self._pick("dynamic_sampling") and self.group_size < 2:
            raise ConfigError(f"dynamic_sampling: every group of {self.group_size} response is all-equal and "
                              "would be dropped; use group_size >= 2 or dynamic_sampling=false")
        if self.ref_refresh_every < 0:
            raise ConfigError(f"ref_refresh_every: must be >= 0 (0 = never), got {self.ref_refresh_every}")
        if self.updates_per_batch < 1:
            raise ConfigError(f"updates_per_batch: must be >= 1, got {self.updates_per_batch}")

    def resolved(self, max_new_tokens: Optional[int] = None) -> ResolvedAlgorithm:
        """Presets applied. `max_new_tokens` (rollout.max_new_tokens) sizes the token-counted values
        (DAPO's overlong buffer, Dr. GRPO's norm_length); a preset that needs it and does not get it
        is refused rather than guessed."""
        self.validate()
        p = self.preset
        if max_new_tokens is not None and (not isinstance(max_new_tokens, int) or max_new_tokens < 1):
            raise ConfigError(f"rollout.max_new_tokens: must be an integer >= 1, got {max_new_tokens!r}")
        buffer = self.overlong_buffer
        if buffer is None:
            if p.overlong_buffer_divisor > 0 and max_new_tokens is None:
                raise ConfigError(f"overlong_buffer: the {self.name} preset sizes it from max_new_tokens; "
                                  "call resolved(max_new_tokens) or set overlong_buffer")
            buffer = max_new_tokens // p.overlong_buffer_divisor if p.overlong_buffer_divisor > 0 else 0
        if max_new_tokens is not None and buffer > max_new_tokens:
            raise ConfigError(f"overlong_buffer: {buffer} tokens exceeds rollout.max_new_tokens={max_new_tokens}")
        agg = self._pick("agg_mode")
        norm_length = self.norm_length if self.norm_length is not None else max_new_tokens
        if agg == "seq-mean-token-sum-norm" and norm_length is None:
            raise ConfigError("norm_length: seq-mean-token-sum-norm divides by a constant length; call "
                              "resolved(max_new_tokens) or set norm_length")
        return ResolvedAlgorithm(
            name=self.name,
            group_size=self.group_size,
            advantage_mode=p.advantage_mode,
            adv_eps=self.adv_eps,
            loss_type=p.loss_type,
            ratio_level=p.ratio_level,
            clip_eps_low=float(self._pick("clip_eps_low")),
            clip_eps_high=float(self._pick("clip_eps_high")),
            dual_clip_c=self.dual_clip_c,
            agg_mode=agg,
            norm_length=norm_length,
            kl_type=self._pick("kl_type"),
            kl_coef=float(self._pick("kl_coef")),
            kl_in=self.kl_in,
            entropy_coef=self.entropy_coef,
            tis_cap=self.tis_cap,
            dynamic_sampling=bool(self._pick("dynamic_sampling")),
            max_resample_rounds=self.max_resample_rounds,
            overlong_buffer=int(buffer),
            overlong_penalty=self.overlong_penalty,
            ref_refresh_every=self.ref_refresh_every,
            updates_per_batch=self.updates_per_batch,
            max_new_tokens=max_new_tokens,
        )

    def loss_options(self, max_new_tokens: int) -> "PolicyLossOptions":
        """`PolicyLossOptions` for `policy_loss` (max_new_tokens: Dr. GRPO's default norm_length)."""
        return self.resolved(max_new_tokens).loss_options()
