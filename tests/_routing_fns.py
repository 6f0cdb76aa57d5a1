"""Rank functions for the routing replay tests (run under run_distributed)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

PROMPTS = (5, 9, 4)
NEW_TOKENS = 8


def engine_samples(hf_dir: str, seed: int):
    """Samples of the HF checkpoint on the built-in engine, with routed experts recorded."""
    from r1mega.rollout.builtin import BuiltinEngine
    from r1mega.rollout.types import SamplingParams
    from tests.rollout_helpers import random_prompts

    engine = BuiltinEngine(hf_dir, device="cpu", eos_token_ids=[], record_routing=True, max_batch_size=2,
                           max_tokens_per_forward=8)
    prompts = random_prompts(PROMPTS, seed=seed, vocab=engine.vocab_size)
    return engine.generate(prompts, SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, seed=seed))


def perturb_routers_(named: dict[str, torch.Tensor], seed: int, scale: float = 3.0) -> None:
    """Add the same seeded noise to every router weight (megatron `...router.weight`, HF `...mlp.gate.weight`,
    both [experts, hidden], replicated over TP), so free routing moves away from the rollout's."""
    with torch.no_grad():
        for name in sorted(named):
            layer = int(name.split("layers.")[1].split(".")[0])
            g = torch.Generator().manual_seed(seed * 1000 + layer)
            t = named[name]
            t.add_(scale * t.abs().mean() * torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype))


def replay_logprobs(hf_dir: str, layout: dict, perturb: Optional[int], seed: int = 5) -> dict:
    """Response log-probs of the engine's samples under megatron at `layout`: with free routing,
    with the rollout's experts replayed, and megatron's own free choice (recorded) per MoE layer."""
    from megatron.core.transformer.moe.router import TopKRouter
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    from r1mega.convert import load_hf_into_model, model_config_from_hf
    from r1mega.models.builder import build_model
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.training.megatron_step import forward_backward
    from r1mega.training.policy_logprob import hidden_states_forward, response_logprobs, unwrap_gpt
    from r1mega.training.rl_batch import Trajectory, make_rl_microbatch
    from r1mega.training.routing_replay import with_routing_replay

    samples = engine_samples(hf_dir, seed)
    model_cfg = model_config_from_hf(hf_dir)
    parallel = ParallelConfig(**layout)
    init_distributed(parallel, seed=seed, model_cfg=model_cfg)
    try:
        chunks = build_model(model_cfg, parallel, config_overrides={"moe_enable_routing_replay": True})
        load_hf_into_model(chunks, hf_dir, model_cfg=model_cfg)
        gpt = unwrap_gpt(chunks[0])
        gpt.eval()
        if perturb is not None:
            perturb_routers_({n: p for n, p in gpt.named_parameters() if n.endswith("router.weight")}, perturb)
        items = [
            Trajectory(prompt_token_ids=s.prompt_token_ids, response_token_ids=s.response_token_ids,
                       rollout_logprobs=s.response_logprobs, index=i,
                       extra={"routed_experts": s.metadata["routed_experts"]})
            for i, s in enumerate(samples)
        ]
        multiple = parallel.tp if parallel.sequence_parallel else 1
        batch = make_rl_microbatch(items, pad_id=0, multiple=multiple)
        routers = [m for m in gpt.modules() if isinstance(m, TopKRouter)]

        def loss_fn(hidden, b):
            logp = response_logprobs(hidden, gpt, b, vocab_size=model_cfg.vocab_size, backend="torch")
            return torch.zeros(()), {"logp": logp}

        def run(forward_fn):
            with torch.no_grad():
                out = forward_backward(chunks, [dict(batch)], loss_fn, seq_length=batch["tokens"].shape[1],
                                       micro_batch_size=batch["tokens"].shape[0], forward_only=True,
                                       forward_fn=forward_fn)
            return out[0]["logp"] if out else None

        for r in routers:
            r.router_replay.set_router_replay_action(RouterReplayAction.RECORD)
        free = run(hidden_states_forward)
        recorded = {r.layer_number - 1: r.router_replay.get_recorded_indices().clone() for r in routers}
        replayed = run(with_routing_replay(hidden_states_forward))
        return {"free": free, "replayed": replayed, "recorded": recorded, "batch": batch,
                "samples": samples, "seq_parallel": bool(parallel.sequence_parallel)}
    finally:
        destroy_distributed()


def _forced_router_forward(router, forced: torch.Tensor):
    """A transformers router forward that takes `forced` [tokens, top_k] as its choice and weighs it
    with its own scores, the way the family does (softmax + renormalise, or sigmoid + renormalise x
    routed scaling)."""

    def forward(hidden_states):
        h = hidden_states.reshape(-1, router.weight.shape[1]).double()
        logits = F.linear(h, router.weight.double())  # [tokens, experts]
        if hasattr(router, "e_score_correction_bias"):  # DeepSeek-V3: sigmoid scores, bias only for choosing
            weights = logits.sigmoid().gather(1, forced)
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
            weights = weights * router.routed_scaling_factor
        else:
            weights = torch.softmax(logits, dim=-1).gather(1, forced)
            if router.norm_topk_prob:
                weights = weights / weights.sum(-1, keepdim=True)
        return logits, weights.to(hidden_states.dtype), forced

    return forward


def forced_reference(hf_dir: str, samples, perturb: Optional[int]) -> list[torch.Tensor]:
    """float64 log-probs of each sample's response from transformers' implementation with the
    sample's recorded experts forced in every MoE layer (the replay semantics, written independently)."""
    from transformers import AutoModelForCausalLM

    from r1mega.rollout.routing import router_modules

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float64, experts_implementation="eager").eval()
    routers = router_modules(model)
    if perturb is not None:
        perturb_routers_({f"model.layers.{i}.mlp.gate.weight": r.weight for i, r in routers.items()}, perturb)
    out = []
    for s in samples:
        seq = s.prompt_token_ids + s.response_token_ids
        routed = s.metadata["routed_experts"].long()  # [len(seq) - 1, layers, top_k]
        for i, r in routers.items():
            k = routed.shape[-1]
            forced = torch.cat([routed[:, i, :], torch.arange(k).unsqueeze(0)], dim=0)  # last position: unused
            r.forward = _forced_router_forward(r, forced)
        with torch.no_grad():
            logits = model(torch.tensor([seq]), use_cache=False).logits[0]  # [len, vocab]
        lp = torch.log_softmax(logits, dim=-1)[len(s.prompt_token_ids) - 1 : -1]
        out.append(lp.gather(-1, torch.tensor(s.response_token_ids).unsqueeze(-1)).squeeze(-1))
    return out
