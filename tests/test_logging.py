"""Run logging: jsonl rows equal what was logged, tensorboard holds the scalars, the PNG is drawn,
resumed runs drop the rows of lost work, wandb gets the same values (through a stand-in module, so
the test needs neither the package nor the network), and bad configs/values are named."""

import json
import math
import random
import sys
import types

import pytest

from r1mega.configlib import ConfigError, from_dict
from r1mega.training.logging import LoggingConfig, MetricsLogger, plot_metrics, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _random_metrics(rng: random.Random, steps: int) -> list[dict[str, float]]:
    return [
        {"loss": rng.uniform(0.5, 5.0), "lr": rng.uniform(1e-5, 1e-3), "grad_norm": rng.uniform(0.1, 3.0)}
        for _ in range(steps)
    ]


def test_jsonl_rows_equal_what_was_logged(tmp_path):
    rng = random.Random(17)
    logged = _random_metrics(rng, 7)
    cfg = LoggingConfig(tensorboard=False, progress_bar=False, print_every=0)
    with MetricsLogger(tmp_path / "run", cfg, total_steps=7, enabled=True) as log:
        for step, m in enumerate(logged, start=1):
            log.log(step, m)
            # flushed at once: a reader sees the row before the logger is closed
            assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == step
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 8))
    for row, m in zip(rows, logged, strict=True):
        assert {k: v for k, v in row.items() if k not in ("step", "time")} == m  # exact: floats round-trip
        assert row["time"] > 0


def test_tensor_values_and_non_finite_values(tmp_path):
    import torch

    cfg = LoggingConfig(tensorboard=False, progress_bar=False, print_every=0)
    with MetricsLogger(tmp_path, cfg, enabled=True) as log:
        log.log(1, {"loss": torch.tensor(1.25), "overflow": float("inf"), "bad": float("nan")})
        with pytest.raises(ValueError, match="metric 'text': expected a number"):
            log.log(2, {"text": "hello"})
        with pytest.raises(ValueError, match="reserved"):
            log.log(2, {"step": 3.0})
    (row,) = read_metrics(tmp_path / "metrics.jsonl")
    assert row["loss"] == 1.25 and math.isinf(row["overflow"]) and math.isnan(row["bad"])


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logged = _random_metrics(random.Random(3), 5)
    cfg = LoggingConfig(tensorboard=True, progress_bar=False, print_every=0)
    with MetricsLogger(tmp_path, cfg, enabled=True) as log:
        for step, m in enumerate(logged, start=1):
            log.log(step, m)
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"loss", "lr", "grad_norm"}
    for name in ("loss", "lr", "grad_norm"):
        events = acc.Scalars(name)
        assert [e.step for e in events] == [1, 2, 3, 4, 5]
        # tensorboard stores float32
        assert [e.value for e in events] == pytest.approx([m[name] for m in logged], rel=1e-6)


def test_png_plot_is_written_and_non_empty(tmp_path):
    cfg = LoggingConfig(tensorboard=False, progress_bar=False, print_every=0, plot_metrics=["loss", "lr", "eval/loss"])
    with MetricsLogger(tmp_path, cfg, enabled=True) as log:
        for step, m in enumerate(_random_metrics(random.Random(5), 12), start=1):
            log.log(step, m)
        log.log(12, {"eval/loss": 1.5})
        path = log.plot()
    assert path == tmp_path / "metrics.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    # nothing to draw: no file, no error
    assert plot_metrics({"loss": []}, tmp_path / "empty.png") is None
    assert not (tmp_path / "empty.png").exists()


def test_periodic_plot(tmp_path):
    cfg = LoggingConfig(tensorboard=False, progress_bar=False, print_every=0, plot_every=3)
    with MetricsLogger(tmp_path, cfg, enabled=True) as log:
        log.log(1, {"loss": 2.0})
        log.log(2, {"loss": 1.0})
        assert not (tmp_path / "metrics.png").exists()
        log.log(3, {"loss": 0.5})
        assert (tmp_path / "metrics.png").read_bytes().startswith(PNG_MAGIC)


