"""Fixes for megatron-core bugs, applied wherever the code they fix runs (never chosen by device).

Each fix names the megatron-core release it was written for (`MEGATRON_VERSION`), checks that the
code it patches is still what it was written against before changing anything, and names the test
that proves it. `apply_megatron_fixes()` is idempotent; distributed start-up and the model builder
call it on every device, before megatron builds anything. The CPU stand-ins (torch.cuda plumbing,
RNG, device mapping, optimizer type checks, gloo split sizes) are a different thing: they make
megatron run without CUDA at all and live in `r1mega.parallel.cpu`, switched on only without CUDA.

| fix | runs when | proven by |
| --- | --- | --- |
| `_fix_moe_te_general_gemm` | transformer-engine absent (CPU, or a GPU without TE) | EP=2 tests in test_parallel_equivalence.py |
| `_fix_mla_have_te` | transformer-engine absent | every DeepSeek-V3 test |
| `_fix_mla_rope_grad` | MLA with a TP-partitioned `linear_kv_down_proj` (local spec at TP>1) | test_parallel_equivalence.py::test_mla_tp2_needs_the_k_pos_emb_gradient_fix (negative control included) |
| `fix_checkpoint_without_output_fp8` | selective recompute of `layernorm` / `moe_act` without transformer-engine | test_recompute.py::test_selective_layernorm_recompute_matches_no_recompute |
| `_check_dist_checkpointing_deps` | every torch_dist save | test_checkpoint.py saves |
| `_fix_p2p_shape_exchange` | pipeline p2p unbatched (`batch_p2p_comm=False`, gloo) with variable-length microbatches | test_vpp_trainers.py (SFT and RL at pp=2 + vpp=2) |
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from typing import Any

import torch

__all__ = [
    "MEGATRON_VERSION",
    "MegatronPatchError",
    "apply_megatron_fixes",
    "megatron_fixes_applied",
    "mla_rope_grad_fix",
    "fix_checkpoint_without_output_fp8",
    "check_megatron_version",
    "require",
]

MEGATRON_VERSION = "0.16.1"
"""The megatron-core release every fix (and every CPU stand-in) was written for and verified against."""

_APPLIED = False
_LOCK = threading.Lock()


class MegatronPatchError(RuntimeError):
    """megatron-core is not the release these patches were written for, or changed under them."""


def megatron_fixes_applied() -> bool:
    return _APPLIED


def apply_megatron_fixes() -> None:
    """Apply every fix whose code path can run in this process (idempotent; any device)."""
    global _APPLIED
    with _LOCK:
        if _APPLIED:
            return
        check_megatron_version()
        have_te = transformer_engine_importable()
        if not have_te:
            _fix_moe_te_general_gemm()
            _fix_mla_have_te()
        _fix_mla_rope_grad()
        fix_checkpoint_without_output_fp8()
        _fix_p2p_shape_exchange()
        _check_dist_checkpointing_deps()
        _APPLIED = True


# ------------------------------------------------------------------------------------------------
# Preconditions: fail loudly when megatron-core is not what the patches expect
# ------------------------------------------------------------------------------------------------


def check_megatron_version() -> None:
    from megatron.core import package_info

    if package_info.__version__ != MEGATRON_VERSION:
        raise MegatronPatchError(
            f"r1mega's megatron patches were written for megatron-core {MEGATRON_VERSION}, found "
            f"{package_info.__version__}; re-verify each patch (docs/cpu_support.md) before "
            "changing MEGATRON_VERSION"
        )


def require(obj: Any, attr: str, *, source_contains: tuple[str, ...] = ()) -> Any:
    """Return obj.attr after checking it exists and (for functions) still contains `source_contains`."""
    where = f"{getattr(obj, '__name__', obj)}.{attr}"
    if not hasattr(obj, attr):
        raise MegatronPatchError(f"megatron-core {MEGATRON_VERSION} patch target {where} is missing")
    value = getattr(obj, attr)
    if source_contains:
        try:
            src = inspect.getsource(value)
        except (OSError, TypeError) as e:
            raise MegatronPatchError(f"cannot read the source of {where}: {e}") from None
        for needle in source_contains:
            if needle not in src:
                raise MegatronPatchError(
                    f"{where} no longer contains {needle!r}: megatron-core changed under the patch; "
                    "re-verify it (docs/cpu_support.md)"
                )
    return value


def transformer_engine_importable() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
# MoE without transformer-engine (megatron-core 0.16.1)
# ------------------------------------------------------------------------------------------------


def _fix_moe_te_general_gemm() -> None:
    """The router checks `te_general_gemm is not None`, but `moe_utils` defines the name only when
    transformer-engine imports: without TE, the router raises NameError. Define it as None."""
    from megatron.core.transformer.moe import moe_utils

    if not getattr(moe_utils, "HAVE_TE", False) and not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


# ------------------------------------------------------------------------------------------------
# MLA (megatron-core 0.16.1)
# ------------------------------------------------------------------------------------------------


class _AllReduceGradOverTP(torch.autograd.Function):
    """Identity forward; backward all-reduces the gradient over the TP group (on a contiguous copy)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()  # all_reduce works in place: never on a view it would drop
        torch.distributed.all_reduce(grad, group=ctx.group)
        return grad, None


