"""tools/convert_hf_to_mcore.py and tools/convert_mcore_to_hf.py as a user runs them (subprocesses):
the round trip HF -> torch_dist (saved at TP=2) -> HF is bit-identical, and bad inputs get a clear
error with no output directory left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1mega.convert.hf_config import config_mismatches, model_config_from_hf
from tests.convert_helpers import (
    assert_nothing_written,
    bitwise_differences,
    hf_logits,
    make_hf_checkpoint,
    random_tokens,
    run_tool,
    safetensors_state,
    tool_error,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hf_sharded(tmp_path_factory) -> Path:
    """A Qwen3-MoE checkpoint in several safetensors shards with an index, a tokenizer and a
    generation config: everything a real HF directory has."""
    from transformers import AutoModelForCausalLM

    from tests.rollout_helpers import tiny_tokenizer

    directory = tmp_path_factory.mktemp("hf_sharded")
    single = make_hf_checkpoint("qwen3_moe", tmp_path_factory.mktemp("single"), seed=60)
    model = AutoModelForCausalLM.from_pretrained(str(single), dtype=torch.float32, local_files_only=True)
    model.save_pretrained(str(directory), max_shard_size="200KB")
    tiny_tokenizer().save_pretrained(str(directory))
    assert (directory / "model.safetensors.index.json").is_file() and len(list(directory.glob("*.safetensors"))) > 1
    return directory


@pytest.mark.dist
def test_round_trip_through_a_tp2_checkpoint_is_bit_identical(hf_sharded, tmp_path):
    mcore, back = tmp_path / "mcore", tmp_path / "hf_back"
    proc = run_tool("convert_hf_to_mcore.py", "--hf-dir", hf_sharded, "--out", mcore, "--tp", 2)
    assert proc.returncode == 0, proc.stderr
    assert (mcore / "metadata.json").is_file() and (mcore / "r1mega_model.json").is_file()
    assert len(list(mcore.glob("*.distcp"))) >= 2  # both TP ranks saved their shards

    proc = run_tool("convert_mcore_to_hf.py", "--mcore-dir", mcore, "--out", back, "--max-shard-size", 1)
    assert proc.returncode == 0, proc.stderr
    assert bitwise_differences(safetensors_state(hf_sharded), safetensors_state(back)) == []
    assert config_mismatches(model_config_from_hf(hf_sharded), back) == []
    for name in ("tokenizer.json", "generation_config.json"):
        assert (back / name).read_bytes() == (hf_sharded / name).read_bytes()
    written = json.loads((back / "config.json").read_text())
    assert written["eos_token_id"] == 2 and written["architectures"] == ["Qwen3MoeForCausalLM"]
    tokens = random_tokens(seed=61)
    assert torch.equal(hf_logits(back, tokens), hf_logits(hf_sharded, tokens))


# ------------------------------------------------------------------------------------------------
# bad inputs: HF -> mcore
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def hf_copy(hf_sharded, tmp_path) -> Path:
    directory = tmp_path / "hf"
    shutil.copytree(hf_sharded, directory)
    return directory


def test_missing_shard_is_refused(hf_copy, tmp_path):
    victim = sorted(hf_copy.glob("*.safetensors"))[-1]
    victim.unlink()
    out = tmp_path / "out"
    msg = tool_error(run_tool("convert_hf_to_mcore.py", "--hf-dir", hf_copy, "--out", out))
    assert "missing" in msg and victim.name in msg
    assert_nothing_written(out)


def test_truncated_safetensors_is_refused(hf_copy, tmp_path):
    victim = sorted(hf_copy.glob("*.safetensors"))[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 100])
    out = tmp_path / "out"
    msg = tool_error(run_tool("convert_hf_to_mcore.py", "--hf-dir", hf_copy, "--out", out))
    assert "truncated" in msg and victim.name in msg
    assert_nothing_written(out)


def test_wrong_tensor_shape_is_refused(hf_copy, tmp_path):
    index = json.loads((hf_copy / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.self_attn.k_proj.weight"
    path = hf_copy / index[name]
    tensors = load_file(str(path))
    tensors[name] = torch.randn(24, tensors[name].shape[1])
    save_file(tensors, str(path), metadata={"format": "pt"})
    out = tmp_path / "out"
    msg = tool_error(run_tool("convert_hf_to_mcore.py", "--hf-dir", hf_copy, "--out", out))
    assert name in msg and "(24, 64)" in msg and "(32, 64)" in msg
    assert_nothing_written(out)


def test_mismatched_model_config_is_refused_field_by_field(hf_copy, tmp_path):
    cfg = model_config_from_hf(hf_copy)
    yaml_path = tmp_path / "model.yaml"
    yaml_path.write_text(
        "family: qwen3_moe\nnum_layers: 4\nhidden_size: 64\nffn_hidden_size: 96\nnum_attention_heads: 4\n"
        f"num_query_groups: 2\nkv_channels: 16\nvocab_size: {cfg.vocab_size}\nrope_theta: {cfg.rope_theta}\n"
        "qk_layernorm: true\nnum_experts: 8\nmoe_ffn_hidden_size: 48\nmoe_router_topk: 2\n"
    )
    out = tmp_path / "out"
    proc = run_tool("convert_hf_to_mcore.py", "--hf-dir", hf_copy, "--out", out, "--model-config", yaml_path)
    msg = tool_error(proc)
    assert "does not match" in msg and "(2 field(s) differ)" in msg
    assert "num_layers: model config has 4, config.json gives 2" in proc.stderr
    assert "moe_ffn_hidden_size: model config has 48, config.json gives 32" in proc.stderr
    assert_nothing_written(out)


def test_existing_output_is_not_touched_without_overwrite(hf_copy, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    msg = tool_error(run_tool("convert_hf_to_mcore.py", "--hf-dir", hf_copy, "--out", out))
    assert "already exists" in msg
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------------------------------------
# bad inputs: mcore -> HF
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mcore_ckpt(tmp_path_factory) -> Path:
    hf = make_hf_checkpoint("llama", tmp_path_factory.mktemp("llama"), seed=62)
    out = tmp_path_factory.mktemp("mcore_parent") / "mcore"
    proc = run_tool("convert_hf_to_mcore.py", "--hf-dir", hf, "--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def mcore_copy(mcore_ckpt, tmp_path) -> Path:
    directory = tmp_path / "mcore"
    shutil.copytree(mcore_ckpt, directory)
    return directory


def test_mcore_missing_or_truncated_storage_is_refused(mcore_copy, tmp_path):
    storage = sorted(mcore_copy.glob("*.distcp"))[0]
    data = storage.read_bytes()
    storage.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    msg = tool_error(run_tool("convert_mcore_to_hf.py", "--mcore-dir", mcore_copy, "--out", out))
    assert "truncated" in msg and storage.name in msg
    assert_nothing_written(out)
    storage.unlink()
    msg = tool_error(run_tool("convert_mcore_to_hf.py", "--mcore-dir", mcore_copy, "--out", out))
    assert "missing" in msg and storage.name in msg
    assert_nothing_written(out)


def test_mcore_against_a_different_hf_config_is_refused(mcore_copy, tmp_path):
    other = make_hf_checkpoint("llama", tmp_path / "other", seed=63, num_hidden_layers=4)
    out = tmp_path / "out"
    msg = tool_error(run_tool("convert_mcore_to_hf.py", "--mcore-dir", mcore_copy, "--out", out, "--hf-config", other))
    assert "does not match" in msg
    assert_nothing_written(out)


class _OpensAFile:
    """Unpickling this creates `path`: proof that a loader ran code from the checkpoint."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_mcore_with_a_pickled_object_is_refused_without_running_it(mcore_copy, tmp_path):
    marker = tmp_path / "code_ran"
    common = torch.load(mcore_copy / "common.pt", weights_only=True)
    common["payload"] = _OpensAFile(str(marker))
    torch.save(common, mcore_copy / "common.pt")
    out = tmp_path / "out"
    msg = tool_error(run_tool("convert_mcore_to_hf.py", "--mcore-dir", mcore_copy, "--out", out))
    assert "refusing to load" in msg and "io.open" in msg and "only tensors and plain data" in msg
    assert not marker.exists(), "the checkpoint's pickle ran code"
    assert_nothing_written(out)


def test_tools_show_progress_bars(mcore_ckpt, tmp_path):
    """Without --no-progress, each tool reports per tensor on stderr (tqdm), reaching its total."""
    import re

    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    back = tmp_path / "hf"
    cmd = [sys.executable, str(REPO / "tools" / "convert_mcore_to_hf.py"), "--mcore-dir", str(mcore_ckpt), "--out", str(back)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    n = len(safetensors_state(back))
    assert re.search(rf"export: 100%\|.*\| {n}/{n} ", proc.stderr), proc.stderr[-2000:]

    mcore = tmp_path / "mcore"
    cmd = [sys.executable, str(REPO / "tools" / "convert_hf_to_mcore.py"), "--hf-dir", str(back), "--out", str(mcore)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # llama is untied: every HF tensor is one megatron tensor except q/k/v (3 -> 1) and gate/up (2 -> 1)
    layers = sum(1 for name in safetensors_state(back) if name.endswith("self_attn.q_proj.weight"))
    m = n - 3 * layers
    assert re.search(rf"load \(rank 0's shards\): 100%\|.*\| {m}/{m} ", proc.stderr), proc.stderr[-2000:]
