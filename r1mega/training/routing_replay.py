"""MoE routing replay (R3) in the trainer: megatron's routers take the rollout's experts.

With `rollout.routing_replay`, the policy (and reference) models are built with megatron-core's
`moe_enable_routing_replay`, which gives every TopKRouter a `RouterReplay`; before each microbatch's
forward, `set_replay_targets` hands each router of the chunk about to run the experts the rollout
engine chose for those tokens (`batch["routed_experts"]`, see r1mega.rollout.routing), and the
router's top-k becomes a gather of its own scores at those experts: the gate weights still come from
the trainer's router, so they get gradients; only the choice is the rollout's.

The targets are set in the schedule's forward step, so they follow every microbatch through 1F1B and
interleaved schedules. A recomputed forward (full recompute, or selective recompute of the MoE
layer) would run in the backward after later microbatches changed the targets, so that combination is
refused at start-up (`check_routing_replay`).
"""

from __future__ import annotations

from typing import Callable

__all__ = ["check_routing_replay", "replay_overrides", "set_replay_targets", "with_routing_replay"]


def check_routing_replay(cfg) -> None:
    """Refuse configurations where replay cannot be exact (one line naming the field)."""
    from r1mega.configlib import ConfigError

    if not cfg.rollout.routing_replay:
        return
    if not cfg.model.is_moe:
        raise ConfigError("rollout.routing_replay: the model has no MoE layers (model.num_experts is not set)")
    par = cfg.parallel
    if par.recompute_granularity == "full":
        raise ConfigError(
            "rollout.routing_replay: full recompute re-runs the routers in the backward, after later "
            "microbatches replaced the replayed experts; use parallel.recompute_granularity=selective "
            "without 'moe', or none"
        )
    if par.recompute_granularity == "selective" and "moe" in (par.recompute_modules or []):
        raise ConfigError(
            "rollout.routing_replay: parallel.recompute_modules contains 'moe' (the router is recomputed "
            "in the backward); drop it"
        )
    if getattr(cfg.rl, "share_prompts", False):
        raise ConfigError(
            "rollout.routing_replay: rl.share_prompts packs a group's responses behind one prompt, a "
            "layout the replayed experts are not laid out for; set rl.share_prompts=false"
        )
    if par.cp > 1:
        raise ConfigError("rollout.routing_replay: context parallelism splits sequences in a way replay does not map yet")


def replay_overrides(cfg) -> dict:
    """TransformerConfig settings for replay (empty when it is off)."""
    return {"moe_enable_routing_replay": True} if cfg.rollout.routing_replay else {}


def _routers(gpt) -> list:
    """The replaying routers of a GPTModel chunk, with their 0-based global layer index."""
    cached = getattr(gpt, "_r1mega_replay_routers", None)
    if cached is None:
        from megatron.core.transformer.moe.router import TopKRouter

        cached = [(m.layer_number - 1, m) for m in gpt.modules()
                  if isinstance(m, TopKRouter) and m.router_replay is not None]
        gpt._r1mega_replay_routers = cached
    return cached


def set_replay_targets(gpt, batch: dict) -> None:
    """Give every replaying router of `gpt` its experts for this microbatch.

    `batch["routed_experts"]`: int [b, s, num_layers, top_k] (row p of sample r: position p). The
    routers see tokens as [s, b] flattened (the decoder's layout), only their sequence shard under
    sequence parallelism.
    """
    from megatron.core import parallel_state
    from megatron.core.transformer.moe.router_replay import RouterReplayAction

    routers = _routers(gpt)
    if not routers:
        return
    routed = batch.get("routed_experts")
    if routed is None:
        raise RuntimeError("routing replay: the microbatch carries no routed_experts (the engine reported none)")
    b, s = batch["tokens"].shape
    if routed.shape[:2] != (b, s):
        raise RuntimeError(f"routing replay: routed_experts {tuple(routed.shape)} does not match tokens {(b, s)}")
    lo, hi = 0, s
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if gpt.config.sequence_parallel and tp > 1:
        shard = s // tp
        lo = parallel_state.get_tensor_model_parallel_rank() * shard
        hi = lo + shard
    for layer, router in routers:
        idx = routed[:, lo:hi, layer, :].transpose(0, 1).reshape(-1, routed.shape[-1])  # [s_local * b, top_k]
        if bool((idx < 0).any()):
            raise RuntimeError(f"routing replay: no experts recorded for MoE layer {layer}")
        replay = router.router_replay
        replay.clear_indices()
        replay.set_target_indices(idx.long())
        replay.set_router_replay_action(RouterReplayAction.REPLAY_FORWARD)


def with_routing_replay(forward_fn: Callable) -> Callable:
    """A forward_fn for `forward_backward` that sets the replay targets of the chunk first."""
    from r1mega.training.policy_logprob import unwrap_gpt

    def forward(model, batch: dict):
        set_replay_targets(unwrap_gpt(model), batch)
        return forward_fn(model, batch)

    return forward
