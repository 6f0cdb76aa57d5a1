"""Weight sync into the BuiltinEngine: HF checkpoint names (per-expert for MoE) copied in place, errors
that name the tensor, tied embeddings, release/resume of the weights' memory, loading a checkpoint dir."""

import json
import re

import pytest
import torch

from r1mega.rollout.builtin import BuiltinEngine
from r1mega.rollout.types import SamplingParams
from tests.rollout_helpers import (  # noqa: F401 (one_torch_thread is an autouse fixture)
    one_torch_thread,
    checkpoint_buckets,
    full_logprobs,
    greedy_no_cache,
    random_model,
    random_prompts,
    tiny_config,
)

FAMILIES = ["qwen2", "llama", "qwen3", "qwen3_moe", "deepseek_v3"]


def _engine(family="qwen2", **kwargs):
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("eos_token_ids", [])
    return BuiltinEngine(tiny_config(family, **kwargs.pop("config", {})), **kwargs)


def _assert_engine_runs(engine, source, seed=0):
    """The engine's teacher-forced log-probs and greedy outputs equal the source model's."""
    prompts = random_prompts((6, 3, 9), seed=seed)
    responses = random_prompts((5, 8, 4), seed=seed + 1)
    got = engine.compute_logprobs(prompts, responses)
    for p, r, g in zip(prompts, responses, got):
        torch.testing.assert_close(torch.tensor(g, dtype=torch.float64), full_logprobs(source, p, r), atol=1e-5, rtol=0)
    samples = engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.0))
    for p, s in zip(prompts, samples):
        assert s.response_token_ids == greedy_no_cache(source, p, 8)


