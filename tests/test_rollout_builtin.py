"""BuiltinEngine on tiny dense models: KV cache vs full recompute, log-prob convention, batching,
finish rules. References are unpadded, cache-free forwards of the same transformers model."""

import pytest
import torch

from r1mega.rollout.builtin import BuiltinEngine
from r1mega.rollout.sampling import truncate_sorted
from r1mega.rollout.types import RolloutEngine, SamplingParams
from tests.rollout_helpers import (  # noqa: F401 (one_torch_thread is an autouse fixture)
    one_torch_thread,
    full_logprobs,
    greedy_no_cache,
    random_prompts,
    randomize_,
    tiny_config,
    tiny_tokenizer,
)

LENGTHS = (5, 1, 11, 3, 8, 2)


def make_engine(family="qwen2", seed=0, **kwargs):
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("eos_token_ids", [])
    engine = BuiltinEngine(tiny_config(family), **kwargs)
    randomize_(engine.model, seed)
    return engine


@pytest.fixture(scope="module")
def engine():
    return make_engine()


def test_engine_satisfies_the_protocol(engine):
    assert isinstance(engine, RolloutEngine)


@pytest.mark.parametrize("family", ["qwen2", "llama", "qwen3"])
def test_greedy_with_cache_equals_full_recompute(family):
    engine = make_engine(family, seed=1)
    prompts = random_prompts(LENGTHS, seed=1)
    samples = engine.generate(prompts, SamplingParams(max_new_tokens=16, temperature=0.0))
    for prompt, s in zip(prompts, samples):
        assert s.response_token_ids == greedy_no_cache(engine.model, prompt, 16)
        assert s.finish_reason == "length" and s.prompt_token_ids == prompt
        ref = full_logprobs(engine.model, prompt, s.response_token_ids)  # temperature 0 reports at T = 1
        torch.testing.assert_close(torch.tensor(s.response_logprobs, dtype=torch.float64), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, -1, 1.0), (1.3, 20, 1.0), (0.8, -1, 0.7), (1.0, 5, 0.9)])
def test_sampled_logprobs_equal_teacher_forced_untruncated(engine, temperature, top_k, top_p):
    prompts = random_prompts(LENGTHS, seed=2)
    params = SamplingParams(max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p, seed=3)
    samples = engine.generate(prompts, params)
    teacher = engine.compute_logprobs(prompts, [s.response_token_ids for s in samples], temperature)
    kept_mass = []
    for prompt, s, tf in zip(prompts, samples, teacher):
        ref = full_logprobs(engine.model, prompt, s.response_token_ids, temperature)
        torch.testing.assert_close(torch.tensor(s.response_logprobs, dtype=torch.float64), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(tf, dtype=torch.float64), ref, atol=1e-5, rtol=0)
        # every drawn token lies in its step's top-k/top-p set
        with torch.no_grad():
            logits = engine.model(torch.tensor([prompt + s.response_token_ids])).logits[0].double()
        probs = torch.softmax(logits[len(prompt) - 1 : -1] / temperature, dim=-1)  # [response, vocab]
        kept, ids = truncate_sorted(probs, top_k, top_p)
        if ids is not None:
            for step, token in enumerate(s.response_token_ids):
                assert token in ids[step][kept[step] > 0].tolist()
            kept_mass.append(kept.sum(-1))
    if kept_mass:
        # truncation removed real mass, so the renormalised log-prob (log p - log kept mass) differs
        # from the reported one by more than the tolerance: the report is the untruncated value
        assert float(torch.cat(kept_mass).min()) < 0.99


def test_top_k_one_equals_greedy(engine):
    prompts = random_prompts(LENGTHS, seed=4)
    greedy = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0.0))
    top1 = engine.generate(prompts, SamplingParams(max_new_tokens=10, temperature=0.9, top_k=1, seed=5))
    for p, g, t in zip(prompts, greedy, top1):
        assert g.response_token_ids == t.response_token_ids
        ref = full_logprobs(engine.model, p, t.response_token_ids, 0.9)  # reported at T = 0.9
        torch.testing.assert_close(torch.tensor(t.response_logprobs, dtype=torch.float64), ref, atol=1e-5, rtol=0)


def test_one_step_frequencies_match_the_model_softmax(engine):
    """3000 one-token samples of one prompt vs softmax(logits / T): every token's count within
    5 binomial sigmas (+1 count) of its expectation, and a 25% temperature error is detected."""
    n, temperature = 3000, 0.8
    prompt = random_prompts([6], seed=6)[0]
    samples = engine.generate([prompt] * n, SamplingParams(max_new_tokens=1, temperature=temperature, seed=7))
    counts = torch.bincount(torch.tensor([s.response_token_ids[0] for s in samples]), minlength=300).double()
    with torch.no_grad():
        logits = engine.model(torch.tensor([prompt])).logits[0, -1].double()

    def within(probs):
        sigma = torch.sqrt(n * probs * (1 - probs))
        return bool(torch.all((counts - n * probs).abs() <= 5 * sigma + 1))

    assert within(torch.softmax(logits / temperature, -1))
    assert not within(torch.softmax(logits / (1.25 * temperature), -1))


