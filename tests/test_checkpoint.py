"""Training checkpoints: resume under another layout (TP=2 -> 1, PP=2 -> 1, DP=2 -> 1 with the
distributed optimizer) continues the uninterrupted run; SIGTERM saves and exits 0 and the resumed run
reproduces the uninterrupted one; SIGKILL during a save leaves the previous checkpoint loadable; bad
inputs fail clearly and leave directories as they were."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1mega.parallel.launch import find_free_port, run_distributed
from r1mega.training import checkpoint as ckpt
from tests import _checkpoint_fns

RESUME_TOL = 1e-6  # relative, per step
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# resume under another layout
# ------------------------------------------------------------------------------------------------


@pytest.mark.dist
def test_resume_under_another_layout_continues_the_uninterrupted_run(tmp_path):
    layouts = [dict(tp=2), dict(pp=2), dict(use_distributed_optimizer=True)]  # the last: DP=2, ZeRO-1
    saved = run_distributed(_checkpoint_fns.save_then_continue, 2, str(tmp_path), layouts, timeout=600)
    paths = [case["path"] for case in saved[0]]
    (single,) = run_distributed(_checkpoint_fns.uninterrupted_and_resumed, 1, str(tmp_path), paths, timeout=600)
    uninterrupted = single["uninterrupted"]
    n_before = _checkpoint_fns.STEPS_BEFORE
    for i, layout in enumerate(layouts):
        resumed = single["resumed"][i]
        assert resumed["step"] == n_before
        assert not resumed["rng_restored"]  # another layout: per-rank RNG streams do not carry over
        # the saving layout's own continuation, from whichever rank holds the loss
        own = next(r[i]["after"] for r in saved if r[i]["after"][0][0] is not None)
        for k, ((loss, lr), (want_loss, want_lr), (own_loss, _)) in enumerate(
            zip(resumed["after"], uninterrupted[n_before:], own, strict=True)
        ):
            where = f"{layout} -> single process, step {n_before + k + 1}"
            assert lr == want_lr, where  # the LR schedule resumed at the right step
            assert abs(loss - want_loss) <= RESUME_TOL * want_loss, f"{where}: {loss} vs uninterrupted {want_loss}"
            assert abs(loss - own_loss) <= RESUME_TOL * own_loss, f"{where}: {loss} vs saving layout {own_loss}"
    # and the continuation is real training, not a constant
    assert uninterrupted[-1][0] < uninterrupted[0][0]


# ------------------------------------------------------------------------------------------------
# SIGTERM / SIGKILL on real processes
# ------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    # a free port: a single-process job otherwise listens on 29500, which another job may hold
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "MASTER_PORT": str(find_free_port())}


def _cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = _env()
    return subprocess.Popen(
        [sys.executable, "-m", "r1mega.cli", *args], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs,
    )


def _job_args(out: Path, name: str, steps: int) -> list[str]:
    return [
        "sft", "examples/configs/tiny.yaml",
        "data.template=raw", "data.procedural.task=arithmetic", "data.procedural.arithmetic.max_digits=2",
        "data.procedural.train_size=200", "data.procedural.test_size=8",
        f"sft.steps={steps}", "sft.global_batch_size=8", "sft.micro_batch_size=4", "sft.eval_every=0",
        "optimizer.lr=1e-3", "optimizer.lr_decay_style=cosine",
        f"run.output_dir={out}", f"run.name={name}", "logging.tensorboard=false", "logging.print_every=0",
        "checkpoint.keep_last=0",
    ]


def _losses(run_dir: Path) -> dict[int, float]:
    from r1mega.training.logging import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl")}


@pytest.mark.dist
def test_sigterm_saves_exits_zero_and_the_resumed_run_matches(tmp_path):
    steps = 24
    reference = _cli(_job_args(tmp_path, "uninterrupted", steps))
    out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, out
    want = _losses(tmp_path / "uninterrupted")
    assert sorted(want) == list(range(1, steps + 1))

    run_dir = tmp_path / "preempted"
    job = _cli(_job_args(tmp_path, "preempted", steps))
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert job.poll() is None, job.communicate()[0]
        assert time.monotonic() < deadline, "the job never logged 3 steps"
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out
    assert "stopped by a signal" in out
    latest = ckpt.find_latest_checkpoint(run_dir / "checkpoints")
    stopped_at = ckpt.read_checkpoint_info(latest)["step"]
    assert 3 <= stopped_at < steps, f"stopped at {stopped_at}: the signal should land mid-run"
    assert max(_losses(run_dir)) == stopped_at  # it stopped right after the step it saved

    resumed = _cli([*_job_args(tmp_path, "preempted", steps), "--resume", "auto"])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resumed from {latest} at step {stopped_at}" in out
    got = _losses(run_dir)
    assert sorted(got) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        # same layout, same process: the RNG, data position and optimizer state all came back
        assert abs(got[step] - want[step]) <= RESUME_TOL * want[step], (step, got[step], want[step])


@pytest.mark.dist
def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    """A process saving checkpoints back to back is killed at a random moment after its second
    save; the kill lands inside a save (an .incomplete directory is left behind), and the latest
    complete checkpoint still loads with exactly the weights of its step."""
    rng = random.Random(7)
    for attempt in range(4):
        root = tmp_path / f"attempt{attempt}"
        env = _env()
        saver = subprocess.Popen(
            [sys.executable, "-m", "tests._checkpoint_fns", str(root)], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
        )
        try:
            for line in saver.stdout:
                if line.strip() == "saved 2":
                    break
            else:
                pytest.fail("the saver died before its second save")
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            os.killpg(saver.pid, signal.SIGKILL)  # the saver and its forked writer processes
            saver.wait()
        if list(root.glob("*.incomplete")):
            break
    else:
        pytest.fail("no kill landed inside a save in 4 attempts")
    (result,) = run_distributed(_checkpoint_fns.check_latest, 1, str(root), timeout=600)
    assert result["step"] >= 2 and result["equal"], result
    assert result["extra"] == {"step": result["step"]}
    assert Path(result["path"]).name == ckpt.checkpoint_name(result["step"])
    # `latest` never points at anything but a complete checkpoint
    marker = (root / "latest").read_text().strip()
    assert ckpt.is_complete(root / marker)


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_checkpoints")
    (result,) = run_distributed(_checkpoint_fns.bad_inputs, 1, str(out), timeout=600)
    return result


@pytest.mark.dist
@pytest.mark.parametrize(
    "case,pattern",
    [
        ("missing shard", r"iter_0000005: shard file __\d+_\d+\.distcp is missing"),
        ("truncated file", r"iter_0000005: shard file __\d+_\d+\.distcp is truncated \(\d+ bytes, needs \d+\)"),
        ("missing common.pt", r"iter_0000005: common.pt is missing"),
        ("no optimizer state", r"has no optimizer state .* set checkpoint.load_optimizer=false"),
        ("incomplete directory", r"iter_0000005.incomplete: not a complete checkpoint"),
        ("wrong shape", r"saved for a different model; ffn_hidden_size: 160 \(checkpoint\) vs 96 \(this run\)"),
        ("mismatched config", r"saved for a different model; rope_theta: 500000.0 \(checkpoint\) vs 10000.0"),
        ("wrong shape, no config record", r"iter_0000005: loading failed.*(shape|size)"),
        ("pickled object", r"iter_0000005: refusing to load: .*Unsupported global: GLOBAL io.open.*only tensors and plain data"),
    ],
)
def test_bad_checkpoints_fail_clearly_and_are_left_untouched(bad, case, pattern):

    assert re.search(pattern, bad["errors"][case], re.DOTALL), bad["errors"][case]
    assert bad["unchanged"][case], f"{case}: loading modified the checkpoint directory"


@pytest.mark.dist
def test_loading_never_runs_code_from_a_checkpoint(bad):
    """Every read (common.pt and the per-rank RNG objects) is weights-only: the poisoned RNG shard
    above was refused before its object could run."""
    assert not bad["code_ran"]


@pytest.mark.dist
def test_failing_saves_leave_no_half_written_checkpoint(bad):
    assert "extra_state is not picklable" in bad["save_errors"]["unpicklable extra_state"]
    assert "No space left on device" in bad["save_errors"]["disk full"]
    assert re.search(
        r"extra_state could not be loaded back: .*Unsupported global: GLOBAL datetime.date",
        bad["save_errors"]["not weights-only loadable extra_state"],
    ), bad["save_errors"]

    assert bad["after"] == {"latest_unchanged": True, "listing_unchanged": True, "still_loads": 5}


# ------------------------------------------------------------------------------------------------
# discovery (no processes)
# ------------------------------------------------------------------------------------------------


def _fake_checkpoint(root: Path, step: int, complete: bool = True, suffix: str = "") -> Path:
    path = root / (ckpt.checkpoint_name(step) + suffix)
    path.mkdir(parents=True)
    if complete:
        (path / ckpt.INFO_FILE).write_text(json.dumps({"step": step, "format_version": 1}))
    return path


def test_resume_auto_finds_the_latest_complete_checkpoint(tmp_path):
    assert ckpt.resolve_resume("auto", tmp_path / "nothing") is None
    _fake_checkpoint(tmp_path, 100)
    best = _fake_checkpoint(tmp_path, 300)
    _fake_checkpoint(tmp_path, 400, complete=False)  # killed before r1mega.json
    _fake_checkpoint(tmp_path, 500, suffix=".incomplete")  # killed before the rename
    (tmp_path / "iter_0000600").mkdir()
    (tmp_path / "iter_0000600" / ckpt.INFO_FILE).write_text('{"step": 7')  # torn record
    (tmp_path / "notes.txt").write_text("x")
    assert ckpt.resolve_resume("auto", tmp_path) == best
    assert ckpt.resolve_resume("none", tmp_path) is None
    assert ckpt.resolve_resume(str(tmp_path), "/elsewhere") == best
    assert ckpt.resolve_resume(str(tmp_path / "iter_0000100"), tmp_path) == tmp_path / "iter_0000100"
    with pytest.raises(ckpt.CheckpointError, match="iter_0000400 is not a complete checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "iter_0000400"), tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.resolve_resume(str(tmp_path / "missing"), tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ckpt.CheckpointError, match="holds no complete checkpoint"):
        ckpt.resolve_resume(str(empty), tmp_path)


def test_preemption_watcher_only_sets_a_flag():
    with ckpt.PreemptionWatcher() as watcher:
        assert not watcher.should_stop()
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert watcher.received == signal.SIGUSR1 and watcher.should_stop()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # restored on exit


def test_checkpoint_config_is_validated():
    from r1mega.config import load_config
    from r1mega.configlib import ConfigError

    with pytest.raises(ConfigError, match="checkpoint.keep_last: must be >= 0"):
        load_config("examples/configs/tiny.yaml", ["checkpoint.keep_last=-1"])
    with pytest.raises(ConfigError, match="checkpoint.optimizer_format: 'flat' is not one of"):
        load_config("examples/configs/tiny.yaml", ["checkpoint.optimizer_format=flat"])
