"""The tokenizer files of an HF export, written so that every loader builds the training tokenizer.

    files = export_tokenizer_files(tokenizer, hf_config)   # on every rank, before any collective
    write_files(files, directory)                          # rank 0, beside config.json

1. Files. A tokenizer loaded from a local directory (`load_tokenizer`: `tiny`, a checkpoint or a
   tokenizer directory) has its files copied byte for byte, so a real model's tokenizer stays as the
   original shipped it; any other tokenizer is written by `save_pretrained`.
2. Check. The files are loaded with AutoTokenizer beside the export's config.json, the call behind
   AutoProcessor, TRL, SGLang, vLLM and lm-eval (config.json matters: transformers picks the class
   from its `model_type` too), and must give the training tokenizer's ids on the probe
   texts (r1mega.data.tokenizer_check), its vocabulary, special tokens and chat template.
3. Pin, only where the check fails. transformers 5.25 builds `Qwen2Tokenizer` for every
   `model_type: qwen2` directory, whatever tokenizer class it declares, and that class rebuilds
   Qwen2's own pre-tokenizer and normalizer around the vocabulary: r1mega's tiny tokenizer (digits
   split, merges across spaces, no normalizer) then becomes another tokenizer. tokenizer_config.json
   then names the class in `auto_map`, transformers' way for a checkpoint to declare its tokenizer
   class, and the export carries that class (`tokenization_r1mega.py`, `PreTrainedTokenizerFast`
   unchanged: tokenizer.json read as it is). Without trust_remote_code transformers builds the
   declared PreTrainedTokenizerFast; with it, that class; both read tokenizer.json as written.
   The check runs again, and an export that still loads differently is a ValueError.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from r1mega.data.tokenizer_check import first_difference, probe_texts

__all__ = [
    "TOKENIZER_FILE_NAMES",
    "PINNED_MODULE",
    "PINNED_CLASS",
    "export_tokenizer_files",
    "export_mismatch",
    "write_files",
]

TOKENIZER_FILE_NAMES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
"""The files a transformers tokenizer is read from (besides its class's own `vocab_files_names`)."""

PINNED_MODULE = "tokenization_r1mega.py"
PINNED_CLASS = "R1MegaTokenizer"
_PINNED_SOURCE = '''"""The tokenizer of this checkpoint, exactly as tokenizer.json describes it (written by r1mega).

transformers builds a model-specific tokenizer class for some model types (Qwen2Tokenizer for
qwen2) that rebuilds its own pre-tokenizer around the vocabulary instead of reading tokenizer.json.
This checkpoint's tokenizer was trained with another pipeline, so tokenizer_config.json names this
class in auto_map.
"""

from transformers import PreTrainedTokenizerFast


class R1MegaTokenizer(PreTrainedTokenizerFast):
    """PreTrainedTokenizerFast unchanged: the pipeline of tokenizer.json, as written."""
'''


def _source_directory(tokenizer: Any) -> Optional[Path]:
    name = getattr(tokenizer, "name_or_path", None)
    if not name:
        return None
    path = Path(str(name))
    return path if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file() else None


def _auto_map_modules(config: dict) -> list[str]:
    """Module files named by tokenizer_config.json's auto_map (remote-code tokenizers)."""
    entry = (config.get("auto_map") or {}) if isinstance(config.get("auto_map"), dict) else {}
    refs = entry.get("AutoTokenizer") or []
    refs = refs if isinstance(refs, (list, tuple)) else [refs]
    return [ref.rsplit(".", 1)[0] + ".py" for ref in refs if isinstance(ref, str) and "." in ref and "--" not in ref]


def _write_tokenizer(tokenizer: Any, directory: Path) -> None:
    source = _source_directory(tokenizer)
    if source is None:
        tokenizer.save_pretrained(str(directory))
        return
    names = set(TOKENIZER_FILE_NAMES) | set(getattr(type(tokenizer), "vocab_files_names", {}).values())
    config_path = source / "tokenizer_config.json"
    if config_path.is_file():
        names |= set(_auto_map_modules(json.loads(config_path.read_text(encoding="utf-8"))))
    for name in sorted(names):
        if (source / name).is_file():
            shutil.copy2(source / name, directory / name)


def _pin(directory: Path) -> None:
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    auto_map = config.get("auto_map") if isinstance(config.get("auto_map"), dict) else {}
    config["auto_map"] = {**auto_map, "AutoTokenizer": [None, f"{PINNED_MODULE[:-3]}.{PINNED_CLASS}"]}
    # PreTrainedTokenizerFast: the name transformers 4.x and 5.x both read tokenizer.json with
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    (directory / PINNED_MODULE).write_text(_PINNED_SOURCE, encoding="utf-8")


def export_mismatch(directory: Path, tokenizer: Any) -> Optional[str]:
    """How AutoTokenizer on `directory` differs from `tokenizer`, in one phrase; None when it
    gives the same ids (with and without special tokens), vocabulary, EOS/BOS and chat template."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    name = type(loaded).__name__
    for add_special in (False, True):
        diff = first_difference(
            probe_texts(tokenizer),
            lambda t, a=add_special: loaded(t, add_special_tokens=a)["input_ids"],
            lambda t, a=add_special: tokenizer(t, add_special_tokens=a)["input_ids"],
        )
        if diff is not None:
            return f"AutoTokenizer builds {name}, with which {diff}"
    if loaded.get_vocab() != tokenizer.get_vocab():
        return f"AutoTokenizer builds {name}, whose vocabulary differs"
    for key in ("eos_token_id", "bos_token_id", "chat_template"):
        if getattr(loaded, key, None) != getattr(tokenizer, key, None):
            return f"AutoTokenizer builds {name}, whose {key} differs"
    return None


def export_tokenizer_files(tokenizer: Any, hf_config: Any) -> dict[str, bytes]:
    """File name -> content of the tokenizer files for an export whose config.json is `hf_config`
    (a transformers config), checked to load as `tokenizer` (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="r1mega-tokenizer-") as tmp:
        scratch = Path(tmp)
        hf_config.save_pretrained(str(scratch))
        _write_tokenizer(tokenizer, scratch)
        problem = export_mismatch(scratch, tokenizer)
        if problem is not None:
            _pin(scratch)
            still = export_mismatch(scratch, tokenizer)
            if still is not None:
                raise ValueError(
                    f"HF export: its tokenizer files would not load as the training tokenizer ({problem}; "
                    f"declaring the class in auto_map did not help: {still})"
                )
        return {p.name: p.read_bytes() for p in sorted(scratch.iterdir()) if p.is_file() and p.name != "config.json"}


def write_files(files: dict[str, bytes], directory: Path) -> None:
    """Write `export_tokenizer_files`' result into `directory`."""
    for name, content in files.items():
        (Path(directory) / name).write_bytes(content)
