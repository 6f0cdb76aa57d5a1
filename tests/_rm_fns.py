"""Rank functions for the reward-model tests (run under run_distributed)."""

from __future__ import annotations

from typing import Optional

import torch

from tests import _sft_fns

TINY_RM = "examples/configs/tiny_rm.yaml"


def rm_config(out_dir: str, overrides: Optional[list[str]] = None):
    """A small, fast RM job on the embedded data, pairs and pointwise rows mixed."""
    from r1mega.config import load_config
    from r1mega.rm.job import reward_model_config

    return reward_model_config(load_config(
        TINY_RM,
        [
            "rm.tiny.kind=both",
            "rm.tiny.train_size=48",
            "rm.tiny.test_size=8",
            "rm.steps=3",
            "rm.global_batch_size=8",
            "rm.micro_batch_size=4",
            "rm.eval_every=0",
            "optimizer.lr=1e-3",
            "optimizer.lr_warmup_steps=0",
            "optimizer.clip_grad=1.0",
            f"run.output_dir={out_dir}",
            "logging.tensorboard=false",
            "logging.print_every=0",
            "checkpoint.init_from=null",
            *(overrides or []),
        ],
    ))


def train_layouts(out_dir: str, layouts: list[dict], seed: int = 11, overrides: Optional[list[str]] = None) -> list[dict]:
    """For each layout: the same random start weights, rm.steps steps, then the held-out metrics."""
    import dataclasses

    from megatron.core import parallel_state

    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.parallel.config import ParallelConfig
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.rm.job import load_units
    from r1mega.rm.trainer import RewardModelTrainer
    from tests import parallel_equivalence as pe

    # SGD: a step scales with the gradient (Adam's first steps would hide a wrongly scaled one)
    base = rm_config(out_dir, ["optimizer.name=sgd", "optimizer.lr=0.5", "optimizer.clip_grad=0",
                               "parallel.use_distributed_optimizer=false", *(overrides or [])])
    reference = _sft_fns._reference_weights(base.model, seed)
    tokenizer = load_tokenizer(base.data.tokenizer)
    train, test = load_units(base, tokenizer)
    out = []
    for i, layout in enumerate(layouts):
        cfg = dataclasses.replace(base, parallel=ParallelConfig(**{"use_distributed_optimizer": False, **layout}))
        cfg.run = dataclasses.replace(cfg.run, name=f"layout{i}")
        init_distributed(cfg.parallel, seed=seed)
        trainer = RewardModelTrainer(cfg, train, test, pad_id=tokenizer.pad_token_id)
        trainer.build(init_fn=lambda chunks: pe.load_sharded_(chunks, reference))
        losses, microbatches = [], []
        while trainer.step < trainer.total_steps:
            metrics = trainer.train_step()
            trainer.step += 1
            losses.append(metrics["loss"] if trainer.is_last_stage else None)
        held_out = trainer.evaluate()
        out.append({
            "layout": layout,
            "losses": losses,
            "eval": held_out if trainer.is_last_stage else None,
        })
        parallel_state.destroy_model_parallel()
    destroy_distributed()
    return out


def float64_reference(out_dir: str, seed: int = 5) -> dict:
    """One process: the megatron RM's loss and score-head gradient on one batch, next to float64
    recomputations from the same last-token hidden states."""
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.rm.job import load_units
    from r1mega.rm.trainer import RewardModelTrainer
    from tests import parallel_equivalence as pe

    cfg = rm_config(out_dir, ["rm.global_batch_size=8", "rm.micro_batch_size=16"])
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    train, test = load_units(cfg, tokenizer)
    init_distributed(cfg.parallel, seed=seed)
    trainer = RewardModelTrainer(cfg, train, test, pad_id=tokenizer.pad_token_id)
    trainer.build(init_fn=lambda chunks: pe.randomize_(chunks[0], seed))
    units = train[:8]
    (mb,) = trainer._microbatches(units)
    head = pe._unwrap(trainer.model[0]).output_layer
    seen = {}
    def keep_input(module, inputs, output):
        seen["hidden"] = inputs[0].detach().clone()  # [S, B, h] after the final norm

    handle = head.register_forward_hook(keep_input)
    for chunk in trainer.model:
        chunk.zero_grad_buffer()
    got = trainer._run([mb], forward_only=False)
    handle.remove()
    grad = head.weight.main_grad.detach().clone()[0]  # [h]
    hidden = seen["hidden"].transpose(0, 1).double()  # [B, S, h]
    last = hidden[torch.arange(hidden.shape[0]), mb["lengths"] - 1]  # [B, h]
    w = head.weight.detach().double()[0]
    s = (last @ w).requires_grad_(True)  # [B] scores in float64
    pairs, points, labels = mb["pairs"], mb["points"], mb["labels"].double()
    margin = s[pairs[:, 0]] - s[pairs[:, 1]]
    bt = torch.log1p(torch.exp(-margin))  # -log sigmoid(m)
    z = s[points]
    bce = -(labels * torch.log(torch.sigmoid(z)) + (1 - labels) * torch.log(1 - torch.sigmoid(z)))
    units_n = pairs.shape[0] + points.shape[0]
    loss64 = (bt.sum() + bce.sum()) / units_n
    (ds,) = torch.autograd.grad(loss64, s)
    grad64 = ds @ last  # [h]: d loss / d head weight
    destroy_distributed()
    return {
        "loss": got["loss_sum"] / got["units"], "loss64": float(loss64),
        "grad": grad, "grad64": grad64, "pairs": int(pairs.shape[0]), "points": int(points.shape[0]),
    }