def test_resumed_run_drops_rows_after_the_resume_step(tmp_path):
    cfg = LoggingConfig(tensorboard=True, progress_bar=False, print_every=0)
    with MetricsLogger(tmp_path, cfg, enabled=True) as log:
        for step in range(1, 7):
            log.log(step, {"loss": float(step)})
    # the checkpoint was at step 4: steps 5 and 6 are re-run with other values
    with MetricsLogger(tmp_path, cfg, start_step=4, enabled=True) as log:
        for step in (5, 6):
            log.log(step, {"loss": 10.0 * step})
        log.plot()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 50.0), (6, 60.0)]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 50), (6, 60)]


def test_truncated_last_line_is_ignored(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n" + '{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 1.0}]
    path.write_text('{"step": 1,\n' + json.dumps({"step": 2}) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:1: not a JSON object"):
        read_metrics(path)


def test_disabled_logger_writes_nothing(tmp_path):
    cfg = LoggingConfig(plot_every=1)
    with MetricsLogger(tmp_path / "run", cfg, enabled=False) as log:
        log.log(1, {"loss": 1.0})
        assert log.plot() is None
    assert not (tmp_path / "run").exists()


def test_print_lines_when_not_a_terminal(tmp_path, capsys):
    cfg = LoggingConfig(tensorboard=False, print_every=2)
    with MetricsLogger(tmp_path / "r", cfg, total_steps=4, enabled=True) as log:
        for step in range(1, 5):
            log.log(step, {"loss": 1.0 / step})
    out = capsys.readouterr().out.splitlines()
    assert out == ["[r] step 2/4 loss=0.5", "[r] step 4/4 loss=0.25"]


def test_wandb_gets_the_same_values_offline(tmp_path, monkeypatch):
    calls = {}

    class FakeRun:
        def __init__(self):
            self.logged = []
            self.finished = False

        def log(self, values, step):
            self.logged.append((step, dict(values)))

        def finish(self):
            self.finished = True

    def init(**kwargs):
        calls["init"] = kwargs
        calls["run"] = FakeRun()
        return calls["run"]

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    cfg = LoggingConfig(tensorboard=False, wandb=True, progress_bar=False, print_every=0)
    logged = _random_metrics(random.Random(9), 3)
    with MetricsLogger(tmp_path / "myrun", cfg, config={"train": {"steps": 3}}, enabled=True) as log:
        for step, m in enumerate(logged, start=1):
            log.log(step, m)
    init_kwargs = calls["init"]
    assert init_kwargs["mode"] == "offline" and init_kwargs["name"] == "myrun"
    assert init_kwargs["dir"] == str(tmp_path / "myrun" / "wandb")
    assert init_kwargs["config"] == {"train": {"steps": 3}}
    assert calls["run"].logged == [(i + 1, m) for i, m in enumerate(logged)]
    assert calls["run"].finished


def test_wandb_enabled_but_missing_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"logging.wandb: wandb is not installed"):
        MetricsLogger(tmp_path, LoggingConfig(tensorboard=False, wandb=True), enabled=True)


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"print_every": -1}, r"logging.print_every: must be >= 0"),
        ({"plot_every": -2}, r"logging.plot_every: must be >= 0"),
        ({"wandb_mode": "cloud"}, r"logging.wandb_mode: 'cloud' is not one of"),
        ({"plot_metrics": ["loss", ""]}, r"logging.plot_metrics: metric names must be non-empty"),
    ],
)
def test_logging_config_rejects_bad_values(raw, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(LoggingConfig, raw, where="logging")


def test_logging_section_in_the_job_config():
    from r1mega.config import load_config

    cfg = load_config("examples/configs/tiny.yaml", ["logging.plot_every=5", "logging.tensorboard=false"])
    assert cfg.logging.plot_every == 5 and not cfg.logging.tensorboard
