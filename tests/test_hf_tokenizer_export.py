"""An HF export's tokenizer loads as the training tokenizer in every standard loader
(r1mega.convert.hf_tokenizer), and `load_tokenizer` refuses a directory that does not.

Two tokenizers: the tiny one (its own pre-tokenizer, which transformers 5.25 replaces by Qwen2's for
a `model_type: qwen2` directory unless the export declares its class) and a real-format one (a
byte-level BPE built here and saved the way Qwen2.5 ships its tokenizer: Qwen2's pre-tokenizer and
NFC, `tokenizer_class: Qwen2Tokenizer`, vocab.json + merges.txt beside tokenizer.json), whose
files must reach the export unchanged. The reference is the training tokenizer (`load_tokenizer` of
the source) and, independently of transformers' class choice, tokenizer.json read by `tokenizers`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from r1mega.convert.hf_tokenizer import PINNED_MODULE, export_tokenizer_files, write_files
from r1mega.data.templates import R1_ZERO_TEMPLATE
from r1mega.data.tiny_tokenizer import TINY_TOKENIZER_DIR
from r1mega.data.tokenizer import load_tokenizer
from r1mega.data.tokenizer_check import PROBE_TEXTS

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Reason, then answer."},
    {"role": "user", "content": "Using the numbers [3, 7, 25], create 46. 数学"},
    {"role": "assistant", "content": "<think>25+3*7=46</think> <answer>25+3*7</answer>"},
    {"role": "user", "content": "Calculate 7+5+9."},
]


def build_qwen_format_tokenizer(out: Path) -> Path:
    """A small byte-level BPE with Qwen2's pipeline, written with the files Qwen2.5 ships."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import Qwen2Config
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    corpus = [R1_ZERO_TEMPLATE.format(prompt=f"Calculate {i}+{i * 7}") + f" <think>{i}</think>" for i in range(200)]
    corpus += list(PROBE_TEXTS) * 20
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=list(QWEN_SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    out.mkdir(parents=True)
    tok.save(str(out / "tokenizer.json"))
    tok.model.save(str(out))  # vocab.json, merges.txt
    added = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                  "single_word": False, "special": True}
        for t in QWEN_SPECIALS
    }
    config = {
        "add_prefix_space": False, "added_tokens_decoder": added, "additional_special_tokens": list(QWEN_SPECIALS[1:]),
        "bos_token": None, "chat_template": QWEN_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>", "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return {"tiny": TINY_TOKENIZER_DIR, "qwen_format": build_qwen_format_tokenizer(tmp_path_factory.mktemp("qwen") / "tok")}


def export_tokenizer(source: Path, out: Path) -> Path:
    """The tokenizer part of an export of the tiny qwen2 model trained with `source`: config.json as
    write_hf_export writes it, then the tokenizer files."""
    from r1mega.config import load_config
    from r1mega.convert.hf_config import hf_config_from_model_config

    model_cfg = load_config("examples/configs/tiny_pretrain.yaml", []).model
    config = hf_config_from_model_config(model_cfg)
    out.mkdir(parents=True)
    config.save_pretrained(str(out))
    write_files(export_tokenizer_files(load_tokenizer(source), config), out)
    return out


def loaders(monkeypatch, tmp_path):
    """name -> function(directory) -> tokenizer, as each standard loader builds it."""
    import transformers.dynamic_module_utils as dynamic
    from transformers import AutoProcessor, AutoTokenizer, PreTrainedTokenizerFast

    # trust_remote_code imports the export's tokenizer module through this cache: keep it in tmp_path
    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))

    def sglang(d, trust):  # sglang.srt.utils.hf_transformers_utils.get_tokenizer's call
        return AutoTokenizer.from_pretrained(
            str(d), trust_remote_code=trust, tokenizer_revision=None, clean_up_tokenization_spaces=False
        )

    return {
        "AutoTokenizer": lambda d: AutoTokenizer.from_pretrained(str(d)),
        "AutoTokenizer(trust_remote_code)": lambda d: AutoTokenizer.from_pretrained(str(d), trust_remote_code=True),
        "AutoProcessor": lambda d: AutoProcessor.from_pretrained(str(d)),
        "AutoProcessor(trust_remote_code)": lambda d: AutoProcessor.from_pretrained(str(d), trust_remote_code=True),
        "PreTrainedTokenizerFast": lambda d: PreTrainedTokenizerFast.from_pretrained(str(d)),
        "sglang get_tokenizer": lambda d: sglang(d, False),
        "sglang get_tokenizer(--trust-remote-code)": lambda d: sglang(d, True),
        "load_tokenizer": load_tokenizer,
    }


