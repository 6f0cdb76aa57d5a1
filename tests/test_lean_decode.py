"""LeanDecoder: the built-in engine's decode step without transformers' per-call machinery must give
the same bits as `model(...)`: logits of one step, and whole seeded generations (tokens and
log-probs compared with ==, not a tolerance)."""

import pytest
import torch
from transformers import DynamicCache

from r1mega.rollout.builtin import BuiltinEngine, kv_cache_argument
from r1mega.rollout.lean_decode import CACHE_CHUNK, LeanDecoder
from r1mega.rollout.types import SamplingParams
from tests.rollout_helpers import checkpoint_buckets, one_torch_thread, random_prompts, randomize_, tiny_config  # noqa: F401

DENSE = ["qwen2", "llama", "qwen3"]


def make_engine(family, seed, **kwargs):
    kwargs.setdefault("eos_token_ids", [])
    engine = BuiltinEngine(tiny_config(family), device="cpu", **kwargs)
    randomize_(engine.model, seed)
    return engine


def _prefilled(model, prompts):
    """Left-padded prefill of `prompts` into a DynamicCache; returns (cache, mask, next positions)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{kv_cache_argument(model): cache})
    return cache, mask, positions[:, -1] + 1


@pytest.mark.parametrize("family", DENSE)
@pytest.mark.parametrize("lengths", [(7, 3, 9, 1), (6, 6, 6)], ids=["padded", "unpadded"])
@torch.inference_mode()
def test_steps_give_the_bits_of_the_transformers_forward(family, lengths):
    engine = make_engine(family, seed=3)
    model = engine.model
    prompts = random_prompts(lengths, seed=4)
    cache, mask, pos = _prefilled(model, prompts)
    lean = LeanDecoder(model)
    lean.take_cache(_prefilled(model, prompts)[0])
    tokens = torch.randint(0, model.config.vocab_size, (len(prompts),), generator=torch.Generator().manual_seed(5))
    for step in range(CACHE_CHUNK + 3):  # the lean cache grows its buffers past CACHE_CHUNK positions
        mask = torch.cat([mask, mask.new_ones(len(prompts), 1)], dim=1)
        ref = model(
            input_ids=tokens.unsqueeze(1), attention_mask=mask, position_ids=pos.unsqueeze(1),
            use_cache=True, **{kv_cache_argument(model): cache},
        ).logits[:, -1]
        got = lean.step(tokens, mask, pos)
        assert got.shape == ref.shape and torch.equal(got, ref), (step, (got - ref).abs().max())
        tokens, pos = ref.argmax(-1), pos + 1
    for i, layer in enumerate(cache.layers):
        keys, values = lean.cached(i)
        assert torch.equal(keys, layer.keys) and torch.equal(values, layer.values)


@pytest.mark.parametrize("family", DENSE)
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_is_bit_identical_to_the_transformers_path(family, temperature):
    # groups of repeated prompts, several lengths (padding), EOS ending some samples early (rows
    # leave the cache mid-generation): everything the engine's decode loop does
    distinct = random_prompts((9, 2, 5, 12), seed=6)
    prompts = [distinct[i % 4] for i in range(16)]
    params = SamplingParams(max_new_tokens=CACHE_CHUNK + 6, temperature=temperature, seed=7)  # buffers grow
    lean = make_engine(family, seed=8, eos_token_ids=[11, 12, 13, 14, 15])
    plain = make_engine(family, seed=8, eos_token_ids=[11, 12, 13, 14, 15], lean_decode=False)
    assert lean._lean is not None and plain._lean is None
    a, b = lean.generate(prompts, params), plain.generate(prompts, params)
    assert [s.response_token_ids for s in a] == [s.response_token_ids for s in b]
    assert [s.response_logprobs for s in a] == [s.response_logprobs for s in b]  # exact floats
    assert [s.finish_reason for s in a] == [s.finish_reason for s in b]
    reasons = {s.finish_reason for s in a}
    assert reasons == {"stop", "length"} or temperature == 0.0  # sampled runs exercise early finishes
    assert lean._lean.keys == []  # the cache is dropped after the call


def test_lean_step_follows_weight_updates(tmp_path):
    # the decoder reads the modules' weights at every step, so a weight sync reaches it
    engine = make_engine("qwen2", seed=9)
    other = make_engine("qwen2", seed=10, lean_decode=False)
    prompts = random_prompts((5, 8), seed=11)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=12)
    before = engine.generate(prompts, params)
    engine.update_weights(checkpoint_buckets(other.model, tmp_path))
    after, ref = engine.generate(prompts, params), other.generate(prompts, params)
    assert [s.response_logprobs for s in after] == [s.response_logprobs for s in ref]
    assert [s.response_logprobs for s in after] != [s.response_logprobs for s in before]


@pytest.mark.parametrize(
    "family,overrides,reason",
    [
        ("qwen3_moe", {}, "model_type"),
        ("deepseek_v3", {}, "model_type"),
        ("qwen2", {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]}, "sliding"),
    ],
)
def test_unsupported_models_fall_back_to_transformers(family, overrides, reason):
    engine = BuiltinEngine(tiny_config(family, **overrides), device="cpu", eos_token_ids=[])
    assert engine._lean is None
    assert reason in LeanDecoder.unsupported_reason(engine.model)
    with pytest.raises(ValueError, match="LeanDecoder"):
        LeanDecoder(engine.model)
    out = engine.generate(random_prompts((4, 6), seed=13), SamplingParams(max_new_tokens=3, temperature=0.0))
    assert all(len(s.response_token_ids) == 3 for s in out)


def test_eager_attention_is_not_taken_over():
    engine = BuiltinEngine(tiny_config("llama"), device="cpu", eos_token_ids=[], attn_implementation="eager")
    assert engine._lean is None and "sdpa" in LeanDecoder.unsupported_reason(engine.model)


def test_the_rollout_config_switches_it():
    from r1mega.rollout.config import RolloutConfig

    on = BuiltinEngine.from_config(RolloutConfig(device="cpu"), tiny_config("qwen2"), eos_token_ids=[])
    off = BuiltinEngine.from_config(RolloutConfig(device="cpu", lean_decode=False), tiny_config("qwen2"), eos_token_ids=[])
    assert on._lean is not None and off._lean is None
