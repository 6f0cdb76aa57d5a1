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
extend the list for a new megatron release. Fixes of megatron bugs that are not about the device
(MLA without TE, the MLA k_pos_emb gradient at TP>1, MoE without TE) live in
`r1mega.parallel.megatron_fixes` and apply on every device; enabling CPU support applies them too.

The CPU-only modules that belong in a layer spec (a sequence-parallel-capable norm and an SDPA core
attention for MLA) live beside the model code in r1mega/models/cpu_spec.py.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

from r1mega.parallel.megatron_fixes import MEGATRON_VERSION, MegatronPatchError, apply_megatron_fixes
from r1mega.parallel.megatron_fixes import check_megatron_version as _check_megatron_version
from r1mega.parallel.megatron_fixes import require as _require

__all__ = [
    "enable_cpu_support",
    "cpu_support_enabled",
    "MEGATRON_VERSION",
    "CpuDeviceMode",
    "device_mode_suspended",
]

_ENABLED = False
_LOCK = threading.Lock()
# Stands in for the CUDA default generator: megatron's RNG tracker stores and restores its states.
_CUDA_GENERATOR = torch.Generator()


CpuSupportError = MegatronPatchError
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
        apply_megatron_fixes()  # checks the megatron-core release first
        _patch_torch_cuda_plumbing()
        _patch_rng()
        _push_device_mode()
        _patch_optimizer_type_checks()
        _patch_moe()
        _ENABLED = True
    return True


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


@contextlib.contextmanager
def device_mode_suspended():
    """Run the body without the CPU device mode, for code that never names a CUDA device (the
    built-in rollout engine's transformers model, r1mega's own CPU-side tensors).

    The mode costs a Python dispatch on every torch call (~2.5 us, measured against no mode on the
    2-core CPU machine), a quarter of the tiny default's generation time. Only the mode on top of
    this thread's stack is suspended; with another mode above it (or none), the body runs as is.
    """
    from torch.overrides import _get_current_function_mode_stack, _pop_mode, _push_mode

    stack = _get_current_function_mode_stack()
    if not stack or not isinstance(stack[-1], CpuDeviceMode):
        yield
        return
    mode = _pop_mode()
    try:
        yield
    finally:
        _push_mode(mode)


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
# MoE: alltoall split sizes as numpy for gloo
# ------------------------------------------------------------------------------------------------


def _patch_moe() -> None:
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

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