def _texts(training) -> list[str]:
    specials = " ".join([*training.all_special_tokens, *sorted(training.get_added_vocab())])
    return [
        *PROBE_TEXTS,
        R1_ZERO_TEMPLATE.format(prompt="Using the numbers [19, 36, 55, 7], create an equation that equals 65"),
        f"{specials} <think>\n7+5=12\n</think> <answer>12</answer>{training.eos_token}",
        training.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
    ]


@pytest.mark.parametrize("name", ["tiny", "qwen_format"])
def test_export_loads_as_the_training_tokenizer_in_every_loader(name, sources, tmp_path, monkeypatch):
    from tokenizers import Tokenizer

    source = sources[name]
    training = load_tokenizer(source)
    raw = Tokenizer.from_file(str(source / "tokenizer.json"))  # the file itself, no transformers class
    texts = _texts(training)
    want = [training(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert want == [raw.encode(t, add_special_tokens=False).ids for t in texts]
    assert len(set(map(len, want))) > 3 and all(want)

    export = export_tokenizer(source, tmp_path / "hf")
    for loader, load in loaders(monkeypatch, tmp_path).items():
        tok = load(export)
        tok = getattr(tok, "tokenizer", tok)  # a processor wraps the tokenizer
        got = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        assert got == want, f"{loader} built {type(tok).__name__}"
        assert [tok(t)["input_ids"] for t in texts] == [training(t)["input_ids"] for t in texts], loader
        assert tok.eos_token_id == training.eos_token_id and tok.get_vocab() == training.get_vocab(), loader
        assert tok.decode(want[-2], skip_special_tokens=True) == training.decode(want[-2], skip_special_tokens=True)
        assert tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == texts[-1], loader


def test_a_real_format_tokenizer_reaches_the_export_unchanged(sources, tmp_path):
    source = sources["qwen_format"]
    export = export_tokenizer(source, tmp_path / "hf")
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (export / f).read_bytes() == (source / f).read_bytes(), f
    assert not (export / PINNED_MODULE).exists()


def test_the_tiny_export_declares_its_tokenizer_class(sources, tmp_path):
    """Only the class declaration changes; the tokenizer itself is the shipped file, byte for byte."""
    export = export_tokenizer(sources["tiny"], tmp_path / "hf")
    assert (export / "tokenizer.json").read_bytes() == (TINY_TOKENIZER_DIR / "tokenizer.json").read_bytes()
    config = json.loads((export / "tokenizer_config.json").read_text())
    shipped = json.loads((TINY_TOKENIZER_DIR / "tokenizer_config.json").read_text())
    assert config.pop("auto_map") == {"AutoTokenizer": [None, "tokenization_r1mega.R1MegaTokenizer"]}
    assert config == shipped
    assert (export / PINNED_MODULE).is_file()


def _old_style_export(tmp_path) -> Path:
    """What exports wrote before: the tiny tokenizer's files beside a qwen2 config.json."""
    from transformers import Qwen2Config

    d = tmp_path / "old_export"
    shutil.copytree(TINY_TOKENIZER_DIR, d)
    Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2).save_pretrained(d)
    return d


def test_load_tokenizer_refuses_a_directory_that_resolves_to_another_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    old = _old_style_export(tmp_path)
    # the control is a real mismatch: AutoTokenizer tokenizes the template differently from the files
    resolved, tiny = AutoTokenizer.from_pretrained(str(old)), load_tokenizer("tiny")
    text = R1_ZERO_TEMPLATE.format(prompt="Calculate 7+5+9")
    assert type(resolved).__name__ == "Qwen2Tokenizer"
    assert len(resolved(text)["input_ids"]) > 2 * len(tiny(text)["input_ids"])
    with pytest.raises(ValueError) as err:
        load_tokenizer(old)
    message = str(err.value)
    assert "\n" not in message and str(old) in message
    assert "declares PreTrainedTokenizerFast but AutoTokenizer builds Qwen2Tokenizer" in message, message
    assert "model_type 'qwen2'" in message and "tokenizes differently from tokenizer.json" in message, message


def test_load_tokenizer_refuses_a_declared_class_that_rebuilds_another_pipeline(tmp_path):
    """No config.json, the classes agree, but the declared class (Qwen2Tokenizer) ignores the
    file's pre-tokenizer: still another tokenizer than tokenizer.json, refused."""
    d = tmp_path / "declared_qwen2"
    shutil.copytree(TINY_TOKENIZER_DIR, d)
    config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "Qwen2Tokenizer"}))
    with pytest.raises(ValueError, match=r"declares Qwen2Tokenizer and AutoTokenizer builds Qwen2Tokenizer, "
                                         r"which tokenizes differently from tokenizer.json"):
        load_tokenizer(d)


