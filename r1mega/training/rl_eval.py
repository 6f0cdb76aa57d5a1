"""Evaluation of the RL policy on held-out prompts: generation on every engine of the job (a
collective), scoring on rank 0, the result on every rank."""

from __future__ import annotations

import time
from typing import Optional

__all__ = ["evaluate"]


def evaluate(engine, eval_prompts, cfg, tokenizer, run_dir, step: int, tag: str = "eval") -> dict[str, float]:
    """Greedy accuracy / format and pass@1 over `rl.eval_pass_k` samples on held-out prompts."""
    import torch.distributed as dist

    from r1mega.training.eval_accuracy import score_completions

    rl = cfg.rl
    if not eval_prompts:
        return {}
    start = time.perf_counter()
    rank0 = dist.get_rank() == 0
    chosen = [eval_prompts[i] for i in range(min(rl.eval_samples, len(eval_prompts)))]
    # rule-checked (reasoning) prompts give accuracy/format/pass@1; general prompts (RM-scored in
    # training) are measured by rl.general_check, never by an RM
    prompts = [p for p in chosen if p.reference.get("prompt_type", "reasoning") == "reasoning"]
    general = [p for p in chosen if p.reference.get("prompt_type", "reasoning") != "reasoning"]
    n = len(prompts)
    max_new = cfg.rollout.max_new_tokens
    outputs = engine.generate(  # collective: every rank, same arguments
        [p.prompt_token_ids for p in prompts + general],
        cfg.rollout.sampling_params(temperature=0.0, max_new_tokens=max_new, seed=cfg.run.seed),
    )
    greedy, general_out = outputs[:n], outputs[n:]
    result: Optional[dict] = {} if rank0 else None
    if rank0 and n:
        path = run_dir / "eval" / f"{tag}_step{step}.jsonl"
        s = score_completions(prompts, [x.response_token_ids for x in greedy], tokenizer, cfg.rewards,
                              samples_path=path)
        result = {f"{tag}/greedy_accuracy": s["correct"] / n, f"{tag}/greedy_format": s["formatted"] / n,
                  f"{tag}/response_length": sum(len(x.response_token_ids) for x in greedy) / n}
    checked = general if rl.general_check else []
    if rank0 and checked:
        result[f"{tag}/general_check"] = _general_rate(rl.general_check, general_out, checked, tokenizer)
        result[f"{tag}/general_prompts"] = float(len(checked))
    k = rl.eval_pass_k if (n or checked) else 0
    if k > 0:
        # the sampled rates: pass@1 of the reasoning prompts, the hidden rule's rate on general ones
        repeated = [p for p in prompts for _ in range(k)]
        repeated_general = [p for p in checked for _ in range(k)]
        sampled = engine.generate(
            [p.prompt_token_ids for p in repeated + repeated_general],
            cfg.rollout.sampling_params(temperature=rl.eval_temperature, max_new_tokens=max_new,
                                        seed=cfg.run.seed + 7919),
        )
        if rank0 and repeated:
            s = score_completions(repeated, [x.response_token_ids for x in sampled[: len(repeated)]], tokenizer,
                                  cfg.rewards)
            result[f"{tag}/pass@1"] = s["correct"] / len(repeated)
            result[f"{tag}/format"] = s["formatted"] / len(repeated)
        if rank0 and repeated_general:
            result[f"{tag}/general_check_sampled"] = _general_rate(
                rl.general_check, sampled[len(repeated):], repeated_general, tokenizer)
    if rank0:
        result[f"{tag}/seconds"] = time.perf_counter() - start
    if dist.get_world_size() == 1:
        return result or {}
    box = [result]
    dist.broadcast_object_list(box, src=0)
    return box[0] or {}


def _general_rate(check_path: str, outputs, prompts, tokenizer) -> float:
    """Mean of rl.general_check over the responses to general prompts."""
    from r1mega.rewards.registry import load_reward_fn

    check = load_reward_fn(check_path, "rl.general_check")
    texts = [tokenizer.decode(list(x.response_token_ids), skip_special_tokens=True) for x in outputs]
    values = [float(check(t, p.reference)) for t, p in zip(texts, prompts, strict=True)]
    return sum(values) / len(values)