def test_batching_does_not_change_results():
    prompts = random_prompts((7, 2, 13, 1, 4, 9, 3), seed=8)
    reference = make_engine(seed=9, max_batch_size=1)
    one_by_one = [reference.generate([p], SamplingParams(max_new_tokens=12, temperature=0.0))[0] for p in prompts]
    # padded batches, small prefill chunks (2 padded tokens per row), finished rows leaving the batch
    for max_batch, budget in [(8, 8192), (3, 6), (7, 7)]:
        engine = make_engine(seed=9, max_batch_size=max_batch, max_tokens_per_forward=budget)
        batched = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.0))
        for a, b in zip(one_by_one, batched):
            assert a.response_token_ids == b.response_token_ids
            torch.testing.assert_close(b.response_logprobs, a.response_logprobs, atol=1e-5, rtol=0)


def test_samples_finishing_early_leave_the_batch_without_disturbing_the_rest():
    prompts = random_prompts((7, 2, 13, 1, 4, 9, 3), seed=8)
    engine = make_engine(seed=9, max_batch_size=8)
    free = engine.generate(prompts, SamplingParams(max_new_tokens=14, temperature=0.0))
    # stop ids that end some samples at different steps while others run to the length cap
    stops = {free[0].response_token_ids[2], free[3].response_token_ids[6]}
    expected = []
    for f in free:
        ids = f.response_token_ids
        cut = next((i + 1 for i, t in enumerate(ids) if t in stops), None)
        expected.append((ids[:cut] if cut else ids, "stop" if cut else "length"))
    assert len({len(e[0]) for e in expected}) >= 3 and any(r == "length" for _, r in expected)
    got = engine.generate(prompts, SamplingParams(max_new_tokens=14, temperature=0.0, stop_token_ids=sorted(stops)))
    for f, g, (ids, reason) in zip(free, got, expected):
        assert (g.response_token_ids, g.finish_reason) == (ids, reason)
        torch.testing.assert_close(g.response_logprobs, f.response_logprobs[: len(ids)], atol=1e-5, rtol=0)


def test_seeded_sampling_is_reproducible_and_batch_independent():
    prompts = random_prompts((4, 9, 2, 6), seed=10)
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.95, seed=11)
    a = make_engine(seed=12, max_batch_size=4).generate(prompts, params)
    b = make_engine(seed=12, max_batch_size=1, max_tokens_per_forward=3).generate(prompts, params)
    assert [s.response_token_ids for s in a] == [s.response_token_ids for s in b]
    c = make_engine(seed=12).generate(prompts, SamplingParams(**{**params.__dict__, "seed": 12}))
    assert [s.response_token_ids for s in a] != [s.response_token_ids for s in c]
    # repeats of one prompt get different streams, and an unseeded request draws from the engine
    group = make_engine(seed=12).generate([prompts[0]] * 4, params)
    assert len({tuple(s.response_token_ids) for s in group}) > 1
    engine = make_engine(seed=12)
    unseeded = SamplingParams(max_new_tokens=10, temperature=1.0)
    first, second = engine.generate(prompts, unseeded), engine.generate(prompts, unseeded)
    assert [s.response_token_ids for s in first] != [s.response_token_ids for s in second]


def test_repeated_prompts_prefilled_once_sample_as_if_prefilled_alone():
    # GRPO groups: samples of one prompt share its prefill (one forward per distinct prompt)
    distinct = random_prompts((6, 3, 9), seed=15)
    prompts = [distinct[i] for i in (0, 1, 0, 2, 1, 0, 2, 2)]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=16)
    shared = make_engine(seed=12, max_batch_size=8).generate(prompts, params)
    alone = make_engine(seed=12, max_batch_size=1).generate(prompts, params)  # no row can share
    assert [s.response_token_ids for s in shared] == [s.response_token_ids for s in alone]
    for a, b in zip(alone, shared):
        torch.testing.assert_close(b.response_logprobs, a.response_logprobs, atol=1e-5, rtol=0)
    assert len({tuple(s.response_token_ids) for s in shared}) > 3  # not one sample copied around


def _greedy_reference(engine, prompt, steps=20):
    return greedy_no_cache(engine.model, prompt, steps)


