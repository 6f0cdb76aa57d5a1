"""r1mega against TRL's GRPOTrainer on the same work, side by side, in one run (docs/benchmarks.md).

    python tools/bench_peer.py --seeds 1234 1 2 --steps 60 --out bench_peer.json

For each seed, one system after the other: `r1mega train` on the tiny default, then TRL's
GRPOTrainer (tools/bench_peer_trl.py), each as its own command, timed whole (imports, start-up,
training, the final save). Both start from the tiny default's pretrained base (trained first by
`r1mega pretrain` when absent, not timed; its HF export is what TRL loads), see the same prompts in
the same order (r1mega's sampler order, written to a jsonl that TRL reads unshuffled), score with
r1mega's reward functions in-process, and use matched hyperparameters: prompts x samples, new
tokens, temperature, constant lr, Adam betas/eps, clipping, beta 0 (no reference model), GRPO loss
with group-scaled advantages, fp32, no gradient checkpointing, one update per batch. Neither
evaluates during training (r1mega's `rl.eval_every=-1`, unless --r1mega-eval) and both save once at
the end. Afterwards ONE evaluator scores both final models: the built-in engine generates on the
held-out prompts (greedy, and --pass-k samples at the config's eval temperature, same seeds for
both) and r1mega's scorer (`score_completions`) counts accuracy and format.

The JSON report has, per seed and system: the whole command's wall time and CPU use (user + system
seconds of the command and its children / wall, from getrusage), s/step (mean and median of the
per-step windows: r1mega's `time/step`, TRL's step-begin to step-begin), the mean per-phase times,
and the held-out results; plus r1mega's steps/s over TRL's per seed. With --repeats N each system
runs N times per seed, alternating, and a seed's numbers are the median of its runs (the host's load
can move a run's s/step by 10-25% within minutes); the ratio of each system's best run is reported
too, every run stays in the report, and each seed's final model per system (identical across runs
for r1mega, which is deterministic) is scored once. A markdown table is printed.
TRL is optional (`pip install -e '.[bench]'`): without it the TRL runs fail with one clear line.
Timings on a machine with other work are contended: run it on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHASES = ("generate", "reward", "logprob", "fwd_bwd", "optimizer", "sync", "eval", "checkpoint", "bookkeeping", "other")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2], help="run.seed / TRL seed of each pair of runs")
    p.add_argument("--steps", type=int, default=60, help="GRPO steps of every run")
    p.add_argument("--out", type=Path, default=Path("bench_peer.json"), help="the JSON report")
    p.add_argument("--work-dir", type=Path, default=Path("runs/bench_peer"), help="run directories and final models")
    p.add_argument("--config", default="examples/configs/tiny_r1_zero.yaml", help="the r1mega job (its base, prompts, rewards)")
    p.add_argument("--pass-k", type=int, default=32, help="samples per held-out prompt for pass@1")
    p.add_argument("--systems", nargs="+", choices=["r1mega", "trl"], default=["r1mega", "trl"])
    p.add_argument("--trl-python", default=sys.executable,
                   help="the Python that runs TRL (one with `.[bench]` installed; default: this one)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each system per seed, alternating (r1mega, TRL, r1mega, TRL, ...); a seed's "
                        "s/step, wall time and phases are the median over its runs (all runs are in the report)")
    p.add_argument("--r1mega-eval", action="store_true",
                   help="keep r1mega's in-training evaluations (TRL runs none; off by default)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    commit = git_commit()  # the code the runs use: read before them, not when the report is written
    if args.repeats < 1:
        raise SystemExit(f"bench_peer: --repeats must be >= 1, got {args.repeats}")
    if "trl" in args.systems:
        check_trl(args.trl_python)
    from r1mega.config import load_config

    cfg = load_config(args.config)
    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    base_hf = ensure_base(cfg)
    prompts = write_prompts(cfg, args.steps, work / "prompts.jsonl")
    runs: list[dict] = []
    for seed in args.seeds:
        for repeat in range(args.repeats):
            for system in args.systems:
                label = f" (run {repeat + 1}/{args.repeats})" if args.repeats > 1 else ""
                print(f"[bench_peer] seed {seed}: {system}{label} ({args.steps} steps)", flush=True)
                if system == "r1mega":
                    run = run_r1mega(args, seed, work)
                else:
                    run = run_trl(args, cfg, seed, work, base_hf, prompts)
                print(f"[bench_peer]   whole command {run['wall_s']:.1f} s, {run['s_per_step']:.3f} s/step, "
                      f"CPU {100 * run['cpu_util']:.0f}%", flush=True)
                runs.append({**run, "repeat": repeat})
    print("[bench_peer] evaluating the final models with one evaluator", flush=True)
    evaluator = Evaluator(cfg, base_hf, args.pass_k)
    base_eval = evaluator(base_hf)
    scores: dict = {}  # a seed's runs of one system train the same model: score the last one's, once
    for run in runs:
        key = (run["system"], run["seed"])
        if key not in scores:
            scores[key] = evaluator(Path(run["final_model"]))
        run["eval"] = scores[key]
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": machine(),
        "commit": commit,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "base_eval": base_eval,
        "runs": runs,
        "summary": summarize(runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    print(f"[bench_peer] report: {args.out}")


# --------------------------------------------------------------------------------------------------
# set-up: TRL present, the base model, the prompt order
# --------------------------------------------------------------------------------------------------

def check_trl(python: str) -> None:
    probe = subprocess.run([python, "-c", "import trl, sys; sys.stdout.write(trl.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        raise SystemExit(
            f"bench_peer: TRL is not importable by {python}; install the optional bench extra "
            "(pip install -e '.[bench]', see docs/benchmarks.md), pass --trl-python, or run --systems r1mega"
        )
    print(f"[bench_peer] TRL {probe.stdout.strip()} ({python})", flush=True)


def ensure_base(cfg) -> Path:
    """The base checkpoint (pretrained by `r1mega pretrain` when absent) and its HF export."""
    from r1mega.config import load_config
    from r1mega.training.checkpoint import find_latest_checkpoint

    base_cfg = load_config(cfg.rl.base_config)
    root = Path(cfg.checkpoint.init_from)
    if not root.is_dir() or find_latest_checkpoint(root) is None:
        print(f"[bench_peer] no base under {root}: r1mega pretrain {cfg.rl.base_config} (not timed)", flush=True)
        subprocess.run([sys.executable, "-m", "r1mega.cli", "pretrain", cfg.rl.base_config], check=True, cwd=ROOT)
    hf = base_cfg.run.run_dir / "hf"  # pretrain's own HF export (r1mega/training/hf_export.py)
    if not (hf / "config.json").is_file():
        subprocess.run([sys.executable, "tools/convert_mcore_to_hf.py", "--mcore-dir", str(root), "--out", str(hf),
                        "--no-progress"], check=True, cwd=ROOT)
    return hf.resolve()


def write_prompts(cfg, steps: int, path: Path) -> Path:
    """The train prompts in the order r1mega's sampler draws them for `steps` steps."""
    from r1mega.data.prompts import load_prompt_dataset
    from r1mega.data.sampler import PromptSampler
    from r1mega.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(cfg.data.tokenizer)
    train = load_prompt_dataset(cfg.data, "train", tokenizer)
    sampler = PromptSampler(len(train), seed=cfg.data.seed, shuffle=cfg.data.shuffle)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(steps):
            for i in sampler.next_indices(cfg.rl.prompts_per_step):
                ex = train[i]
                f.write(json.dumps({"prompt_text": ex.prompt_text, "prompt_token_ids": ex.prompt_token_ids,
                                    "reference": ex.reference}) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# the two systems
# --------------------------------------------------------------------------------------------------

def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd` to completion; wall seconds and CPU seconds (user + sys of it and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"bench_peer: {' '.join(cmd)} failed (exit {proc.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "cpu_util": cpu / wall, "command": " ".join(cmd), "log": str(log)}


def step_stats(rows: list[dict]) -> dict:
    steps = [r["time/step"] for r in rows]
    return {
        "s_per_step": statistics.fmean(steps),
        "s_per_step_median": statistics.median(steps),
        "phases": {p: statistics.fmean(r.get(f"time/{p}", 0.0) for r in rows) for p in PHASES},
        "steps_timed": len(steps),
    }


def run_r1mega(args, seed: int, work: Path) -> dict:
    name = f"r1mega_seed{seed}"
    overrides = [f"run.seed={seed}", f"run.output_dir={work}", f"run.name={name}", f"rl.steps={args.steps}",
                 "checkpoint.save_every=0", "rl.log_samples_every=0"]
    if not args.r1mega_eval:
        overrides.append("rl.eval_every=-1")
    run_dir = work / name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)  # a fresh run, never a resume
    result = timed([sys.executable, "-m", "r1mega.cli", "train", args.config, *overrides], work / f"{name}.log")
    profile = [json.loads(x) for x in (run_dir / "profile.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in profile if r["rank"] == 0]
    final = run_dir / "hf_final"
    subprocess.run([sys.executable, "tools/convert_mcore_to_hf.py", "--mcore-dir", str(run_dir / "checkpoints"),
                    "--out", str(final), "--overwrite", "--no-progress"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return {"system": "r1mega", "seed": seed, **result, **step_stats(rows), "final_model": str(final)}


def run_trl(args, cfg, seed: int, work: Path, base_hf: Path, prompts: Path) -> dict:
    name = f"trl_seed{seed}"
    out = work / name
    out.mkdir(parents=True, exist_ok=True)
    o = cfg.optimizer
    spec = {
        "base": str(base_hf), "prompts": str(prompts), "config": args.config, "overrides": [],
        "seed": seed, "steps": args.steps, "out": str(out),
        "hparams": {"prompts_per_step": cfg.rl.prompts_per_step, "group_size": cfg.algorithm.group_size,
                    "max_new_tokens": cfg.rollout.max_new_tokens, "temperature": cfg.rollout.temperature,
                    "lr": o.lr, "weight_decay": o.weight_decay, "adam_beta1": o.adam_beta1,
                    "adam_beta2": o.adam_beta2, "adam_eps": o.adam_eps, "clip_grad": o.clip_grad},
    }
    check_matched(cfg)
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    result = timed([args.trl_python, "tools/bench_peer_trl.py", str(out / "spec.json")], work / f"{name}.log")
    timings = json.loads((out / "timings.json").read_text())
    return {"system": "trl", "seed": seed, **result, **step_stats(timings["steps"]), "final_model": str(out / "final"),
            "trl_build_s": timings["build_s"], "trl_save_s": timings["save_s"]}


def check_matched(cfg) -> None:
    """The settings TRL is run with are the job's (refuse a job the TRL side would not match)."""
    algo = cfg.algorithm.resolved(cfg.rollout.max_new_tokens)
    problems = []
    if algo.kl_coef != 0:
        problems.append(f"algorithm.kl_coef={algo.kl_coef} (TRL runs beta 0)")
    if algo.updates_per_batch != 1:
        problems.append(f"algorithm.updates_per_batch={algo.updates_per_batch} (TRL runs one update per batch)")
    if cfg.optimizer.lr_decay_style != "constant" or cfg.optimizer.lr_warmup_steps:
        problems.append("optimizer: TRL runs a constant lr without warm-up")
    if cfg.rollout.top_p != 1.0 or cfg.rollout.top_k not in (0, -1):
        problems.append("rollout.top_p/top_k: TRL samples the full distribution")
    if problems:
        raise SystemExit("bench_peer: the job is not one TRL is matched to: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------
# one evaluator for both
# --------------------------------------------------------------------------------------------------

class Evaluator:
    """Held-out greedy accuracy/format and pass@1 of an HF model directory, r1mega's scorer."""

    def __init__(self, cfg, base_hf: Path, pass_k: int):
        from r1mega.data.prompts import load_prompt_dataset
        from r1mega.data.tokenizer import load_tokenizer

        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.data.tokenizer)
        test = load_prompt_dataset(cfg.data, "test", self.tokenizer)
        self.prompts = [test[i] for i in range(min(cfg.rl.eval_samples, len(test)))]
        self.pass_k = pass_k

    def __call__(self, model_dir: Path) -> dict:
        from r1mega.rollout.builtin import BuiltinEngine
        from r1mega.training.eval_accuracy import score_completions

        cfg = self.cfg
        engine = BuiltinEngine(model_dir, tokenizer=self.tokenizer, dtype="float32", device="cpu",
                               max_batch_size=max(cfg.rollout.max_batch_size, 1), seed=0,
                               eos_token_ids=[self.tokenizer.eos_token_id])
        n = len(self.prompts)
        greedy = engine.generate([p.prompt_token_ids for p in self.prompts],
                                 cfg.rollout.sampling_params(temperature=0.0, seed=cfg.run.seed))
        g = score_completions(self.prompts, [x.response_token_ids for x in greedy], self.tokenizer, cfg.rewards)
        out = {"model": str(model_dir), "held_out": n, "greedy_accuracy": g["correct"] / n,
               "greedy_format": g["formatted"] / n}
        if self.pass_k:
            repeated = [p for p in self.prompts for _ in range(self.pass_k)]
            sampled = engine.generate([p.prompt_token_ids for p in repeated],
                                      cfg.rollout.sampling_params(temperature=cfg.rl.eval_temperature,
                                                                  seed=cfg.run.seed + 7919))
            s = score_completions(repeated, [x.response_token_ids for x in sampled], self.tokenizer, cfg.rewards)
            out.update({"pass_k": self.pass_k, "pass@1": s["correct"] / len(repeated),
                        "format": s["formatted"] / len(repeated)})
        return out


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------

def per_seed(runs: list[dict]) -> list[dict]:
    """One record per (system, seed): the median over its repeated runs of wall time, CPU use, s/step
    and each phase (a single run is its own median), the best (lowest) s/step, its eval and every
    run's s/step. A seed's runs do the same work (r1mega's bit for bit), so the best run is the one
    the host's other load slowed least: the timeit convention."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["system"], r["seed"]), []).append(r)
    out = []
    for (system, seed), rs in groups.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_util", "s_per_step")}
        phases = {p: statistics.median(r["phases"][p] for r in rs) for p in PHASES}
        out.append({"system": system, "seed": seed, **med, "phases": phases, "eval": rs[-1].get("eval"),
                    "s_per_step_runs": [r["s_per_step"] for r in rs],
                    "s_per_step_best": min(r["s_per_step"] for r in rs)})
    return out


def summarize(runs: list[dict]) -> dict:
    out: dict = {}
    raw = runs
    runs = per_seed(runs)
    for system in sorted({r["system"] for r in runs}):
        mine = [r for r in runs if r["system"] == system]

        def span(key, sub=None):
            values = [r[key] if sub is None else (r[key] or {}).get(sub) for r in mine]
            values = [v for v in values if v is not None]
            return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)} if values else None

        out[system] = {
            "wall_s": span("wall_s"), "s_per_step": span("s_per_step"), "cpu_util": span("cpu_util"),
            "greedy_accuracy": span("eval", "greedy_accuracy"), "pass@1": span("eval", "pass@1"),
            "phases": {p: statistics.fmean(r["phases"][p] for r in mine) for p in PHASES},
        }
    pairs = {}
    for r in runs:
        pairs.setdefault(r["seed"], {})[r["system"]] = r
    ratios = [(p["trl"]["s_per_step"] / p["r1mega"]["s_per_step"], p["trl"]["wall_s"] / p["r1mega"]["wall_s"])
              for p in pairs.values() if {"r1mega", "trl"} <= set(p)]
    if ratios:
        out["r1mega_over_trl"] = {
            "steps_per_s": [round(a, 3) for a, _ in ratios], "steps_per_s_mean": statistics.fmean(a for a, _ in ratios),
            "whole_command_speed": [round(b, 3) for _, b in ratios],
        }
        best = [p["trl"]["s_per_step_best"] / p["r1mega"]["s_per_step_best"]
                for p in pairs.values() if {"r1mega", "trl"} <= set(p)]
        out["r1mega_over_trl"]["steps_per_s_best"] = [round(b, 3) for b in best]
        by_repeat = {}  # run k of r1mega against run k of TRL, per seed: how much the host's load moved
        for r in raw:
            by_repeat.setdefault((r["seed"], r.get("repeat", 0)), {})[r["system"]] = r["s_per_step"]
        if any(r.get("repeat", 0) for r in raw):
            out["r1mega_over_trl"]["steps_per_s_by_run"] = {
                seed: [round(p["trl"] / p["r1mega"], 3) for (s, _), p in sorted(by_repeat.items())
                       if s == seed and {"r1mega", "trl"} <= set(p)]
                for seed in pairs
            }
    return out


def markdown(report: dict) -> str:
    s = report["summary"]

    def rng(d, scale=1.0, fmt="{:.2f}"):
        if not d:
            return "n/a"
        lo, hi = fmt.format(d["min"] * scale), fmt.format(d["max"] * scale)
        return lo if lo == hi else f"{lo}-{hi}"

    lines = [
        f"| system | whole command (s) | s/step | held-out greedy | pass@1 ({report['args']['pass_k']} samples) | CPU used |",
        "|---|---|---|---|---|---|",
    ]
    for system in ("r1mega", "trl"):
        if system in s:
            d = s[system]
            lines.append(f"| {system} | {rng(d['wall_s'], fmt='{:.0f}')} | {rng(d['s_per_step'])} | "
                         f"{rng(d['greedy_accuracy'], 100, '{:.1f}%')} | {rng(d['pass@1'], 100, '{:.1f}%')} | "
                         f"{rng(d['cpu_util'], 100, '{:.0f}%')} |")
    b = report["base_eval"]
    lines.append(f"\nbase model: greedy {100 * b['greedy_accuracy']:.1f}%, pass@1 {100 * b.get('pass@1', float('nan')):.1f}%")
    if "r1mega_over_trl" in s:
        r = s["r1mega_over_trl"]
        lines.append(f"r1mega steps/s over TRL's, per seed: {r['steps_per_s']} (mean {r['steps_per_s_mean']:.2f}x); "
                     f"whole command, TRL wall / r1mega wall: {r['whole_command_speed']}")
        if "steps_per_s_by_run" in r:
            lines.append(f"the same from each system's best run per seed: {r['steps_per_s_best']}; "
                         f"run by run (run k of each system per seed): {r['steps_per_s_by_run']}")
    lines += ["", "| mean s/step by phase | " + " | ".join(PHASES) + " |", "|---|" + "---|" * len(PHASES)]
    for system in ("r1mega", "trl"):
        if system in s:
            lines.append(f"| {system} | " + " | ".join(f"{s[system]['phases'][p]:.3f}" for p in PHASES) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_avg_at_end": os.getloadavg()}
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def git_commit() -> str:
    """HEAD's short hash, with "+dirty" when tracked files differ from it (the runs use the work tree)."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    head = proc.stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT, capture_output=True).returncode == 1
    return head + ("+dirty" if dirty else "")


if __name__ == "__main__":
    main()
