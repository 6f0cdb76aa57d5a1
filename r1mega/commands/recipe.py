"""`r1mega recipe CONFIG [--from STAGE] [--only STAGE] [overrides]`: the DeepSeek-R1 recipe as one pipeline.

CONFIG is a recipe file (examples/recipes/r1_tiny.yaml): shared job defaults, the held-out
evaluation and named stages (pretrain, rl, sample, select, sft, distill, eval), each writing under
runs/<recipe>/<stage>/. Rerunning skips completed stages and continues an interrupted one;
`--from STAGE` reruns that stage and the ones after it; `--only STAGE` runs one stage (its inputs
must exist). Overrides address stages by name: `stages.r1_zero.config.rl.steps=10`. See
docs/recipe.md and r1mega/recipe/pipeline.py.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="recipe file (e.g. examples/recipes/r1_tiny.yaml)")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="dotted overrides, e.g. stages.r1_zero.config.rl.steps=10 name=my_recipe",
    )
    parser.add_argument("--from", dest="from_stage", default=None, metavar="STAGE",
                        help="rerun this stage and every later one (their directories are replaced)")
    parser.add_argument("--only", default=None, metavar="STAGE", help="run only this stage")
    parser.add_argument("--check", action="store_true", help="validate the recipe and every stage's config, run nothing")
    parser.add_argument("--print-config", default=None, metavar="STAGE",
                        help="print a stage's resolved job config (to launch a multi-node stage with the single command)")


def run(args: argparse.Namespace) -> int:
    from r1mega.recipe.config import load_recipe
    from r1mega.recipe.pipeline import prepare, run_recipe

    recipe = load_recipe(args.config, list(args.overrides))
    try:
        if args.print_config is not None:
            import yaml

            from r1mega.configlib import strip_internal, to_dict
            from r1mega.recipe.jobconfig import build_job_config

            yaml.safe_dump(strip_internal(to_dict(build_job_config(recipe, recipe.stage(args.print_config)))),
                           sys.stdout, sort_keys=False)
            return 0
        if args.check:
            stages = prepare(recipe)
            print(f"{args.config}: {len(stages)} stages valid: " + ", ".join(f"{n} ({s.cfg.kind})" for n, s in stages.items()))
            return 0
        result = run_recipe(recipe, from_stage=args.from_stage, only=args.only)
    except ValueError as e:  # RecipeError, DataError, CheckpointError, an empty filtered set: one line
        from r1mega.configlib import ConfigError

        if isinstance(e, ConfigError):
            raise
        print(f"r1mega recipe: error: {e}", file=sys.stderr)
        return 2
    if result.stopped_in is not None:
        print(f"r1mega recipe: stopped inside stage {result.stopped_in}; rerun to continue")
    return 0
