"""The HF export of `r1mega pretrain` (r1mega.training.hf_export.write_hf_export): the directory the
job writes loads in transformers with the trained model's logits, carries the tokenizer and EOS, and
loads in the built-in rollout engine; the same weights sharded TP=2 or PP=2 export bit-identically;
tools/convert_mcore_to_hf.py turns the job's training checkpoint into the same directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from r1mega.parallel.launch import run_distributed
from tests import _hf_export_fns
from tests.convert_helpers import (
    assert_nothing_written,
    bitwise_differences,
    random_tokens,
    relative_error,
    run_tool,
    safetensors_state,
    tool_error,
)

LOGITS_TOL = 1e-4  # relative, float32


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_export")
    tokens = random_tokens(seed=3, batch=2, seq=16)
    (result,) = run_distributed(_hf_export_fns.pretrain_and_export, 1, str(out), tokens, timeout=600)
    return result, tokens


@pytest.mark.dist
def test_pretrain_export_loads_in_transformers_with_the_trained_logits(pretrained):
    from transformers import AutoModelForCausalLM

    result, tokens = pretrained
    hf_dir = Path(result["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True)
    assert model.config.vocab_size == 520  # the padded megatron rows were dropped
    with torch.no_grad():
        got = model(input_ids=tokens).logits.float()
    want = result["logits"]
    assert got.shape == want.shape
    err = relative_error(got, want)
    assert err <= LOGITS_TOL, f"logits off by {err:.2e} (relative)"
    # the directory is complete and nothing temporary is left beside it
    assert sorted(p.name for p in hf_dir.parent.iterdir() if p.name.startswith(".hf")) == []


@pytest.mark.dist
def test_pretrain_export_carries_the_tokenizer_and_eos(pretrained):
    from r1mega.data.tokenizer import load_tokenizer

    result, _ = pretrained
    hf_dir = Path(result["hf_dir"])
    from transformers import AutoTokenizer

    tiny, exported = load_tokenizer("tiny"), load_tokenizer(hf_dir)
    text = "12+34=<think> 4+2=6 </think> <answer>46</answer>"
    assert exported(text)["input_ids"] == tiny(text)["input_ids"]
    assert AutoTokenizer.from_pretrained(str(hf_dir))(text)["input_ids"] == tiny(text)["input_ids"]
    messages = [{"role": "user", "content": "Calculate 7+5+9."}]
    assert AutoTokenizer.from_pretrained(str(hf_dir)).apply_chat_template(messages, tokenize=False) == (
        tiny.apply_chat_template(messages, tokenize=False)
    )
    config = json.loads((hf_dir / "config.json").read_text())
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert config["eos_token_id"] == generation["eos_token_id"] == tiny.eos_token_id
    assert config["pad_token_id"] == tiny.pad_token_id
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["dtype"] == "float32"


def _hf_greedy(model, tokenizer, prompt_text: str, max_new_tokens: int) -> str:
    """A new user's greedy completion: the export's own generation_config (greedy, EOS) decides."""
    ids = tokenizer(prompt_text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)


@pytest.mark.dist
def test_export_greedy_completions_equal_r1megas_own_evaluation(tmp_path):
    """AutoModelForCausalLM + AutoTokenizer on the export of the tiny default's model (random
    weights, so that completions are not blank) give, string for string, the
    completions r1mega's greedy evaluation of the same model wrote on the held-out prompts; the same
    model behind the class transformers picks for qwen2 by default (Qwen2Tokenizer) does not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Tokenizer

    from r1mega.data.prompts import load_prompt_dataset
    from r1mega.data.tokenizer import load_tokenizer

    (result,) = run_distributed(_hf_export_fns.random_export_and_evaluate, 1, str(tmp_path), timeout=600)
    hf_dir = Path(result["hf_dir"])
    rows = [json.loads(line) for line in Path(result["samples"]).read_text().splitlines()]
    want = [r["completion"] for r in rows]
    # completions with content: more than one, each many tokens long (a random model repeats itself)
    assert len(rows) >= 8 and len(set(want)) > 1 and all(len(w) > 20 for w in want)

    tiny = load_tokenizer("tiny")
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32, local_files_only=True)
    generation = GenerationConfig.from_pretrained(str(hf_dir))
    assert (generation.eos_token_id, generation.pad_token_id, generation.bos_token_id) == (
        tiny.eos_token_id, tiny.pad_token_id, None
    )
    assert not generation.do_sample and model.generation_config.eos_token_id == tiny.eos_token_id
    cfg = _hf_export_fns.pretrain_config(str(tmp_path))
    examples = load_prompt_dataset(cfg.data, "test", tiny).examples
    assert [ex.reference["source"] for ex in examples] == [r["source"] for r in rows]
    prompts = [ex.prompt_text for ex in examples]
    n = result["max_new_tokens"]
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    got = [_hf_greedy(model, tokenizer, p, n) for p in prompts]
    assert got == want
    qwen2 = Qwen2Tokenizer.from_pretrained(str(hf_dir))  # the negative control: another tokenization
    assert [_hf_greedy(model, qwen2, p, n) for p in prompts[:2]] != want[:2]


