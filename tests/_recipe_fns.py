"""Run `r1mega recipe` in a fresh process, optionally with an injected failure (tests/test_recipe.py).

    python -m tests._recipe_fns [--fail-after STAGE:STEP | --signal-after STAGE:STEP] -- <r1mega recipe arguments>

`--fail-after sft:2` raises right after the checkpoint of step 2 of stage `sft` is saved: the process
dies inside that stage with its checkpoint on disk, as a crash or a kill would leave it.
`--signal-after sft:2` sends this process SIGTERM at that moment instead (a preemption): the job
saves at the next step boundary and the pipeline stops.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


class InjectedFailure(RuntimeError):
    pass


def _install_fault(stage: str, step: int, how: str) -> None:
    from r1mega.training import checkpoint as ckpt

    original = ckpt.save_checkpoint

    def save_then_fail(root, step_now, *args, **kwargs):
        path = original(root, step_now, *args, **kwargs)
        if Path(root).parent.name == stage and step_now == step:
            if how == "signal":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise InjectedFailure(f"injected failure after saving step {step} of stage {stage}")
        return path

    ckpt.save_checkpoint = save_then_fail


def main(argv: list[str]) -> int:
    if "--" not in argv:
        raise SystemExit("usage: python -m tests._recipe_fns [--fail-after|--signal-after STAGE:STEP] -- ARGS")
    split = argv.index("--")
    own, rest = argv[:split], argv[split + 1:]
    if own[:1] in (["--fail-after"], ["--signal-after"]):
        stage, step = own[1].split(":")
        _install_fault(stage, int(step), "signal" if own[0] == "--signal-after" else "raise")
    from r1mega.cli import main as cli_main

    return cli_main(["recipe", *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
