"""The supervised trainer: next-token training on megatron-core, for `r1mega sft` and `r1mega pretrain`.

    init_distributed(cfg.parallel, seed=cfg.run.seed)
    trainer = SupervisedTrainer(cfg, train_set, eval_set, tokenizer=tok, accuracy_prompts=prompts)
    trainer.build()            # model (any TP/PP/VPP/EP/DP layout), DDP, optimizer, LR schedule
    trainer.resume()           # from checkpoint.resume / checkpoint.init_from, when configured
    trainer.train()            # the loop below, logging every step, saving per `checkpoint`

One step: the sampler hands out `global_batch_size` example indices (the same on every rank); each
data-parallel rank takes its slice, groups it into padded microbatches (r1mega/training/batching.py)
and runs them through megatron's pipeline schedule; the optimizer clips and steps; the LR schedule
advances.

Loss: the token-mean of the cross entropy over every target token (loss_mask = 1) of the global
batch, whatever the layout. Each microbatch returns its summed loss and token count; with megatron's
`calculate_per_token_loss`, gradients are summed over microbatches and DP ranks and divided once by
the global token count in `finalize_model_grads`. (A mean of per-microbatch means would weight a
token of a short microbatch more than one of a long microbatch, and would change with the DP size
and the microbatch split.) The logged `loss` is the same token-mean.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from r1mega.config import Config
from r1mega.data.sampler import PromptSampler
from r1mega.training.batching import build_microbatches, dp_share, pad_multiple
from r1mega.training.megatron_step import forward_backward, wrap_with_ddp
from r1mega.training.trainer_common import find_metrics_source, sum_over_data_parallel, trainer_config_overrides

__all__ = ["SupervisedTrainer", "token_sum_loss"]

logger = logging.getLogger(__name__)


def token_sum_loss(output: torch.Tensor, batch: dict):
    """GPTModel's per-token cross entropy [b, s] -> (sum over targets, target count, metrics)."""
    mask = batch["loss_mask"]  # [b, s]
    loss_sum = (output.float() * mask).sum()
    num_tokens = mask.sum().to(torch.int)
    return loss_sum, num_tokens, {"loss_sum": loss_sum.detach(), "num_tokens": num_tokens.detach().float()}