_ROPE_DIM_ATTR = "_r1mega_mla_rope_dim"  # set on kv_combined by the linear_kv_down_proj hook
_MLA_ROPE_GRAD_FIX = True


@contextlib.contextmanager
def mla_rope_grad_fix(enabled: bool):
    """Switch the MLA k_pos_emb gradient fix off for a negative control (tests, bug reproduction)."""
    global _MLA_ROPE_GRAD_FIX
    previous, _MLA_ROPE_GRAD_FIX = _MLA_ROPE_GRAD_FIX, enabled
    try:
        yield
    finally:
        _MLA_ROPE_GRAD_FIX = previous


def _fix_mla_have_te() -> None:
    """Without TE, megatron's TE extension hands out MagicMock placeholders, so
    multi_latent_attention's `from ...transformer_engine import TELinear` succeeds, its HAVE_TE is
    True and `isinstance(self.linear_proj, TELinear)` raises. Tell the module TE is absent."""
    from megatron.core.transformer import multi_latent_attention as mla

    require(mla, "HAVE_TE")
    mla.HAVE_TE = False


def _fix_mla_rope_grad() -> None:
    """MLA's k_pos_emb gradient at TP > 1 (docs/mla_tp_grad_bug.md): with a TP-partitioned
    `linear_kv_down_proj` (the local spec; TE's spec too if it partitions it), kv_combined is
    re-assembled by `gather_from_tensor_model_parallel_region`, whose backward only slices; the rope
    slice feeds only this rank's heads, so its gradient is partial and must be all-reduced. The
    wrapper activates only on layers whose down-projection is partitioned, so it is safe everywhere."""
    from megatron.core.transformer import multi_latent_attention as mla

    self_attention = require(mla, "MLASelfAttention")
    require(
        self_attention,
        "get_query_key_value_tensors",
        source_contains=("kv_combined = gather_from_tensor_model_parallel_region(kv_combined)",),
    )
    original_gather = require(mla, "gather_from_tensor_model_parallel_region")
    original_init = self_attention.__init__

    def gather_from_tensor_model_parallel_region(input_, group=None):
        # k_pos_emb is cut from the gathered kv_combined; it feeds only this rank's heads, so its
        # gradient is partial, but the gather's backward just slices (it assumes equal grads on
        # all TP ranks). Route the rope slice through identity-forward / all-reduce-backward.
        out = original_gather(input_, group)
        rope_dim = getattr(input_, _ROPE_DIM_ATTR, None)
        if rope_dim is None or not _MLA_ROPE_GRAD_FIX:
            return out
        from megatron.core.parallel_state import get_tensor_model_parallel_group

        group = group if group is not None else get_tensor_model_parallel_group()
        latent, rope = torch.split(out, [out.size(-1) - rope_dim, rope_dim], dim=-1)
        return torch.cat([latent, _AllReduceGradOverTP.apply(rope, group)], dim=-1)

    def _tag_kv_combined(module, inputs, output):
        tensor = output[0] if isinstance(output, tuple) else output
        setattr(tensor, _ROPE_DIM_ATTR, module._r1mega_rope_dim)
        return output

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        down = self.linear_kv_down_proj
        if getattr(down, "output_size_per_partition", None) not in (None, getattr(down, "output_size", None)):
            down._r1mega_rope_dim = self.config.qk_pos_emb_head_dim
            down.register_forward_hook(_tag_kv_combined)

    mla.gather_from_tensor_model_parallel_region = gather_from_tensor_model_parallel_region
    self_attention.__init__ = __init__


# ------------------------------------------------------------------------------------------------
# Activation recompute without transformer-engine (megatron-core 0.16.1)
# ------------------------------------------------------------------------------------------------


