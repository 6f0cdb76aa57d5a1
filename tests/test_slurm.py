"""examples/r1.sh under a real SLURM (one node, .ci/slurm_up.sh): `sbatch --wait` trains the tiny
model on 2 tasks (TP=2 on gloo) and writes its metrics; a job signalled mid-run checkpoints,
requeues itself and the requeued job resumes and ends where the uninterrupted run does; impossible
layouts are refused before any rank starts. Skipped (with the reason) only where SLURM is absent."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "r1.sh"
# enough steps (~0.1 s each on CPU) that the signal always lands mid-run, even when the machine is idle
STEPS = 150


def _slurm_up() -> str | None:
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (.ci/slurm_up.sh installs and starts it)"
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if proc.returncode or not re.search(r"idle|mixed|allocated", proc.stdout):
        return f"no SLURM node is up (run .ci/slurm_up.sh): {proc.stderr.strip() or proc.stdout.strip()}"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.dist, pytest.mark.skipif(_slurm_up() is not None, reason=str(_slurm_up()))]


def _overrides(out: Path, name: str) -> list[str]:
    return [
        "parallel.tp=2", f"sft.steps={STEPS}", "sft.eval_every=0", "sft.global_batch_size=8", "sft.micro_batch_size=8",
        "data.procedural.train_size=200", "data.procedural.test_size=8", "optimizer.lr_warmup_steps=1",
        f"run.output_dir={out}", f"run.name={name}", "logging.tensorboard=false", "checkpoint.save_every=0",
        "checkpoint.keep_last=0", "pretrain.export_hf=false",
    ]


def _sbatch(out: Path, name: str, *, wait: bool, config: str = "examples/configs/tiny_pretrain.yaml",
            extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    # submitted from another directory with a relative config path: the script must cope
    # the job inherits this environment: put this interpreter's scripts (r1mega) first on PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "R1MEGA_VERB": "pretrain", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
           "--time=30", f"--output={out}/{name}-%j.out", f"--job-name={name}"]
    if wait:
        cmd.append("--wait")
    cmd += [str(SCRIPT), str(REPO / config), *_overrides(out, name), *extra]
    return subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=1200)


def _metrics(out: Path, name: str) -> dict[int, float]:
    path = out / name / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def _job(job_id: str) -> dict[str, str]:
    text = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", text))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict[int, float]]:
    out = tmp_path_factory.mktemp("slurm")
    proc = _sbatch(out, "straight", wait=True)
    log = "".join(p.read_text() for p in out.glob("straight-*.out"))
    assert proc.returncode == 0, proc.stderr + log
    assert "finished with status 0" in log
    return out, _metrics(out, "straight")


def test_sbatch_trains_on_two_tasks_and_writes_metrics(uninterrupted):
    out, losses = uninterrupted
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] < losses[1]  # it trained
    assert (out / "straight" / "pretrain_config.yaml").is_file()


def test_preempted_job_checkpoints_requeues_and_resumes_to_the_same_end(uninterrupted, tmp_path):
    _, straight = uninterrupted
    proc = _sbatch(tmp_path, "preempted", wait=False)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    deadline = time.time() + 600
    while max(_metrics(tmp_path, "preempted"), default=0) < 3:  # mid-run
        assert time.time() < deadline, "the job never reached step 3"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)
    while True:
        info = _job(job_id)
        if info.get("JobState") == "COMPLETED" and int(info.get("Restarts", 0)) >= 1:
            break
        assert info.get("JobState") not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), info
        assert time.time() < deadline + 600, f"job {job_id} did not finish after the requeue: {info}"
        time.sleep(2)
    log = "".join(p.read_text() for p in tmp_path.glob("preempted-*.out"))
    stopped = re.search(r"saved step (\d+) to (\S+); exiting", log)
    assert stopped, log
    step = int(stopped.group(1))
    assert 3 <= step < STEPS, log
    assert "requeueing job" in log and f"at step {step}" in log and "resumed from" in log, log
    assert "finished with status 0" in log
    losses = _metrics(tmp_path, "preempted")
    assert max(losses) == STEPS
    for s in range(step + 1, STEPS + 1):
        assert abs(losses[s] - straight[s]) <= 1e-6 * straight[s], (s, losses[s], straight[s])


@pytest.mark.parametrize(
    "extra, message",
    [
        (("parallel.tp=3",), r"parallel\.tp: model\.num_attention_heads=\d+ is not divisible by tp=3"),
        (("parallel.pp=2", "parallel.tp=1", "parallel.num_layers_in_first_pipeline_stage=4"), r"a stage would be empty"),
        (("parallel.tp=1", "parallel.pp=4"), r"world size 2 is not divisible by tp\*pp\*cp = 1\*4\*1 = 4"),
    ],
)
def test_impossible_layouts_are_refused_before_any_rank_starts(tmp_path, extra, message):
    proc = _sbatch(tmp_path, "bad", wait=True, extra=extra)
    log = "".join(p.read_text() for p in tmp_path.glob("bad-*.out"))
    assert proc.returncode != 0
    assert re.search(message, log), log
    assert "refused before starting any rank" in log
    assert not (tmp_path / "bad").exists()  # no rank ran: no run directory
