"""The docs stay true: every relative link resolves, and every command line they show parses.

A command line is any `r1mega <verb> ...` or `... -m r1mega.cli <verb> ...` in README.md or docs/
(code blocks and inline code) whose config is a file in the repo (a `CONFIG` placeholder stands for
the help's example config): it goes through the CLI's own argument parser and `load_config` with its
overrides, as the command would. The help text's own
examples are checked the same way.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from r1mega.cli import VERBS, build_parser
from r1mega.commands.common import CONFIG_EXAMPLE, OVERRIDE_EXAMPLES
from r1mega.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SHELL_BREAKS = {"&&", "||", "|", ";", "#", ">", "2>&1", "\\"}


def _relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    missing = []
    for target in _relative_links(doc.read_text(encoding="utf-8")):
        path = target.split("#", 1)[0]
        if path and not (doc.parent / path).exists():
            missing.append(target)
    assert not missing, f"{doc.relative_to(ROOT)} links to files that do not exist: {missing}"


def _code_snippets(text: str) -> list[str]:
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, re.DOTALL)
    lines = [line for block in fenced for line in block.splitlines()]
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    return lines + inline


def _command_lines(text: str) -> list[list[str]]:
    """[verb, args...] of every r1mega invocation in the text."""
    found = []
    for snippet in _code_snippets(text):
        try:
            tokens = shlex.split(snippet, comments=False)
        except ValueError:
            continue
        for i, tok in enumerate(tokens[:-1]):
            if tok in ("r1mega", "r1mega.cli") and tokens[i + 1] in VERBS:
                args = []
                for t in tokens[i + 2:]:
                    if t in SHELL_BREAKS or t.startswith("#"):
                        break
                    args.append(t)
                found.append([tokens[i + 1], *args])
    return found


PLACEHOLDERS = {"CONFIG", "CFG", "CONFIG.yaml"}


def _concrete(cmd: list[str]) -> list[str] | None:
    """The command with a placeholder config replaced by a real one and `...` dropped; None for a
    synopsis (`[--num N]`, `<x>`, `a|b`) or a command without a config in the repo."""
    cmd = [CONFIG_EXAMPLE if t in PLACEHOLDERS else t for t in cmd if t != "..."]
    if any(t.startswith(("[", "<")) or "|" in t for t in cmd):
        return None
    if len(cmd) > 1 and cmd[1].endswith((".yaml", ".yml")) and (ROOT / cmd[1]).is_file():
        return cmd
    return None


def test_every_documented_command_line_parses(monkeypatch):
    monkeypatch.chdir(ROOT)
    checked = []
    for doc in DOCS:
        for cmd in _command_lines(doc.read_text(encoding="utf-8")):
            cmd = _concrete(cmd)
            if cmd is None:
                continue
            args = build_parser().parse_args(cmd)
            if cmd[0] == "recipe":  # a recipe file, not a job config
                from r1mega.recipe.config import load_recipe

                load_recipe(args.config, list(args.overrides))
            else:
                load_config(args.config, list(args.overrides))  # raises ConfigError naming the key
            checked.append((doc.name, " ".join(cmd)))
    # the README's first command, the RL/conversion docs' runs and the multi-process example at least
    assert len(checked) >= 4, checked


def test_a_wrong_documented_override_would_be_caught(monkeypatch):
    from r1mega.configlib import ConfigError

    monkeypatch.chdir(ROOT)
    (cmd,) = _command_lines("`r1mega train examples/configs/tiny.yaml train.lr=1e-5`")
    args = build_parser().parse_args(cmd)
    with pytest.raises(ConfigError, match="train: unknown key"):
        load_config(args.config, list(args.overrides))


def test_help_examples_parse(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    load_config(CONFIG_EXAMPLE, list(OVERRIDE_EXAMPLES))
    for verb in ("config", "train", "sft", "pretrain"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([verb, "--help"])
        help_text = " ".join(capsys.readouterr().out.split())
        assert " ".join(OVERRIDE_EXAMPLES) in help_text and CONFIG_EXAMPLE in help_text
