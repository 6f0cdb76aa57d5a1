"""Rank functions for the RL tests (run under run_distributed)."""

from __future__ import annotations

from typing import Optional

import torch

TINY = "examples/configs/tiny.yaml"


def rl_config(out_dir: str, overrides: Optional[list[str]] = None):
    """A small, fast RL job: 2-digit additions with the R1-Zero template, 4 prompts x 4 samples."""
    from r1mega.config import load_config

    return load_config(
        TINY,
        [
            "data.template=r1_zero",
            "data.procedural.task=arithmetic",
            "data.procedural.arithmetic.max_digits=2",
            "data.procedural.arithmetic.max_operands=2",
            "data.procedural.arithmetic.operators=[+]",
            "data.procedural.train_size=64",
            "data.procedural.test_size=8",
            "rollout.max_new_tokens=12",
            "rollout.max_batch_size=16",
            "algorithm.group_size=4",
            "rl.steps=2",
            "rl.prompts_per_step=4",
            "rl.micro_batch_size=4",
            "rl.eval_every=-1",
            "rl.log_samples_every=0",
            "rewards.num_workers=0",
            "rewards.custom={digits: tests._rl_fns:digit_share_reward}",
            "rewards.weights={accuracy: 1.0, format: 1.0, digits: 1.0}",
            "optimizer.lr=1e-3",
            "optimizer.clip_grad=1.0",
            f"run.output_dir={out_dir}",
            "logging.tensorboard=false",
            "logging.print_every=0",
            *(overrides or []),
        ],
    )


def save_random_start(out_dir: str, seed: int = 3, overrides: Optional[list[str]] = None) -> str:
    """A weights-only checkpoint of a freshly initialised tiny model (single process); its path."""
    from r1mega.models.builder import build_model
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.checkpoint import save_checkpoint
    from tests import parallel_equivalence as pe

    cfg = rl_config(out_dir, overrides)
    init_distributed(cfg.parallel, seed=seed, model_cfg=cfg.model)
    try:
        chunks = build_model(cfg.model, cfg.parallel)
        pe.randomize_(chunks[0], seed)
        root = f"{out_dir}/start"
        return str(save_checkpoint(root, 0, chunks, model_config=cfg.model))
    finally:
        destroy_distributed()


def run_job(out_dir: str, overrides: list[str]) -> dict:
    """`r1mega train` in this process; the metrics rows (rank 0) and the final metrics."""
    from r1mega.training.logging import read_metrics
    from r1mega.training.rl_job import run_rl

    cfg = rl_config(out_dir, overrides)
    result = run_rl(cfg)
    rows = read_metrics(cfg.run.run_dir / "metrics.jsonl") if (cfg.run.run_dir / "metrics.jsonl").exists() else []
    return {"rows": rows, "metrics": result.metrics, "summary": str(result.summary) if result.summary else None}


def logprob_layouts(out_dir: str, layout: dict, reference_grads: Optional[dict] = None, seed: int = 5) -> dict:
    """`response_logprobs` under `layout` on the weights of `save_random_start` and a fixed batch:
    log-probs, entropies and the gradients of sum(w * logp) + 0.1 sum(entropy). Single process: also
    a float64 reference from GPTModel's logits, and the full gradients; with `reference_grads`, the
    max relative error of each local gradient shard against them."""
    import dataclasses

    from megatron.core import parallel_state

    from r1mega.models.builder import build_model
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.checkpoint import load_model_weights
    from r1mega.training.megatron_step import forward_backward, wrap_with_ddp
    from r1mega.training.policy_logprob import hidden_states_forward, response_logprobs, unwrap_gpt
    from r1mega.training.rl_batch import Trajectory, make_rl_microbatch
    from tests import parallel_equivalence as pe

    cfg = rl_config(out_dir)
    parallel = dataclasses.replace(cfg.parallel, **layout)
    init_distributed(parallel, seed=seed, model_cfg=cfg.model)
    try:
        chunks = build_model(cfg.model, parallel)
        load_model_weights(f"{out_dir}/start", chunks, model_config=cfg.model)
        gen = torch.Generator().manual_seed(seed)
        items = []
        for i, (p, r) in enumerate([(5, 7), (9, 3), (4, 11)]):
            ids = torch.randint(0, cfg.model.vocab_size, (p + r,), generator=gen).tolist()
            items.append(Trajectory(prompt_token_ids=ids[:p], response_token_ids=ids[p:],
                                    rollout_logprobs=[0.0] * r, index=i))
        multiple = parallel.tp if parallel.sequence_parallel else 1
        batch = make_rl_microbatch(items, pad_id=0, multiple=multiple)
        weights = torch.randn(batch["resp_mask"].shape, generator=gen) * batch["resp_mask"]

        def forward_fn(m, b):
            b["_gpt"] = unwrap_gpt(m)
            return hidden_states_forward(m, b)

        def loss_fn(hidden, b):
            logp, ent = response_logprobs(hidden, b["_gpt"], b, vocab_size=cfg.model.vocab_size,
                                          temperature=0.7, return_entropy=True, backend="torch")
            loss = (logp * weights).sum() + 0.1 * (ent * b["resp_mask"]).sum()
            return loss, {"logp": logp.detach(), "entropy": ent.detach()}

        ddp = wrap_with_ddp(chunks, parallel)
        for c in ddp:
            c.zero_grad_buffer()
        out = forward_backward(ddp, [batch], loss_fn, seq_length=batch["tokens"].shape[1],
                               micro_batch_size=batch["tokens"].shape[0], forward_fn=forward_fn)
        result = {"logp": out[0]["logp"], "entropy": out[0]["entropy"], "mask": batch["resp_mask"]}
        if reference_grads is not None:
            errors = {}
            for model, name, p in pe.local_tensors(ddp):
                gname = pe.global_name(model, name)
                want = pe.shard(reference_grads[gname], p, name, model.config.gated_linear_unit)
                errors[gname] = ((p.main_grad - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
            result["grad_errors"] = errors
        if parallel_state.get_tensor_model_parallel_world_size() == 1:
            gpt = unwrap_gpt(ddp[0])
            result["grads"] = {n: p.main_grad.detach().clone() for n, p in gpt.named_parameters()}
            result["reference"] = _float64_reference(gpt, batch, temperature=0.7, vocab=cfg.model.vocab_size)
        return result
    finally:
        destroy_distributed()


def _float64_reference(gpt, batch: dict, *, temperature: float, vocab: int) -> dict:
    """log softmax(logits / T) at the response targets from GPTModel's own logits, in float64."""
    with torch.no_grad():
        logits = gpt(batch["tokens"], batch["position_ids"], None)  # [b, s, V]
    logits = logits.double()[..., :vocab] / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    b, length = batch["resp_pos"].shape
    rows = logprobs[torch.arange(b).unsqueeze(1), batch["resp_pos"]]  # [b, L, V]
    targets = batch["resp_targets"].clamp_min(0)
    logp = rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * batch["resp_mask"]
    entropy = -(rows.exp() * rows).sum(-1) * batch["resp_mask"]
    return {"logp": logp, "entropy": entropy}


def digit_share_reward(sample, reference) -> float:
    """A dense test reward (random models never earn the rule rewards): the share of digit
    characters in the response, so groups differ and advantages are non-zero."""
    text = sample.response_text
    return sum(c.isdigit() for c in text) / max(len(text), 1)
