"""Parallel-equivalence harness: the single-process model vs the same weights sharded over TP/PP/EP.

Rank functions here run under `r1mega.parallel.launch.run_distributed`. Each rank first builds the
single-process model (TP=PP=EP=1) with fresh random weights (norm weights and biases too, never the
init's ones/zeros), computes the loss and every gradient of a fixed batch, then rebuilds megatron's
groups for the layout under test, loads the reference weights by slicing (`load_sharded_`), runs
the same microbatches through megatron's schedule + finalize_model_grads and compares each local
gradient with the matching slice of the reference gradient.

Slicing rules (megatron-core 0.16.1 layouts):
- `tensor_model_parallel` params split along `partition_dim` over TP (expert params over expert-TP);
  SwiGLU `linear_fc1` holds [gate; up], so each rank holds [gate_r; up_r], not a contiguous block;
  QKV (grouped per query group) and MLA up-projections (grouped per head) are contiguous blocks.
- PP/VPP: local `decoder.layers.i` is global layer `layer_number - 1`.
- EP: local expert j on EP rank r is global expert `r * experts_per_rank + j`.
- Tied embeddings: the last stage's `output_layer.weight` is the word embedding.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import torch

LOSS_TOL = 1e-5
GRAD_TOL = 1e-5


# ------------------------------------------------------------------------------------------------
# names and slices
# ------------------------------------------------------------------------------------------------


def _unwrap(chunk):
    while hasattr(chunk, "module") and not hasattr(chunk, "decoder"):
        chunk = chunk.module
    return chunk


def _layer_map(model) -> dict[str, int]:
    """local layer index (as a string) -> global 0-based layer index, for this chunk."""
    if getattr(model, "decoder", None) is None:
        return {}
    return {str(i): layer.layer_number - 1 for i, layer in enumerate(model.decoder.layers)}


def global_name(model, local: str) -> str:
    """The single-process parameter name of a local (sharded-model) parameter or buffer."""
    from megatron.core import parallel_state

    layers = _layer_map(model)
    name = re.sub(r"^decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{layers[m.group(1)]}.", local)
    m = re.search(r"\.experts\.local_experts\.(\d+)\.", name)
    if m:
        num_experts = model.config.num_moe_experts
        per_rank = num_experts // parallel_state.get_expert_model_parallel_world_size()
        glob = parallel_state.get_expert_model_parallel_rank() * per_rank + int(m.group(1))
        name = name[: m.start(1)] + str(glob) + name[m.end(1):]
    if name == "output_layer.weight" and model.share_embeddings_and_output_weights:
        name = "embedding.word_embeddings.weight"
    return name


def shard(full: torch.Tensor, param: torch.Tensor, name: str, gated: bool) -> torch.Tensor:
    """This rank's slice of a single-process tensor for the local `param` (see module docstring)."""
    from megatron.core import parallel_state

    if not getattr(param, "tensor_model_parallel", False):
        assert full.shape == param.shape, (name, tuple(full.shape), tuple(param.shape))
        return full
    is_expert = ".experts.local_experts." in name  # routed experts: split over expert-TP
    if is_expert:
        rank = parallel_state.get_expert_tensor_parallel_rank()
        size = parallel_state.get_expert_tensor_parallel_world_size()
    else:
        rank = parallel_state.get_tensor_model_parallel_rank()
        size = parallel_state.get_tensor_model_parallel_world_size()
    dim = param.partition_dim
    if gated and re.search(r"linear_fc1\.(weight|bias)$", name):
        assert dim == 0
        two = full.view(2, full.shape[0] // 2, *full.shape[1:])  # [gate; up]
        step = two.shape[1] // size
        out = two[:, rank * step : (rank + 1) * step].reshape(-1, *full.shape[1:])
    else:
        step = full.shape[dim] // size
        out = full.narrow(dim, rank * step, step)
    assert out.shape == param.shape, (name, tuple(out.shape), tuple(param.shape))
    return out


def local_tensors(chunks) -> list[tuple[Any, str, torch.Tensor]]:
    """(unwrapped chunk, local name, parameter) for every parameter of this rank."""
    out = []
    for chunk in chunks:
        model = _unwrap(chunk)
        for name, p in model.named_parameters():
            out.append((model, name, p))
    return out


@torch.no_grad()
def load_sharded_(chunks, reference: dict[str, torch.Tensor]) -> None:
    """Copy the single-process state (parameters + router expert bias) into the sharded chunks."""
    for chunk in chunks:
        model = _unwrap(chunk)
        gated = model.config.gated_linear_unit
        for name, p in model.named_parameters():
            p.copy_(shard(reference[global_name(model, name)], p, name, gated))
        for name, b in model.named_buffers():
            if name.endswith("expert_bias"):
                b.copy_(reference[global_name(model, name)])


# ------------------------------------------------------------------------------------------------
# reference model, data, loss
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def randomize_(model, seed: int) -> None:
    """Fresh random values everywhere, in a fixed order: norms near 1, biases and the expert
    bias non-zero, weights ~ N(0, 0.05^2) (large enough that every path matters)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if "norm" in name and p.dim() == 1:
            p.copy_(1.0 + 0.1 * noise)
        else:
            p.copy_(0.05 * noise)
    for name, b in sorted(model.named_buffers()):
        if name.endswith(("expert_bias", "e_score_correction_bias")):  # megatron / HF name
            b.copy_(0.1 * torch.randn(b.shape, generator=gen))


def make_microbatches(n: int, mbs: int, seq: int, vocab: int, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, vocab, (mbs, seq), generator=gen)
        out.append(
            {
                "tokens": tokens,
                "labels": torch.randint(0, vocab, (mbs, seq), generator=gen),
                "position_ids": torch.arange(seq).unsqueeze(0).expand(mbs, seq).contiguous(),
            }
        )
    return out


def mean_token_loss(output: torch.Tensor, batch: dict):
    """GPTModel with labels returns per-token cross entropy [b, s]: the microbatch mean."""
    loss = output.float().mean()
    return loss, {"loss": loss.detach()}


def reference_loss_and_grads(model, microbatches: list[dict]) -> tuple[float, dict[str, torch.Tensor]]:
    """Plain torch: mean of the microbatch losses and its gradient, no megatron schedule."""
    model.zero_grad(set_to_none=True)
    total = 0.0
    for mb in microbatches:
        out = model(mb["tokens"], mb["position_ids"], None, labels=mb["labels"])
        loss = mean_token_loss(out, mb)[0] / len(microbatches)
        loss.backward()
        total += loss.item()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return total, grads


# ------------------------------------------------------------------------------------------------
# the rank function
# ------------------------------------------------------------------------------------------------


def _model_cfg(model_yaml: str, overrides: Optional[list[str]] = None):
    from r1mega.config import load_config

    return load_config("examples/configs/tiny.yaml", [f"model=models/{model_yaml}.yaml", *(overrides or [])]).model


def run_equivalence(
    model_yaml: str,
    layout: dict,
    *,
    microbatches_per_dp_rank: int = 2,
    mbs: int = 2,
    seq: int = 16,
    seed: int = 1234,
    model_overrides: Optional[list[str]] = None,
    strip_sequence_parallel_tags: bool = False,
    mla_rope_grad_fix: bool = True,
) -> dict:
    """Rank function: reference vs `layout` (ParallelConfig fields). Returns per-rank errors."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from r1mega.models.builder import build_model
    from r1mega.parallel import megatron_fixes
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import init_distributed
    from r1mega.training.megatron_step import forward_backward, wrap_with_ddp

    model_cfg = _model_cfg(model_yaml, model_overrides)
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ["WORLD_SIZE"])
    # the distributed optimizer reduce-scatters grads: each DP rank would hold only its shard
    pcfg = ParallelConfig(**{"use_distributed_optimizer": False, **layout})
    dp = pcfg.data_parallel_size(world)
    n_total = microbatches_per_dp_rank * dp
    batches = make_microbatches(n_total, mbs, seq, model_cfg.vocab_size, seed + 1)

    # --- reference: the single-process model on the whole batch
    init_distributed(ParallelConfig(), seed=seed)
    (ref,) = build_model(model_cfg, ParallelConfig())
    randomize_(ref, seed)
    ref_loss, ref_grads = reference_loss_and_grads(ref, batches)
    reference = {n: p.detach().clone() for n, p in ref.named_parameters()}
    reference.update({n: b.detach().clone() for n, b in ref.named_buffers() if n.endswith("expert_bias")})
    del ref
    parallel_state.destroy_model_parallel()

    # --- the layout under test, same weights; each DP rank takes its share of the microbatches
    init_distributed(pcfg, seed=seed)
    chunks = build_model(model_cfg, pcfg)
    load_sharded_(chunks, reference)
    if strip_sequence_parallel_tags:  # negative control: norms not reduced over TP
        for chunk in chunks:
            for p in chunk.parameters():
                if getattr(p, "sequence_parallel", False):
                    p.sequence_parallel = False
    ddp = wrap_with_ddp(chunks, pcfg)
    forward_calls = _count_forward_calls(chunks)
    dp_rank = parallel_state.get_data_parallel_rank()
    mine = batches[dp_rank * microbatches_per_dp_rank : (dp_rank + 1) * microbatches_per_dp_rank]
    with megatron_fixes.mla_rope_grad_fix(mla_rope_grad_fix):
        metrics = forward_backward(ddp, mine, mean_token_loss, seq_length=seq, micro_batch_size=mbs)

    loss = None
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        loss = torch.stack([m["loss"] for m in metrics]).mean()
        dist.all_reduce(loss, group=parallel_state.get_data_parallel_group())
        loss = (loss / dp).item()

    errors: dict[str, float] = {}
    for model, name, p in local_tensors(ddp):
        gname = global_name(model, name)
        want = shard(ref_grads[gname], p, name, model.config.gated_linear_unit)
        got = p.main_grad
        scale = want.abs().max().clamp_min(1e-30)
        errors[gname + ("" if gname == name else f" (local {name})")] = ((got - want).abs().max() / scale).item()
    parallel_state.destroy_model_parallel()
    return {
        "rank": dist.get_rank(),
        "ref_loss": ref_loss,
        "loss": loss,
        "grad_errors": errors,
        "checked": sorted({k.split(" ")[0] for k in errors}),
        "reference_names": sorted(ref_grads),
        "forward_calls": dict(forward_calls),
    }


