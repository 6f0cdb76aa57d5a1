"""SGLangEngine: SGLang 0.5.23's in-process `sglang.Engine`, colocated with Megatron on the same GPUs.

One engine per rollout group (`r1mega.rollout.orchestration.RolloutGroups`), built on the group's
owner rank at start-up and released at once so Megatron can allocate. One RL step on the owner:

    push_weights(payload_buckets, version=step)
        resume(["weights"]) -> begin_weight_update() -> per bucket: update_weights_from_tensor(
        [payload of TP rank 0 .. tp-1], load_format="flattened_bucket", flush_cache=False)
        -> end_weight_update() -> weight version = step -> resume(["kv_cache", "cuda_graph"])
        -> flush_cache()
    generate(prompts, sampling)      log softmax(logits / T) of each sampled token (SGLang's default
                                     output log-probs, the project's convention); every response
                                     must carry meta_info["weight_version"] == the pushed version
    release_memory()                 release all three memory tags before Megatron wakes

SGLang 0.5.23 refuses weight updates outside a begin/end session by returning success=False, so
every result is checked; a failure closes the session and raises with SGLang's message and what
was being pushed. Building the engine changes the trainer process (environment variables, the
multiprocessing start method, a SIGQUIT handler: `_set_envs_and_config`); those are restored.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from typing import Any, Iterable, Optional, Sequence

import torch

from r1mega.rollout.types import NamedTensors, Sample, SamplingParams

__all__ = ["SGLangEngine", "SGLangError", "check_sglang_available", "server_args_kwargs", "MEMORY_TAGS"]

SGLANG_VERSION = "0.5.23"
MEMORY_TAGS = ["kv_cache", "weights", "cuda_graph"]
"""sglang.srt.constants.GPU_MEMORY_ALL_TYPES in 0.5.23 (checked by the contract tests)."""


class SGLangError(RuntimeError):
    """SGLang answered success=False (the message is SGLang's, plus what was being done)."""


def check_sglang_available() -> None:
    """Raise RuntimeError with one line when this machine cannot run the SGLang engine."""
    if not torch.cuda.is_available():
        raise RuntimeError("rollout.engine=sglang needs CUDA GPUs and none is visible; use rollout.engine=builtin")
    try:
        import sglang
    except ImportError:
        raise RuntimeError(
            f"rollout.engine=sglang needs sglang=={SGLANG_VERSION} (pip install -c requirements/lock-gpu.txt "
            "-e '.[gpu]'); it is not installed"
        ) from None
    if sglang.__version__ != SGLANG_VERSION:
        raise RuntimeError(f"rollout.engine=sglang is written for sglang=={SGLANG_VERSION}; found {sglang.__version__}")


def server_args_kwargs(
    rollout_cfg,
    *,
    model_path: str,
    base_gpu_id: int,
    seed: int,
    dtype: str,
) -> dict[str, Any]:
    """The `sglang.Engine(**kwargs)` of one colocated engine (every key is a 0.5.23 ServerArgs field)."""
    return dict(
        model_path=model_path,
        load_format="dummy",  # the first weights come from the trainer
        dtype=dtype,
        tp_size=rollout_cfg.tp,
        dp_size=1,  # update_weights_from_tensor asserts dp_size == 1
        ep_size=rollout_cfg.ep,
        base_gpu_id=base_gpu_id,
        gpu_id_step=1,
        mem_fraction_static=rollout_cfg.mem_fraction,
        enable_memory_saver=True,  # release/resume_memory_occupation
        enable_weights_cpu_backup=False,  # weights are pushed after every resume anyway
        random_seed=seed,
        enable_return_routed_experts=rollout_cfg.routing_replay,
        log_level="error",
    )


@contextlib.contextmanager
def _restoring_process_state():
    """Undo what building an Engine changes in the caller's process (sglang _set_envs_and_config)."""
    env = dict(os.environ)
    method = multiprocessing.get_start_method(allow_none=True)
    sigquit = signal.getsignal(signal.SIGQUIT)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(env)
        multiprocessing.set_start_method(method, force=True)
        signal.signal(signal.SIGQUIT, sigquit)


def _checked(result, what: str) -> None:
    """SGLang's (success, message) results; None (no result) counts as success."""
    if result is None:
        return
    if isinstance(result, tuple):
        success, message = result[0], result[1]
    else:  # a request-output struct, e.g. FlushCacheReqOutput(success, message)
        success, message = result.success, getattr(result, "message", "")
    if not success:
        raise SGLangError(f"sglang {what} failed: {message}")


class SGLangEngine:
    """The RolloutEngine on an in-process `sglang.Engine` (see the module docstring)."""

    def __init__(self, engine, *, tp_size: int, routing_shape: Optional[tuple[int, int]] = None):
        """`engine`: a built `sglang.Engine` (or an object with its methods, for tests).
        `routing_shape`: (num_hidden_layers, top_k) to ask for and decode routed experts (R3)."""
        self.engine = engine
        self.tp_size = tp_size
        self.routing_shape = routing_shape
        self.version: Optional[str] = None
        self._released: list[str] = []

    @classmethod
    def launch(cls, rollout_cfg, *, model_path: str, base_gpu_id: int, seed: int, dtype: str,
               routing_shape: Optional[tuple[int, int]] = None) -> "SGLangEngine":
        """Build the engine on this (owner) rank, restore the process state, release its memory."""
        check_sglang_available()
        kwargs = server_args_kwargs(rollout_cfg, model_path=model_path, base_gpu_id=base_gpu_id, seed=seed, dtype=dtype)
        os.environ.setdefault("NCCL_CUMEM_ENABLE", "0")  # cuMem NCCL buffers break release/resume and IPC
        with _restoring_process_state():
            import sglang

            engine = sglang.Engine(**kwargs)
        self = cls(engine, tp_size=rollout_cfg.tp, routing_shape=routing_shape if rollout_cfg.routing_replay else None)
        self.release_memory()
        return self

    # -- memory ----------------------------------------------------------------------------------

    def release_memory(self) -> None:
        """Release weights, KV cache and CUDA graphs (the engine must be idle)."""
        tags = [t for t in MEMORY_TAGS if t not in self._released]
        if tags:
            _checked(self.engine.release_memory_occupation(tags=tags), f"release_memory_occupation({tags})")
            self._released += tags
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def resume_memory(self, tags: Sequence[str] = ("kv_cache", "cuda_graph")) -> None:
        """Resume the released tags among `tags` (SGLang raises on resuming a tag it did not release)."""
        todo = [t for t in tags if t in self._released]
        if todo:
            _checked(self.engine.resume_memory_occupation(tags=todo), f"resume_memory_occupation({todo})")
            self._released = [t for t in self._released if t not in todo]

    # -- weights ---------------------------------------------------------------------------------

    def push_weights(self, payload_buckets: Iterable[Sequence[bytes]], version: str) -> int:
        """One weight sync from per-TP-rank payloads (`sglang_payloads`), then the caches; returns buckets.

        Each bucket is loaded as soon as it arrives (no look-ahead, so the producer holds one bucket
        at a time) with flush_cache=False; the radix cache is flushed once after the caches are back.
        The payload lists (and the tensors behind them) belong to the caller, who drops them and runs
        `torch.cuda.ipc_collect()` after each bucket (`r1mega.rollout.weight_sync` does)."""
        self.resume_memory(["weights"])
        _checked(self.engine.begin_weight_update(), "begin_weight_update")
        count = 0
        try:
            for payloads in payload_buckets:
                self._load(payloads, count)
                count += 1
        except BaseException:
            with contextlib.suppress(Exception):  # close the session; the first error is the one to see
                self.engine.end_weight_update()
            raise
        _checked(self.engine.end_weight_update(), "end_weight_update")
        self._set_version(str(version))
        self.resume_memory(["kv_cache", "cuda_graph"])
        _checked(self.engine.flush_cache(), "flush_cache")  # KV of the old weights must not be reused
        return count

    def _load(self, payloads: Sequence[bytes], index: int) -> None:
        if len(payloads) != self.tp_size:
            raise ValueError(f"weight bucket {index}: {len(payloads)} payloads for {self.tp_size} SGLang TP ranks")
        result = self.engine.update_weights_from_tensor(
            named_tensors=list(payloads), load_format="flattened_bucket", flush_cache=False
        )
        try:
            _checked(result, "update_weights_from_tensor")
        except SGLangError as e:
            raise SGLangError(f"{e} (weight bucket {index}, {sum(len(p) for p in payloads)} payload bytes "
                              f"for {self.tp_size} TP ranks)") from None

    def _set_version(self, version: str) -> None:
        from sglang.srt.managers.io_struct import UpdateWeightVersionReqInput

        request = UpdateWeightVersionReqInput(new_version=version, abort_all_requests=False)
        self.engine.loop.run_until_complete(self.engine.tokenizer_manager.update_weight_version(request))
        self.version = version

    def update_weights(self, named_tensor_buckets: Iterable[NamedTensors], version: Optional[str] = None) -> None:
        """RolloutEngine.update_weights for an engine whose every TP rank is in this process's node
        and fed by this process (tests, single-GPU engines): one payload per TP rank per bucket."""
        from r1mega.rollout.sglang_payloads import serialize_bucket

        def payloads():
            for bucket in named_tensor_buckets:
                yield [serialize_bucket(bucket) for _ in range(self.tp_size)]  # never share bytes between ranks
                del bucket
                if torch.cuda.is_available():
                    torch.cuda.ipc_collect()

        nxt = version if version is not None else str(int(self.version or 0) + 1)
        self.push_weights(payloads(), nxt)

    # -- generation ------------------------------------------------------------------------------

    def generate(self, prompts_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
        """One Sample per prompt with SGLang's output log-probs; checks the weight version of each."""
        from r1mega.rollout.sampling import sample_seed

        sampling.validate()
        if self.version is None:
            raise RuntimeError("generate: no weights were pushed to the SGLang engine yet")
        params = []
        for i in range(len(prompts_token_ids)):
            p = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k if sampling.top_k > 0 else -1,  # SGLang: -1 disables, 0 is refused
                 "max_new_tokens": sampling.max_new_tokens, "stop": list(sampling.stop) or None,
                 "stop_token_ids": list(sampling.stop_token_ids) or None, "no_stop_trim": True}
            if sampling.seed is not None:
                p["sampling_seed"] = sample_seed(sampling.seed, sampling.first_sample_index + i) % (2**31)
            params.append(p)
        extra = {"return_routed_experts": True} if self.routing_shape is not None else {}
        outputs = self.engine.generate(
            input_ids=[list(map(int, p)) for p in prompts_token_ids], sampling_params=params, return_logprob=True,
            **extra,
        )
        return [self._sample(list(p), out) for p, out in zip(prompts_token_ids, outputs)]

    def _sample(self, prompt: list[int], out: dict) -> Sample:
        meta = out["meta_info"]
        if meta.get("weight_version") != self.version:
            raise SGLangError(
                f"generate: response made with weight version {meta.get('weight_version')!r}, expected {self.version!r}"
            )
        finish = meta.get("finish_reason") or {}
        kind = finish.get("type") if isinstance(finish, dict) else str(finish)
        reason = {"stop": "stop", "length": "length"}.get(kind, "abort")
        logprobs = [float(lp) for lp, _tok, _text in meta["output_token_logprobs"]]
        tokens = [int(t) for t in out["output_ids"]]
        metadata = {"weight_version": meta.get("weight_version")}
        if self.routing_shape is not None:
            from r1mega.rollout.routing import decode_sglang

            if "routed_experts" not in meta:
                raise SGLangError("generate: routing replay is on but SGLang returned no routed_experts")
            layers, top_k = self.routing_shape
            metadata["routed_experts"] = decode_sglang(
                meta["routed_experts"], num_layers=layers, top_k=top_k, tokens=len(prompt) + len(tokens) - 1
            )
        return Sample(prompt_token_ids=prompt, response_token_ids=tokens, response_logprobs=logprobs,
                      finish_reason=reason, response_text=out.get("text", ""), metadata=metadata)

    def shutdown(self) -> None:
        self.engine.shutdown()
