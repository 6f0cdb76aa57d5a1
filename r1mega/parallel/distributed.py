"""Distributed start-up: torch.distributed from torchrun/SLURM env, then megatron's parallel_state.

Every entry point calls `init_distributed(parallel_cfg, seed=...)` once and `destroy_distributed()`
at exit. One process per GPU (SPMD); without any launcher variables the job runs as a single
process (world size 1), which is what the tiny CPU default does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping, Optional

import torch

from r1mega.configlib import ConfigError
from r1mega.parallel.config import ParallelConfig

__all__ = [
    "LaunchEnv",
    "launch_env",
    "parse_slurm_nodelist",
    "init_distributed",
    "destroy_distributed",
]

_DEFAULT_PORT = 29500
_SLURM_PORT_BASE = 20000  # SLURM jobs derive a port in [20000, 30000) from the job id
_SLURM_PORT_RANGE = 10000


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process sits in the job, as the launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str
    """'torchrun', 'slurm' or 'single' (no launcher variables: one process)."""


def _free_port() -> int:
    from r1mega.parallel.launch import find_free_port

    return find_free_port()


def _int_env(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ConfigError(f"environment variable {key}={env[key]!r} is not an integer") from None


def launch_env(env: Optional[Mapping[str, str]] = None) -> LaunchEnv:
    """Read rank/world/master from torchrun variables, else SLURM's, else a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in env:
                raise ConfigError(f"environment: RANK/WORLD_SIZE are set but {key} is not (torchrun sets all four)")
        return LaunchEnv(
            rank=_int_env(env, "RANK"),
            world_size=_int_env(env, "WORLD_SIZE"),
            local_rank=_int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
            master_addr=env["MASTER_ADDR"],
            master_port=_int_env(env, "MASTER_PORT"),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if not nodelist:
            raise ConfigError("environment: SLURM_PROCID is set but SLURM_JOB_NODELIST is not")
        if "MASTER_PORT" in env:
            port = _int_env(env, "MASTER_PORT")
        elif "SLURM_JOB_ID" in env:
            port = _SLURM_PORT_BASE + _int_env(env, "SLURM_JOB_ID") % _SLURM_PORT_RANGE
        else:
            port = _DEFAULT_PORT
        return LaunchEnv(
            rank=_int_env(env, "SLURM_PROCID"),
            world_size=_int_env(env, "SLURM_NTASKS"),
            local_rank=_int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
            master_addr=env.get("MASTER_ADDR") or parse_slurm_nodelist(nodelist)[0],
            master_port=port,
            source="slurm",
        )
    return LaunchEnv(
        rank=0,
        world_size=1,
        local_rank=0,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        # a lone process needs no agreed port: a free one lets several jobs share a machine
        master_port=_int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else _free_port(),
        source="single",
    )


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: 'a[1-2,4],b' -> ['a[1-2,4]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in SLURM node list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in SLURM node list {text!r}")
    parts.append(text[start:])
    return [p for p in parts if p]


_GROUP = re.compile(r"\[([^\]]*)\]")


def _expand_host(pattern: str) -> list[str]:
    """Expand one host pattern, possibly with several bracket groups: 'n[1-2]-ib[0,3]'."""
    m = _GROUP.search(pattern)
    if m is None:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end():]
    out = []
    for item in m.group(1).split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"empty range in SLURM node list {pattern!r}")
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {item!r} in SLURM node list {pattern!r}")
            width = len(lo)  # zero padding: gpu[001-004] -> gpu001 .. gpu004
            values = [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
        else:
            if not item.isdigit():
                raise ValueError(f"bad index {item!r} in SLURM node list {pattern!r}")
            values = [item]
        for v in values:
            out.extend(_expand_host(head + v + tail))
    return out


def parse_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list ('gpu[001-004,007],login1') in order, like
    `scontrol show hostnames` (which may be absent on compute nodes)."""
    hosts = []
    for part in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_host(part.strip()))
    if not hosts:
        raise ValueError(f"empty SLURM node list {nodelist!r}")
    return hosts


def init_distributed(parallel_cfg: ParallelConfig, *, seed: int, model_cfg=None) -> LaunchEnv:
    """Start torch.distributed and megatron's model-parallel groups and RNG for this process.

    Backend: nccl with CUDA, gloo without (then megatron's CPU support is switched on first). The
    CUDA device is the local rank. Checks the layout against the world size (and the model, when
    given) before any group is built.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    from r1mega.parallel.cpu import enable_cpu_support
    from r1mega.parallel.megatron_fixes import apply_megatron_fixes

    info = launch_env()
    parallel_cfg.check_world_size(info.world_size)
    if model_cfg is not None:
        parallel_cfg.check_model(model_cfg)

    apply_megatron_fixes()  # every device: they fix megatron code, not the lack of CUDA
    cuda = torch.cuda.is_available()
    if not cuda:
        enable_cpu_support()
    backend = parallel_cfg.backend
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise ConfigError("parallel.backend: nccl needs CUDA; use gloo (or auto) on CPU")
    if cuda:
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())

    if not dist.is_initialized():
        timeout = timedelta(minutes=parallel_cfg.timeout_minutes)
        if info.world_size == 1:
            # nobody else connects: the store listens on a port the kernel picks as it binds, so
            # no other process can take it between choosing and listening
            store = dist.TCPStore("127.0.0.1", 0, 1, is_master=True, timeout=timeout)
            dist.init_process_group(backend=backend, store=store, rank=0, world_size=1, timeout=timeout)
        else:
            dist.init_process_group(
                backend=backend,
                init_method=f"tcp://{_url_host(info.master_addr)}:{info.master_port}",
                rank=info.rank,
                world_size=info.world_size,
                timeout=timeout,
            )
    parallel_state.initialize_model_parallel(
        **parallel_cfg.megatron_sizes(),
        distributed_timeout_minutes=parallel_cfg.timeout_minutes,
    )
    _seed_everything(seed + 100 * parallel_state.get_pipeline_model_parallel_rank())
    return info


def _seed_everything(seed: int) -> None:
    """Megatron-LM's convention: each pipeline stage its own seed (its layers differ), then the
    tracker's TP/EP/DP-specific streams derived from it."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def _url_host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr and not addr.startswith("[") else addr


def destroy_distributed() -> None:
    """Tear down megatron's groups and the default process group (safe to call twice)."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