def _storage(engine):
    return {n: p.data_ptr() for n, p in engine.model.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
def test_pushed_checkpoint_replaces_the_model(family, tmp_path):
    engine = _engine(family)
    source = random_model(family, seed=21)
    before = _storage(engine)
    engine.update_weights(checkpoint_buckets(source, tmp_path))
    assert _storage(engine) == before  # copied into the existing storage
    _assert_engine_runs(engine, source)


def test_expected_names_are_the_checkpoint_names(tmp_path):
    engine = _engine("qwen3_moe")
    names = sorted(n for bucket in checkpoint_buckets(random_model("qwen3_moe"), tmp_path) for n, _ in bucket)
    assert engine.expected_weight_names == names
    assert "model.layers.1.mlp.experts.7.up_proj.weight" in names


def test_tied_embeddings_with_and_without_lm_head(tmp_path):
    source = random_model("qwen2", seed=22, tie_word_embeddings=True)
    assert source.lm_head.weight is source.model.embed_tokens.weight
    buckets = checkpoint_buckets(source, tmp_path)
    names = [n for b in buckets for n, _ in b]
    assert "lm_head.weight" not in names  # what a tied checkpoint holds
    engine = _engine("qwen2", config=dict(tie_word_embeddings=True))
    engine.update_weights(buckets)
    _assert_engine_runs(engine, source)
    # an exporter that also sends the tied lm_head is fine: it is the same tensor
    other = random_model("qwen2", seed=23, tie_word_embeddings=True)
    engine.update_weights([list(other.state_dict().items())])
    _assert_engine_runs(engine, other)


def test_unknown_name_is_named_with_suggestion():
    engine = _engine()
    bad = [("model.layers.0.self_attn.q_prj.weight", torch.randn(64, 64))]
    with pytest.raises(ValueError, match=r"unknown tensor 'model\.layers\.0\.self_attn\.q_prj\.weight'.*q_proj"):
        engine.update_weights([bad])
    # precomputed rotary tables of older checkpoints have nowhere to go and are skipped, like SGLang does
    engine.update_weights([[("model.layers.0.self_attn.rotary_emb.inv_freq", torch.randn(8))]], finalize=False)


@pytest.mark.parametrize(
    "family,name,shape,expected",
    [
        ("qwen2", "model.layers.1.self_attn.k_proj.weight", (64, 64), (32, 64)),
        ("qwen3_moe", "model.layers.0.mlp.experts.3.gate_proj.weight", (33, 64), (32, 64)),
        ("qwen3_moe", "model.layers.0.mlp.experts.gate_up_proj", (8, 64, 65), (8, 64, 64)),
        ("deepseek_v3", "model.layers.1.mlp.gate.e_score_correction_bias", (9,), (8,)),
    ],
)
def test_wrong_shape_is_named(family, name, shape, expected):
    engine = _engine(family)
    message = f"tensor {name!r} has shape {shape}, the model expects {expected}"
    with pytest.raises(ValueError, match=re.escape(message)):
        engine.update_weights([[(name, torch.randn(*shape))]])


def test_missing_tensor_is_named_and_blocks_generation(tmp_path):
    engine = _engine("qwen3_moe")
    buckets = checkpoint_buckets(random_model("qwen3_moe", seed=24), tmp_path)
    dropped = "model.layers.1.mlp.experts.5.down_proj.weight"
    partial = [[(n, t) for n, t in b if n != dropped] for b in buckets]
    with pytest.raises(ValueError, match=rf"1 tensor\(s\) of Qwen3MoeForCausalLM were never received: '{dropped}'"):
        engine.update_weights(partial)
    with pytest.raises(RuntimeError, match="not complete"):
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    # one sync spread over several calls
    engine.update_weights(buckets[:3], finalize=False)
    engine.update_weights(buckets[3:], finalize=False)
    engine.finalize_weights()
    engine.generate([[1, 2]], SamplingParams(max_new_tokens=2))


def test_weights_are_cast_to_the_engine_dtype(tmp_path):
    source = random_model("qwen2", seed=25)
    engine = _engine("qwen2", dtype="bfloat16")
    engine.update_weights(checkpoint_buckets(source, tmp_path))
    w = engine.model.model.layers[1].mlp.down_proj.weight
    assert w.dtype == torch.bfloat16
    torch.testing.assert_close(w, source.model.layers[1].mlp.down_proj.weight.to(torch.bfloat16), atol=0, rtol=0)
    samples = engine.generate(random_prompts((4, 7)), SamplingParams(max_new_tokens=4, temperature=0.7, seed=1))
    assert all(len(s.response_logprobs) == 4 for s in samples)


@pytest.mark.parametrize("family", ["qwen2", "deepseek_v3"])
def test_release_and_resume_memory(family, tmp_path):
    engine = _engine(family, config=dict(tie_word_embeddings=(family == "qwen2")))
    source = random_model(family, seed=26, tie_word_embeddings=(family == "qwen2"))
    buckets = checkpoint_buckets(source, tmp_path)
    engine.update_weights(buckets)
    prompts = random_prompts((5, 2))
    before = engine.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
    # every parameter and persistent buffer once (tied embeddings share one tensor)
    def state_bytes():
        unique = {t.data_ptr(): t for t in engine.model.state_dict().values()}
        return sum(t.numel() * t.element_size() for t in unique.values())

    model_bytes = state_bytes()
    freed = engine.release_memory()
    assert freed == model_bytes > 0
    print(f"{family}: release_memory freed {freed} bytes")
    assert all(p.numel() == 0 for p in engine.model.parameters())
    assert engine.model.lm_head.weight.numel() == 0
    with pytest.raises(RuntimeError, match="released"):
        engine.generate(prompts, SamplingParams(max_new_tokens=2))
    with pytest.raises(RuntimeError, match="resume_memory"):
        engine.update_weights(buckets)
    engine.resume_memory()
    with pytest.raises(RuntimeError, match="not complete"):
        engine.generate(prompts, SamplingParams(max_new_tokens=2))
    assert state_bytes() == freed
    engine.update_weights(buckets)
    after = engine.generate(prompts, SamplingParams(max_new_tokens=6, temperature=0.0))
    assert [s.response_token_ids for s in after] == [s.response_token_ids for s in before]
    if family == "qwen2":
        assert engine.model.lm_head.weight is engine.model.model.embed_tokens.weight


@pytest.mark.parametrize("family", ["qwen2", "deepseek_v3"])
def test_load_from_a_checkpoint_directory(family, tmp_path):
    source = random_model(family, seed=27)
    source.config.eos_token_id = 5
    source.save_pretrained(str(tmp_path))
    engine = BuiltinEngine(tmp_path, device="cpu")
    assert engine.eos_token_ids == [5]
    engine.eos_token_ids = []
    _assert_engine_runs(engine, source)


def test_bad_checkpoint_directories_are_named(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        BuiltinEngine(tmp_path, device="cpu")
    tiny_config("qwen2").save_pretrained(str(tmp_path))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"no \*\.safetensors weights \(found \['pytorch_model\.bin'\]"):
        BuiltinEngine(tmp_path, device="cpu")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported"):
        BuiltinEngine(tmp_path, device="cpu")


def test_fused_in_memory_names_are_accepted_too():
    """A transformers 5 state dict (experts fused in 3-D tensors) loads as well as checkpoint names."""
    source = random_model("qwen3_moe", seed=28)
    engine = _engine("qwen3_moe")
    engine.update_weights([list(source.state_dict().items())])
    _assert_engine_runs(engine, source)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)")
def test_cuda_engine_matches_cpu_and_gives_memory_back(tmp_path):
    source = random_model("qwen3_moe", seed=29)
    buckets = checkpoint_buckets(source, tmp_path)
    cpu, gpu = _engine("qwen3_moe"), _engine("qwen3_moe", device="cuda")
    cpu.update_weights(buckets)
    gpu.update_weights(buckets)
    prompts = random_prompts((5, 9, 2), seed=30)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=3)
    samples = gpu.generate(prompts, params)
    responses = [s.response_token_ids for s in samples]
    for s, ref in zip(samples, cpu.compute_logprobs(prompts, responses)):
        torch.testing.assert_close(s.response_logprobs, ref, atol=1e-4, rtol=0)
    allocated = torch.cuda.memory_allocated()
    freed = gpu.release_memory()
    assert allocated - torch.cuda.memory_allocated() >= freed > 0
    gpu.resume_memory()
    gpu.update_weights(buckets)
    for s, again in zip(samples, gpu.compute_logprobs(prompts, responses)):
        torch.testing.assert_close(again, s.response_logprobs, atol=1e-4, rtol=0)
