"""Collection: one RL step's prompts -> engine samples -> rewards -> shaped, filtered trajectories.

    collector = RolloutCollector(engine, rewards, sampler, prompts, algo, rollout_cfg, ...)
    trajectories, stats = collector.collect(step)

`rl.prompts_per_step` prompts x `algorithm.group_size` samples are generated and scored. DAPO's
dynamic sampling (Yu et al. 2025, "DAPO", §3.2) keeps a group only when its accuracy is not the same
for every response (not all right, not all wrong), judged on the `accuracy` component before any
length shaping, and samples more prompts to refill dropped groups. Without an `accuracy` component
(custom rewards) the task reward before shaping is the signal. The overlong penalty then shapes the
rewards of the kept responses; it never decides whether a group is informative.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import torch

from r1mega.rollout.types import SamplingParams
from r1mega.training.rl_batch import Trajectory
from r1mega.training.step_profile import NULL_PROFILE, StepProfile

__all__ = ["RolloutCollector", "dynamic_sampling_signal", "rollout_metrics"]


def dynamic_sampling_signal(scores: Sequence[dict[str, Any]]) -> torch.Tensor:
    """[N] float64 values whose all-equal groups dynamic sampling drops: each sample's `accuracy`,
    or its task `reward` when the reward has no accuracy component. Never includes shaping."""
    key = "accuracy" if scores and all("accuracy" in s for s in scores) else "reward"
    return torch.tensor([float(s[key]) for s in scores], dtype=torch.float64)


def rollout_metrics(samples, scores, rewards, group_size: int) -> dict[str, float]:
    """Metrics of everything generated in a step (before dynamic-sampling filtering)."""
    n = max(len(samples), 1)
    lengths = [len(s.response_token_ids) for s in samples]
    out = {
        "reward/mean": sum(rewards) / n,
        "response_length/mean": sum(lengths) / n,
        "response_length/max": float(max(lengths, default=0)),
        "response_length/clip_frac": sum(s.finish_reason == "length" for s in samples) / n,
    }
    names = sorted({k for s in scores for k in s if k != "reward"})
    for name in names:
        out[f"reward/{name}"] = sum(float(s.get(name, 0.0)) for s in scores) / n
    if "accuracy" in names:
        out["accuracy"] = out["reward/accuracy"]
    for name in names:
        if name.startswith("rm/") and name.count("/") == 1:
            # a reward model scores only some samples: its mean over those, and their share
            scored = [float(s[name]) for s in scores if name in s]
            out[f"{name}/mean"] = sum(scored) / max(len(scored), 1)
            out[f"{name}/share"] = len(scored) / n
    g = group_size
    r = torch.tensor(rewards, dtype=torch.float64)
    if r.numel() >= g and g > 1:
        groups = r[: r.numel() // g * g].view(-1, g)  # [B, G]
        out["groups/all_equal_frac"] = float((groups.max(1).values == groups.min(1).values).double().mean())
    return out


class RolloutCollector:
    """Generates, scores, shapes and filters one step's trajectories (see the module docstring)."""

    def __init__(
        self,
        engine,
        rewards,
        sampler,
        prompts: Sequence,
        algo,
        *,
        sampling_params: Callable[..., SamplingParams],
        max_new_tokens: int,
        prompts_per_step: int,
        run_seed: int,
        batch_unit: int,
        profile: StepProfile = NULL_PROFILE,
    ):
        """`sampling_params(seed=...)` makes a request's SamplingParams (`rollout.sampling_params`);
        `batch_unit`: the kept sample count must be a multiple of it (DP size x updates per batch)."""
        self.engine = engine
        self.rewards = rewards
        self.sampler = sampler
        self.prompts = prompts
        self.algo = algo
        self.sampling_params = sampling_params
        self.max_new_tokens = max_new_tokens
        self.prompts_per_step = prompts_per_step
        self.run_seed = run_seed
        self.batch_unit = batch_unit
        self.profile = profile

    def _generate_groups(self, prompt_indices: list[int], seed: int) -> tuple[list, list, list]:
        """(samples, prompt examples, reward dicts) for group_size samples of each prompt."""
        g = self.algo.group_size
        examples = [self.prompts[i] for i in prompt_indices for _ in range(g)]
        with self.profile.phase("generate"):
            samples = self.engine.generate([ex.prompt_token_ids for ex in examples], self.sampling_params(seed=seed))
        with self.profile.phase("reward"):
            scores = self.rewards.score(samples, [ex.reference for ex in examples])
        return samples, examples, scores

    def collect(self, step: int) -> tuple[list[Trajectory], dict[str, float]]:
        """Trajectories with shaped rewards for step `step` (0-based), and the step's rollout stats."""
        from r1mega.algorithms import informative_groups, overlong_penalty

        g = self.algo.group_size
        want = self.prompts_per_step
        kept: list[tuple] = []  # (sample, example, scores, reward) per kept response
        stats = {"rollout_s": 0.0, "reward_s": 0.0, "generated_tokens": 0.0, "rounds": 0.0, "groups_drawn": 0.0}
        all_rewards: list[float] = []
        all_scores: list[dict] = []
        all_samples: list = []
        rounds = 1 + (self.algo.max_resample_rounds if self.algo.dynamic_sampling else 0)
        for round_ in range(rounds):
            need = want - len(kept) // g
            if need <= 0:
                break
            indices = self.sampler.next_indices(need if round_ == 0 else max(need, want // 2))
            t0 = time.perf_counter()
            seed = (self.run_seed * 1_000_003 + step * 97 + round_) % (2**31)
            samples, examples, scores = self._generate_groups(indices, seed)
            t1 = time.perf_counter()
            with self.profile.phase("reward"):  # shaping and dynamic-sampling decisions
                if self.algo.dynamic_sampling:
                    keep = informative_groups(dynamic_sampling_signal(scores), g).tolist()
                else:
                    keep = [True] * len(indices)
                rewards = torch.tensor([s["reward"] for s in scores], dtype=torch.float64)
                if self.algo.overlong_shaping:
                    lengths = torch.tensor([len(s.response_token_ids) for s in samples])
                    penalty = overlong_penalty(
                        lengths, self.max_new_tokens, self.algo.overlong_buffer, self.algo.overlong_penalty
                    )
                    rewards = rewards + penalty.to(torch.float64)
                    for s, p in zip(scores, penalty.tolist()):
                        s["overlong_penalty"] = p
            stats["rollout_s"] += t1 - t0
            stats["reward_s"] += time.perf_counter() - t1
            stats["generated_tokens"] += float(sum(len(s.response_token_ids) for s in samples))
            stats["rounds"] += 1
            stats["groups_drawn"] += len(indices)
            all_rewards += rewards.tolist()
            all_scores += scores
            all_samples += samples
            for gi, k in enumerate(keep):
                if k:
                    for j in range(gi * g, (gi + 1) * g):
                        kept.append((samples[j], examples[j], scores[j], float(rewards[j])))
        with self.profile.phase("bookkeeping"):
            groups = min(len(kept) // g, want)
            # every mini-batch must split evenly over DP ranks: drop surplus groups (dynamic sampling)
            while groups > 0 and (groups * g) % self.batch_unit:
                groups -= 1
            kept = kept[: groups * g]
            trajectories = [
                Trajectory(
                    prompt_token_ids=list(s.prompt_token_ids),
                    response_token_ids=list(s.response_token_ids),
                    rollout_logprobs=list(s.response_logprobs),
                    reward=r,
                    index=i,
                    extra={"text": s.response_text, "finish": s.finish_reason, "scores": sc,
                           "prompt": ex.prompt_text, "answer": ex.reference.get("answer"),
                           **({"routed_experts": s.metadata["routed_experts"]} if "routed_experts" in s.metadata else {})},
                )
                for i, (s, ex, sc, r) in enumerate(kept)
            ]
            stats.update(rollout_metrics(all_samples, all_scores, all_rewards, g))
            stats["groups_kept"] = float(groups)
        return trajectories, stats
