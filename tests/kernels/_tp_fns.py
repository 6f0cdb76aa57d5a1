"""Rank functions for the vocab-parallel tests (spawned processes import them by module path).

Every rank rebuilds the same full problem from a seed, keeps its megatron-style slice of the
weight (rows [r * V_local, (r + 1) * V_local)), runs `fused_logprob` over the TP group and returns
its outputs, gradients and the list of collectives it issued.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def make_problem(seed: int, n: int, hdim: int, v_padded: int, vocab_size: int, ignore_every: int = 5):
    """Random hidden/weight/targets (fp32) with some ignored targets; same on every rank."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, hdim, generator=g) * 0.6
    weight = torch.randn(v_padded, hdim, generator=g) * 0.6
    targets = torch.randint(0, vocab_size, (n,), generator=g)
    targets[::ignore_every] = -100
    g_lp = torch.randn(n, generator=g)
    g_ent = torch.randn(n, generator=g)
    return hidden, weight, targets, g_lp, g_ent


class CollectiveLog:
    """Wraps torch.distributed's collectives to record (name, op, shape) of every call."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "broadcast",
             "reduce_scatter_tensor", "all_to_all_single")

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple[int, ...]]] = []
        self._saved: dict[str, object] = {}

    def __enter__(self) -> "CollectiveLog":
        for name in self.NAMES:
            original = getattr(dist, name)
            self._saved[name] = original

            def wrapped(tensor, *args, _name=name, _orig=original, **kwargs):
                op = kwargs.get("op", args[0] if args and _name == "all_reduce" else None)
                self.calls.append((_name, str(op).split(".")[-1] if op is not None else "", tuple(tensor.shape)))
                return _orig(tensor, *args, **kwargs)

            setattr(dist, name, wrapped)
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(dist, name, original)


def vocab_parallel_rank(
    backend: str, seed: int, n: int, hdim: int, v_local: int, vocab_size: int, temperature: float,
    sequence_parallel: bool = False,
):
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    from r1mega.kernels import fused_logprob

    hidden, weight, targets, g_lp, g_ent = make_problem(seed, n, hdim, v_local * world, vocab_size)
    h = hidden.clone().requires_grad_()
    w = weight[rank * v_local : (rank + 1) * v_local].clone().requires_grad_()
    with CollectiveLog() as fwd_log:
        lp, ent = fused_logprob(
            h, w, targets, temperature=temperature, tp_group=dist.group.WORLD, return_entropy=True,
            vocab_size=vocab_size, sequence_parallel=sequence_parallel, backend=backend,
        )
    with CollectiveLog() as bwd_log:
        (lp * g_lp + ent * g_ent).sum().backward()
    return {
        "rank": rank,
        "logprob": lp.detach(),
        "entropy": ent.detach(),
        "grad_hidden": h.grad,
        "grad_weight_shard": w.grad,
        "fwd_collectives": fwd_log.calls,
        "bwd_collectives": bwd_log.calls,
    }
