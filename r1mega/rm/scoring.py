"""Reward models inside RL: frozen RMs scoring rollouts as forward-only megatron passes.

    scorers = build_scorers(cfg, tokenizer)                 # every rank (collective loads)
    rewards = ModelRewards(rule_rewards, scorers)           # what RolloutCollector calls
    scores = rewards.score(samples, references)             # a collective; the same list everywhere

`ModelRewards.score` first takes the rule rewards (the reward pool on rank 0, broadcast), then for
each RM the samples it applies to (the prompt's `prompt_type` in the RM's `prompt_types`), the part
it reads (`summary`: after the last `</think>`; `full`: the whole response), the RM's template,
tokenized with the policy's tokenizer (an RM of another vocabulary is refused at start-up). Each
data-parallel rank scores a strided share of those sequences in microbatches under the RM's token
budget, in the trainer's TP/PP/EP layout; every DP rank runs the same number of microbatches
(padding with a repeat), so expert-parallel all-to-alls never wait on a rank with less work. The
last pipeline stage's scores are gathered over DP and broadcast to every rank. The sample's reward
gains `weight * score`; its scores dict gains `rm/<name>` (and `rm/<name>/no_summary` when a
summary RM found no closed reasoning).
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from r1mega.rewards.config import RewardModelSpec
from r1mega.rm.residency import HostResidency
from r1mega.training.trainer_common import rank_where

__all__ = ["reward_model_config_of", "check_reward_models", "RewardModelScorer", "ModelRewards", "build_scorers", "scored_part"]

THINK_END = "</think>"


def reward_model_config_of(path: str):
    """The ModelConfig of an RM checkpoint: an HF directory's config.json or a run's r1mega.json."""
    from r1mega.configlib import from_dict
    from r1mega.models.config import ModelConfig

    p = Path(path)
    if (p / "config.json").is_file():
        from r1mega.convert.hf_config import model_config_from_hf

        return model_config_from_hf(p)
    from r1mega.training.checkpoint import read_checkpoint_info, resolve_resume

    resolved = resolve_resume(str(p), p)
    saved = read_checkpoint_info(resolved).get("model_config")
    if not saved:
        raise ValueError(f"{resolved}: the checkpoint records no model config")
    return from_dict(ModelConfig, {"head": "lm", **saved}, where="model")


def check_reward_models(specs: Sequence[RewardModelSpec], policy_model, tokenizer) -> list:
    """At start-up, before anything is built: each RM exists, is a reward model and shares the
    policy's vocabulary. Returns their ModelConfigs; ConfigError (one line) otherwise."""
    from r1mega.configlib import ConfigError

    out = []
    for i, spec in enumerate(specs):
        where = f"rewards.models[{i}] ({spec.name}): {spec.checkpoint}"
        try:
            model_cfg = reward_model_config_of(spec.checkpoint)
        except (ValueError, OSError) as e:
            raise ConfigError(f"{where}: not a reward model checkpoint ({str(e).splitlines()[0]})") from None
        if model_cfg.head != "score":
            raise ConfigError(f"{where}: is a causal LM (head: lm), not a reward model; train one with r1mega rm")
        if model_cfg.vocab_size != policy_model.vocab_size or len(tokenizer) > model_cfg.vocab_size:
            raise ConfigError(
                f"{where}: vocabulary of {model_cfg.vocab_size} tokens differs from the policy's "
                f"{policy_model.vocab_size}; an RM must share the policy's tokenizer"
            )
        out.append(model_cfg)
    return out


def scored_part(response_text: str, part: str) -> Optional[str]:
    """The text an RM reads: the summary after the last `</think>` (None when the reasoning is never
    closed), or the whole response."""
    if part == "full":
        return response_text
    if THINK_END not in response_text:
        return None
    return response_text.rpartition(THINK_END)[2].strip()


def _response_text(sample: Any) -> str:
    return sample.response_text if hasattr(sample, "response_text") else sample["response_text"]


