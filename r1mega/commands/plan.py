"""`r1mega plan CFG [overrides] [--nodes N --gpus-per-node 8 --gpu h100-80gb]`: per-GPU memory of
the job's layout (training and colocated rollout), host memory, weight sync, and a verdict; when it
does not fit, the smallest layout that does. Pure arithmetic: no GPU, torch or megatron needed.
Exit status 0 = fits, 1 = does not fit, 2 = config error."""

from __future__ import annotations

import argparse

from r1mega.commands.common import add_config_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--nodes", type=int, default=None, help="nodes (default: world size from the launcher, else 1)")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (default plan.gpus_per_node)")
    parser.add_argument("--gpu", default=None, help="GPU kind (default plan.gpu, else h100-80gb)")
    parser.add_argument("--stage", choices=["rl", "sft"], default="rl", help="which job (rl has a rollout side)")
    parser.add_argument("--no-proposal", action="store_true", help="do not search for a layout that fits")


def run(args: argparse.Namespace) -> int:
    from r1mega.config import load_config
    from r1mega.plan.report import _layout_text, format_plan, plan_for_config, propose_layout

    cfg = load_config(args.config, list(args.overrides))
    gpn = args.gpus_per_node or cfg.plan.gpus_per_node
    gpu = args.gpu or cfg.plan.gpu or "h100-80gb"
    nodes = args.nodes or 1
    world = nodes * gpn
    cfg.check_layout(world)  # world size, TP/heads, EP/experts, split: one line each
    plan = plan_for_config(cfg, world_size=world, gpu=gpu, stage=args.stage)
    print(format_plan(plan, cfg, world_size=world))
    if plan.fits:
        return 0
    if not args.no_proposal:
        found = propose_layout(cfg, gpus_per_node=gpn, gpu=gpu, stage=args.stage)
        if found is None:
            print("  no layout up to 128 nodes fits")
        else:
            n, p, offload = found
            print(f"  smallest layout that fits: {n} node(s): {_layout_text(p)}" + (" + optimizer.cpu_offload=true" if offload else ""))
    return 1
