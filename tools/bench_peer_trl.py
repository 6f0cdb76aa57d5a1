"""The TRL side of tools/bench_peer.py: one GRPOTrainer run on the job that bench_peer.py describes.

    python tools/bench_peer_trl.py SPEC.json

SPEC (written by bench_peer.py): `base` (HF directory of the starting model, with its tokenizer),
`prompts` (jsonl, one row per prompt in the order r1mega's sampler draws them: prompt_text,
prompt_token_ids, reference), `config` + `overrides` (the r1mega job whose reward functions are
called in-process, through the same `RewardPool` r1mega uses), `seed`, `steps`, `out` (directory:
the final model in out/final, the per-step timings in out/timings.json) and the hyperparameters.
Run as its own process so that bench_peer.py times the whole command, imports included.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class PhaseTimer:
    """Main-thread seconds per phase and step, the same phase names as r1mega's step profile."""

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = {}
        self.step_start: float | None = None
        self.open: str | None = None

    def add(self, name: str, seconds: float) -> None:
        self.current[name] = self.current.get(name, 0.0) + seconds

    def begin_step(self) -> None:
        now = time.perf_counter()
        self.close_step(now)
        self.step_start = now

    def close_step(self, now: float) -> None:
        if self.step_start is None:
            return
        row = {f"time/{k}": v for k, v in self.current.items()}
        total = now - self.step_start
        # reward_fn runs inside reward: a detail, not a phase of its own
        row["time/other"] = max(total - sum(v for k, v in self.current.items() if k != "reward_fn"), 0.0)
        row["time/step"] = total
        self.steps.append(row)
        self.current = {}
        self.step_start = None


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        import datasets
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as e:
        raise SystemExit(f"bench_peer_trl: TRL is not installed ({e}); pip install -e '.[bench]'") from None
    import torch

    from r1mega.config import load_config
    from r1mega.rewards.pool import RewardPool
    from r1mega.rewards.types import SampleView

    timer = PhaseTimer()
    cfg = load_config(spec["config"], spec["overrides"])
    tokenizer = AutoTokenizer.from_pretrained(spec["base"])
    rows = [json.loads(line) for line in Path(spec["prompts"]).read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):  # TRL tokenizes the text itself: it must give r1mega's token ids
        ids = tokenizer(text=row["prompt_text"])["input_ids"]
        if ids != row["prompt_token_ids"]:
            raise SystemExit(f"{spec['prompts']}:{i + 1}: the HF tokenizer gives other ids than r1mega's for this prompt")
    dataset = datasets.Dataset.from_list(
        [{"prompt": r["prompt_text"], "reference": json.dumps(r["reference"]), "prompt_ids_r1": r["prompt_token_ids"]}
         for r in rows]
    )
    pool = RewardPool(dataclasses.replace(cfg.rewards, num_workers=0))  # in this process, as TRL calls it
    eos = tokenizer.eos_token_id

    def r1mega_reward(prompts, completions, completion_ids, reference, prompt_ids_r1, **_):
        """r1mega's weighted reward total (accuracy + format), in this process."""
        t0 = time.perf_counter()
        views = [
            SampleView(prompt_token_ids=list(p), response_token_ids=list(ids), response_logprobs=[],
                       finish_reason="stop" if ids and ids[-1] == eos else "length", response_text=text)
            for p, ids, text in zip(prompt_ids_r1, completion_ids, completions, strict=True)
        ]
        scores = pool.score(views, [json.loads(r) for r in reference])
        timer.add("reward_fn", time.perf_counter() - t0)
        return [s["reward"] for s in scores]

    h = spec["hparams"]
    args = GRPOConfig(
        output_dir=str(Path(spec["out"]) / "trainer"),
        per_device_train_batch_size=h["prompts_per_step"] * h["group_size"],
        gradient_accumulation_steps=1,
        num_generations=h["group_size"],
        max_completion_length=h["max_new_tokens"],
        temperature=h["temperature"],
        top_p=1.0,
        top_k=0,
        learning_rate=h["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=h["weight_decay"],
        adam_beta1=h["adam_beta1"],
        adam_beta2=h["adam_beta2"],
        adam_epsilon=h["adam_eps"],
        max_grad_norm=h["clip_grad"],
        beta=0.0,
        loss_type="grpo",
        scale_rewards="group",
        num_iterations=1,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        max_steps=spec["steps"],
        seed=spec["seed"],
        shuffle_dataset=False,  # the prompts come in r1mega's order
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
    )

    class Timed(GRPOTrainer):
        def _generate(self, prompts):
            t0 = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                timer.add("generate", time.perf_counter() - t0)

        def _calculate_rewards(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return super()._calculate_rewards(*a, **kw)
            finally:
                timer.add("reward", time.perf_counter() - t0)

        def _prepare_inputs(self, batch):
            t0 = time.perf_counter()
            before = dict(timer.current)
            try:
                return super()._prepare_inputs(batch)
            finally:
                inner = sum(timer.current.get(k, 0.0) - before.get(k, 0.0) for k in ("generate", "reward"))
                # what _prepare_inputs does besides generation and rewards: old/ref log-probs when
                # needed (none here: beta 0, one update per batch), advantages, padding
                timer.add("bookkeeping", time.perf_counter() - t0 - inner)

        def training_step(self, model, inputs, num_items_in_batch=None):
            t0 = time.perf_counter()
            before = dict(timer.current)
            try:
                return super().training_step(model, inputs, num_items_in_batch)
            finally:
                inner = sum(timer.current.get(k, 0.0) - before.get(k, 0.0) for k in ("generate", "reward", "bookkeeping"))
                timer.add("fwd_bwd", time.perf_counter() - t0 - inner)

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            timer.begin_step()

        def on_pre_optimizer_step(self, args, state, control, **kw):
            self.t_opt = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kw):
            timer.add("optimizer", time.perf_counter() - self.t_opt)

        def on_train_end(self, args, state, control, **kw):
            timer.close_step(time.perf_counter())

    t_build = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["base"], dtype=torch.float32)
    trainer = Timed(model=model, reward_funcs=[r1mega_reward], args=args, train_dataset=dataset,
                    processing_class=tokenizer, callbacks=[Steps()])
    t_train = time.perf_counter()
    trainer.train()
    t_save = time.perf_counter()
    trainer.save_model(str(Path(spec["out"]) / "final"))
    tokenizer.save_pretrained(str(Path(spec["out"]) / "final"))
    done = time.perf_counter()
    Path(spec["out"], "timings.json").write_text(json.dumps({
        "steps": timer.steps, "build_s": t_train - t_build, "train_s": t_save - t_train, "save_s": done - t_save,
        "log": [r for r in trainer.state.log_history if "reward" in r],
    }, indent=1))


if __name__ == "__main__":
    main()