def test_stop_token_ids_and_eos():
    engine = make_engine(seed=13)
    prompt = random_prompts([5], seed=14)[0]
    free = _greedy_reference(engine, prompt)
    k = next(i for i in range(3, len(free)) if free[i] not in free[:i])  # a token's first appearance
    s = engine.generate([prompt], SamplingParams(max_new_tokens=20, temperature=0.0, stop_token_ids=[free[k]]))[0]
    assert s.finish_reason == "stop" and s.response_token_ids == free[: k + 1]  # the stop id is kept
    eos_engine = make_engine(seed=13, eos_token_ids=[free[k]])
    s = eos_engine.generate([prompt], SamplingParams(max_new_tokens=20, temperature=0.0))[0]
    assert s.finish_reason == "stop" and s.response_token_ids == free[: k + 1]
    # a stop on the very last allowed token still counts as "stop"
    s = engine.generate([prompt], SamplingParams(max_new_tokens=k + 1, temperature=0.0, stop_token_ids=[free[k]]))[0]
    assert s.finish_reason == "stop" and len(s.response_token_ids) == k + 1
    s = engine.generate([prompt], SamplingParams(max_new_tokens=k, temperature=0.0, stop_token_ids=[free[k]]))[0]
    assert s.finish_reason == "length" and s.response_token_ids == free[:k]


def test_eos_comes_from_tokenizer_and_config():
    tok = tiny_tokenizer()
    engine = BuiltinEngine(tiny_config(eos_token_id=7), tokenizer=tok, device="cpu")
    assert sorted(engine.eos_token_ids) == sorted({7, tok.eos_token_id})


def test_stop_strings_truncate_at_the_completing_token():
    tok = tiny_tokenizer()
    engine = make_engine(seed=15, tokenizer=tok)
    prompts = random_prompts((4, 7), seed=16)
    free = [_greedy_reference(engine, p, 24) for p in prompts]
    texts = [tok.decode(f, skip_special_tokens=True) for f in free]
    stops = []
    for f, text in zip(free, texts):
        # a stop string taken from the middle of the free-running text
        start = len(tok.decode(f[:6], skip_special_tokens=True))
        stop = text[start : start + 3]
        assert len(stop) == 3 and stop.strip(), f"degenerate stop string from {text!r}"
        stops.append(stop)
    samples = engine.generate(prompts, SamplingParams(max_new_tokens=24, temperature=0.0, stop=stops))
    for f, s in zip(free, samples):
        n = len(s.response_token_ids)
        prefixes = [tok.decode(f[: i + 1], skip_special_tokens=False) for i in range(len(f))]
        first = min(i + 1 for i, text in enumerate(prefixes) if any(x in text for x in stops))
        assert s.finish_reason == "stop" and n == first
        assert s.response_token_ids == f[:n]
        assert s.response_text == tok.decode(f[:n], skip_special_tokens=True)
        assert any(x in s.response_text for x in stops)


def test_stop_strings_without_tokenizer_is_an_error(engine):
    with pytest.raises(ValueError, match="stop strings need a tokenizer"):
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=4, stop=["x"]))


def test_max_length_and_text_without_tokenizer(engine):
    s = engine.generate([[3, 4, 5]], SamplingParams(max_new_tokens=6, temperature=0.0))[0]
    assert s.finish_reason == "length" and s.response_length == 6 and s.response_text == ""


def test_bad_prompts_are_named(engine):
    with pytest.raises(ValueError, match=r"prompts_token_ids\[1\]: empty"):
        engine.generate([[1], []], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"prompts_token_ids\[0\]: token id 300 is outside"):
        engine.generate([[1, 300]], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"SamplingParams\.top_p"):
        engine.generate([[1]], SamplingParams(max_new_tokens=2, top_p=0))


def test_compute_logprobs_handles_empty_responses_and_temperature_zero(engine):
    prompts = random_prompts((3, 6), seed=17)
    responses = [random_prompts([5], seed=18)[0], []]
    out = engine.compute_logprobs(prompts, responses, temperature=0.0)
    assert out[1] == []
    ref = full_logprobs(engine.model, prompts[0], responses[0])  # at T = 1
    torch.testing.assert_close(torch.tensor(out[0], dtype=torch.float64), ref, atol=1e-5, rtol=0)


def test_left_padding_positions_count_real_tokens_only(engine):
    """RoPE attention is shift-invariant, so wrong offsets would not show in the outputs of these
    models; they would under position-dependent rope scaling and in rounding vs the trainer."""
    ids, mask, positions = engine._left_pad([[5, 6, 7], [8], [9, 10]])
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert [p[m.bool()].tolist() for p, m in zip(positions, mask)] == [[0, 1, 2], [0], [0, 1]]


def test_generation_uses_the_supported_kv_cache_argument():
    # transformers >= 5.2x renamed the forward's `past_key_values` to `cache` and warns that the old
    # name goes away in 5.40; the engine passes whichever name the installed model's forward takes
    import inspect
    import warnings

    from r1mega.rollout.builtin import kv_cache_argument

    engine = make_engine()
    params = inspect.signature(engine.model.forward).parameters
    assert kv_cache_argument(engine.model) == ("cache" if "cache" in params else "past_key_values")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.generate([[3, 5, 7, 11]], SamplingParams(max_new_tokens=6, temperature=1.0, seed=1))
        engine.compute_logprobs([[3, 5, 7]], [[11, 13]])
    assert not [w for w in caught if "past_key_values" in str(w.message)], [str(w.message) for w in caught]