class RewardModelScorer:
    """One frozen RM on this rank's devices, in the trainer's layout; with `offload`, its weights
    stay in host memory except while it scores."""

    def __init__(self, spec: RewardModelSpec, model_cfg, cfg, tokenizer, *, params_dtype=torch.float32):
        from megatron.core import parallel_state

        from r1mega.models.builder import build_model
        from r1mega.rm.init import init_reward_model
        from r1mega.training.trainer_common import trainer_config_overrides

        self.spec = spec
        self.model_cfg = model_cfg
        self.tokenizer = tokenizer
        cfg.parallel.check_model(model_cfg)
        run_cfg = dataclasses.replace(cfg, model=model_cfg)
        self.chunks = build_model(model_cfg, cfg.parallel, params_dtype=params_dtype, config_overrides=trainer_config_overrides(run_cfg))
        init_reward_model(spec.checkpoint, self.chunks, model_cfg)
        for c in self.chunks:
            c.eval()
            for p in c.parameters():
                p.requires_grad_(False)  # frozen: R1's guard against reward hacking
        offload = spec.offload if spec.offload is not None else torch.cuda.is_available()
        device = next(self.chunks[0].parameters()).device
        self.residency = HostResidency(self.chunks, device) if offload else None
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.multiple = cfg.parallel.tp if cfg.parallel.sequence_parallel else 1
        self.is_last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)

    def _sequences(self, samples: Sequence[Any], references: Sequence[dict]) -> tuple[dict[int, tuple[int, ...]], set[int]]:
        """{sample index: token ids} of the samples this RM scores, and those without a summary."""
        todo, no_summary = {}, set()
        limit = self.model_cfg.max_position_embeddings
        for i, (s, ref) in enumerate(zip(samples, references, strict=True)):
            if ref.get("prompt_type", "reasoning") not in self.spec.prompt_types:
                continue
            part = scored_part(_response_text(s), self.spec.part)
            if part is None:
                no_summary.add(i)
                continue
            text = self.spec.template.format(prompt=ref.get("prompt", ""), response=part)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            todo[i] = tuple(ids[-limit:])  # keep the end: the score is read at the last token
        return todo, no_summary

    @torch.no_grad()
    def score(self, samples: Sequence[Any], references: Sequence[dict]) -> list[Optional[float]]:
        """A collective: every rank of the job calls it with the same samples; the same list back
        (None where the RM does not apply)."""
        import torch.distributed as dist
        from megatron.core import parallel_state

        from r1mega.rm.data import Unit, make_rm_microbatch, plan_unit_microbatches
        from r1mega.rm.loss import last_token_scores
        from r1mega.rm.trainer import rm_forward
        from r1mega.training.megatron_step import forward_backward

        todo, no_summary = self._sequences(samples, references)
        order = sorted(todo)
        mine = order[self.dp_rank :: self.dp_size]
        units = [Unit(str(i), (todo[i],), 0.0) for i in mine]  # label unused: scores only
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        groups = plan_unit_microbatches(units, micro_batch_size=1 << 30, micro_batch_tokens=self.spec.micro_batch_tokens, multiple=self.multiple) if units else []
        mbs = []
        for g in groups:
            mb = make_rm_microbatch([units[j] for j in g], pad, self.multiple)
            mb["index"] = torch.tensor([int(units[j].location) for j in g])
            mbs.append(mb)
        count = torch.tensor([len(mbs)], dtype=torch.long)
        if self.dp_size > 1:
            dist.all_reduce(count, op=dist.ReduceOp.MAX, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        if int(count) > len(mbs):  # same number of forward passes on every DP rank (EP all-to-alls)
            filler = mbs[0] if mbs else make_rm_microbatch([Unit("-1", ((pad,),), 0.0)], pad, self.multiple)
            filler = {**filler, "index": torch.full_like(filler["lengths"], -1)}
            mbs += [filler] * (int(count) - len(mbs))

        def keep(output: torch.Tensor, mb: dict):
            return output.sum() * 0.0, {"scores": last_token_scores(output, mb["lengths"]).float(), "index": mb["index"]}

        found: dict[int, float] = {}
        if mbs:
            with self.residency.on_device() if self.residency is not None else nullcontext():
                out = forward_backward(
                    self.chunks, mbs, keep, seq_length=max(mb["tokens"].shape[1] for mb in mbs),
                    micro_batch_size=max(mb["tokens"].shape[0] for mb in mbs), forward_only=True, forward_fn=rm_forward,
                )
            for m in out:
                for idx, v in zip(m["index"].tolist(), m["scores"].tolist()):
                    if idx >= 0:
                        found[idx] = float(v)
        if self.is_last_stage and self.dp_size > 1:
            everyone = [None] * self.dp_size
            dist.all_gather_object(everyone, found, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
            found = {k: v for d in everyone for k, v in d.items()}
        box = [found if (self.is_last_stage and self.dp_rank == 0 and parallel_state.get_tensor_model_parallel_rank() == 0) else None]
        src = rank_where(box[0] is not None)
        if dist.get_world_size() > 1:
            dist.broadcast_object_list(box, src=src)
        found = box[0]
        return [found[i] if i in found else (self.spec.missing_summary_score if i in no_summary else None) for i in range(len(samples))]


class ModelRewards:
    """Rule rewards (a SharedRewards-like object) plus reward-model scores, one `score` call."""

    def __init__(self, rules, scorers: Sequence[RewardModelScorer]):
        self.rules = rules
        self.scorers = list(scorers)

    def score(self, samples: Sequence[Any], references: Sequence[dict]) -> list[dict[str, float]]:
        out = self.rules.score(samples, references)
        for scorer in self.scorers:
            spec = scorer.spec
            values = scorer.score(samples, references)
            for i, (d, v) in enumerate(zip(out, values, strict=True)):
                if v is None:
                    continue
                d[f"rm/{spec.name}"] = v
                if spec.part == "summary" and scored_part(_response_text(samples[i]), "summary") is None:
                    d[f"rm/{spec.name}/no_summary"] = 1.0
                d["reward"] = d["reward"] + spec.weight * v
        return out

    def close(self) -> None:
        if self.rules is not None:
            self.rules.close()


def build_scorers(cfg, tokenizer) -> list[RewardModelScorer]:
    """Every configured RM, loaded on every rank (collective loads). Call after init_distributed."""
    model_cfgs = check_reward_models(cfg.rewards.models, cfg.model, tokenizer)
    dtype = torch.bfloat16 if cfg.rl.params_dtype == "bfloat16" else torch.float32
    return [RewardModelScorer(spec, mc, cfg, tokenizer, params_dtype=dtype) for spec, mc in zip(cfg.rewards.models, model_cfgs)]