def _count_forward_calls(chunks) -> dict[str, int]:
    """Forward calls per module class (recompute shows as repeated forwards in backward)."""
    from collections import Counter

    calls: Counter = Counter()

    def hook(module, inputs, output):
        calls[type(module).__name__] += 1

    for chunk in chunks:
        for module in chunk.modules():
            module.register_forward_hook(hook)
    return calls


def run_cases(cases: list[dict]) -> list[dict]:
    """Rank function: several `run_equivalence` cases in one process group (saves a spawn each)."""
    out = []
    for case in cases:
        kwargs = {k: v for k, v in case.items() if k not in ("name", "model", "layout")}
        result = run_equivalence(case["model"], case["layout"], **kwargs)
        result["case"] = case["name"]
        out.append(result)
    return out


def by_case(per_rank: list[list[dict]]) -> dict[str, list[dict]]:
    """run_distributed(run_cases, ...) output regrouped as case name -> per-rank results."""
    cases: dict[str, list[dict]] = {}
    for rank_results in per_rank:
        for r in rank_results:
            cases.setdefault(r["case"], []).append(r)
    return cases


def assert_equivalent(results: list[dict], *, grad_tol: float = GRAD_TOL, loss_tol: float = LOSS_TOL) -> None:
    """Every reference parameter was checked on some rank; every loss and grad within tolerance."""
    label = results[0].get("case", "")
    try:
        _assert_equivalent(results, grad_tol, loss_tol)
    except AssertionError as e:
        raise AssertionError(f"{label}: {e}") from None


def _assert_equivalent(results: list[dict], grad_tol: float, loss_tol: float) -> None:
    ref_names = set(results[0]["reference_names"])
    checked = set().union(*(r["checked"] for r in results))
    assert checked == ref_names, f"unchecked parameters: {sorted(ref_names - checked)}"
    losses = [r for r in results if r["loss"] is not None]
    assert losses, "no rank reported a loss"
    for r in losses:
        rel = abs(r["loss"] - r["ref_loss"]) / abs(r["ref_loss"])
        assert rel <= loss_tol, f"rank {r['rank']}: loss {r['loss']} vs reference {r['ref_loss']} (rel {rel:.2e})"
    worst = max(((err, name, r["rank"]) for r in results for name, err in r["grad_errors"].items()))
    assert worst[0] <= grad_tol, f"rank {worst[2]}: gradient of {worst[1]} off by {worst[0]:.2e} (relative)"


def worst_error(results: list[dict], pattern: str) -> float:
    """Largest relative gradient error among parameters whose name matches `pattern`."""
    errs = [e for r in results for n, e in r["grad_errors"].items() if re.search(pattern, n)]
    assert errs, f"no parameter matches {pattern!r}"
    return max(errs)
