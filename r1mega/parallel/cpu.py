"""Run megatron-core on CPU with gloo: the stand-ins and targeted fixes it needs without CUDA.

megatron-core assumes a CUDA device in a few dozen places (device="cuda" allocations, CUDA streams
and events, the CUDA RNG, `tensor.type()` checks) and has three code paths that only work with
transformer-engine or CUDA tensors. `enable_cpu_support()` patches those, and only those, so that
GPTModel (local layer spec), the pipeline schedules, the MoE layer with the alltoall dispatcher,
sequence parallelism, MLA, megatron DDP and the (distributed) optimizer run forward and backward on
CPU with the numerics of the single-process model. It is switched on only when CUDA is absent, is
idempotent, and refuses to run on a megatron-core release it was not written for: every patch names
the version it was checked against (`MEGATRON_VERSION`) and its preconditions are verified before
anything is changed. docs/cpu_support.md describes each patch, what breaks without it, and how to
extend the list for a new megatron release.

The CPU-only modules that belong in a layer spec (a sequence-parallel-capable norm and an SDPA core
attention for MLA) live beside the model code in r1mega/models/cpu_spec.py.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import threading
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

__all__ = [
    "enable_cpu_support",
    "cpu_support_enabled",
    "mla_rope_grad_fix",
    "apply_megatron_fixes",
    "fix_checkpoint_without_output_fp8",
    "MEGATRON_VERSION",
    "CpuDeviceMode",
]

MEGATRON_VERSION = "0.16.1"
"""The megatron-core release every patch below was written for and verified against."""

_ENABLED = False
_LOCK = threading.Lock()
# Stands in for the CUDA default generator: megatron's RNG tracker stores and restores its states.
_CUDA_GENERATOR = torch.Generator()


class CpuSupportError(RuntimeError):
    """megatron-core is not the release these patches were written for, or changed under them."""


def cpu_support_enabled() -> bool:
    return _ENABLED


def enable_cpu_support() -> bool:
    """Patch torch.cuda / megatron-core for CPU execution when CUDA is absent; True if active.

    Idempotent. Call before megatron builds anything (distributed start-up and the model builder
    do). Raises CpuSupportError on an unknown megatron-core release.
    """
    global _ENABLED
    if torch.cuda.is_available():
        return False
    with _LOCK:
        if _ENABLED:
            return True
        _check_megatron_version()
        _patch_torch_cuda_plumbing()
        _patch_rng()
        _push_device_mode()
        _patch_optimizer_type_checks()
        _patch_moe()
        _patch_mla()
        _check_dist_checkpointing_deps()
        _ENABLED = True
    return True


# ------------------------------------------------------------------------------------------------
# Preconditions: fail loudly when megatron-core is not what the patches expect
# ------------------------------------------------------------------------------------------------


def _check_megatron_version() -> None:
    from megatron.core import package_info

    if package_info.__version__ != MEGATRON_VERSION:
        raise CpuSupportError(
            f"r1mega.parallel.cpu was written for megatron-core {MEGATRON_VERSION}, found "
            f"{package_info.__version__}; re-verify each patch (docs/cpu_support.md) before "
            "changing MEGATRON_VERSION"
        )


def _require(obj: Any, attr: str, *, source_contains: tuple[str, ...] = ()) -> Any:
    """Return obj.attr after checking it exists and (for functions) still contains `source_contains`."""
    where = f"{getattr(obj, '__name__', obj)}.{attr}"
    if not hasattr(obj, attr):
        raise CpuSupportError(f"megatron-core {MEGATRON_VERSION} patch target {where} is missing")
    value = getattr(obj, attr)
    if source_contains:
        try:
            src = inspect.getsource(value if not isinstance(value, type) else value)
        except (OSError, TypeError) as e:
            raise CpuSupportError(f"cannot read the source of {where}: {e}") from None
        for needle in source_contains:
            if needle not in src:
                raise CpuSupportError(
                    f"{where} no longer contains {needle!r}: megatron-core changed under the CPU "
                    "support; re-verify the patch (docs/cpu_support.md)"
                )
    return value


# ------------------------------------------------------------------------------------------------
# Plumbing: torch.cuda stand-ins (megatron 0.16.1 calls these unconditionally)
# ------------------------------------------------------------------------------------------------


class _FakeEvent:
    """torch.cuda.Event on CPU: work is synchronous, so every event has already happened."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return 0.0


