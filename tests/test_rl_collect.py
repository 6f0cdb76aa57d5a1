"""The RL loop's collection (`RolloutCollector`, what `RLTrainer` calls each step): DAPO dynamic
sampling filters on accuracy, before the overlong penalty shapes the rewards.

The engine is scripted (it returns chosen completions with chosen lengths); the rewards are the real
reward pool, so the test runs the loop's own code from generation to trajectories.
"""

from __future__ import annotations

import random

import pytest

from r1mega.algorithms import AlgorithmConfig
from r1mega.data.prompts import PromptExample
from r1mega.data.sampler import PromptSampler
from r1mega.rewards.config import RewardConfig
from r1mega.rewards.pool import RewardPool
from r1mega.rollout.types import Sample, SamplingParams
from r1mega.training.rl_collect import RolloutCollector, dynamic_sampling_signal

G = 4
MAX_NEW = 40
BUFFER = 10  # overlong penalty ramps from 0 at 30 tokens to -1 at 40


class ScriptedEngine:
    """Returns, for each prompt of a call, the next scripted (answer or None, length) of that prompt."""

    def __init__(self, script: dict[int, list[tuple[str | None, int]]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.calls: list[list[int]] = []

    def generate(self, prompts_token_ids, sampling: SamplingParams) -> list[Sample]:
        self.calls.append([p[0] for p in prompts_token_ids])
        out = []
        for p in prompts_token_ids:
            answer, length = self.script[p[0]].pop(0)
            text = "<think>adding</think> <answer>" + answer + "</answer>" if answer is not None else "no idea"
            out.append(Sample(prompt_token_ids=list(p), response_token_ids=[7] * length,
                              response_logprobs=[-0.5] * length, finish_reason="stop", response_text=text))
        return out


def _prompts(n: int) -> list[PromptExample]:
    # the first prompt token is the prompt's id; the answer of prompt i is str(10 + i)
    return [PromptExample(prompt_text=f"p{i}", prompt_token_ids=[i, 100 + i],
                          reference={"task": "arithmetic", "answer": str(10 + i), "source": f"test:{i}"})
            for i in range(n)]


def _collector(engine, pool, prompts, *, rounds: int, name: str = "dapo", **algo):
    res = AlgorithmConfig(name=name, group_size=G, overlong_buffer=BUFFER, max_resample_rounds=rounds,
                          **algo).resolved(MAX_NEW)
    return RolloutCollector(
        engine, pool, PromptSampler(len(prompts), seed=0, shuffle=False), prompts, res,
        sampling_params=lambda seed: SamplingParams(max_new_tokens=MAX_NEW, seed=seed),
        max_new_tokens=MAX_NEW, prompts_per_step=2, run_seed=0, batch_unit=1,
    )


@pytest.fixture(scope="module")
def pool():
    with RewardPool(RewardConfig(num_workers=0)) as p:
        yield p


def _script_equal_accuracy_different_lengths() -> dict:
    right, wrong = str(10), "999"
    return {
        # prompt 0: all right; lengths inside the overlong buffer differ -> shaped rewards differ
        0: [(right, 12), (right, 33), (right, 36), (right, 39)],
        # prompt 1: two right, two wrong -> informative
        1: [("11", 20), ("11", 31), (wrong, 25), (None, 39)],
        # prompt 2: all wrong with different lengths -> shaped rewards differ, accuracy does not
        2: [(wrong, 5), (wrong, 32), (None, 38), (wrong, 12)],
        # prompt 3: refill candidate, mixed accuracy
        3: [("13", 10), (wrong, 10), ("13", 35), (wrong, 15)],
    }


def test_dynamic_sampling_drops_groups_of_equal_accuracy_even_when_shaped_rewards_differ(pool):
    engine = ScriptedEngine(_script_equal_accuracy_different_lengths())
    collector = _collector(engine, pool, _prompts(4), rounds=0)
    # the overlong penalty alone makes prompt 0's and 2's shaped rewards differ: the old rule kept them
    trajectories, stats = collector.collect(step=0)
    assert engine.calls == [[0] * G + [1] * G]
    kept_prompts = {t.prompt_token_ids[0] for t in trajectories}
    assert kept_prompts == {1}
    assert stats["groups_kept"] == 1.0 and stats["groups_drawn"] == 2.0
    # the kept rewards are shaped: accuracy + format + the overlong penalty of each length
    by_length = {len(t.response_token_ids): t for t in trajectories}
    for length, correct, formatted in [(20, 1, 1), (31, 1, 1), (25, 0, 1), (39, 0, 0)]:
        penalty = -min(max(length - (MAX_NEW - BUFFER), 0) / BUFFER, 1.0)
        t = by_length[length]
        assert t.extra["scores"]["accuracy"] == correct
        assert t.reward == pytest.approx(correct + formatted + penalty, abs=1e-6)  # the penalty is float32
        assert t.extra["scores"]["overlong_penalty"] == pytest.approx(penalty, abs=1e-6)


def test_dynamic_sampling_refills_from_new_prompts(pool):
    engine = ScriptedEngine(_script_equal_accuracy_different_lengths())
    collector = _collector(engine, pool, _prompts(4), rounds=2)
    trajectories, stats = collector.collect(step=0)
    # round 1 drew prompts 0, 1 (0 dropped); each refill round draws the one missing group:
    # prompt 2 (all wrong: dropped), then prompt 3 (kept)
    assert engine.calls == [[0] * G + [1] * G, [2] * G, [3] * G]
    assert [t.prompt_token_ids[0] for t in trajectories] == [1] * G + [3] * G
    assert stats["rounds"] == 3.0 and stats["groups_kept"] == 2.0
    assert [t.index for t in trajectories] == list(range(2 * G))


def test_without_dynamic_sampling_every_group_is_kept(pool):
    engine = ScriptedEngine(_script_equal_accuracy_different_lengths())
    collector = _collector(engine, pool, _prompts(4), rounds=0, dynamic_sampling=False)
    trajectories, _ = collector.collect(step=0)
    assert [t.prompt_token_ids[0] for t in trajectories] == [0] * G + [1] * G


def test_the_signal_is_accuracy_else_the_task_reward():
    rng = random.Random()
    scores = [{"reward": rng.random(), "accuracy": float(rng.random() < 0.5)} for _ in range(8)]
    assert dynamic_sampling_signal(scores).tolist() == [s["accuracy"] for s in scores]
    custom = [{"reward": rng.random(), "helpful": rng.random()} for _ in range(8)]
    assert dynamic_sampling_signal(custom).tolist() == [s["reward"] for s in custom]
