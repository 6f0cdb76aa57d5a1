"""The console entry point: verbs listed, config errors reported with exit code 2."""

import subprocess
import sys

from r1mega.cli import VERBS, main


def test_help_lists_every_verb():
    out = subprocess.run(
        [sys.executable, "-m", "r1mega.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for verb in VERBS:
        assert verb in out


def test_config_verb_prints_resolved_config(capsys):
    assert main(["config", "examples/configs/tiny.yaml", "parallel.tp=2", "--world-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "tp: 2" in out and "family: qwen2" in out


def test_config_error_exit_code(capsys):
    assert main(["config", "examples/configs/tiny.yaml", "parallel.tp=3"]) == 2
    assert "not divisible by tp=3" in capsys.readouterr().err


def test_config_loading_does_not_import_torch():
    # `r1mega config`, --help and config validation must start instantly: sections stay torch-free
    code = (
        "import sys; from r1mega.config import load_config; "
        "load_config('examples/configs/tiny.yaml'); "
        "heavy = [m for m in ('torch', 'megatron', 'transformers') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
