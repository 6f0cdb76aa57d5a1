"""The shipped tiny tokenizer (rebuilt byte-identically) and `load_tokenizer` for local directories."""

import json
import random
import shutil

import pytest
import yaml

from r1mega.data.templates import R1_ZERO_TEMPLATE
from r1mega.data.tiny_tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    TAG_TOKENS,
    TINY_TOKENIZER_DIR,
    tiny_tokenizer_files,
)
from r1mega.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tiny():
    return load_tokenizer("tiny")


def test_rebuild_is_byte_identical_to_the_shipped_files():
    built = tiny_tokenizer_files()
    shipped = sorted(p.name for p in TINY_TOKENIZER_DIR.iterdir())
    assert sorted(built) == shipped
    for name, text in built.items():
        assert (TINY_TOKENIZER_DIR / name).read_text(encoding="utf-8") == text, name


def test_fits_the_tiny_model_vocabulary(tiny):
    with open("examples/configs/models/tiny_qwen2.yaml") as f:
        model = yaml.safe_load(f)
    assert len(tiny) == 512 <= model["vocab_size"]
    assert max(tiny.get_vocab().values()) == len(tiny) - 1


def test_special_tokens_and_tags(tiny):
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tiny, PreTrainedTokenizerFast)
    assert tiny.eos_token == EOS_TOKEN and tiny.pad_token == PAD_TOKEN
    assert tiny.eos_token_id is not None and tiny.pad_token_id is not None
    assert tiny.eos_token_id != tiny.pad_token_id
    for tag in TAG_TOKENS:
        assert len(tiny(tag, add_special_tokens=False)["input_ids"]) == 1, tag
    # decoding a response with skip_special_tokens keeps the tags (the rewards read them), drops EOS
    text = "<think>\n5+3=8\n</think> <answer>8</answer>"
    ids = tiny(text, add_special_tokens=False)["input_ids"] + [tiny.eos_token_id]
    assert tiny.decode(ids, skip_special_tokens=True) == text


def test_byte_level_round_trip_on_random_text(tiny):
    rng = random.Random(1234)
    alphabet = "abcXYZ 0123456789+-*/=()[],.:\n\t<>想一想Привет αβγ é🙂"
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
        ids = tiny(text, add_special_tokens=False)["input_ids"]
        assert tiny.decode(ids) == text


def test_digits_are_single_tokens(tiny):
    rng = random.Random(7)
    for _ in range(50):
        number = str(rng.randint(0, 10**12))
        tokens = tiny.convert_ids_to_tokens(tiny(number, add_special_tokens=False)["input_ids"])
        assert tokens == list(number)


def test_template_is_compact(tiny):
    n = len(tiny(R1_ZERO_TEMPLATE)["input_ids"])
    assert n <= 45, n  # 40 today; byte-level would be ~420, word-level ~90


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"no such local directory; r1mega never downloads"):
        load_tokenizer("Qwen/Qwen2.5-7B")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ValueError, match="expected a directory"):
        load_tokenizer(f)
    with pytest.raises(ValueError, match="neither tokenizer.json nor tokenizer_config.json"):
        load_tokenizer(tmp_path)


def test_loads_a_local_hf_directory(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    text = "Using the numbers [3, 7], create 21. <think>3*7=21</think>"
    assert again(text)["input_ids"] == tiny(text)["input_ids"]
    assert again.eos_token_id == tiny.eos_token_id and again.pad_token_id == tiny.pad_token_id


def test_missing_pad_token_falls_back_to_eos(tmp_path):
    d = tmp_path / "nopad"
    shutil.copytree(TINY_TOKENIZER_DIR, d)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = json.loads((d / name).read_text())
        cfg.pop("pad_token")
        (d / name).write_text(json.dumps(cfg))
    tok = load_tokenizer(d)
    assert tok.pad_token_id == tok.eos_token_id
