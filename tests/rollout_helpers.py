"""Tiny random transformers models, a tiny tokenizer and no-cache references for the rollout tests."""

from __future__ import annotations

import pytest
import torch

VOCAB = 300


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and the CI machine's 2 cores are shared by 2 workers
    (and other jobs): with 2 threads each, the suite was 4x slower under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_config(family: str = "qwen2", **overrides):
    """A 2-layer, hidden-64 config of one of the supported families (no EOS unless given)."""
    from transformers import DeepseekV3Config, LlamaConfig, Qwen2Config, Qwen3Config, Qwen3MoeConfig

    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=None,
    )
    if family == "qwen2":
        cfg = Qwen2Config(num_key_value_heads=2, **common)
    elif family == "llama":
        cfg = LlamaConfig(num_key_value_heads=2, **common)
    elif family == "qwen3":
        cfg = Qwen3Config(num_key_value_heads=2, head_dim=16, **common)
    elif family == "qwen3_moe":
        cfg = Qwen3MoeConfig(
            num_key_value_heads=2, head_dim=16, moe_intermediate_size=32, num_experts=8,
            num_experts_per_tok=2, norm_topk_prob=True, **common,
        )
    elif family == "deepseek_v3":
        cfg = DeepseekV3Config(
            num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=8, n_shared_experts=1,
            num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
            q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, **common,
        )
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def randomize_(model: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Overwrite every parameter and persistent buffer with fresh random values (never zeros).

    std 0.2 (instead of HF's 0.02) gives peaked next-token distributions, so greedy choices are not
    decided by float noise. Norm weights stay near 1 so activations keep a sane scale.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            tensors = list(module.named_parameters(recurse=False)) + [
                (n, b) for n, b in module.named_buffers(recurse=False) if n not in module._non_persistent_buffers_set
            ]
            for name, t in tensors:
                noise = torch.randn(t.shape, generator=g, dtype=torch.float32)
                if "norm" in type(module).__name__.lower() or "layernorm" in name:
                    t.copy_(1.0 + 0.1 * noise)
                else:
                    t.copy_(std * noise)
    return model


def random_model(family: str = "qwen2", seed: int = 0, **overrides):
    """A reference transformers model (float32, CPU, eager experts) with random weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config(family, **overrides), dtype=torch.float32)
    model.eval().requires_grad_(False)
    return randomize_(model, seed)


def random_prompts(lengths, seed: int = 0, vocab: int = VOCAB) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def full_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) of `response` given `prompt`, from one unpadded forward without a cache."""
    seq = torch.tensor([prompt + response])
    logits = model(seq, use_cache=False).logits[0].double()  # [len, vocab]
    t = temperature if temperature > 0 else 1.0
    lp = torch.log_softmax(logits / t, dim=-1)[len(prompt) - 1 : -1]  # [len(response), vocab]
    return lp.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def greedy_no_cache(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by recomputing the whole sequence every step (the no-KV-cache reference)."""
    seq = list(prompt)
    for _ in range(steps):
        logits = model(torch.tensor([seq]), use_cache=False).logits[0, -1]
        seq.append(int(torch.argmax(logits)))
    return seq[len(prompt) :]


def checkpoint_buckets(model, tmp_path, sizes=(1, 3, 7)):
    """The model's state as HF checkpoint names (as `save_pretrained` writes them), in buckets of varying size."""
    from safetensors import safe_open

    model.save_pretrained(str(tmp_path))
    named = []
    for path in sorted(tmp_path.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            named += [(k, f.get_tensor(k)) for k in f.keys()]
    # shuffle deterministically so buckets mix layers and experts
    order = torch.randperm(len(named), generator=torch.Generator().manual_seed(7)).tolist()
    named = [named[i] for i in order]
    buckets, i, k = [], 0, 0
    while i < len(named):
        n = sizes[k % len(sizes)]
        buckets.append(named[i : i + n])
        i, k = i + n, k + 1
    return buckets


def tiny_tokenizer():
    """A byte-level BPE tokenizer with exactly VOCAB ids (so every id a tiny model emits decodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "<think> reasoning process here </think> <answer> answer here </answer> 12 + 30 = 42; 7 * 6 = 42. "
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([text] * 50, trainer=trainer)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
