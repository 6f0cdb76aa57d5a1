"""The `rollout:` config section and engine selection."""

import pytest

from r1mega.config import load_config
from r1mega.configlib import ConfigError
from r1mega.rollout.config import RolloutConfig
from r1mega.rollout.engines import make_engine
from tests.rollout_helpers import one_torch_thread, tiny_config  # noqa: F401 (autouse fixture)

TINY = "examples/configs/tiny.yaml"


def test_existing_configs_get_rollout_defaults():
    cfg = load_config(TINY)
    assert cfg.rollout == RolloutConfig()
    assert cfg.rollout.engine == "builtin" and cfg.rollout.dtype == "float32"


def test_overrides_and_sampling_params():
    cfg = load_config(TINY, ["rollout.temperature=0.6", "rollout.top_p=0.95", "rollout.stop=['</answer>']"])
    sp = cfg.rollout.sampling_params(seed=5, max_new_tokens=7)
    assert (sp.temperature, sp.top_p, sp.stop, sp.seed, sp.max_new_tokens) == (0.6, 0.95, ["</answer>"], 5, 7)
    sp.validate()


@pytest.mark.parametrize(
    "override,message",
    [
        ("rollout.top_p=0", r"rollout\.top_p: must be in \(0, 1\]"),
        ("rollout.temperature=-1", r"rollout\.temperature: must be >= 0"),
        ("rollout.top_k=-3", r"rollout\.top_k: must be -1"),
        ("rollout.max_batch_size=0", r"rollout\.max_batch_size: must be >= 1"),
        ("rollout.max_tokens_per_forward=8", r"rollout\.max_tokens_per_forward: 8 is below max_batch_size=64"),
        ("rollout.engine=vllm", r"rollout\.engine: 'vllm' is not one of \['builtin', 'sglang'\]"),
        ("rollout.dtype=fp8", r"rollout\.dtype: 'fp8' is not one of"),
        ("rollout.stop=['']", r"rollout\.stop\[0\]: must be a non-empty string"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_sglang_is_reported_unavailable():
    cfg = load_config(TINY, ["rollout.engine=sglang"])
    with pytest.raises(ValueError, match=r"rollout\.engine: 'sglang' engines are started by the RL trainer"):
        make_engine(cfg.rollout, tiny_config())


def test_train_with_sglang_on_cpu_stops_at_start_up_with_one_line(capsys, tmp_path, monkeypatch):
    """No CUDA here: `r1mega train` refuses before any work (no run directory, no base training)."""
    import torch

    from r1mega.cli import main
    from r1mega.training import rl_job

    assert not torch.cuda.is_available()
    monkeypatch.setattr(rl_job, "ensure_base", lambda cfg: pytest.fail("work started"))
    code = main(["train", TINY, "rollout.engine=sglang", f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "rollout.engine=sglang needs CUDA GPUs and none is visible" in err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "override,message",
    [
        ("rollout.tp=0", r"rollout\.tp: must be >= 1"),
        ("rollout.ep=3", r"rollout\.ep: 3 must divide tp=1"),
        ("rollout.mem_fraction=1.5", r"rollout\.mem_fraction: must be in \(0, 1\)"),
        ("rollout.bucket_mb=0", r"rollout\.bucket_mb: must be > 0"),
        ("rollout.routing_replay=true", r"rollout\.routing_replay: the model has no MoE layers"),
    ],
)
def test_sglang_layout_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TINY, [override])


def test_builtin_engine_from_config():
    cfg = load_config(TINY, ["rollout.max_batch_size=3", "rollout.max_tokens_per_forward=12", "rollout.device=cpu"])
    engine = make_engine(cfg.rollout, tiny_config(), eos_token_ids=[])
    assert (engine.max_batch_size, engine.max_tokens_per_forward, str(engine.device)) == (3, 12, "cpu")
    out = engine.generate([[1, 2, 3]] * 4, cfg.rollout.sampling_params(max_new_tokens=3, seed=0))
    assert [len(s.response_token_ids) for s in out] == [3] * 4