def make_causal_hf(model_cfg, directory: str, seed: int = 3) -> str:
    """A random HF causal LM of `model_cfg`'s architecture (head: lm), saved with save_pretrained."""
    import dataclasses

    from transformers import AutoModelForCausalLM

    from r1mega.convert.hf_config import hf_config_from_model_config
    from tests.rollout_helpers import randomize_

    cfg = hf_config_from_model_config(dataclasses.replace(model_cfg, head="lm"))
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    randomize_(model.eval(), seed, std=0.05)
    model.save_pretrained(directory)
    return directory


def init_and_export(out_dir: str, hf_dir: str) -> dict:
    """RM initialised from an HF causal LM (LM head dropped), trained 2 steps, exported; returns the
    loaded body tensors' equality, the megatron scores of a batch and that batch."""
    import dataclasses

    from safetensors.torch import load_file

    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.models.score_head import init_score_weight
    from r1mega.parallel.distributed import destroy_distributed, init_distributed
    from r1mega.rm.init import init_reward_model
    from r1mega.rm.job import export_reward_model, load_units
    from r1mega.rm.trainer import RewardModelTrainer
    from tests import parallel_equivalence as pe
    from tests._rm_hf_fns import _megatron_scores

    cfg = rm_config(out_dir, ["model.tie_word_embeddings=false", "rm.steps=2"])
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    train, test = load_units(cfg, tokenizer)
    init_distributed(cfg.parallel, seed=cfg.run.seed)
    trainer = RewardModelTrainer(cfg, train, test, pad_id=tokenizer.pad_token_id)
    used = {}
    trainer.build(init_fn=lambda chunks: used.setdefault("what", init_reward_model(hf_dir, chunks, cfg.model)))
    model = pe._unwrap(trainer.model[0])
    hf = {}
    for f in sorted(__import__("pathlib").Path(hf_dir).glob("*.safetensors")):
        hf.update(load_file(str(f)))
    fresh = torch.empty_like(model.output_layer.weight)
    init_score_weight(fresh, cfg.model.init_method_std, cfg.run.seed)
    loaded = {
        "embedding": torch.equal(model.embedding.word_embeddings.weight[: cfg.model.vocab_size], hf["model.embed_tokens.weight"]),
        "final_norm": torch.equal(model.decoder.final_layernorm.weight, hf["model.norm.weight"]),
        "head_is_fresh": torch.equal(model.output_layer.weight.detach(), fresh),
    }
    while trainer.step < trainer.total_steps:
        trainer.train_step()
        trainer.step += 1
    export_reward_model(cfg, trainer.model, tokenizer, cfg.run.run_dir / "hf")
    from r1mega.rm.data import make_rm_microbatch

    mb = make_rm_microbatch(test[:6], tokenizer.pad_token_id)
    scores = _megatron_scores(trainer.model, mb["tokens"], mb["lengths"])
    destroy_distributed()
    return {"used": used["what"], "loaded": loaded, "scores": scores, "tokens": mb["tokens"], "hf_out": str(cfg.run.run_dir / "hf")}


def job_metrics(out_dir: str, name: str, steps: int, resume: str = "auto") -> list[dict]:
    """The whole `r1mega rm` job; its metrics.jsonl rows."""
    from r1mega.rm.job import run_reward_model
    from r1mega.training.logging import read_metrics

    cfg = rm_config(out_dir, [
        f"run.name={name}", f"rm.steps={steps}", "rm.eval_every=2", "checkpoint.save_every=2",
        f"checkpoint.resume={resume}", "optimizer.lr_decay_style=constant", "rm.export_hf=false",
    ])
    run_reward_model(cfg)
    return read_metrics(cfg.run.run_dir / "metrics.jsonl")