class _FakeStream:
    """torch.cuda.Stream on CPU: one implicit, synchronous stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> _FakeEvent:
        return event if event is not None else _FakeEvent()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _FakeStream)

    def __hash__(self) -> int:
        return 0


_DEFAULT_STREAM = _FakeStream()


def _noop(name: str) -> Callable[..., None]:
    """A fresh do-nothing function per patched name (torch.compile's rule table rejects one object
    registered under several torch names)."""

    def noop(*args: Any, **kwargs: Any) -> None:
        return None

    noop.__name__ = noop.__qualname__ = name
    return noop


def _patch_torch_cuda_plumbing() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.set_device = _noop("set_device")
    cuda.synchronize = _noop("synchronize")
    cuda.empty_cache = _noop("empty_cache")
    cuda.Stream = _FakeStream
    cuda.Event = _FakeEvent
    cuda.current_stream = lambda device=None: _DEFAULT_STREAM
    cuda.default_stream = lambda device=None: _DEFAULT_STREAM
    cuda.set_stream = _noop("set_stream")
    cuda.stream = lambda stream=None: contextlib.nullcontext()
    cuda.nvtx.range_push = _noop("range_push")
    cuda.nvtx.range_pop = _noop("range_pop")
    cuda.nvtx.range = lambda *a, **k: contextlib.nullcontext()
    # Tensor.record_stream is a CUDA caching-allocator hint; on CPU memory is freed eagerly.
    torch.Tensor.record_stream = lambda self, stream: None


# ------------------------------------------------------------------------------------------------
# Device mapping: device="cuda" / integer devices -> CPU, Tensor.cuda() no-op, no pinned memory
# ------------------------------------------------------------------------------------------------


def _map_device(device: Any) -> Any:
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu")
    if isinstance(device, str) and device.startswith("cuda"):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


_TYPE_FUNC = torch.Tensor.type
_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _called_from_megatron_optimizer() -> bool:
    # frame 0 is this function, 1 __torch_function__ (dispatched from C), 2 the caller of .type()
    frame = sys._getframe(2)
    return frame.f_globals.get("__name__", "").startswith("megatron.core.optimizer")


class CpuDeviceMode(TorchFunctionMode):
    """Maps CUDA device requests to the CPU for every torch call made while it is active."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.device and args and _map_device(args[0]) != args[0]:
            return torch.device("cpu")  # torch.device(0) / torch.device("cuda", i)
        if func is torch.Tensor.backward:
            return _backward_with_mode(
                args[0], kwargs.get("gradient"), kwargs.get("retain_graph"),
                kwargs.get("create_graph", False), kwargs.get("inputs"),
            )
        if func is torch.autograd.backward:
            return _backward_with_mode(
                args[0] if args else kwargs["tensors"], kwargs.get("grad_tensors"),
                kwargs.get("retain_graph"), kwargs.get("create_graph", False), kwargs.get("inputs"),
            )
        if func is _TYPE_FUNC and len(args) == 1 and not kwargs:
            # megatron.core.optimizer compares tensor.type() with 'torch.cuda.FloatTensor' (0.16.1:
            # distrib_optimizer, optimizer, clip_grads) and refuses CPU tensors; report the CUDA
            # name to those callers only.
            name = func(*args)
            if _called_from_megatron_optimizer():
                return _CUDA_TYPE_NAMES.get(name, name)
            return name
        if "device" in kwargs:
            kwargs["device"] = _map_device(kwargs["device"])
        if kwargs.get("pin_memory"):
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1:
            # t.to("cuda") / t.to(0) / t.to(torch.device("cuda")): positional device
            args = (args[0], _map_device(args[1]), *args[2:])
        return func(*args, **kwargs)


def _backward_with_mode(tensors, grad_tensors, retain_graph, create_graph, inputs) -> None:
    """Run the autograd engine with the device mode active.

    A mode is popped while its own handler runs, and torch 2.13's `torch.autograd.backward`
    dispatches to modes, so re-pushing the mode and calling it again would only dispatch again:
    the whole backward (including activation recompute and megatron's backward passes, which
    allocate on device=current_device()) would run unmapped. So the handler does what
    torch.autograd.backward does after its dispatch check, with the mode pushed.
    """
    from torch import autograd

    if isinstance(tensors, (torch.Tensor, autograd.graph.GradientEdge)):
        tensors = (tensors,)
    tensors = tuple(tensors)
    if inputs is None:
        inputs_tuple: tuple = ()
    elif isinstance(inputs, (torch.Tensor, autograd.graph.GradientEdge)):
        inputs_tuple = (inputs,)
    elif isinstance(inputs, dict):
        inputs_tuple = tuple(inputs.values())
    else:
        inputs_tuple = tuple(inputs)
    if retain_graph is None:
        retain_graph = create_graph
    with CpuDeviceMode():
        grads = autograd._tensor_or_tensors_to_tuple(grad_tensors, len(tensors))
        grads = autograd._make_grads(tensors, grads, is_grads_batched=False)
        autograd.graph._engine_run_backward(
            tensors, grads, retain_graph, create_graph, inputs_tuple,
            allow_unreachable=True, accumulate_grad=True,
        )


