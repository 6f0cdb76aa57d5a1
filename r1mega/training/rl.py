"""The RL trainer: rollout -> rewards -> advantages -> log-probs -> loss -> optimizer step -> weight sync.

    trainer = RLTrainer(cfg, train_prompts, eval_prompts, tokenizer=tok)
    trainer.build(init_fn)     # policy (any TP/PP/EP/DP layout) + DDP + optimizer; reference model;
                               # one rollout engine per rollout group, reward pool on rank 0; first sync
    trainer.train(on_step_end) # the loop below, one metrics row per step

One step (`train_step`):
  1. rollout (every rank, `RolloutCollector` in rl_collect.py over the collectives of
     rl_rollout.py): `rl.prompts_per_step` prompts x `algorithm.group_size` samples, split over
     the job's engines (one per rollout group of `rollout.tp` ranks), rewards from rank 0's reward
     pool (+ DAPO's overlong penalty); DAPO's dynamic sampling drops groups whose accuracy is the
     same for every response (all right or all wrong) and samples more prompts to refill them.
     Every rank computes the same trajectories and takes its DP share.
  2. old log-probs (only when the batch feeds several optimizer steps) and reference log-probs
     (when a KL term is used): forward-only passes through megatron's schedule, each DP rank on its
     share; KL in the reward is subtracted before advantages.
  3. advantages per group (`r1mega.algorithms.compute_advantages`), the same on every rank.
  4. `algorithm.updates_per_batch` optimizer steps, each on one mini-batch split over DP ranks and
     token-budget microbatches. The loss of a microbatch is `r1mega.kernels.policy_loss` on log-probs
     computed by `fused_logprob` from the last stage's hidden states (no logits materialised); with
     megatron's `calculate_per_token_loss`, the gradient is that of the aggregate over the whole
     mini-batch (token-mean: divided by its total response tokens; sequence modes: by its number of
     responses), whatever the layout and microbatch split.
  5. weight sync: `export_hf_tensors` streams the updated weights in buckets into the engine.

Rollout/train mismatch: the first mini-batch of a step is scored at exactly the weights the engine
sampled with, so |logp_train - logp_rollout| measures weight sync and numerics (fp32: ~1e-7).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from r1mega.config import Config
from r1mega.data.sampler import PromptSampler
from r1mega.training.batching import dp_share, pad_multiple
from r1mega.training.megatron_step import forward_backward, wrap_with_ddp
from r1mega.training.trainer_common import find_metrics_source, trainer_config_overrides
from r1mega.training.policy_logprob import hidden_states_forward, response_logprobs, unwrap_gpt
from r1mega.training.rl_batch import Trajectory, build_rl_microbatches
from r1mega.training.rl_collect import RolloutCollector

__all__ = ["RLTrainer"]

logger = logging.getLogger(__name__)


def _forward_keeping_model(model, batch: dict) -> torch.Tensor:
    # the loss function needs the GPTModel whose output layer it multiplies with
    batch["_gpt"] = unwrap_gpt(model)
    return hidden_states_forward(model, batch)


class RLTrainer:
    """Trains the policy of `cfg` with the algorithm of `cfg.algorithm` (see the module docstring)."""

    def __init__(self, cfg: Config, train_prompts: Sequence, eval_prompts: Optional[Sequence], *, tokenizer: Any):
        if len(train_prompts) == 0:
            raise ValueError("RLTrainer: the train split has no prompts")
        self.cfg = cfg
        self.rl = cfg.rl
        self.algo = cfg.algorithm.resolved(cfg.rollout.max_new_tokens)
        self.train_prompts = train_prompts
        self.eval_prompts = eval_prompts
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.loss_options = self.algo.loss_options()
        self.step = 0
        self.total_steps = self.rl.steps
        self.sampler = PromptSampler(len(train_prompts), seed=cfg.data.seed, shuffle=cfg.data.shuffle)
        self.run_dir = cfg.run.run_dir
        self.model: list = []
        self.ref_model: Optional[list] = None
        self.ref_refreshed_at = 0
        self.optimizer = None
        self.scheduler = None
        self.engine = None
        self.rewards = None
        self.collector: Optional[RolloutCollector] = None
        self._plan = None

    # ----------------------------------------------------------------------------------------------
    # set-up
    # ----------------------------------------------------------------------------------------------

    def build(self, init_fn: Optional[Callable[[list], None]] = None) -> None:
        """Policy chunks, DDP, optimizer, LR schedule; reference model; engine + rewards on rank 0.

        `init_fn(model_chunks)` sets the initial policy weights (the base or SFT checkpoint) before
        the optimizer copies them; the reference model starts as a copy of them.
        """
        import torch.distributed as dist
        from megatron.core import parallel_state

        from r1mega.convert.export import export_plan
        from r1mega.models.builder import build_model
        from r1mega.training.optimizer import build_optimizer
        from r1mega.training.schedule import build_lr_scheduler

        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("RLTrainer.build: call init_distributed first")
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.rl.check_layout(self.dp_size, self.algo.group_size, self.algo.updates_per_batch)
        self.multiple = pad_multiple(self.rl.pad_to_multiple, self.cfg.parallel.tp, self.cfg.parallel.sequence_parallel)
        self.is_last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        dtype = torch.bfloat16 if self.rl.params_dtype == "bfloat16" else torch.float32
        overrides = trainer_config_overrides(self.cfg)
        self._start_engines_and_rewards()  # before megatron allocates (SGLang starts, then releases)
        chunks = build_model(self.cfg.model, self.cfg.parallel, params_dtype=dtype, config_overrides=overrides)
        if init_fn is not None:
            init_fn(chunks)
        if self.algo.needs_reference:
            self.ref_model = build_model(self.cfg.model, self.cfg.parallel, params_dtype=dtype, config_overrides=overrides)
            self._copy_into_reference(chunks)
        self.model = wrap_with_ddp(chunks, self.cfg.parallel)
        total_updates = self.total_steps * self.algo.updates_per_batch
        self.optimizer = build_optimizer(self.cfg.optimizer, self.model, self.cfg.parallel)
        self.scheduler = build_lr_scheduler(self.optimizer, self.cfg.optimizer, total_updates)
        self._plan = export_plan([unwrap_gpt(c) for c in self.model], self.cfg.model)
        self._metrics_src = find_metrics_source(self.is_last_stage, self.dp_rank)
        self.sync_weights(version=self.step)

    def _start_engines_and_rewards(self) -> None:
        """One engine per rollout group (on its owner rank), rewards on rank 0, a collector on every
        rank (rl_rollout.py: generation and scoring are collectives)."""
        import torch.distributed as dist

        from r1mega.convert import hf_config_from_model_config
        from r1mega.rewards.pool import RewardPool
        from r1mega.training.rl_rollout import JobEngine, SharedRewards

        hf_config = hf_config_from_model_config(self.cfg.model)
        hf_config.eos_token_id = self.tokenizer.eos_token_id
        hf_config.pad_token_id = self.pad_id
        self.engine = JobEngine.start(self.cfg, self.tokenizer, hf_config, self.run_dir / "rollout_model")
        self.rewards = SharedRewards(RewardPool(self.cfg.rewards).start() if dist.get_rank() == 0 else None)
        self.collector = RolloutCollector(
            self.engine, self.rewards, self.sampler, self.train_prompts, self.algo,
            sampling_params=self.cfg.rollout.sampling_params,
            max_new_tokens=self.cfg.rollout.max_new_tokens,
            prompts_per_step=self.rl.prompts_per_step,
            run_seed=self.cfg.run.seed,
            batch_unit=self.dp_size * self.algo.updates_per_batch,
        )

    def close(self) -> None:
        if self.rewards is not None:
            self.rewards.close()
            self.rewards = None

    @torch.no_grad()
    def _copy_into_reference(self, source_chunks: list) -> None:
        for ref, src in zip(self.ref_model, source_chunks, strict=True):
            ref_params = dict(unwrap_gpt(ref).named_parameters())
            for name, p in unwrap_gpt(src).named_parameters():
                ref_params[name].copy_(p)
            ref.eval()

    # ----------------------------------------------------------------------------------------------
    # weight sync
    # ----------------------------------------------------------------------------------------------

    def sync_weights(self, version: int) -> dict[str, float]:
        """Stream the policy's weights into every engine (a collective); sync_s, sync_bytes, ...
        `version`: optimizer steps the weights have seen (SGLang checks it on every response)."""
        from r1mega.convert.export import export_hf_tensors

        start = time.perf_counter()
        mb = self.cfg.rollout.bucket_mb if self.cfg.rollout.engine == "sglang" else self.rl.weight_sync_bucket_mb
        buckets = export_hf_tensors(
            [unwrap_gpt(c) for c in self.model], int(mb * 2**20), model_cfg=self.cfg.model, plan=self._plan,
        )
        stats = self.engine.sync(buckets, version=version)  # every rank takes part; owners load
        return {"sync_s": time.perf_counter() - start, **stats}

    # ----------------------------------------------------------------------------------------------
    # log-probs, advantages
    # ----------------------------------------------------------------------------------------------

    def _microbatches(self, items: Sequence[Trajectory]) -> list[dict]:
        return build_rl_microbatches(
            items,
            pad_id=self.pad_id,
            micro_batch_size=self.rl.micro_batch_size,
            micro_batch_tokens=self.rl.micro_batch_tokens,
            multiple=self.multiple,
        )

    @torch.no_grad()
    def _score_logprobs(self, chunks: list, items: Sequence[Trajectory]) -> dict[int, list[float]]:
        """Log-probs of each item's response under `chunks` (forward only); filled on the last stage."""
        if not items:
            return {}
        temperature = self._train_temperature()

        def loss_fn(hidden, batch):
            logp = response_logprobs(
                hidden, batch["_gpt"], batch, vocab_size=self.cfg.model.vocab_size,
                temperature=temperature, backend=self.rl.logprob_backend,
            )
            return torch.zeros((), dtype=torch.float32), {"logp": logp, "index": batch["index"], "mask": batch["resp_mask"]}

        mbs = self._microbatches(items)
        was_training = [c.training for c in chunks]
        for c in chunks:
            c.eval()
        try:
            out = forward_backward(
                chunks, mbs, loss_fn, seq_length=max(mb["tokens"].shape[1] for mb in mbs),
                micro_batch_size=max(mb["tokens"].shape[0] for mb in mbs), forward_only=True,
                forward_fn=_forward_keeping_model,
            )
        finally:
            for c, t in zip(chunks, was_training):
                c.train(t)
        result: dict[int, list[float]] = {}
        for m in out:
            for row, idx in enumerate(m["index"].tolist()):
                n = int(m["mask"][row].sum())
                result[idx] = m["logp"][row, :n].tolist()
        return result

    def _train_temperature(self) -> float:
        t = self.cfg.rollout.temperature
        return t if t > 0 else 1.0  # greedy rollouts report log-probs at temperature 1

    def _prepare(self, items: list[Trajectory], stats: dict) -> None:
        """Old / reference log-probs (last stage), KL-in-reward, advantages (every rank)."""
        import torch.distributed as dist

        from r1mega.algorithms import compute_advantages, kl_reward_penalty

        mine = [items[i] for i in dp_share(list(range(len(items))), self.dp_rank, self.dp_size)]
        t0 = time.perf_counter()
        if self.algo.updates_per_batch > 1:
            for idx, lp in self._score_logprobs(self.model, mine).items():
                items[idx].old_logprobs = lp
        if self.ref_model is not None:
            for idx, lp in self._score_logprobs(self.ref_model, mine).items():
                items[idx].ref_logprobs = lp
        stats["logprob_s"] = time.perf_counter() - t0
        rewards = torch.tensor([t.reward for t in items], dtype=torch.float64)
        if self.algo.kl_in_reward:
            penalties: dict[int, float] = {}
            if self.is_last_stage and mine:
                batch = build_rl_microbatches(mine, pad_id=self.pad_id, micro_batch_size=len(mine))[0]
                old = batch["old_logp"] if "old_logp" in batch else batch["rollout_logp"]
                pen = kl_reward_penalty(old, batch["ref_logp"], batch["resp_mask"], self.algo.kl_type, self.algo.kl_coef)
                penalties = dict(zip(batch["index"].tolist(), pen.tolist()))
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, penalties)
            merged = {k: v for d in gathered for k, v in d.items()}
            if len(merged) != len(items):
                raise RuntimeError(f"KL-in-reward: penalties for {len(merged)} of {len(items)} responses")
            pen_all = torch.tensor([merged[i] for i in range(len(items))], dtype=torch.float64)
            rewards = rewards - pen_all
            stats["kl_reward_penalty"] = float(pen_all.mean())
        adv = compute_advantages(rewards.to(torch.float32), self.algo)
        for t, a in zip(items, adv.tolist()):
            t.advantage = a
        stats["advantage/abs_mean"] = float(adv.abs().mean()) if adv.numel() else 0.0

    # ----------------------------------------------------------------------------------------------
    # updates
    # ----------------------------------------------------------------------------------------------

    def _loss_fn(self, measure_mismatch: bool):
        from r1mega.kernels import policy_loss

        opts = self.loss_options
        temperature = self._train_temperature()
        token_mean = opts.agg_mode == "token-mean"

        def loss_fn(hidden, batch):
            logp, entropy = response_logprobs(
                hidden, batch["_gpt"], batch, vocab_size=self.cfg.model.vocab_size,
                temperature=temperature, return_entropy=True, backend=self.rl.logprob_backend,
            )
            mask = batch["resp_mask"]
            old = batch.get("old_logp", logp.detach())
            loss, m = policy_loss(
                logp, batch["advantages"], mask,
                old_logp=old,
                ref_logp=batch.get("ref_logp"),
                rollout_logp=batch["rollout_logp"] if opts.tis_cap is not None else None,
                entropy=entropy,
                options=opts,
                global_denominator=1.0,  # sums; megatron divides by the mini-batch's total count
                backend=self.rl.logprob_backend,
            )
            tokens = mask.sum()
            count = tokens if token_mean else (mask.sum(dim=1) > 0).sum().to(mask.dtype)
            metrics = {"loss_sum": loss.detach(), "count": count.detach(), "tokens": tokens.detach(),
                       "pg_loss_sum": m["pg_loss"].detach()}
            for name in ("kl", "entropy", "ratio_mean", "clip_frac_low", "clip_frac_high", "approx_kl",
                         "tis_weight_mean", "tis_clip_frac"):
                value = m[name].detach()
                if torch.isfinite(value):
                    metrics[f"{name}_tsum"] = value * tokens
            if measure_mismatch:
                diff = (logp.detach() - batch["rollout_logp"]) * mask
                metrics["mismatch_abs_tsum"] = diff.abs().sum()
                metrics["mismatch_max"] = diff.abs().max()
                metrics["mismatch_kl_tsum"] = (-diff).sum()  # k1 estimate of KL(rollout || train)
            return loss, count.to(torch.int), metrics

        return loss_fn

    def _update(self, items: list[Trajectory], measure_mismatch: bool) -> dict[str, float]:
        """One optimizer step on one mini-batch (every DP rank passes the whole mini-batch)."""
        mine = [items[i] for i in dp_share(list(range(len(items))), self.dp_rank, self.dp_size)]
        mbs = self._microbatches(mine)
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        out = forward_backward(
            self.model, mbs, self._loss_fn(measure_mismatch),
            seq_length=max(mb["tokens"].shape[1] for mb in mbs),
            micro_batch_size=max(mb["tokens"].shape[0] for mb in mbs),
            forward_fn=_forward_keeping_model,
        )
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            logger.warning("step %d: optimizer step skipped (overflow)", self.step + 1)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(increment=1)
        sums: dict[str, float] = {}
        maxes: dict[str, float] = {}
        for m in out:
            for k, v in m.items():
                if k.endswith("_max"):
                    maxes[k] = max(maxes.get(k, 0.0), float(v))
                else:
                    sums[k] = sums.get(k, 0.0) + float(v)
        sums = self._reduce_over_dp(sums)
        maxes = self._reduce_over_dp(maxes, op="max")
        tokens = max(sums.get("tokens", 0.0), 1.0)
        count = max(sums.get("count", 0.0), 1.0)
        metrics = {
            "loss": sums.get("loss_sum", 0.0) / count,
            "pg_loss": sums.get("pg_loss_sum", 0.0) / count,
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "train_tokens": sums.get("tokens", 0.0),
        }
        for k, v in sums.items():
            if k.endswith("_tsum"):
                metrics[k[: -len("_tsum")]] = v / tokens
        if measure_mismatch:
            metrics["mismatch/mean_abs"] = metrics.pop("mismatch_abs")
            metrics["mismatch/kl"] = metrics.pop("mismatch_kl")
            metrics["mismatch/max_abs"] = maxes.get("mismatch_max", 0.0)
        return metrics

    def _reduce_over_dp(self, values: dict[str, float], op: str = "sum") -> dict[str, float]:
        """Sum (or max) over the data-parallel group, by name; only the last stage has values."""
        from megatron.core import parallel_state

        if self.dp_size == 1 or not self.is_last_stage:
            return values
        names = sorted(values)
        t = torch.tensor([values[n] for n in names], dtype=torch.float64)
        reduce_op = torch.distributed.ReduceOp.MAX if op == "max" else torch.distributed.ReduceOp.SUM
        torch.distributed.all_reduce(t, op=reduce_op, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        return dict(zip(names, t.tolist()))

    def train_step(self) -> dict[str, float]:
        """Rollout, preparation, updates and weight sync for one step; metrics on the metrics rank."""
        import torch.distributed as dist

        start = time.perf_counter()
        trajectories, stats = self.collector.collect(self.step)  # a collective: the same batch on every rank
        self.engine.after_rollout()  # SGLang gives its GPU memory back before training
        metrics: dict[str, float] = {}
        if trajectories:
            self._prepare(trajectories, stats)
            t0 = time.perf_counter()
            n_updates = self.algo.updates_per_batch
            size = len(trajectories) // n_updates
            per_update = []
            for u in range(n_updates):
                per_update.append(self._update(trajectories[u * size : (u + 1) * size], measure_mismatch=u == 0))
            stats["train_s"] = time.perf_counter() - t0
            metrics.update(per_update[-1])
            for key in ("mismatch/mean_abs", "mismatch/kl", "mismatch/max_abs"):
                if key in per_update[0]:
                    metrics[key] = per_update[0][key]
            if n_updates > 1:
                metrics["loss"] = sum(m["loss"] for m in per_update) / n_updates
        else:
            logger.warning("step %d: no informative groups after dynamic sampling; no update", self.step + 1)
            metrics["skipped_update"] = 1.0
        stats.update(self.sync_weights(version=self.step + 1))
        if self.algo.ref_refresh_every and (self.step + 1) % self.algo.ref_refresh_every == 0:
            self._copy_into_reference(self.model)
            self.ref_refreshed_at = self.step + 1
        elapsed = time.perf_counter() - start
        metrics.update({k: v for k, v in stats.items() if k != "generated_tokens"})
        metrics["step_s"] = elapsed
        metrics["throughput/generated_tokens_per_s"] = stats["generated_tokens"] / max(stats["rollout_s"], 1e-9)
        if "train_s" in stats:
            metrics["throughput/train_tokens_per_s"] = metrics.get("train_tokens", 0.0) / max(stats["train_s"], 1e-9)
        if self.rl.log_samples_every and (self.step + 1) % self.rl.log_samples_every == 0 and dist.get_rank() == 0:
            self._write_rollouts(trajectories)
        return metrics

    def _write_rollouts(self, trajectories: list[Trajectory]) -> None:
        path = self.run_dir / "rollouts" / f"step{self.step + 1}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for t in trajectories:
                f.write(json.dumps({
                    "prompt": t.extra.get("prompt"), "response": t.extra.get("text"), "answer": t.extra.get("answer"),
                    "finish": t.extra.get("finish"), "reward": t.reward, "advantage": t.advantage,
                    "scores": t.extra.get("scores"),
                }, ensure_ascii=False) + "\n")

    # ----------------------------------------------------------------------------------------------
    # evaluation (generation on every engine of the job, scoring on rank 0)
    # ----------------------------------------------------------------------------------------------

    def evaluate(self, tag: str = "eval") -> dict[str, float]:
        """Greedy accuracy / format and pass@1 over `eval_pass_k` samples on held-out prompts."""
        import torch.distributed as dist

        from r1mega.training.eval_accuracy import score_completions

        if not self.eval_prompts:
            return {}
        start = time.perf_counter()
        rank0 = dist.get_rank() == 0
        prompts = [self.eval_prompts[i] for i in range(min(self.rl.eval_samples, len(self.eval_prompts)))]
        n = len(prompts)
        max_new = self.cfg.rollout.max_new_tokens
        greedy = self.engine.generate(  # collective: every rank, same arguments
            [p.prompt_token_ids for p in prompts],
            self.cfg.rollout.sampling_params(temperature=0.0, max_new_tokens=max_new, seed=self.cfg.run.seed),
        )
        result: Optional[dict] = None
        if rank0:
            path = self.run_dir / "eval" / f"{tag}_step{self.step}.jsonl"
            s = score_completions(prompts, [x.response_token_ids for x in greedy], self.tokenizer, self.cfg.rewards,
                                  samples_path=path)
            result = {f"{tag}/greedy_accuracy": s["correct"] / n, f"{tag}/greedy_format": s["formatted"] / n,
                      f"{tag}/response_length": sum(len(x.response_token_ids) for x in greedy) / n}
        k = self.rl.eval_pass_k
        if k > 0:
            repeated = [p for p in prompts for _ in range(k)]
            sampled = self.engine.generate(
                [p.prompt_token_ids for p in repeated],
                self.cfg.rollout.sampling_params(temperature=self.rl.eval_temperature, max_new_tokens=max_new,
                                                 seed=self.cfg.run.seed + 7919),
            )
            if rank0:
                s = score_completions(repeated, [x.response_token_ids for x in sampled], self.tokenizer, self.cfg.rewards)
                result[f"{tag}/pass@1"] = s["correct"] / len(repeated)
                result[f"{tag}/format"] = s["formatted"] / len(repeated)
        if rank0:
            result[f"{tag}/seconds"] = time.perf_counter() - start
        return self._share_from_rank0(result)

    def _share_from_rank0(self, value: Optional[dict]) -> dict:
        import torch.distributed as dist

        if dist.get_world_size() == 1:
            return value or {}
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0] or {}

    # ----------------------------------------------------------------------------------------------
    # the loop
    # ----------------------------------------------------------------------------------------------

    def _eval_due(self) -> bool:
        every = self.rl.eval_every
        if every < 0:
            return False
        return self.step == self.total_steps or (every > 0 and self.step % every == 0)

    def train(self, on_step_end: Optional[Callable[["RLTrainer"], bool]] = None) -> dict[str, float]:
        """Train until `rl.steps`; log every step; returns the last metrics (every rank) with the
        starting evaluation under `start/...` keys when one was made."""
        from r1mega.configlib import to_dict
        from r1mega.training.logging import MetricsLogger, share_metrics

        last: dict[str, float] = {}
        start_eval: dict[str, float] = {}
        with MetricsLogger(
            self.run_dir, self.cfg.logging, total_steps=self.total_steps, start_step=self.step,
            run_name=self.cfg.run.name, config=to_dict(self.cfg),
        ) as log:
            if self.rl.eval_at_start and self.rl.eval_every >= 0 and self.step == 0:
                start_eval = self.evaluate()
                log.log(0, start_eval)
            while self.step < self.total_steps:
                metrics = self.train_step()
                self.step += 1
                # rollout statistics reach every rank with the trajectories; update metrics live on
                # the last stage: the metrics source has both
                last = share_metrics(metrics if self._is_metrics_source() else None, self._metrics_src)
                if self._eval_due():
                    last.update(self.evaluate())
                log.log(self.step, last)
                if "loss" in last and not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"step {self.step}: loss is {last['loss']}")
                if on_step_end is not None and on_step_end(self):
                    break
            log.plot()
        return {**last, **{f"start/{k}": v for k, v in start_eval.items()}}

    def _is_metrics_source(self) -> bool:
        import torch.distributed as dist

        return dist.get_rank() == self._metrics_src

    def write_summary(self, metrics: dict[str, float], path: Optional[Path] = None) -> Optional[Path]:
        """summary.json: start vs final evaluation (rank 0)."""
        import torch.distributed as dist

        if dist.get_rank() != 0:
            return None
        path = path or self.run_dir / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = ("greedy_accuracy", "greedy_format", "pass@1", "format", "response_length")
        summary = {"steps": self.step, "algorithm": self.cfg.algorithm.name,
                   "start": {k: metrics.get(f"start/eval/{k}") for k in keys},
                   "final": {k: metrics.get(f"eval/{k}") for k in keys}}
        path.write_text(json.dumps(summary, indent=2) + "\n")
        return path