def test_load_tokenizer_accepts_a_replaced_class_that_tokenizes_as_the_file(sources, tmp_path):
    """A real-format tokenizer that declares another class (as some Qwen2-based checkpoints declare
    LlamaTokenizerFast): transformers builds Qwen2Tokenizer, which tokenizes as tokenizer.json does,
    so nothing is silently different and the directory loads."""
    d = tmp_path / "declared_llama"
    shutil.copytree(sources["qwen_format"], d)
    config = json.loads((d / "tokenizer_config.json").read_text())
    (d / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "LlamaTokenizerFast"}))
    tok = load_tokenizer(d)
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok(PROBE_TEXTS[0])["input_ids"] == load_tokenizer(sources["qwen_format"])(PROBE_TEXTS[0])["input_ids"]


def test_without_tokenizer_json_the_declared_class_must_be_the_one_built(tmp_path):
    """Nothing to compare ids with: the classes decide (a sentencepiece-only directory, say)."""
    from r1mega.data.tokenizer_check import resolution_problem

    tiny = load_tokenizer("tiny")
    d = tmp_path / "no_json"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizerFast"}))
    problem = resolution_problem(d, tiny)
    assert problem == f"{d}: tokenizer_config.json declares LlamaTokenizerFast but AutoTokenizer builds TokenizersBackend"
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    assert resolution_problem(d, tiny) is None


def test_an_in_memory_tokenizer_is_saved_and_checked_the_same_way(tmp_path):
    """A tokenizer with no directory behind it (built in code) goes through save_pretrained, then
    the same check and class declaration."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from r1mega.config import load_config
    from r1mega.convert.hf_config import hf_config_from_model_config

    backend = Tokenizer.from_file(str(TINY_TOKENIZER_DIR / "tokenizer.json"))
    training = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>")
    config = hf_config_from_model_config(load_config("examples/configs/tiny_pretrain.yaml", []).model)
    out = tmp_path / "hf"
    out.mkdir()
    config.save_pretrained(str(out))
    write_files(export_tokenizer_files(training, config), out)
    loaded = AutoTokenizer.from_pretrained(str(out))
    for text in PROBE_TEXTS:
        assert loaded(text)["input_ids"] == backend.encode(text).ids
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
