"""`load_tokenizer(name_or_path)`: the shipped tiny tokenizer or a local Hugging Face tokenizer.

Nothing is ever downloaded: `tiny` names r1mega/assets/tiny_tokenizer/, anything else must be a
local directory (a checkpoint or tokenizer directory with tokenizer.json / tokenizer_config.json).
The result is a transformers tokenizer with `eos_token_id` and `pad_token_id` set; a tokenizer
without a pad token pads with its EOS token (the usual choice for decoder-only models).

A directory that AutoTokenizer resolves to a tokenizer other than the one its files describe (its
declared class replaced by one that tokenizes differently from tokenizer.json, e.g. a non-Qwen
tokenizer beside a `model_type: qwen2` config.json) is refused, in one line naming both classes
(r1mega.data.tokenizer_check): training on it would silently use another tokenization.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from r1mega.data.tiny_tokenizer import TINY_TOKENIZER_DIR
from r1mega.data.tokenizer_check import resolution_problem

__all__ = ["load_tokenizer", "TINY_NAME"]

TINY_NAME = "tiny"


def load_tokenizer(name_or_path: str | os.PathLike) -> Any:
    """A `transformers` PreTrainedTokenizerBase from `tiny` or a local directory; ValueError otherwise."""
    if str(name_or_path) == TINY_NAME:
        path = TINY_TOKENIZER_DIR
    else:
        path = Path(os.path.expanduser(str(name_or_path)))
        if not path.exists():
            raise ValueError(
                f"tokenizer {str(name_or_path)!r}: no such local directory; r1mega never downloads "
                f"tokenizers, so give a local checkpoint/tokenizer directory or {TINY_NAME!r}"
            )
        if not path.is_dir():
            raise ValueError(f"tokenizer {str(name_or_path)!r}: expected a directory, got a file")
        if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
            raise ValueError(
                f"tokenizer {str(name_or_path)!r}: the directory has neither tokenizer.json nor "
                "tokenizer_config.json"
            )
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    problem = resolution_problem(path, tokenizer)
    if problem is not None:
        raise ValueError(f"tokenizer {problem}; refused rather than train on another tokenization (docs/data.md, Tokenizers)")
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer {str(name_or_path)!r}: has no EOS token (eos_token in tokenizer_config.json)")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
