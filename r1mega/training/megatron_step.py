"""Megatron wiring for a training step: DDP-wrap the model chunks, and run forward/backward over
microbatches through megatron's pipeline schedule with `finalize_model_grads` at the end.

The schedule (`get_forward_backward_func`) picks no-pipelining, 1F1B or interleaved 1F1B from
parallel_state. `finalize_model_grads` reduces gradients over DP (or reduce-scatters them for the
distributed optimizer), all-reduces sequence-parallel norm grads over TP and tied embedding grads
across the first and last pipeline stage. Gradients end up in each parameter's `main_grad`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch

from r1mega.parallel.config import ParallelConfig

__all__ = ["wrap_with_ddp", "forward_backward", "LossFn"]

LossFn = Callable[[torch.Tensor, dict], tuple]
"""(last-stage output, microbatch) -> (scalar loss of the microbatch, metrics to report), or
(summed loss, number of tokens it sums over, metrics) for a token-mean over the global batch: with
the model config's `calculate_per_token_loss`, gradients are then divided by the token count of the
whole global batch (all microbatches, all DP ranks) in finalize_model_grads."""


def wrap_with_ddp(model_chunks: list, parallel_cfg: ParallelConfig, *, bucket_size: Optional[int] = None) -> list:
    """Wrap each chunk in megatron's DistributedDataParallel and hook up finalize_model_grads.

    Gradients accumulate in fp32 buffers (`param.main_grad`); only the first chunk uses buckets
    for overlap, as megatron-LM does for virtual pipeline stages.
    """
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.distributed import finalize_model_grads

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=parallel_cfg.grad_reduce_in_fp32,
        overlap_grad_reduce=parallel_cfg.overlap_grad_reduce,
        overlap_param_gather=parallel_cfg.overlap_param_gather,
        use_distributed_optimizer=parallel_cfg.use_distributed_optimizer,
        bucket_size=bucket_size,
    )
    wrapped = [
        DistributedDataParallel(
            config=chunk.config, ddp_config=ddp_config, module=chunk, disable_bucketing=i > 0
        )
        for i, chunk in enumerate(model_chunks)
    ]
    config = wrapped[0].config
    config.finalize_model_grads_func = finalize_model_grads
    if parallel_cfg.overlap_grad_reduce:
        no_sync = [w.no_sync for w in wrapped]
        config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
        grad_sync = [w.start_grad_sync for w in wrapped]
        config.grad_sync_func = grad_sync[0] if len(grad_sync) == 1 else grad_sync
    if parallel_cfg.overlap_param_gather:
        # the updated shards are all-gathered by each chunk's forward pre-hook; megatron-LM hands the
        # schedule the chunks' start_param_sync so the next chunk's gather starts early
        param_sync = [w.start_param_sync for w in wrapped]
        config.param_sync_func = param_sync[0] if len(param_sync) == 1 else param_sync
    return wrapped


def _gpt_forward(model, batch: dict) -> torch.Tensor:
    """GPTModel forward on one microbatch: per-token loss [b, s] with labels, else logits."""
    return model(
        batch["tokens"],
        batch["position_ids"],
        batch.get("attention_mask"),
        labels=batch.get("labels"),
    )


def forward_backward(
    model_chunks: list,
    microbatches: Iterable[dict],
    loss_fn: LossFn,
    *,
    seq_length: int,
    micro_batch_size: int,
    forward_only: bool = False,
    forward_fn: Callable[[Any, dict], torch.Tensor] = _gpt_forward,
) -> list[dict[str, torch.Tensor]]:
    """Forward (and backward unless `forward_only`) over `microbatches` with megatron's schedule.

    Each microbatch is a dict with `tokens` and `position_ids` [b, s] (plus whatever `loss_fn`
    needs, e.g. `labels`, `loss_mask`); every pipeline stage is given the same microbatches and
    uses what it needs. With a 2-tuple `loss_fn`, the schedule divides each microbatch loss by the
    number of microbatches before backward, so gradients are those of the mean microbatch loss; a
    3-tuple `loss_fn` (see LossFn) gives the token-mean instead. Returns the metrics dicts
    of `loss_fn` on the last pipeline stage (an empty list elsewhere); grads are finalized.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    microbatches = list(microbatches)
    if not microbatches:
        raise ValueError("forward_backward: no microbatches")

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        output = forward_fn(model, batch)

        def loss_func(output_tensor: torch.Tensor):
            out = loss_fn(output_tensor, batch)
            # the schedule divides the returned loss in place by num_microbatches: metrics that
            # share its storage (loss.detach()) would be divided too
            metrics = {k: v.detach().clone() for k, v in out[-1].items()}
            return (*out[:-1], metrics)

        return output, loss_func

    iterators = [iter(microbatches) for _ in model_chunks]
    schedule = get_forward_backward_func()
    return schedule(
        forward_step_func=forward_step,
        data_iterator=iterators if len(model_chunks) > 1 else iterators[0],
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
