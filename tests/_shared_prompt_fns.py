"""Rank function for tests/test_shared_prompt.py (run under run_distributed)."""

from __future__ import annotations

import dataclasses

import torch


def padded_vs_shared(out_dir: str, layout: dict, seed: int = 11) -> dict:
    """Log-probs, entropies and gradients of one batch of GRPO-like groups (several responses per
    prompt) through the padded layout and the shared-prompt layout, on the weights of
    `_rl_fns.save_random_start`. Returns both, per response index, and the max gradient error."""
    from r1mega.models.builder import build_model
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.checkpoint import load_model_weights
    from r1mega.training.megatron_step import forward_backward, wrap_with_ddp
    from r1mega.training.policy_logprob import hidden_states_forward, response_logprobs, unwrap_gpt
    from r1mega.training.rl_batch import Trajectory, build_rl_microbatches
    from r1mega.training.shared_prompt import build_shared_prompt_microbatches
    from tests._rl_fns import rl_config

    cfg = rl_config(out_dir)
    parallel = dataclasses.replace(cfg.parallel, **layout)
    init_distributed(parallel, seed=seed, model_cfg=cfg.model)
    try:
        chunks = build_model(cfg.model, parallel)
        load_model_weights(f"{out_dir}/start", chunks, model_config=cfg.model)
        ddp = wrap_with_ddp(chunks, parallel)
        gen = torch.Generator().manual_seed(seed)
        items = []
        for g, (p, lengths) in enumerate([(6, [3, 7, 1, 5]), (9, [4, 4, 8]), (3, [10, 2, 6, 0])]):
            prompt = torch.randint(0, cfg.model.vocab_size, (p,), generator=gen).tolist()
            for r in lengths:
                ids = torch.randint(0, cfg.model.vocab_size, (r,), generator=gen).tolist()
                items.append(Trajectory(prompt_token_ids=prompt, response_token_ids=ids, rollout_logprobs=[0.0] * r,
                                        index=len(items), advantage=float(torch.randn((), generator=gen))))
        multiple = parallel.tp if parallel.sequence_parallel else 1
        weights = {t.index: torch.randn(16, generator=gen) for t in items}

        def forward_fn(m, b):
            b["_gpt"] = unwrap_gpt(m)
            return hidden_states_forward(m, b)

        def loss_fn(hidden, b):
            logp, ent = response_logprobs(hidden, b["_gpt"], b, vocab_size=cfg.model.vocab_size,
                                          temperature=0.9, return_entropy=True, backend="torch")
            w = torch.stack([weights[int(i)][: logp.shape[1]] for i in b["index"]]) * b["resp_mask"]
            loss = (logp * w).sum() + 0.1 * (ent * b["resp_mask"]).sum()
            return loss, {"logp": logp.detach(), "entropy": ent.detach(), "index": b["index"],
                          "mask": b["resp_mask"]}

        def run(mbs):
            for c in ddp:
                c.zero_grad_buffer()
            out = forward_backward(ddp, mbs, loss_fn, seq_length=max(mb["tokens"].shape[1] for mb in mbs),
                                   micro_batch_size=max(mb["tokens"].shape[0] for mb in mbs), forward_fn=forward_fn)
            per = {}
            for m in out:
                for row, idx in enumerate(m["index"].tolist()):
                    n = int(m["mask"][row].sum())
                    per[idx] = (m["logp"][row, :n].clone(), m["entropy"][row, :n].clone())
            grads = {n: p.main_grad.detach().clone() for n, p in unwrap_gpt(ddp[0]).named_parameters()}
            return per, grads, len(mbs), sum(mb["tokens"].numel() for mb in mbs)

        padded = run(build_rl_microbatches(items, pad_id=0, micro_batch_size=4, multiple=multiple))
        shared = run(build_shared_prompt_microbatches(items, pad_id=0, micro_batch_size=4, multiple=multiple))
        grad_err = max(((shared[1][n] - g).abs().max() / g.abs().max().clamp_min(1e-30)).item()
                       for n, g in padded[1].items())
        return {"padded": padded[0], "shared": shared[0], "grad_err": grad_err, "n_items": len(items),
                "tokens": (padded[3], shared[3]), "microbatches": (padded[2], shared[2])}
    finally:
        destroy_distributed()
