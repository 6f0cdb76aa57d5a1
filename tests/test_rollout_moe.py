"""MoE architectures in the BuiltinEngine (Qwen3-MoE; DeepSeek-V3 with MLA, shared expert, sigmoid
group-limited routing with the correction bias): cache vs recompute, batching, log-prob convention."""

import pytest
import torch

from r1mega.rollout.builtin import BuiltinEngine
from r1mega.rollout.types import SamplingParams
from tests.rollout_helpers import (  # noqa: F401 (one_torch_thread is an autouse fixture)
    full_logprobs,
    greedy_no_cache,
    one_torch_thread,
    random_prompts,
    randomize_,
    tiny_config,
)

MOE = ["qwen3_moe", "deepseek_v3"]


def _engine(family, **kwargs):
    engine = BuiltinEngine(tiny_config(family), device="cpu", eos_token_ids=[], **kwargs)
    randomize_(engine.model, 31)
    return engine


@pytest.mark.parametrize("experts", [None, "eager"])
@pytest.mark.parametrize("family", MOE)
def test_moe_greedy_with_cache_equals_full_recompute(family, experts):
    engine = _engine(family, experts_implementation=experts)
    prompts = random_prompts((4, 10, 1, 7), seed=32)
    samples = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.0))
    for p, s in zip(prompts, samples):
        assert s.response_token_ids == greedy_no_cache(engine.model, p, 12)
        torch.testing.assert_close(
            torch.tensor(s.response_logprobs, dtype=torch.float64),
            full_logprobs(engine.model, p, s.response_token_ids),
            atol=1e-5,
            rtol=0,
        )


@pytest.mark.parametrize("family", MOE)
def test_moe_batching_and_sampling(family):
    prompts = random_prompts((6, 2, 9, 3), seed=33)
    params = SamplingParams(max_new_tokens=10, temperature=0.9, top_p=0.95, seed=34)
    batched = _engine(family, max_batch_size=4, max_tokens_per_forward=8).generate(prompts, params)
    single = _engine(family, max_batch_size=1).generate(prompts, params)
    engine = _engine(family)
    for p, a, b in zip(prompts, batched, single):
        assert a.response_token_ids == b.response_token_ids
        ref = full_logprobs(engine.model, p, a.response_token_ids, 0.9)
        torch.testing.assert_close(torch.tensor(a.response_logprobs, dtype=torch.float64), ref, atol=1e-5, rtol=0)
