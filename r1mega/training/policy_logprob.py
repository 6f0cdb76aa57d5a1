"""Per-token log-probs (and entropy) of responses straight from megatron's hidden states.

The RL loss needs log pi(y_t | x, y_<t) for the sampled response tokens only. GPTModel would
materialise [tokens, vocab/tp] logits for every position, prompt included; instead the last stage
stops before the output layer (`hidden_states_forward`), picks the rows that predict response
tokens, and hands them with the output layer's weight shard to `r1mega.kernels.fused_logprob`,
which reduces the softmax over the tensor-parallel vocabulary shards without forming logits.

Row convention: the hidden state at sequence position p predicts token p + 1, so response token j of
a sample whose prompt has P tokens is predicted at position P - 1 + j.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["unwrap_gpt", "hidden_states_forward", "response_logprobs", "output_weight"]


def unwrap_gpt(module):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(module, "module"):
        module = module.module
    return module


@contextlib.contextmanager
def _stop_before_output_layer(gpt) -> Iterator[None]:
    # GPTModel._postprocess returns the decoder's (final-normed) hidden states when post_process is
    # off; the output layer and its logits are skipped. Flipped only for the duration of one call.
    saved = gpt.post_process
    gpt.post_process = False
    try:
        yield
    finally:
        gpt.post_process = saved


def hidden_states_forward(model, batch: dict) -> torch.Tensor:
    """forward_fn for `forward_backward`: on the last stage the final hidden states [s(/tp), b, h]
    (sequence-sharded under sequence parallelism); elsewhere the stage's usual output."""
    gpt = unwrap_gpt(model)
    if getattr(gpt.config, "mtp_num_layers", None):
        raise ValueError("model.mtp_num_layers: the RL trainer does not train multi-token-prediction heads")
    ctx = _stop_before_output_layer(gpt) if gpt.post_process else contextlib.nullcontext()
    with contextlib.ExitStack() as stack:
        stack.enter_context(ctx)
        if batch.get("rope_positions"):  # shared-prompt rows: rotary embeddings at position_ids
            from r1mega.training.shared_prompt import rope_at_positions

            stack.enter_context(rope_at_positions(gpt, batch["position_ids"]))
        return model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"))


def output_weight(gpt) -> torch.Tensor:
    """This rank's [vocab/tp, h] output-layer weight (the embedding when they are tied)."""
    if gpt.share_embeddings_and_output_weights:
        return gpt.shared_embedding_or_output_weight()
    return gpt.output_layer.weight


def response_logprobs(
    hidden: torch.Tensor,
    gpt,
    batch: dict,
    *,
    vocab_size: int,
    temperature: float = 1.0,
    return_entropy: bool = False,
    backend: Optional[str] = None,
):
    """Log-probs [b, L] (and entropy [b, L]) of the response tokens of a microbatch.

    `hidden`: the last stage's output of `hidden_states_forward` [s(/tp), b, h]. `batch` carries
    `resp_pos` [b, L] (the position predicting each response token), `resp_targets` [b, L] (the token
    ids, -100 on padding) and `resp_mask` [b, L]. Padding entries come back as 0.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

    from r1mega.kernels import fused_logprob

    sequence_parallel = bool(gpt.config.sequence_parallel)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if sequence_parallel and tp > 1:
        # all-gather along the sequence; the backward reduce-scatters the partial grad_hidden
        hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=True)  # [s, b, h]
    pos = batch["resp_pos"]  # [b, L]
    b, length = pos.shape
    # the hidden-state row of each response: its own, or (shared-prompt rows) the row it shares
    row = batch["resp_row"] if "resp_row" in batch else torch.arange(b, device=pos.device)  # [b]
    rows = hidden[pos, row.unsqueeze(1).expand(b, length)]  # [b, L, h]
    targets = batch["resp_targets"].reshape(-1)  # [b * L]
    out = fused_logprob(
        rows.reshape(b * length, -1),
        output_weight(gpt),
        targets,
        temperature=temperature,
        tp_group=parallel_state.get_tensor_model_parallel_group() if tp > 1 else None,
        return_entropy=return_entropy,
        vocab_size=vocab_size,
        ignore_index=-100,
        sequence_parallel=sequence_parallel and tp > 1,
        backend=backend,
    )
    if return_entropy:
        logp, entropy = out
        return logp.view(b, length), entropy.view(b, length)
    return out.view(b, length)