class SupervisedTrainer:
    """Builds the model and optimizer for `cfg` and trains it on SFT examples (see module docstring)."""

    def __init__(
        self,
        cfg: Config,
        train_set: Sequence,
        eval_set: Optional[Sequence] = None,
        *,
        tokenizer: Any,
        accuracy_prompts: Optional[Sequence] = None,
        stage: str = "sft",
    ):
        """`train_set`/`eval_set`: SFTExample sequences. `accuracy_prompts`: PromptExamples for the
        greedy accuracy evaluation (sft.accuracy_every). `stage` names the run's files and logs."""
        if len(train_set) == 0:
            raise ValueError("SupervisedTrainer: the train set is empty")
        self.cfg = cfg
        self.sft = cfg.sft
        self.train_set = train_set
        self.eval_set = eval_set
        self.tokenizer = tokenizer
        self.accuracy_prompts = accuracy_prompts
        self.stage = stage
        self.pad_id = tokenizer.pad_token_id
        self.total_steps = self.sft.total_steps(len(train_set))
        self.step = 0
        self.sampler = PromptSampler(len(train_set), seed=cfg.data.seed, shuffle=cfg.data.shuffle)
        self.model: list = []
        self.optimizer = None
        self.scheduler = None
        self.run_dir = cfg.run.run_dir

    # ----------------------------------------------------------------------------------------------
    # set-up
    # ----------------------------------------------------------------------------------------------

    def build(self, init_fn: Optional[Callable[[list], None]] = None) -> None:
        """Model chunks for this rank, DDP, optimizer and LR schedule.

        `init_fn(model_chunks)` runs after the model is built and before the optimizer copies its
        parameters (initial weights from elsewhere: tests, `checkpoint.init_from`).
        """
        from megatron.core import parallel_state

        from r1mega.models.builder import build_model
        from r1mega.training.optimizer import build_optimizer
        from r1mega.training.schedule import build_lr_scheduler

        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("SupervisedTrainer.build: call init_distributed first")
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.sft.check_data_parallel(self.dp_size)
        self.multiple = pad_multiple(self.sft.pad_to_multiple, self.cfg.parallel.tp, self.cfg.parallel.sequence_parallel)
        longest = max(len(ex.input_ids) for ex in self.train_set)
        if longest > self.cfg.model.max_position_embeddings:
            raise ValueError(
                f"data: a training example has {longest} tokens > model.max_position_embeddings="
                f"{self.cfg.model.max_position_embeddings} (lower data.max_sft_tokens)"
            )
        dtype = torch.bfloat16 if self.sft.params_dtype == "bfloat16" else torch.float32
        chunks = build_model(self.cfg.model, self.cfg.parallel, params_dtype=dtype, config_overrides=trainer_config_overrides(self.cfg))
        if init_fn is not None:
            init_fn(chunks)
        self.model = wrap_with_ddp(chunks, self.cfg.parallel)
        self.optimizer = build_optimizer(self.cfg.optimizer, self.model, self.cfg.parallel)
        self.scheduler = build_lr_scheduler(self.optimizer, self.cfg.optimizer, self.total_steps)
        self.is_last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        self._metrics_src = find_metrics_source(self.is_last_stage, self.dp_rank)

    def _microbatches(self, examples: Sequence) -> list[dict]:
        return build_microbatches(
            examples,
            pad_id=self.pad_id,
            micro_batch_size=self.sft.micro_batch_size,
            micro_batch_tokens=self.sft.micro_batch_tokens,
            multiple=self.multiple,
        )

    def _run(self, microbatches: list[dict], forward_only: bool) -> tuple[float, float]:
        """(summed loss, target tokens) of this DP rank's microbatches, on the last stage."""
        metrics = forward_backward(
            self.model,
            microbatches,
            token_sum_loss,
            seq_length=max(mb["tokens"].shape[1] for mb in microbatches),
            micro_batch_size=max(mb["tokens"].shape[0] for mb in microbatches),
            forward_only=forward_only,
        )
        if not self.is_last_stage:
            return 0.0, 0.0
        return (
            float(sum(m["loss_sum"].double() for m in metrics)),
            float(sum(m["num_tokens"].double() for m in metrics)),
        )

    def _reduce_over_dp(self, *values: float) -> list[float]:
        return sum_over_data_parallel(values, self.dp_size)

    def train_step(self) -> dict[str, float]:
        """One optimizer step on the next global batch; metrics are valid on the last stage."""
        start = time.perf_counter()
        indices = self.sampler.next_indices(self.sft.global_batch_size)
        mine = [self.train_set[i] for i in dp_share(indices, self.dp_rank, self.dp_size)]
        microbatches = self._microbatches(mine)
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        loss_sum, tokens = self._run(microbatches, forward_only=False)
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            # only fp16 loss scaling skips steps; bf16/fp32 never do
            logger.warning("step %d: optimizer step skipped (overflow)", self.step + 1)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(increment=1)
        loss_sum, tokens, padded = self._reduce_over_dp(
            loss_sum, tokens, float(sum(mb["tokens"].numel() for mb in microbatches))
        )
        elapsed = time.perf_counter() - start
        return {
            "loss": loss_sum / max(tokens, 1.0),
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "target_tokens": tokens,
            "microbatches": float(len(microbatches)),
            "step_time_s": elapsed,
            "padded_tokens_per_s": padded / elapsed,
        }

    # ----------------------------------------------------------------------------------------------
    # evaluation
    # ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate_loss(self) -> dict[str, float]:
        """Token-mean loss on the held-out examples (the first sft.eval_samples of them)."""
        if not self.eval_set:
            return {}
        n = len(self.eval_set) if self.sft.eval_samples is None else min(self.sft.eval_samples, len(self.eval_set))
        mine = [self.eval_set[i] for i in range(self.dp_rank, n, self.dp_size)]
        loss_sum, tokens = (0.0, 0.0)
        if mine:
            for chunk in self.model:
                chunk.eval()
            try:
                loss_sum, tokens = self._run(self._microbatches(mine), forward_only=True)
            finally:
                for chunk in self.model:
                    chunk.train()
        loss_sum, tokens = self._reduce_over_dp(loss_sum, tokens)
        return {"eval/loss": loss_sum / max(tokens, 1.0), "eval/target_tokens": tokens}

    def evaluate_accuracy(self, samples_path: Optional[Path] = None) -> dict[str, float]:
        """Greedy accuracy and format rate on held-out prompts (rule rewards of the task).

        Writes this DP rank's completions to `samples_path` (jsonl) when given.
        """
        if not self.accuracy_prompts:
            return {}
        from r1mega.training.eval_accuracy import score_completions
        from r1mega.training.greedy import greedy_generate

        n = min(self.sft.accuracy_samples, len(self.accuracy_prompts))
        mine = [self.accuracy_prompts[i] for i in range(self.dp_rank, n, self.dp_size)]
        outputs = greedy_generate(
            self.model,
            [ex.prompt_token_ids for ex in mine],
            max_new_tokens=self.sft.max_new_tokens,
            eos_token_ids=[self.tokenizer.eos_token_id],
            vocab_size=self.cfg.model.vocab_size,
            max_length=self.cfg.model.max_position_embeddings,
            pad_multiple=self.multiple,
        ) if mine else []
        scores = score_completions(mine, outputs, self.tokenizer, self.cfg.rewards, samples_path=samples_path)
        correct, formatted, count = self._reduce_over_dp(scores["correct"], scores["formatted"], float(len(mine)))
        return {"eval/accuracy": correct / max(count, 1.0), "eval/format": formatted / max(count, 1.0)}

    # ----------------------------------------------------------------------------------------------
    # the loop
    # ----------------------------------------------------------------------------------------------

    def _due(self, every: int) -> bool:
        return self.step == self.total_steps or (every > 0 and self.step % every == 0)

    def train(self, on_step_end: Optional[Callable[["SupervisedTrainer"], bool]] = None) -> dict[str, float]:
        """Train until `total_steps`; log every step. `on_step_end(trainer)` runs after each step's
        logging (checkpoint saves, preemption); returning True stops the loop early. Returns the
        last logged metrics (on every rank)."""
        from r1mega.configlib import to_dict
        from r1mega.training.logging import MetricsLogger, share_metrics

        last: dict[str, float] = {}
        with MetricsLogger(
            self.run_dir,
            self.cfg.logging,
            total_steps=self.total_steps,
            start_step=self.step,
            run_name=self.cfg.run.name,
            config=to_dict(self.cfg),
        ) as log:
            while self.step < self.total_steps:
                metrics = self.train_step()
                self.step += 1
                if self._due(self.sft.eval_every):
                    metrics.update(self.evaluate_loss())
                acc_every = self.sft.accuracy_every
                if acc_every != 0 and self._due(acc_every if acc_every > 0 else 0):
                    samples = self.run_dir / f"eval_samples_step{self.step}.jsonl"
                    metrics.update(self.evaluate_accuracy(samples if self._writes_files() else None))
                last = share_metrics(metrics if self._is_metrics_source() else None, self._metrics_src)
                log.log(self.step, last)
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"step {self.step}: loss is {last['loss']}")
                if on_step_end is not None and on_step_end(self):
                    break
            log.plot()
        return last

    def _is_metrics_source(self) -> bool:
        import torch.distributed as dist

        return dist.get_rank() == self._metrics_src

    def _writes_files(self) -> bool:
        import torch.distributed as dist

        return dist.get_rank() == 0
