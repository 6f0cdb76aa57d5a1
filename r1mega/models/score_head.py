"""The scalar head of a reward model (`ModelConfig.head: score`): it takes the place of GPTModel's
output layer, so the megatron model, its pipeline schedule and its checkpoints stay the ones of the
causal LM; only the last stage's last module differs.

GPTModel calls `output_layer(hidden, weight=..., runtime_gather_output=...)` and, without labels,
returns its output as [b, s, ...]: here [b, s, 1], one score per position. The reward of a sequence
is the score at its last non-pad token (r1mega/rm/loss.py), which is what transformers'
`...ForSequenceClassification` reads too.

Parallelism: the weight [1, hidden] is small and replicated on every TP rank. Without sequence
parallelism every TP rank holds the full, identical hidden states after the final norm, so every
rank computes the same scores and the same weight gradient. With sequence parallelism the hidden
states are split along the sequence: they are all-gathered first, with a backward that only takes
this rank's slice (not the reduce-scatter a partial-sum output would need: the scores here are
complete on every rank).
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule

__all__ = ["ScalarHead", "init_score_weight"]


def init_score_weight(weight: torch.Tensor, std: float, seed: int) -> None:
    """Normal(0, std) from a generator of its own: the same head on every rank and in every
    layout, whatever the other parameters drew before."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight.copy_((torch.randn(weight.shape, generator=g, dtype=torch.float64) * std).to(weight.dtype))


class ScalarHead(MegatronModule):
    """hidden [s, b, h] -> scores [s, b, 1] (no bias, like HF's `score` layer)."""

    def __init__(self, config, *, seed: int):
        super().__init__(config)
        device = torch.cuda.current_device() if torch.cuda.is_available() else "cpu"
        # named `weight` so the model's key is output_layer.weight, where megatron's LanguageModule
        # expects the output layer's (its sharded_state_dict looks the key up)
        self.weight = torch.nn.Parameter(torch.empty(1, config.hidden_size, dtype=config.params_dtype, device=device))
        init_score_weight(self.weight, config.init_method_std, seed)
        self.sequence_parallel = config.sequence_parallel

    def forward(self, hidden_states: torch.Tensor, weight=None, runtime_gather_output=None):
        if weight is not None:
            raise RuntimeError("ScalarHead: a reward model never shares its head with the embedding")
        if self.sequence_parallel:
            from megatron.core.tensor_parallel import gather_from_sequence_parallel_region

            # [s/tp, b, h] -> [s, b, h]; backward: this rank's slice of the (complete) gradient
            hidden_states = gather_from_sequence_parallel_region(hidden_states, tensor_parallel_output_grad=False)
        return torch.nn.functional.linear(hidden_states, self.weight), None  # [s, b, 1]
