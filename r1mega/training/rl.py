"""The RL trainer: rollout -> rewards -> advantages -> log-probs -> loss -> optimizer step -> weight sync.

    trainer = RLTrainer(cfg, train_prompts, eval_prompts, tokenizer=tok)
    trainer.build(init_fn)     # policy (any TP/PP/EP/DP layout) + DDP + optimizer; reference model;
                               # one rollout engine per rollout group, reward pool on rank 0; first sync
    trainer.train(on_step_end) # the loop below, one metrics row per step

One step (`train_step`), each part in its own module:
  1. collection (rl_collect.py over the collectives of rl_rollout.py, every rank):
     `rl.prompts_per_step` prompts x `algorithm.group_size` samples split over the job's engines
     (one per rollout group of `rollout.tp` ranks), rewards from rank 0's reward pool, DAPO's
     overlong penalty and dynamic sampling; every rank gets the same trajectories;
  2. the loss (rl_loss.py): old/reference log-probs on each DP rank's share, advantages per group,
     `algorithm.updates_per_batch` optimizer steps over token-budget microbatches;
  3. weight sync: `export_hf_tensors` streams the updated weights in buckets into every engine;
  4. evaluation (rl_eval.py) every `rl.eval_every` steps.

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
from r1mega.training.batching import pad_multiple
from r1mega.training.megatron_step import wrap_with_ddp
from r1mega.training.policy_logprob import unwrap_gpt
from r1mega.training.rl_batch import Trajectory
from r1mega.training.rl_collect import RolloutCollector
from r1mega.training.rl_loss import RLLoss
from r1mega.training.routing_replay import replay_overrides
from r1mega.training.step_profile import StepProfile
from r1mega.training.trainer_common import find_metrics_source, trainer_config_overrides

__all__ = ["RLTrainer"]

logger = logging.getLogger(__name__)


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
        self.loss: Optional[RLLoss] = None
        self._plan = None
        self.profile = StepProfile()
        """Per-step phase times (step_profile.py), logged as time/<phase>; every rank's in profile.jsonl."""

    # ----------------------------------------------------------------------------------------------
    # set-up
    # ----------------------------------------------------------------------------------------------

    def build(self, init_fn: Optional[Callable[[list], None]] = None) -> None:
        """Engines (one per rollout group, first: SGLang must start before Megatron allocates) and
        rewards; policy chunks, DDP, optimizer, LR schedule; reference model; the loss; first sync.

        `init_fn(model_chunks)` sets the initial policy weights (the base or SFT checkpoint) before
        the optimizer copies them; the reference model starts as a copy of them.
        """
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
        if self.rl.share_prompts:
            from r1mega.training.shared_prompt import check_supported

            check_supported(self.cfg)
        self.multiple = pad_multiple(self.rl.pad_to_multiple, self.cfg.parallel.tp, self.cfg.parallel.sequence_parallel)
        self.is_last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        dtype = torch.bfloat16 if self.rl.params_dtype == "bfloat16" else torch.float32
        overrides = {**trainer_config_overrides(self.cfg), **replay_overrides(self.cfg)}
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
        self.loss = RLLoss(
            self.cfg, self.algo, model=self.model, ref_model=self.ref_model, optimizer=self.optimizer,
            scheduler=self.scheduler, pad_id=self.pad_id, multiple=self.multiple, dp_rank=self.dp_rank,
            dp_size=self.dp_size, is_last_stage=self.is_last_stage, profile=self.profile,
        )
        if self.cfg.rewards.models:  # frozen reward models, scored after rollout (r1mega/rm/scoring.py)
            from r1mega.rm.scoring import ModelRewards, build_scorers

            self.rewards = ModelRewards(self.rewards, build_scorers(self.cfg, self.tokenizer))
            self.collector.rewards = self.rewards
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
            profile=self.profile,
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
        with self.profile.phase("sync"):
            return self._sync_weights(version)

    def _sync_weights(self, version: int) -> dict[str, float]:
        from r1mega.convert.export import export_hf_tensors

        start = time.perf_counter()
        mb = self.cfg.rollout.bucket_mb if self.cfg.rollout.engine == "sglang" else self.rl.weight_sync_bucket_mb
        buckets = export_hf_tensors(
            [unwrap_gpt(c) for c in self.model], int(mb * 2**20), model_cfg=self.cfg.model, plan=self._plan,
        )
        stats = self.engine.sync(buckets, version=version)  # every rank takes part; owners load
        return {"sync_s": time.perf_counter() - start, **stats}

    def train_step(self) -> dict[str, float]:
        """Rollout, preparation, updates and weight sync for one step; metrics on the metrics rank."""
        start = time.perf_counter()
        trajectories, stats = self.collector.collect(self.step)  # a collective: the same batch on every rank
        with self.profile.phase("generate"):
            self.engine.after_rollout()  # SGLang gives its GPU memory back before training
        metrics: dict[str, float] = {}
        if trajectories:
            metrics, stats["train_s"] = self.loss.train_on(trajectories, stats)  # rl_loss.py
        else:
            logger.warning("step %d: no informative groups after dynamic sampling; no update", self.step + 1)
            metrics["skipped_update"] = 1.0
        stats.update(self.sync_weights(version=self.step + 1))
        if self.algo.ref_refresh_every and (self.step + 1) % self.algo.ref_refresh_every == 0:
            with self.profile.phase("sync"):  # the reference takes the policy's weights
                self._copy_into_reference(self.model)
            self.ref_refreshed_at = self.step + 1
        with self.profile.phase("bookkeeping"):
            return self._step_metrics(trajectories, stats, metrics, time.perf_counter() - start)

    def _step_metrics(self, trajectories, stats: dict, metrics: dict, elapsed: float) -> dict[str, float]:
        import torch.distributed as dist

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
    # evaluation (rl_eval.py)
    # ----------------------------------------------------------------------------------------------

    def evaluate(self, tag: str = "eval") -> dict[str, float]:
        """Greedy accuracy / format and pass@1 on held-out prompts (a collective; see rl_eval.py)."""
        from r1mega.training.rl_eval import evaluate

        with self.profile.phase("eval"):
            return evaluate(self.engine, self.eval_prompts, self.cfg, self.tokenizer, self.run_dir, self.step, tag)

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
        from r1mega.training.step_profile import ProfileLog

        last: dict[str, float] = {}
        start_eval: dict[str, float] = {}
        with MetricsLogger(
            self.run_dir, self.cfg.logging, total_steps=self.total_steps, start_step=self.step,
            run_name=self.cfg.run.name, config=to_dict(self.cfg),
        ) as log:
            if self.rl.eval_at_start and self.rl.eval_every >= 0 and self.step == 0:
                start_eval = self.evaluate()
                log.log(0, start_eval)
            profile_log = ProfileLog(self.run_dir, start_step=self.step, enabled=log.enabled)
            self.profile.begin()
            while self.step < self.total_steps:
                metrics = self.train_step()
                self.step += 1
                # rollout statistics reach every rank with the trajectories; update metrics live on
                # the last stage: the metrics source has both
                with self.profile.phase("bookkeeping"):
                    last = share_metrics(metrics if self._is_metrics_source() else None, self._metrics_src)
                if self._eval_due():
                    last.update(self.evaluate())
                times = self.profile.end()
                # windows tile the loop: writing this row (and the save below) belongs to the next one
                self.profile.begin()
                with self.profile.phase("bookkeeping"):
                    last.update(profile_log.record(self.step, times))  # every rank's; rank 0's here
                    log.log(self.step, last)
                if "loss" in last and not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"step {self.step}: loss is {last['loss']}")
                if on_step_end is not None:
                    with self.profile.phase("checkpoint"):
                        stop = on_step_end(self)
                    if stop:
                        break
            log.plot()
            profile_log.plot()
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