def _check_autograd_internals() -> None:
    from torch import autograd

    _require(autograd, "_tensor_or_tensors_to_tuple")
    _require(autograd, "_make_grads")
    _require(autograd.graph, "_engine_run_backward")
    _require(autograd, "backward", source_contains=("_engine_run_backward(",))


def _push_device_mode() -> None:
    _check_autograd_internals()
    # Entered for the life of the process (never exited): every later torch call is mapped.
    CpuDeviceMode().__enter__()


# ------------------------------------------------------------------------------------------------
# RNG: a separate generator stands in for CUDA's; the tracker's fork swaps it into the CPU generator
# ------------------------------------------------------------------------------------------------


def _cuda_get_rng_state(device: Any = "cuda") -> torch.Tensor:
    return _CUDA_GENERATOR.get_state()


def _cuda_set_rng_state(new_state: torch.Tensor, device: Any = "cuda") -> None:
    _CUDA_GENERATOR.set_state(new_state)


def _cuda_manual_seed(seed: int) -> None:
    _CUDA_GENERATOR.manual_seed(int(seed))


def _megatron_get_cuda_rng_state(device: Any = "cuda", clone: bool = False, graph_safe: bool = False):
    assert not graph_safe, "CUDA-graph-safe RNG has no CPU equivalent"
    return _CUDA_GENERATOR.get_state()


def _megatron_set_cuda_rng_state(new_state: torch.Tensor, device: int = -1, graph_safe: bool = False):
    # megatron's version defers the call through torch.cuda._lazy_call, which on a CPU build only
    # queues it: fork() would never switch state and TP ranks would draw identical dropout masks.
    assert not graph_safe, "CUDA-graph-safe RNG has no CPU equivalent"
    _CUDA_GENERATOR.set_state(new_state)


_FORK_STACK: list[torch.Tensor] = []  # the real CPU RNG state saved by each active fork


def _patch_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    _require(mrandom, "_get_cuda_rng_state")
    _require(mrandom, "_set_cuda_rng_state", source_contains=("_lazy_call(cb)",))
    tracker_cls = _require(mrandom, "CudaRNGStatesTracker")
    original_fork = _require(tracker_cls, "fork", source_contains=("_set_cuda_rng_state",))
    default_name = _require(mrandom, "_MODEL_PARALLEL_RNG_TRACKER_NAME")

    for mod in (torch.cuda, torch.cuda.random):
        mod.get_rng_state = _cuda_get_rng_state
        mod.set_rng_state = _cuda_set_rng_state
        mod.manual_seed = _cuda_manual_seed
        mod.manual_seed_all = _cuda_manual_seed
    mrandom._get_cuda_rng_state = _megatron_get_cuda_rng_state
    mrandom._set_cuda_rng_state = _megatron_set_cuda_rng_state

    @contextlib.contextmanager
    def fork(self, name=default_name):
        # On CPU every op draws from torch's default (CPU) generator, so for the duration of the
        # fork the tracked state must live there; the real CPU state is parked on _FORK_STACK.
        nested = bool(_FORK_STACK)
        if nested:  # the enclosing fork's draws go back to the CUDA stand-in first
            _CUDA_GENERATOR.set_state(torch.get_rng_state())
            torch.set_rng_state(_FORK_STACK[-1])
        with original_fork(self, name):
            _FORK_STACK.append(torch.get_rng_state())
            torch.set_rng_state(_CUDA_GENERATOR.get_state())
            try:
                yield
            finally:
                _CUDA_GENERATOR.set_state(torch.get_rng_state())
                torch.set_rng_state(_FORK_STACK.pop())
        if nested:  # back inside the enclosing fork: its state returns to the CPU generator
            _FORK_STACK[-1] = torch.get_rng_state()
            torch.set_rng_state(_CUDA_GENERATOR.get_state())

    fork.__doc__ = original_fork.__doc__
    tracker_cls.fork = fork


# ------------------------------------------------------------------------------------------------
# Optimizer: `tensor.type()` CUDA names (handled in CpuDeviceMode); check the targets are still there
# ------------------------------------------------------------------------------------------------


