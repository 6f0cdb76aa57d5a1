"""BuiltinEngine: batched KV-cache sampling on the transformers implementation of the model.

It is the CPU (and test) stand-in for SGLang behind the same `RolloutEngine` interface, and it takes
weights the same way: HF-named full tensors through `update_weights`. One `generate` call:

  prompts -> micro-batches of at most `max_batch_size`, grouped by prompt length
    -> left-padded prefill (position ids count real tokens only; long prompts go in chunks of at
       most `max_tokens_per_forward` padded tokens, filling the same KV cache)
    -> decode one token per step for every running sample; a sample that finishes leaves the batch
       and its rows leave the KV cache, so it costs nothing afterwards
  -> one Sample per prompt, in the caller's order.

Log-probs follow `r1mega.rollout.types`; sampling and its per-sample random streams are in
`r1mega.rollout.sampling`, finish rules in `r1mega.rollout.stopping`.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
from transformers import DynamicCache, PretrainedConfig

from r1mega.parallel.cpu import device_mode_suspended
from r1mega.rollout.hf_model import (
    ModelSource,
    build_hf_model,
    eos_token_ids,
    iter_safetensors_buckets,
    load_hf_config,
    resolve_device,
    resolve_dtype,
)
from r1mega.rollout.hf_weights import HFWeightMap
from r1mega.rollout.lean_decode import LeanDecoder
from r1mega.rollout.routing import RoutingRecorder
from r1mega.rollout.sampling import UniformStreams, sample_generators, sample_next_tokens, scaled_logprobs
from r1mega.rollout.stopping import Decoder, StopChecker
from r1mega.rollout.types import NamedTensors, Sample, SamplingParams

_READY, _SYNCING, _RELEASED, _AWAITING = "ready", "syncing", "released", "awaiting weights"


def kv_cache_argument(model) -> str:
    """The forward keyword that takes the KV cache: `cache` in transformers >= 5.2x (which warns that
    `past_key_values` goes away in 5.40), `past_key_values` before (5.19, the release SGLang pins)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class BuiltinEngine:
    """KV-cache sampling engine on a transformers CausalLM (see the module docstring)."""

    def __init__(
        self,
        model: ModelSource,
        *,
        tokenizer: Optional[Decoder] = None,
        dtype: Union[str, torch.dtype] = "float32",
        device: Union[str, torch.device] = "auto",
        max_batch_size: int = 64,
        max_tokens_per_forward: int = 8192,
        attn_implementation: str = "sdpa",
        experts_implementation: Optional[str] = None,
        eos_token_ids: Optional[Sequence[int]] = None,
        seed: int = 0,
        record_routing: bool = False,
        lean_decode: bool = True,
    ):
        """`model`: a transformers config (random weights, to be replaced by update_weights) or a local
        HF checkpoint directory (safetensors). `eos_token_ids` replaces the ids read from the model
        config / generation_config.json / tokenizer. `seed` seeds the requests that bring none.
        `record_routing`: every Sample carries metadata["routed_experts"] (MoE routing replay; see
        r1mega.rollout.routing for the layout). `lean_decode`: decode steps through `LeanDecoder`
        (bit-identical, without transformers' per-call overhead) where the model is one it covers."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {max_batch_size}")
        if max_tokens_per_forward < max_batch_size:
            raise ValueError(
                f"max_tokens_per_forward: {max_tokens_per_forward} is below max_batch_size={max_batch_size}"
            )
        config, directory = load_hf_config(model)
        config = copy.deepcopy(config)  # transformers records runtime choices on it; keep the caller's intact
        self.dtype = resolve_dtype(dtype)
        self.device = resolve_device(device)
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_tokens_per_forward = max_tokens_per_forward
        self.model = build_hf_model(
            config,
            dtype=self.dtype,
            device=self.device,
            attn_implementation=attn_implementation,
            experts_implementation=experts_implementation,
            initialize=directory is None,
        )
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self._cache_kwarg = kv_cache_argument(self.model)
        self.weights = HFWeightMap(self.model)
        self._routing = RoutingRecorder(self.model) if record_routing else None
        lean = lean_decode and not record_routing and LeanDecoder.supports(self.model)
        self._lean = LeanDecoder(self.model) if lean else None
        self._state = _READY
        self._released_layout: list = []
        if directory is not None:
            self._state = _AWAITING
            self.update_weights(iter_safetensors_buckets(directory))
        if eos_token_ids is None:
            eos_token_ids = eos_token_ids_of(config, directory, tokenizer)
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self._generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_config(cls, rollout_cfg, model: ModelSource, **kwargs) -> "BuiltinEngine":
        """An engine set up from a `RolloutConfig` section (kwargs such as tokenizer, seed pass through)."""
        return cls(
            model,
            dtype=rollout_cfg.dtype,
            device=rollout_cfg.device,
            max_batch_size=rollout_cfg.max_batch_size,
            max_tokens_per_forward=rollout_cfg.max_tokens_per_forward,
            attn_implementation=rollout_cfg.attn_implementation,
            experts_implementation=rollout_cfg.experts_implementation,
            record_routing=rollout_cfg.routing_replay,
            lean_decode=rollout_cfg.lean_decode,
            **kwargs,
        )

    # -- weights and memory --------------------------------------------------------------------

    def update_weights(self, named_tensor_buckets: Iterable[NamedTensors], *, finalize: bool = True) -> None:
        """Copy HF-named tensors into the model in place, bucket by bucket.

        A full sync delivers every tensor once: with finalize=True (default) this call is the whole
        sync and any tensor it did not deliver is an error naming it. To spread one sync over several
        calls, pass finalize=False to all but the last (or call `finalize_weights()`).
        """
        if self._state == _RELEASED:
            raise RuntimeError("update_weights: weights are released; call resume_memory() first")
        self._state = _SYNCING
        self.weights.load(named_tensor_buckets)
        if finalize:
            self.finalize_weights()

    def finalize_weights(self) -> None:
        """End a weight sync: every expected tensor must have arrived since the previous one."""
        if self._state == _RELEASED:
            raise RuntimeError("finalize_weights: weights are released; call resume_memory() first")
        self.weights.finish_sync()
        self._state = _READY

    @property
    def expected_weight_names(self) -> list[str]:
        """The HF names a full `update_weights` must deliver."""
        return self.weights.expected_names

    def release_memory(self) -> int:
        """Free the storage of all weights (KV caches live only inside a call); returns bytes freed."""
        if self._state == _RELEASED:
            return 0
        freed, self._released_layout = self.weights.release()
        self._state = _RELEASED
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # hand the blocks back for the colocated trainer
        return freed

    def resume_memory(self) -> None:
        """Re-allocate the weights' storage (uninitialised): `update_weights` must follow before use."""
        if self._state != _RELEASED:
            return
        self.weights.reallocate(self._released_layout)
        self._released_layout = []
        self._state = _AWAITING

    def _check_ready(self, what: str) -> None:
        if self._state == _READY:
            return
        if self._state == _RELEASED:
            raise RuntimeError(f"{what}: weights are released; call resume_memory() and update_weights()")
        missing = sorted(self.weights.pending)
        raise RuntimeError(
            f"{what}: the weights are not complete ({self._state}); {len(missing)} tensor(s) not yet "
            f"received since the last sync, e.g. {missing[:3]}; finish it with update_weights()/finalize_weights()"
        )

    # -- generation ----------------------------------------------------------------------------

    @device_mode_suspended()
    @torch.inference_mode()
    def generate(self, prompts_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Sample]:
        """One Sample per prompt, in order (see the module docstring for how the work is batched).

        Reproducibility: sample i draws from a generator seeded by (sampling.seed, i), one uniform per
        token, so with a seed the result does not depend on max_batch_size, on the other prompts in
        the call or on their order (up to float rounding differences between batch shapes). Without a
        seed, the request seed is drawn from the engine's generator.
        """
        self._check_ready("generate")
        sampling.validate()
        prompts = self._check_prompts(prompts_token_ids, "prompts_token_ids")
        stopper = StopChecker(
            max_new_tokens=sampling.max_new_tokens,
            stop_token_ids=[*self.eos_token_ids, *sampling.stop_token_ids],
            stop_strings=sampling.stop,
            tokenizer=self.tokenizer,
        )
        base_seed = sampling.seed
        if base_seed is None:
            base_seed = int(torch.randint(0, 2**62, (), generator=self._generator))
        generators = sample_generators(base_seed, len(prompts), sampling.first_sample_index)
        samples: list[Optional[Sample]] = [None] * len(prompts)
        for rows in self._micro_batches([len(p) for p in prompts]):
            outputs = self._generate_batch(
                [prompts[i] for i in rows], sampling, stopper, [generators[i] for i in rows]
            )
            for i, (tokens, logprobs, reason, routed) in zip(rows, outputs):
                samples[i] = Sample(
                    prompt_token_ids=list(prompts[i]),
                    response_token_ids=tokens,
                    response_logprobs=logprobs,
                    finish_reason=reason,
                    response_text=self._decode(tokens),
                    metadata={} if routed is None else {"routed_experts": routed},
                )
        return samples

    def _generate_batch(self, prompts, sampling, stopper, generators):
        """Prefill then decode one micro-batch; returns (tokens, log-probs, finish reason, routed
        experts or None) per prompt.

        Identical prompts (a GRPO group's samples) are prefilled once: the distinct prompts go
        through the model, then their KV-cache rows, logits, mask and positions are copied to every
        sample that shares them, so a group of G samples costs one prompt forward, not G."""
        distinct: dict[tuple, int] = {}
        owner = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]  # sample -> distinct row
        unique = [list(k) for k in distinct]
        input_ids, mask, positions = self._left_pad(unique)
        cache = DynamicCache(config=self.model.config)
        prefill_routes: list[torch.Tensor] = []  # [distinct, chunk, layers, top_k] per prefill chunk
        logits = self._prefill(input_ids, mask, positions, cache, routes=prefill_routes)  # [distinct, vocab]
        rows = None
        if len(unique) < len(prompts):
            rows = torch.tensor(owner, device=self.device)  # [batch]
            logits, mask, positions = logits[rows], mask[rows], positions[rows]  # [batch, ...]
        lean = self._lean
        if lean is not None:
            lean.take_cache(cache, rows)  # copies the shared rows straight into its buffers
            cache = None
        elif rows is not None:
            cache.batch_select_indices(rows)
        decode_routes: list[list[torch.Tensor]] = [[] for _ in prompts]  # per prompt: [1, layers, top_k] per step
        next_pos = positions[:, -1] + 1  # [batch]
        running = list(range(len(prompts)))  # position in the batch -> prompt index
        tokens_out = [[] for _ in prompts]
        logprobs_out = [[] for _ in prompts]
        reasons: list[Optional[str]] = [None] * len(prompts)
        streams = UniformStreams(generators) if sampling.temperature > 0 else None
        while True:
            uniforms = streams.next(running) if streams is not None else None
            tokens, logprobs = sample_next_tokens(logits, sampling, [generators[i] for i in running], uniforms)
            keep = []
            for row, (i, tok, lp) in enumerate(zip(running, tokens.tolist(), logprobs.tolist())):
                tokens_out[i].append(tok)
                logprobs_out[i].append(lp)
                reasons[i] = stopper.check(tokens_out[i])
                if reasons[i] is None:
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(running):  # finished samples leave the batch and the cache
                idx = torch.tensor(keep, device=self.device)
                if lean is not None:
                    lean.select(idx)
                else:
                    cache.batch_select_indices(idx)
                mask, next_pos, tokens = mask[idx], next_pos[idx], tokens[idx]
                running = [running[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones(len(running), 1)], dim=1)  # [batch, past + 1]
            logits = self._decode_step(tokens, mask, next_pos, cache, running, decode_routes)  # [batch, vocab]
            next_pos = next_pos + 1
        if lean is not None:
            lean.release()
        routed: list[Optional[torch.Tensor]] = [None] * len(prompts)
        if self._routing is not None:
            full = torch.cat(prefill_routes, dim=1)  # [distinct, width, layers, top_k]; left-padded
            width = full.shape[1]
            for i, p in enumerate(prompts):
                # prompt positions, then every fed response token: prompt + response - 1 rows
                routed[i] = torch.cat([full[owner[i], width - len(p):], *decode_routes[i]], dim=0)
        return list(zip(tokens_out, logprobs_out, reasons, routed))

    def _decode_step(self, tokens, mask, positions, cache, running, decode_routes) -> torch.Tensor:
        """Logits [batch, vocab] after feeding one token per running sample; fills the cache."""
        if self._lean is not None:
            return self._lean.step(tokens, mask, positions)
        out = self.model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=mask,
            position_ids=positions.unsqueeze(1),
            **{self._cache_kwarg: cache},
            use_cache=True,
        )
        if self._routing is not None:
            step = self._routing.take(len(running), 1)  # [running, 1, layers, top_k]
            for row, i in enumerate(running):
                decode_routes[i].append(step[row])
        return out.logits[:, -1]

    # -- teacher forcing -----------------------------------------------------------------------

    @device_mode_suspended()
    @torch.inference_mode()
    def compute_logprobs(
        self,
        prompts_token_ids: Sequence[Sequence[int]],
        responses_token_ids: Sequence[Sequence[int]],
        temperature: float = 1.0,
    ) -> list[list[float]]:
        """Teacher-forced log softmax(logits / T) of each given response token (T == 0 means 1).

        Same convention as `generate`'s log-probs, on the engine's current weights: comparing the two
        (or these against the trainer's) checks weight sync and numerics.
        """
        self._check_ready("compute_logprobs")
        if not temperature >= 0:
            raise ValueError(f"temperature: must be >= 0, got {temperature}")
        prompts = self._check_prompts(prompts_token_ids, "prompts_token_ids")
        responses = self._check_prompts(responses_token_ids, "responses_token_ids", allow_empty=True)
        if len(prompts) != len(responses):
            raise ValueError(f"compute_logprobs: {len(prompts)} prompts but {len(responses)} responses")
        seqs = [p + r for p, r in zip(prompts, responses)]
        result: list[list[float]] = [[] for _ in seqs]
        for rows in self._micro_batches([len(s) for s in seqs]):
            batch = self._teacher_forced([seqs[i] for i in rows], [len(responses[i]) for i in rows], temperature)
            for i, values in zip(rows, batch):
                result[i] = values.tolist()
        return result

    def _teacher_forced(self, seqs, response_lens, temperature) -> list[torch.Tensor]:
        """Log-probs of the last response_lens[r] tokens of each sequence, one micro-batch."""
        input_ids, mask, positions = self._left_pad(seqs)
        width = input_ids.shape[1]
        # left padding aligns every sequence's end: positions [width-n-1, width-1) predict the last n tokens
        spans = [(width - n - 1, width - 1) for n in response_lens]
        pieces: list[list[torch.Tensor]] = [[] for _ in seqs]

        def gather(start: int, logits: torch.Tensor) -> None:
            end = start + logits.shape[1]
            for row, (lo, hi) in enumerate(spans):
                a, b = max(lo, start), min(hi, end)
                if a >= b:
                    continue
                lp = scaled_logprobs(logits[row, a - start : b - start], temperature)  # [b - a, vocab]
                target = input_ids[row, a + 1 : b + 1].unsqueeze(-1)  # the tokens those positions predict
                pieces[row].append(lp.gather(-1, target).squeeze(-1))

        self._prefill(input_ids, mask, positions, DynamicCache(config=self.model.config), on_logits=gather)
        return [torch.cat(p) if p else torch.zeros(0) for p in pieces]

    # -- helpers -------------------------------------------------------------------------------

    def _check_prompts(self, seqs, what: str, allow_empty: bool = False) -> list[list[int]]:
        out = []
        for i, seq in enumerate(seqs):
            ids = [int(t) for t in seq]
            if not ids and not allow_empty:
                raise ValueError(f"{what}[{i}]: empty; a prompt needs at least one token")
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"{what}[{i}]: token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})")
            out.append(ids)
        return out

    def _micro_batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped by length (longest first) into batches of at most max_batch_size."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        return [order[s : s + self.max_batch_size] for s in range(0, len(order), self.max_batch_size)]

    def _left_pad(self, seqs: Sequence[Sequence[int]]):
        """Left-padded ids, attention mask and position ids (counting real tokens), all [batch, width]."""
        width = max(len(s) for s in seqs)
        input_ids = torch.zeros(len(seqs), width, dtype=torch.long)  # pad id 0: masked, any id would do
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, s in enumerate(seqs):
            input_ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp_(min=0)
        return input_ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def _prefill(self, input_ids, mask, positions, cache, on_logits=None, routes=None) -> torch.Tensor:
        """Run padded sequences through the model in column chunks of at most max_tokens_per_forward
        tokens, filling `cache`. Without `on_logits`, returns the last position's logits [batch, vocab];
        with it, calls on_logits(start, logits [batch, chunk, vocab]) for every chunk instead, so
        teacher forcing never holds more than one chunk of logits."""
        batch, width = input_ids.shape
        chunk = max(1, self.max_tokens_per_forward // batch)
        logits = None
        for start in range(0, width, chunk):
            end = min(width, start + chunk)
            out = self.model(
                input_ids=input_ids[:, start:end],
                attention_mask=mask[:, :end],
                position_ids=positions[:, start:end],
                **{self._cache_kwarg: cache},
                use_cache=True,
                logits_to_keep=0 if on_logits is not None else 1,  # 0 = every position
            )
            if self._routing is not None:
                recorded = self._routing.take(batch, end - start)  # [batch, chunk, layers, top_k]
                if routes is not None:
                    routes.append(recorded)
            if on_logits is not None:
                on_logits(start, out.logits)
            logits = out.logits[:, -1]
        return logits

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else ""


def eos_token_ids_of(config: PretrainedConfig, directory: Optional[Path], tokenizer) -> list[int]:
    """EOS ids of the model config / generation config, plus the tokenizer's."""
    ids = eos_token_ids(config, directory)
    tok_eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if isinstance(tok_eos, int) and tok_eos not in ids:
        ids.append(tok_eos)
    return ids
