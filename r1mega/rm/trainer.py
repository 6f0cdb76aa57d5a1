"""The reward-model trainer behind `r1mega rm`: megatron GPTModel with a scalar head (any TP/PP/EP/DP
layout), Bradley-Terry on pairs and BCE on pointwise labels, held-out pairwise accuracy and AUC.

    init_distributed(cfg.parallel, seed=cfg.run.seed)
    trainer = RewardModelTrainer(cfg, train_units, test_units, pad_id=tok.pad_token_id)
    trainer.build(init_fn)      # model (head: score), DDP, optimizer, LR schedule
    trainer.train(on_step_end)  # the loop, logging every step

One step: the sampler hands out `rm.global_batch_size` unit indices (the same on every rank), each
DP rank takes its contiguous slice, groups it into microbatches that never split a pair
(r1mega/rm/data.py) and runs megatron's pipeline schedule; gradients are divided once by the unit
count of the global batch (r1mega/rm/loss.py), so every layout trains the same model.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Callable, Optional, Sequence

import torch

from r1mega.config import Config
from r1mega.data.sampler import PromptSampler
from r1mega.rm.data import Unit, make_rm_microbatch, plan_unit_microbatches
from r1mega.rm.loss import auc, rm_loss
from r1mega.training.batching import dp_share, pad_multiple
from r1mega.training.megatron_step import forward_backward, wrap_with_ddp
from r1mega.training.trainer_common import find_metrics_source, sum_over_data_parallel, trainer_config_overrides

__all__ = ["RewardModelTrainer", "rm_forward"]


def rm_forward(model, batch: dict) -> torch.Tensor:
    """GPTModel forward without labels: the scalar head's output [b, s, 1] on the last stage."""
    return model(batch["tokens"], batch["position_ids"], None)