def _patch_optimizer_type_checks() -> None:
    from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer

    for mod, attr in (
        (distrib_optimizer.DistributedOptimizer, "_build_model_and_main_param_groups"),
        (optimizer.Float16OptimizerWithFloat16Params, "__init__"),
        (clip_grads, "clip_grad_by_total_norm_fp32"),
    ):
        _require(mod, attr, source_contains=("torch.cuda.FloatTensor",))


# ------------------------------------------------------------------------------------------------
# MoE: no transformer-engine GEMM; alltoall split sizes as numpy for gloo
# ------------------------------------------------------------------------------------------------


def _patch_moe() -> None:
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    if not getattr(moe_utils, "HAVE_TE", False):
        # the router's GEMM checks `te_general_gemm is not None`, but the name only exists when
        # transformer-engine imported
        moe_utils.te_general_gemm = None

    original = _require(moe_utils, "maybe_move_tensor_to_cpu", source_contains=("tensor.is_cuda",))
    _require(token_dispatcher, "maybe_move_tensor_to_cpu")
    _require(
        token_dispatcher.MoEAlltoAllTokenDispatcher,
        "_maybe_dtoh_and_synchronize",
        source_contains=("as_numpy=True",),
    )

    @functools.wraps(original)
    def maybe_move_tensor_to_cpu(tensor, as_numpy: bool = False, record_stream: bool = False):
        # The original converts only CUDA tensors; CPU split sizes stayed tensors, which gloo's
        # all_to_all_single rejects as split sizes.
        if as_numpy and torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.detach().numpy().copy()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    moe_utils.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


# ------------------------------------------------------------------------------------------------
# MLA: HAVE_TE placeholder, and the k_pos_emb gradient at TP > 1 with the local spec
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


def _patch_mla() -> None:
    from megatron.core.transformer import multi_latent_attention as mla

    try:
        import transformer_engine  # noqa: F401

        have_te = True
    except ImportError:
        have_te = False
    if not have_te:
        # Without TE, megatron's TE extension hands out MagicMock placeholders, so the module's
        # `from ...transformer_engine import TELinear` succeeds, HAVE_TE is True and
        # `isinstance(self.linear_proj, TELinear)` raises.
        _require(mla, "HAVE_TE")
        mla.HAVE_TE = False

    self_attention = _require(mla, "MLASelfAttention")
    _require(
        self_attention,
        "get_query_key_value_tensors",
        source_contains=("kv_combined = gather_from_tensor_model_parallel_region(kv_combined)",),
    )
    original_gather = _require(mla, "gather_from_tensor_model_parallel_region")
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
# Fixes applied on every device (not only CPU): called by the model builder
# ------------------------------------------------------------------------------------------------


def apply_megatron_fixes() -> None:
    """The megatron-core fixes that hold wherever their code path runs, CPU or GPU. Idempotent."""
    fix_checkpoint_without_output_fp8()


def fix_checkpoint_without_output_fp8() -> bool:
    """megatron-core 0.16.1: `CheckpointWithoutOutput.__init__` sets `self.fp8 = fp8 is not None`,
    True for fp8=False, so selective recompute of "layernorm" (and moe_act) enters the FP8 branch and
    raises NameError FP8GlobalStateManager without transformer-engine. Set `self.fp8 = bool(fp8) and
    HAVE_TE` after its __init__. Proven by tests/test_recompute.py::
    test_selective_layernorm_recompute_matches_no_recompute (it raises without the fix).
    Returns True when the patch is in place."""
    from megatron.core import package_info
    from megatron.core.tensor_parallel import random as mrandom

    cls = _require(mrandom, "CheckpointWithoutOutput")
    if getattr(cls.__init__, "_r1mega_fp8_fix", False):
        return True
    if package_info.__version__ != MEGATRON_VERSION:
        raise CpuSupportError(
            f"fix_checkpoint_without_output_fp8 was written for megatron-core {MEGATRON_VERSION}, "
            f"found {package_info.__version__}; check whether CheckpointWithoutOutput still sets "
            "fp8 from `fp8 is not None` before changing MEGATRON_VERSION"
        )
    _require(cls, "__init__", source_contains=("self.fp8 = fp8 is not None",))
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
# dist_checkpointing: its save workers need psutil (see docs/cpu_support.md)
# ------------------------------------------------------------------------------------------------


def _check_dist_checkpointing_deps() -> None:
    try:
        import psutil  # noqa: F401
    except ImportError:
        raise CpuSupportError(
            "psutil is missing: megatron's torch_dist checkpoint save workers call "
            "_process_memory() outside their try and die without it (install psutil)"
        ) from None
