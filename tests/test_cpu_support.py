"""The CPU support itself: version guard, idempotence, device mapping and the RNG tracker on CPU.

(What it enables end to end is proven by test_parallel_equivalence.py and test_optimizer.py.)
"""

import pytest
import torch

from r1mega.parallel import cpu
from r1mega.parallel.launch import run_distributed
from tests import _model_fns


def test_unknown_megatron_version_fails_loudly(monkeypatch):
    from megatron.core import package_info

    monkeypatch.setattr(package_info, "__version__", "0.99.0")
    with pytest.raises(cpu.CpuSupportError, match="written for megatron-core 0.16.1, found 0.99.0"):
        cpu._check_megatron_version()


def test_changed_patch_target_fails_loudly():
    from megatron.core.transformer.moe import moe_utils

    with pytest.raises(cpu.CpuSupportError, match="no longer contains"):
        cpu._require(moe_utils, "maybe_move_tensor_to_cpu", source_contains=("text that is not there",))
    with pytest.raises(cpu.CpuSupportError, match="is missing"):
        cpu._require(moe_utils, "no_such_function")


@pytest.mark.dist
def test_enable_is_idempotent_and_maps_devices():
    (out,) = run_distributed(_model_fns.enable_twice, 1, timeout=300)
    assert out["first"] and out["second"]
    assert out["depth_after_first"] == out["depth_after_second"] >= 1
    assert out["fork_patched_once"]
    assert out["device"] == "cpu" and out["cuda_tensor_noop"] and not out["pinned"]


@pytest.mark.dist
def test_rng_tracker_forks_switch_state_on_cpu():
    r0, r1 = run_distributed(_model_fns.rng_fork_behaviour, 2, timeout=300)
    # model-parallel stream: different per TP rank (the bug without the fix: identical)
    assert not torch.equal(r0["inside"], r1["inside"])
    assert not torch.equal(r0["tp_dropout"], r1["tp_dropout"])
    # default stream (outside forks): the same on both TP ranks
    assert torch.equal(r0["outside"], r1["outside"])
    assert torch.equal(r0["dropout"], r1["dropout"])
    for r in (r0, r1):
        # a fork resumes its stream where the last one stopped, and nesting does not disturb it
        assert not torch.equal(r["inside"], r["inside_again"])
        assert not torch.equal(r["inside"], r["inside_after_nested"])
        assert not torch.equal(r["nested"], r["inside"])
        assert r["cpu_unchanged"], "a fork must leave the CPU generator as it found it"
        assert not any("RNG state changed" in w for w in r["warnings"]), r["warnings"]


def _mode_stack():
    from torch.overrides import _get_current_function_mode_stack

    return list(_get_current_function_mode_stack())


def test_device_mode_suspended_turns_the_mapping_off_and_back_on():
    """Inside, the mode is gone (a CUDA allocation fails on this CPU build); after, even when the
    body raised, it maps again; under another mode pushed above it, nothing is suspended."""
    if torch.cuda.is_available():
        pytest.skip("needs a CPU-only torch: a CUDA allocation must fail without the mode")
    with cpu.CpuDeviceMode() as mode:
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        with cpu.device_mode_suspended():
            assert mode not in _mode_stack()
            with pytest.raises((AssertionError, RuntimeError)):
                torch.zeros(2, device="cuda")
        assert _mode_stack()[-1] is mode
        with pytest.raises(KeyError):
            with cpu.device_mode_suspended():
                raise KeyError("the body failed")
        assert _mode_stack()[-1] is mode and torch.zeros(1, device="cuda").device.type == "cpu"

        class Above(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                return func(*args, **(kwargs or {}))

        with Above():
            with cpu.device_mode_suspended():
                assert mode in _mode_stack()
    with cpu.device_mode_suspended():  # no mode at all: runs as is
        assert _mode_stack() == []


def test_builtin_engine_generates_without_the_device_mode():
    """The rollout engine never names a CUDA device, so it runs without the mode's per-op dispatch,
    and its samples are the same as with the mode on."""
    from r1mega.rollout.builtin import BuiltinEngine
    from r1mega.rollout.types import SamplingParams
    from tests.rollout_helpers import random_prompts, randomize_, tiny_config

    engine = BuiltinEngine(tiny_config("qwen2"), device="cpu")
    randomize_(engine.model, seed=int(torch.randint(0, 2**31, ())))
    seen = []
    hook = engine.model.register_forward_pre_hook(lambda module, args: seen.append(_mode_stack()))
    prompts = random_prompts([5, 9, 5, 7], seed=3)
    params = SamplingParams(temperature=1.0, max_new_tokens=6, seed=11)
    plain = engine.generate(prompts, params)
    with cpu.CpuDeviceMode() as mode:
        moded = engine.generate(prompts, params)
        assert _mode_stack()[-1] is mode
    hook.remove()
    assert seen and all(stack == [] for stack in seen)
    assert [s.response_token_ids for s in plain] == [s.response_token_ids for s in moded]
    assert [s.response_logprobs for s in plain] == [s.response_logprobs for s in moded]