@pytest.mark.dist
def test_rollout_engine_loads_the_export(pretrained):
    from r1mega.rollout.builtin import BuiltinEngine
    from r1mega.rollout.types import SamplingParams

    result, tokens = pretrained
    engine = BuiltinEngine(result["hf_dir"], dtype="float32", device="cpu")
    assert engine.eos_token_ids == [0]  # the tiny tokenizer's EOS, from config.json
    with torch.no_grad():
        got = engine.model(input_ids=tokens, use_cache=False).logits.float()
    assert relative_error(got, result["logits"]) <= LOGITS_TOL
    (sample,) = engine.generate([tokens[0].tolist()], SamplingParams(max_new_tokens=4, temperature=0.0))
    assert 1 <= len(sample.response_token_ids) <= 4


@pytest.mark.dist
def test_sharded_models_export_bit_identically(tmp_path):
    """Random weights exported by one process, loaded at TP=2 and at PP=2 (2 ranks) and exported
    again with buckets and shards small enough for several of each: the same tensors, bit for bit
    (TP=2 pads the vocabulary to 640 rows, one process to 576; HF has 520)."""
    (single,) = run_distributed(_hf_export_fns.export_reference, 1, str(tmp_path / "one"), timeout=600)
    layouts = [{"tp": 2}, {"pp": 2}]
    per_rank = run_distributed(_hf_export_fns.export_sharded, 2, str(tmp_path / "two"), single, layouts, timeout=600)
    assert per_rank[0] == per_rank[1]
    want = safetensors_state(single)
    assert len(want) > 10 and all(torch.isfinite(t).all() and t.std() > 0 for t in want.values())
    assert want["model.embed_tokens.weight"].shape == (520, 128) and "lm_head.weight" not in want  # tied
    for layout, path in zip(layouts, per_rank[0], strict=True):
        path = Path(path)
        assert (path / "model.safetensors.index.json").is_file() and len(list(path.glob("*.safetensors"))) > 1
        assert bitwise_differences(want, safetensors_state(path)) == [], layout
        assert json.loads((path / "config.json").read_text()) == json.loads((Path(single) / "config.json").read_text())


# ------------------------------------------------------------------------------------------------
# tools/convert_mcore_to_hf.py on a training checkpoint
# ------------------------------------------------------------------------------------------------

_EXPORT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenization_r1mega.py")


@pytest.mark.dist
def test_convert_tool_exports_a_training_checkpoint_as_the_run_did(pretrained, tmp_path):
    """The run's checkpoint root, loaded at TP=2 by the tool: the same HF directory the pretrain job
    wrote from its live model at the same step (tensors bit for bit, configs and tokenizer equal)."""
    result, _ = pretrained
    root = Path(result["checkpoint"]).parent
    out = tmp_path / "hf"
    proc = run_tool("convert_mcore_to_hf.py", "--mcore-dir", root, "--out", out, "--tp", 2)
    assert proc.returncode == 0, proc.stderr
    assert "step 2" in proc.stdout and "Apex" not in proc.stderr  # library start-up notices quieted
    job_export = Path(result["hf_dir"])
    want = safetensors_state(job_export)
    assert len(want) > 10
    assert bitwise_differences(want, safetensors_state(out)) == []
    for name in _EXPORT_FILES:
        assert (out / name).read_text() == (job_export / name).read_text(), name


def _copy_checkpoint(result: dict, dest: Path) -> Path:
    """The final checkpoint alone, away from its run directory (no run config beside it)."""
    import shutil

    path = dest / "checkpoints" / Path(result["checkpoint"]).name
    shutil.copytree(result["checkpoint"], path)
    return path


@pytest.mark.dist
def test_convert_tool_names_what_a_training_checkpoint_lacks(pretrained, tmp_path):
    result, _ = pretrained
    path = _copy_checkpoint(result, tmp_path / "lone")
    out = tmp_path / "hf"
    # no run config beside it: the tokenizer must be named
    err = tool_error(run_tool("convert_mcore_to_hf.py", "--mcore-dir", path, "--out", out))
    assert "pretrain_config.yaml" in err and "--tokenizer" in err, err
    assert_nothing_written(out)
    # no model_config recorded (an older save): say which model it is
    info_path = path / "r1mega.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "model_config": None}))
    err = tool_error(run_tool("convert_mcore_to_hf.py", "--mcore-dir", path, "--out", out, "--tokenizer", "tiny"))
    assert str(info_path) in err and "--model-config" in err, err
    assert_nothing_written(out)
    # a save that never finished (its record disagrees on the step), alone or as the root's only one
    info_path.write_text(json.dumps({**info, "step": info["step"] + 1}))
    err = tool_error(run_tool("convert_mcore_to_hf.py", "--mcore-dir", path, "--out", out, "--tokenizer", "tiny"))
    assert "incomplete training checkpoint" in err, err
    err = tool_error(run_tool("convert_mcore_to_hf.py", "--mcore-dir", path.parent, "--out", out, "--tokenizer", "tiny"))
    assert "no complete training checkpoint" in err, err
    assert_nothing_written(out)