class RewardModelTrainer:
    def __init__(self, cfg: Config, train_units: Sequence[Unit], test_units: Optional[Sequence[Unit]], *, pad_id: int):
        if not train_units:
            raise ValueError("RewardModelTrainer: no training rows")
        if cfg.model.head != "score":
            raise ValueError("RewardModelTrainer: model.head must be 'score'")
        self.cfg = cfg
        self.rm = cfg.rm
        self.train_units = list(train_units)
        self.test_units = list(test_units or [])
        self.pad_id = pad_id
        self.total_steps = self.rm.steps
        self.step = 0
        self.sampler = PromptSampler(len(self.train_units), seed=cfg.data.seed, shuffle=True)
        self.model: list = []
        self.optimizer = None
        self.scheduler = None
        self.run_dir = cfg.run.run_dir

    def build(self, init_fn: Optional[Callable[[list], None]] = None) -> None:
        """Model chunks, DDP, optimizer and schedule; `init_fn(chunks)` sets initial weights first."""
        from megatron.core import parallel_state

        from r1mega.models.builder import build_model
        from r1mega.training.optimizer import build_optimizer
        from r1mega.training.schedule import build_lr_scheduler

        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.rm.check_data_parallel(self.dp_size)
        self.multiple = pad_multiple(self.rm.pad_to_multiple, self.cfg.parallel.tp, self.cfg.parallel.sequence_parallel)
        longest = max(u.length for u in self.train_units + self.test_units)
        if longest > self.cfg.model.max_position_embeddings:
            raise ValueError(f"rm: a row has {longest} tokens > model.max_position_embeddings={self.cfg.model.max_position_embeddings}")
        dtype = torch.bfloat16 if self.rm.params_dtype == "bfloat16" else torch.float32
        chunks = build_model(
            self.cfg.model, self.cfg.parallel, params_dtype=dtype,
            config_overrides=trainer_config_overrides(self.cfg), score_head_seed=self.cfg.run.seed,
        )
        if init_fn is not None:
            init_fn(chunks)
        self.model = wrap_with_ddp(chunks, self.cfg.parallel)
        self.optimizer = build_optimizer(self.cfg.optimizer, self.model, self.cfg.parallel)
        self.scheduler = build_lr_scheduler(self.optimizer, self.cfg.optimizer, self.total_steps)
        self.is_last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        self._metrics_src = find_metrics_source(self.is_last_stage, self.dp_rank)

    def _microbatches(self, units: Sequence[Unit]) -> list[dict]:
        """This DP rank's microbatches, padded with empty ones (no unit: zero loss, zero count) to
        the largest count of any DP rank: expert-parallel all-to-alls span DP ranks, so every rank
        must run as many forward/backward passes as its peers."""
        from megatron.core import parallel_state

        groups = plan_unit_microbatches(
            units, micro_batch_size=self.rm.micro_batch_size, micro_batch_tokens=self.rm.micro_batch_tokens, multiple=self.multiple
        ) if units else []
        mbs = [make_rm_microbatch([units[i] for i in g], self.pad_id, self.multiple) for g in groups]
        count = torch.tensor([len(mbs)], dtype=torch.long)
        if self.dp_size > 1:
            torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX,
                                         group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        if int(count) > len(mbs):
            source = units[0] if units else (self.train_units[0])
            empty = make_rm_microbatch([source], self.pad_id, self.multiple)
            empty.update(pairs=torch.zeros((0, 2), dtype=torch.long), points=torch.zeros(0, dtype=torch.long),
                         labels=torch.zeros(0, dtype=torch.float32))
            mbs += [empty] * (int(count) - len(mbs))
        return mbs

    def _run(self, microbatches: list[dict], forward_only: bool) -> dict[str, object]:
        """Summed metrics of this DP rank's microbatches (on the last stage; empty elsewhere)."""
        metrics = forward_backward(
            self.model,
            microbatches,
            functools.partial(rm_loss, pointwise_weight=self.rm.pointwise_weight),
            seq_length=max(mb["tokens"].shape[1] for mb in microbatches),
            micro_batch_size=max(mb["tokens"].shape[0] for mb in microbatches),
            forward_only=forward_only,
            forward_fn=rm_forward,
        )
        if not self.is_last_stage:
            return {}
        out: dict[str, object] = {}
        for key in ("loss_sum", "units", "pair_loss_sum", "pairs", "pairs_correct", "point_loss_sum", "points"):
            out[key] = float(sum(m[key].double() for m in metrics))
        out["point_scores"] = [float(x) for m in metrics for x in m["point_scores"]]
        out["point_labels"] = [float(x) for m in metrics for x in m["point_labels"]]
        return out

    def _sum_over_dp(self, values: list[float]) -> list[float]:
        return sum_over_data_parallel(values, self.dp_size)

    def train_step(self) -> dict[str, float]:
        start = time.perf_counter()
        indices = self.sampler.next_indices(self.rm.global_batch_size)
        mine = [self.train_units[i] for i in dp_share(indices, self.dp_rank, self.dp_size)]
        microbatches = self._microbatches(mine)
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        got = self._run(microbatches, forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(increment=1)
        keys = ("loss_sum", "units", "pairs", "pairs_correct")
        loss_sum, units, pairs, correct = self._sum_over_dp([float(got.get(k, 0.0)) for k in keys])
        out = {
            "loss": loss_sum / max(units, 1.0),
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "units": units,
            "step_time_s": time.perf_counter() - start,
        }
        if pairs:
            out["train/pairwise_accuracy"] = correct / pairs
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out loss, pairwise accuracy (chosen scored above rejected) and pointwise AUC."""
        if not self.test_units:
            return {}
        n = len(self.test_units) if self.rm.eval_samples is None else min(self.rm.eval_samples, len(self.test_units))
        mine = [self.test_units[i] for i in range(self.dp_rank, n, self.dp_size)]
        for chunk in self.model:
            chunk.eval()
        try:
            got = self._run(self._microbatches(mine), forward_only=True)
        finally:
            for chunk in self.model:
                chunk.train()
        keys = ("loss_sum", "units", "pairs", "pairs_correct", "points")
        loss_sum, units, pairs, correct, points = self._sum_over_dp([float(got.get(k, 0.0)) for k in keys])
        out = {"eval/loss": loss_sum / max(units, 1.0)}
        if pairs:
            out["eval/pairwise_accuracy"] = correct / pairs
        if points:
            scores, labels = self._gather_points(got)
            out["eval/pointwise_auc"] = auc(scores, labels)
        return out

    def _gather_points(self, got: dict) -> tuple[list[float], list[float]]:
        from megatron.core import parallel_state

        mine = (list(got.get("point_scores", [])), list(got.get("point_labels", [])))
        if self.dp_size == 1:
            return mine
        everyone = [None] * self.dp_size
        torch.distributed.all_gather_object(everyone, mine, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        return [s for e in everyone for s in e[0]], [y for e in everyone for y in e[1]]

    def _due(self, every: int) -> bool:
        return self.step == self.total_steps or (every > 0 and self.step % every == 0)

    def train(self, on_step_end: Optional[Callable[["RewardModelTrainer"], bool]] = None) -> dict[str, float]:
        """Train until rm.steps, logging every step; `on_step_end(trainer)` returning True stops."""
        import torch.distributed as dist

        from r1mega.configlib import to_dict
        from r1mega.training.logging import MetricsLogger, share_metrics

        last: dict[str, float] = {}
        with MetricsLogger(
            self.run_dir, self.cfg.logging, total_steps=self.total_steps, start_step=self.step,
            run_name=self.cfg.run.name, config=to_dict(self.cfg),
        ) as log:
            while self.step < self.total_steps:
                metrics = self.train_step()
                self.step += 1
                if self._due(self.rm.eval_every):
                    metrics.update(self.evaluate())
                last = share_metrics(metrics if dist.get_rank() == self._metrics_src else None, self._metrics_src)
                log.log(self.step, last)
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"step {self.step}: loss is {last['loss']}")
                if on_step_end is not None and on_step_end(self):
                    break
            log.plot()
        return last
