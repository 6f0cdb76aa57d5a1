"""The embedded default's tokenizer: a 512-token byte-level BPE built here, deterministically.

Rebuild the shipped files with `python -m r1mega.data.tiny_tokenizer` (tests check that a rebuild is
byte-identical to r1mega/assets/tiny_tokenizer/).

Design, for a tiny model trained on 2 CPU cores:
- Byte-level: the 256 byte symbols are all in the vocabulary, so any text round-trips (a language
  consistency check on Chinese text still sees the characters).
- Every digit is its own token, so the model sees numbers digit by digit (learnable arithmetic).
- No split at spaces: merges may span words, so the fixed R1-Zero template, which appears in every
  prompt of the training corpus, collapses into a few dozen tokens instead of about a hundred.
- Special tokens `<|endoftext|>` (EOS) and `<|pad|>` (padding, distinct from EOS so a padding mask
  can never hide a real end of text); `<think>`, `</think>`, `<answer>`, `</answer>` are single
  tokens that are *not* special, so decoding with skip_special_tokens keeps them (the format and
  accuracy rewards read them).
- The corpus is the R1-Zero template applied to generated countdown and arithmetic problems followed
  by their worked solutions: exactly the text the embedded default trains on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

__all__ = [
    "TINY_TOKENIZER_DIR",
    "TINY_VOCAB_SIZE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "TAG_TOKENS",
    "build_tiny_tokenizer",
    "tiny_tokenizer_files",
    "write_tiny_tokenizer",
]

TINY_TOKENIZER_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"
TINY_VOCAB_SIZE = 512
"""The tiny model's vocab_size (examples/configs/models/tiny_qwen2.yaml); the tokenizer fills it."""
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")

_PROBLEMS_PER_TASK = 2000  # enough for every frequent merge; training takes ~0.1 s
_MODEL_MAX_LENGTH = 512  # the tiny model's max_position_embeddings

# A minimal chat template in the R1 style, so `data.template: chat` also works with this tokenizer.
_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}" + EOS_TOKEN + "\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _corpus() -> list[str]:
    from r1mega.data.config import ProceduralConfig
    from r1mega.data.tasks import generate
    from r1mega.data.templates import render_prompt

    texts = []
    for task in ("countdown", "arithmetic"):
        # A fixed config, independent of any user setting, so the tokenizer never changes by accident.
        cfg = ProceduralConfig(task=task, seed=0, wrong_solution_fraction=0.3)
        for ex in generate(cfg, "train", _PROBLEMS_PER_TASK):
            # the response follows the prompt directly, as in SFT examples and RL rollouts
            texts.append(render_prompt(template="r1_zero", prompt=ex.prompt) + ex.solution)
    return texts


def build_tiny_tokenizer():
    """Train the BPE and return a `tokenizers.Tokenizer` (deterministic: same input, same output)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    special = [EOS_TOKEN, PAD_TOKEN, *TAG_TOKENS]
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=special,  # never merged, never split
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    # The tags were registered as special tokens so training keeps them whole; mark them non-special
    # so that decoding with skip_special_tokens=True keeps them in the response text.
    data = json.loads(tok.to_str())
    for entry in data["added_tokens"]:
        if entry["content"] in TAG_TOKENS:
            entry["special"] = False
    tok = Tokenizer.from_str(json.dumps(data))
    size = tok.get_vocab_size(with_added_tokens=True)
    assert size <= TINY_VOCAB_SIZE, f"tiny tokenizer has {size} tokens > {TINY_VOCAB_SIZE}"
    return tok


def tiny_tokenizer_files() -> dict[str, str]:
    """File name -> exact text of every file in the tokenizer directory."""
    tok = build_tiny_tokenizer()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "model_max_length": _MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        "chat_template": _CHAT_TEMPLATE,
    }
    special_map = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    return {
        "tokenizer.json": tok.to_str(pretty=True) + "\n",
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n",
        "special_tokens_map.json": json.dumps(special_map, indent=2, sort_keys=True) + "\n",
    }


def write_tiny_tokenizer(out_dir: str | Path = TINY_TOKENIZER_DIR) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in tiny_tokenizer_files().items():
        (out / name).write_text(text, encoding="utf-8")
    return out


if __name__ == "__main__":
    path = write_tiny_tokenizer(sys.argv[1] if len(sys.argv) > 1 else TINY_TOKENIZER_DIR)
    print(f"wrote the tiny tokenizer to {path}")
