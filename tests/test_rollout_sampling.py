"""The sampler alone: truncation sets, log-prob convention, empirical frequencies, per-sample streams."""

import math

import pytest
import torch

from r1mega.rollout.sampling import (
    UniformStreams,
    draw_uniforms,
    sample_generators,
    sample_next_tokens,
    scaled_logprobs,
    truncate_sorted,
)
from r1mega.rollout.types import SamplingParams
from tests.rollout_helpers import one_torch_thread  # noqa: F401 (autouse fixture)


def _fixed_probs(vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(vocab, generator=g, dtype=torch.float64)
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.8, 0.95, 0.999])
def test_top_p_keeps_the_smallest_set_reaching_the_mass(top_p):
    probs = _fixed_probs()
    kept, ids = truncate_sorted(probs.unsqueeze(0), top_k=-1, top_p=top_p)
    kept, ids = kept[0], ids[0]
    n_kept = int((kept > 0).sum())
    order = torch.argsort(probs, descending=True)
    # the kept tokens are the n most likely ones
    assert sorted(ids[:n_kept].tolist()) == sorted(order[:n_kept].tolist())
    assert torch.all(kept[n_kept:] == 0)
    mass = float(probs[order[:n_kept]].sum())
    assert mass >= top_p - 1e-12  # reaches the mass ...
    assert float(probs[order[: n_kept - 1]].sum()) < top_p  # ... and is the smallest such set
    assert n_kept >= 1


def test_top_k_then_top_p_on_the_renormalised_top_k():
    probs = _fixed_probs(seed=1)
    k, top_p = 6, 0.7
    kept, ids = truncate_sorted(probs.unsqueeze(0), top_k=k, top_p=top_p)
    assert ids.shape == (1, k)
    assert sorted(ids[0].tolist()) == sorted(torch.topk(probs, k).indices.tolist())
    top = torch.topk(probs, k).values
    renorm = top / top.sum()
    n = int((kept[0] > 0).sum())
    assert float(renorm[:n].sum()) >= top_p and float(renorm[: n - 1].sum()) < top_p


def test_most_likely_token_always_survives_a_tiny_top_p():
    probs = _fixed_probs(seed=2).unsqueeze(0)
    kept, ids = truncate_sorted(probs, top_k=-1, top_p=1e-6)
    assert int((kept > 0).sum()) == 1 and int(ids[0, 0]) == int(probs.argmax())


def _chi_square_ok(counts: torch.Tensor, probs: torch.Tensor, n: int) -> bool:
    """Pearson chi-square against `probs` (bins with expected count < 5 pooled), at p ~ 1e-6."""
    expected = probs * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().unsqueeze(0)])
    exp = torch.cat([expected[big], expected[~big].sum().unsqueeze(0)])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    stat = float(((obs - exp) ** 2 / exp).sum())
    dof = len(exp) - 1
    # Wilson-Hilferty: the chi-square quantile at z = 4.9 (two-sided p ~ 1e-6)
    limit = dof * (1 - 2 / (9 * dof) + 4.9 * math.sqrt(2 / (9 * dof))) ** 3
    return stat < limit


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, -1, 1.0), (0.6, -1, 1.0), (1.3, 8, 1.0), (0.9, -1, 0.8), (0.8, 10, 0.9)]
)
def test_empirical_frequencies_match_the_truncated_softmax(temperature, top_k, top_p):
    """20000 one-step draws pass a chi-square test (p ~ 1e-6) against the intended distribution, and
    fail it against the distribution at a 15% higher temperature (the test has power)."""
    n, vocab = 20000, 40
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(3)) * 1.5
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)
    tokens, logprobs = sample_next_tokens(logits.expand(n, vocab), params, sample_generators(11, n))
    counts = torch.bincount(tokens, minlength=vocab).double()

    target = torch.softmax(logits.double() / temperature, dim=-1)
    kept, ids = truncate_sorted(target.unsqueeze(0), top_k, top_p)
    truncated = torch.zeros(vocab, dtype=torch.float64)
    if ids is None:
        truncated = target
    else:
        truncated[ids[0]] = kept[0].double()
        truncated /= truncated.sum()
    assert torch.all(counts[truncated == 0] == 0), "a truncated token was drawn"
    assert _chi_square_ok(counts, truncated, n)
    assert not _chi_square_ok(counts, torch.softmax(logits.double() / (1.15 * temperature), dim=-1), n)
    # reported log-probs are the untruncated tempered ones
    expected = torch.log_softmax(logits.double() / temperature, dim=-1)[tokens]
    torch.testing.assert_close(logprobs.double(), expected, atol=1e-5, rtol=0)


def test_greedy_reports_temperature_one_logprobs():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(5))
    tokens, logprobs = sample_next_tokens(logits, SamplingParams(temperature=0.0), [])
    assert tokens.tolist() == logits.argmax(-1).tolist()
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0])
    torch.testing.assert_close(scaled_logprobs(logits, 0.0), torch.log_softmax(logits, -1))


def test_per_sample_streams_depend_on_seed_and_index_only():
    logits = torch.randn(6, 30, generator=torch.Generator().manual_seed(6))
    params = SamplingParams(temperature=1.0)
    a, _ = sample_next_tokens(logits, params, sample_generators(42, 6))
    b, _ = sample_next_tokens(logits[2:4], params, sample_generators(42, 6)[2:4])
    assert a[2:4].tolist() == b.tolist()
    draws = [torch.rand((), generator=g).item() for g in sample_generators(42, 6)]
    assert len(set(draws)) == 6  # distinct streams per index
    assert draws != [torch.rand((), generator=g).item() for g in sample_generators(43, 6)]


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_uniform_streams_give_the_single_draw_sequence(chunk):
    """Drawing a chunk of float64 uniforms at once must equal one draw per token from the same
    generator (the engine's samples would change otherwise), as samples leave the batch mid-chunk."""
    seed = int(torch.randint(0, 2**31, ()))
    n, steps = 7, 150
    reference = sample_generators(seed, n)
    streams = UniformStreams(sample_generators(seed, n), chunk=chunk)
    running = list(range(n))
    for t in range(steps):
        got = streams.next(running)
        want = draw_uniforms([reference[i] for i in running], torch.device("cpu"))
        assert got.dtype == torch.float64 and torch.equal(got, want), f"step {t}, chunk {chunk}"
        if t in (5, 40, 97):  # a sample finishes: it leaves the batch, the others keep their streams
            running = running[1:] if t != 40 else running[:-1]


def test_sampling_with_given_uniforms_equals_drawing_them():
    logits = torch.randn(6, 30, generator=torch.Generator().manual_seed(7))
    params = SamplingParams(temperature=0.8, top_p=0.9)
    a = sample_next_tokens(logits, params, sample_generators(5, 6))
    b = sample_next_tokens(logits, params, [], UniformStreams(sample_generators(5, 6)).next(range(6)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="chunk"):
        UniformStreams(sample_generators(5, 2), chunk=0)


def test_sampling_params_validation_names_the_field():
    for kwargs, field in [
        (dict(temperature=-0.1), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(stop=[""]), r"stop\[0\]"),
        (dict(stop_token_ids=[-1]), r"stop_token_ids\[0\]"),
    ]:
        with pytest.raises(ValueError, match=rf"SamplingParams\.{field}"):
            SamplingParams(**kwargs).validate()
