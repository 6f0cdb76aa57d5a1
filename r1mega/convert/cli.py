"""What the two conversion tools share: layout arguments, how ranks are started, error reporting.

A tool started by torchrun/srun runs on the ranks it was given. Started as a plain `python`
command with a layout that needs several ranks (e.g. --tp 2), it starts them itself on this machine
(gloo on CPU, NCCL with GPUs) through `r1mega.parallel.launch.run_distributed`.

User mistakes (bad input, mismatched config) surface as one `error: ...` line and exit status 1;
every check that can fail is made identically on every rank, so no rank is left waiting.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

from r1mega.library_warnings import quiet_library_warnings
from r1mega.models.config import ModelConfig
from r1mega.parallel.config import ParallelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_layout_args(parser: argparse.ArgumentParser, what: str) -> None:
    g = parser.add_argument_group(f"parallel layout {what}")
    g.add_argument("--tp", type=int, default=1, help="tensor parallel size (default 1)")
    g.add_argument("--pp", type=int, default=1, help="pipeline parallel size (default 1)")
    g.add_argument("--ep", type=int, default=1, help="expert parallel size, MoE models (default 1)")
    g.add_argument("--etp", type=int, default=None, help="expert tensor parallel size (default: tp)")
    g.add_argument("--pp-first", type=int, default=None,
                   help="uneven pipeline: layers on the first stage (parallel.num_layers_in_first_pipeline_stage)")
    g.add_argument("--pp-last", type=int, default=None,
                   help="uneven pipeline: layers on the last stage (parallel.num_layers_in_last_pipeline_stage)")
    g.add_argument("--pipeline-layout", default=None,
                   help="megatron pipeline layout string, e.g. 'Et*3|t*2L' (parallel.pipeline_layout)")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="weights' dtype (auto: as stored in the source checkpoint)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out, once the new one is complete")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parallel_config(args, model_cfg: ModelConfig) -> ParallelConfig:
    """The layout to build; sequence parallelism is switched on where megatron requires it (MoE
    with TP), which changes no weight."""
    moe_tp = model_cfg.is_moe and model_cfg.moe_first_k_dense < model_cfg.num_layers and args.tp > 1
    cfg = ParallelConfig(
        tp=args.tp, pp=args.pp, ep=args.ep, etp=args.etp, sequence_parallel=moe_tp, use_distributed_optimizer=False,
        num_layers_in_first_pipeline_stage=getattr(args, "pp_first", None),
        num_layers_in_last_pipeline_stage=getattr(args, "pp_last", None),
        pipeline_layout=getattr(args, "pipeline_layout", None),
    )
    if cfg.pipeline_layout is not None:  # the layout string fixes the virtual stages: build them all
        from r1mega.parallel.pipeline_split import parse_layout

        vpp = len(parse_layout(cfg.pipeline_layout)) // max(cfg.pp, 1)
        cfg = dataclasses.replace(cfg, vpp=vpp if vpp > 1 else None)
    cfg.validate()
    cfg.check_model(model_cfg)
    return cfg


def world_size_for(args) -> int:
    """Ranks a layout needs: both the dense (tp*pp) and the expert (etp*ep*pp) grids must fit."""
    etp = args.etp or args.tp
    return math.lcm(args.tp * args.pp, etp * args.ep * args.pp)


def load_model_config_file(path: str) -> ModelConfig:
    """A model YAML (a `model:` section file, or a job config that has one)."""
    from r1mega.configlib import from_dict, load_yaml_tree, resolve_path

    tree = load_yaml_tree(path)
    data = tree.get("model", tree)
    if isinstance(data, str):  # a job config naming its model file
        tree = load_yaml_tree(resolve_path(data, Path(path).resolve().parent))
        data = tree
    return from_dict(ModelConfig, data, where="model", base_dir=Path(path).resolve().parent)


def is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def progress_bar(total: int, desc: str, disabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=disabled or not is_rank0(), dynamic_ncols=True)


def say(msg: str) -> None:
    if is_rank0():
        print(msg, flush=True)


def _rank_entry(rank_fn: Callable, args) -> Optional[str]:
    """Rank body: None on success, the error message of a user mistake otherwise."""
    from r1mega.parallel.distributed import destroy_distributed

    quiet_library_warnings()
    try:
        rank_fn(args)
        return None
    except ValueError as e:
        return str(e)
    finally:
        destroy_distributed()


def run_tool(rank_fn: Callable, args) -> int:
    """Run `rank_fn(args)` on the ranks the layout needs; exit status 0 or 1 (error printed)."""
    from r1mega.parallel.launch import DistributedRunError, find_free_port, run_distributed

    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    need = world_size_for(args)
    if launched or need == 1:
        if not launched:  # a single in-process rank: a private port, never a shared default
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ["MASTER_PORT"] = str(find_free_port())
        errors = [_rank_entry(rank_fn, args)]
    else:
        try:
            errors = run_distributed(_rank_entry, need, rank_fn, args, timeout=24 * 3600.0)
        except DistributedRunError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    error = next((e for e in errors if e), None)
    if error:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