def fix_checkpoint_without_output_fp8() -> bool:
    """`CheckpointWithoutOutput.__init__` sets `self.fp8 = fp8 is not None`, True for fp8=False, so
    selective recompute of "layernorm" (and moe_act) enters the FP8 branch and raises NameError
    FP8GlobalStateManager without transformer-engine. Set `self.fp8 = bool(fp8) and HAVE_TE` after
    its __init__. Idempotent; returns True when the patch is in place."""
    from megatron.core.tensor_parallel import random as mrandom

    check_megatron_version()
    cls = require(mrandom, "CheckpointWithoutOutput")
    if getattr(cls.__init__, "_r1mega_fp8_fix", False):
        return True
    require(cls, "__init__", source_contains=("self.fp8 = fp8 is not None",))
    original_init = cls.__init__

    @functools.wraps(original_init)
    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        fp8 = args[0] if args else kwargs.get("fp8", False)
        self.fp8 = bool(fp8) and mrandom.HAVE_TE

    __init__._r1mega_fp8_fix = True
    cls.__init__ = __init__
    return True


# ------------------------------------------------------------------------------------------------
# Pipeline p2p: the shape exchange of variable-length microbatches (megatron-core 0.16.1)
# ------------------------------------------------------------------------------------------------


def _fix_p2p_shape_exchange() -> None:
    """With `variable_seq_lengths`, `P2PCommunicator._communicate_shapes` sends each tensor's shape
    before the tensor, always through one `batch_isend_irecv` on the pipeline group, even when
    `batch_p2p_comm=False` chose the unbatched path for the tensors themselves. At pp=2 with virtual
    stages, one call sends a rank's activation shape (to next) and gradient shape (to prev) to the
    same peer; gloo matches sends and receives per (peer, tag) in order, so the peer receives them
    crosswise, allocates a buffer of the other microbatch's length and the step aborts or hangs
    (observed: gloo "Connection reset by peer" after a size mismatch). With `batch_p2p_comm=False`
    exchange the shapes through megatron's own unbatched `_p2p_ops`, which sends the two directions
    over different communicators (as it does for the tensors); otherwise megatron's code runs."""
    from megatron.core.pipeline_parallel import p2p_communication as p2p

    cls = require(p2p, "P2PCommunicator")
    if getattr(cls._communicate_shapes, "_r1mega_shape_fix", False):
        return
    original = require(cls, "_communicate_shapes", source_contains=("torch.distributed.batch_isend_irecv(ops)",))
    p2p_ops = require(p2p, "_p2p_ops", source_contains=("even_recv_odd_send_group = torch.distributed.group.WORLD",))

    @functools.wraps(original)
    def _communicate_shapes(self, tensor_send_next, tensor_send_prev, recv_prev, recv_next):
        config = self.config
        if config.batch_p2p_comm or config.use_ring_exchange_p2p:
            return original(self, tensor_send_next, tensor_send_prev, recv_prev, recv_next)
        device = torch.cuda.current_device()

        def shape_of(t):
            return None if t is None else torch.tensor(t.size(), device=device, dtype=torch.int64)

        recv_prev_shape = torch.empty((3,), device=device, dtype=torch.int64) if recv_prev else None
        recv_next_shape = torch.empty((3,), device=device, dtype=torch.int64) if recv_next else None
        reqs = p2p_ops(
            tensor_send_prev=shape_of(tensor_send_prev), tensor_recv_prev=recv_prev_shape,
            tensor_send_next=shape_of(tensor_send_next), tensor_recv_next=recv_next_shape,
            group=self.pp_group, prev_pipeline_rank=self.prev_rank, next_pipeline_rank=self.next_rank,
        )
        for req in reqs.values():
            req.wait()
        return (
            recv_prev_shape.tolist() if recv_prev_shape is not None else [0, 0, 0],
            recv_next_shape.tolist() if recv_next_shape is not None else [0, 0, 0],
        )

    _communicate_shapes._r1mega_shape_fix = True
    cls._communicate_shapes = _communicate_shapes


# ------------------------------------------------------------------------------------------------
# dist_checkpointing: its save workers need psutil (see docs/cpu_support.md)
# ------------------------------------------------------------------------------------------------


def _check_dist_checkpointing_deps() -> None:
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise MegatronPatchError(
            "psutil is missing: megatron's torch_dist checkpoint save workers call "
            "_process_memory() outside their try and die without it (install psutil)"
        ) from None
