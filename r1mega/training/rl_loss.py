"""The RL loss side of a step: old/reference log-probs, advantages, and the optimizer updates.

    loss = RLLoss(cfg, algo, model=chunks, ref_model=ref, optimizer=opt, scheduler=sched, pad_id=...)
    metrics, train_s = loss.train_on(trajectories, stats)   # every rank, the same trajectories

`train_on`: (1) old log-probs (only when the batch feeds several optimizer steps) and reference
log-probs (when a KL term is used): forward-only passes through megatron's schedule, each DP rank on
its share; KL in the reward is subtracted before advantages; (2) advantages per group, the same on
every rank; (3) `algorithm.updates_per_batch` optimizer steps, each on one mini-batch split over DP
ranks and token-budget microbatches. The loss of a microbatch is `r1mega.kernels.policy_loss` on
log-probs computed by `fused_logprob` from the last stage's hidden states (no logits materialised);
with megatron's `calculate_per_token_loss`, the gradient is that of the aggregate over the whole
mini-batch, whatever the layout and microbatch split.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import torch

from r1mega.training.batching import dp_share
from r1mega.training.megatron_step import forward_backward
from r1mega.training.policy_logprob import hidden_states_forward, response_logprobs, unwrap_gpt
from r1mega.training.rl_batch import Trajectory, build_rl_microbatches
from r1mega.training.routing_replay import with_routing_replay
from r1mega.training.step_profile import NULL_PROFILE, StepProfile

__all__ = ["RLLoss"]

logger = logging.getLogger(__name__)


def _forward_keeping_model(model, batch: dict) -> torch.Tensor:
    # the loss function needs the GPTModel whose output layer it multiplies with
    batch["_gpt"] = unwrap_gpt(model)
    return hidden_states_forward(model, batch)


class RLLoss:
    """Log-probs, advantages and optimizer updates of the policy (see the module docstring)."""

    def __init__(self, cfg, algo, *, model: list, ref_model, optimizer, scheduler, pad_id: int, multiple: int,
                 dp_rank: int, dp_size: int, is_last_stage: bool, profile: StepProfile = NULL_PROFILE):
        self.cfg = cfg
        self.rl = cfg.rl
        self.algo = algo
        self.loss_options = algo.loss_options()
        self.model = model
        self.ref_model = ref_model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.pad_id = pad_id
        self.multiple = multiple
        self.dp_rank = dp_rank
        self.dp_size = dp_size
        self.is_last_stage = is_last_stage
        # with routing replay, every forward (old/ref log-probs, training) takes the rollout's experts
        self.forward_fn = with_routing_replay(_forward_keeping_model) if cfg.rollout.routing_replay else _forward_keeping_model
        self.profile = profile

    def train_on(self, trajectories: list[Trajectory], stats: dict) -> tuple[dict[str, float], float]:
        """Prepare (log-probs, advantages) and run the updates of one step; (metrics, seconds)."""
        self._prepare(trajectories, stats)
        t0 = time.perf_counter()
        n_updates = self.algo.updates_per_batch
        size = len(trajectories) // n_updates
        per_update = [self._update(trajectories[u * size : (u + 1) * size], measure_mismatch=u == 0)
                      for u in range(n_updates)]
        metrics = dict(per_update[-1])
        for key in ("mismatch/mean_abs", "mismatch/kl", "mismatch/max_abs"):
            if key in per_update[0]:
                metrics[key] = per_update[0][key]
        if n_updates > 1:
            metrics["loss"] = sum(m["loss"] for m in per_update) / n_updates
        return metrics, time.perf_counter() - t0

    # ----------------------------------------------------------------------------------------------
    # log-probs, advantages
    # ----------------------------------------------------------------------------------------------

    def _microbatches(self, items: Sequence[Trajectory]) -> list[dict]:
        from r1mega.parallel.cpu import device_mode_suspended

        # host tensors built token by token: no CUDA device is named, the CPU mode's dispatch is waste
        with device_mode_suspended():
            return self._build_microbatches(items)

    def _build_microbatches(self, items: Sequence[Trajectory]) -> list[dict]:
        if self.rl.share_prompts:
            from r1mega.training.shared_prompt import build_shared_prompt_microbatches

            return build_shared_prompt_microbatches(
                items, pad_id=self.pad_id, micro_batch_size=self.rl.micro_batch_size,
                micro_batch_tokens=self.rl.micro_batch_tokens, multiple=self.multiple,
            )
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
                forward_fn=self.forward_fn,
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
        mine = [items[i] for i in dp_share(list(range(len(items))), self.dp_rank, self.dp_size)]
        t0 = time.perf_counter()
        with self.profile.phase("logprob"):
            if self.algo.updates_per_batch > 1:
                for idx, lp in self._score_logprobs(self.model, mine).items():
                    items[idx].old_logprobs = lp
            if self.ref_model is not None:
                for idx, lp in self._score_logprobs(self.ref_model, mine).items():
                    items[idx].ref_logprobs = lp
        stats["logprob_s"] = time.perf_counter() - t0
        with self.profile.phase("bookkeeping"):
            self._advantages(items, mine, stats)

    def _advantages(self, items: list[Trajectory], mine: list[Trajectory], stats: dict) -> None:
        """KL-in-reward (needs the reference log-probs) and advantages per group (every rank)."""
        import torch.distributed as dist

        from r1mega.algorithms import compute_advantages, kl_reward_penalty

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
        with self.profile.phase("bookkeeping"):
            mine = [items[i] for i in dp_share(list(range(len(items))), self.dp_rank, self.dp_size)]
            mbs = self._microbatches(mine)
        with self.profile.phase("fwd_bwd"):
            for chunk in self.model:
                chunk.zero_grad_buffer()
            self.optimizer.zero_grad()
            out = forward_backward(
                self.model, mbs, self._loss_fn(measure_mismatch),
                seq_length=max(mb["tokens"].shape[1] for mb in mbs),
                micro_batch_size=max(mb["tokens"].shape[0] for mb in mbs),
                forward_fn=self.forward_fn,
            )
        with self.profile.phase("optimizer"):
            ok, grad_norm, _ = self.optimizer.step()
            if not ok:
                logger.warning("optimizer step skipped (overflow)")
            lr = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step(increment=1)
        with self.profile.phase("bookkeeping"):
            return self._update_metrics(out, lr, grad_norm, measure_mismatch)

    def _update_metrics(self, out: list[dict], lr: float, grad_norm, measure_mismatch: bool) -> dict[str, float]:
        """The update's metrics, summed (or maxed) over microbatches and DP ranks."""
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
        if measure_mismatch and self.is_last_stage:  # the loss (and its metrics) run on the last stage only
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
