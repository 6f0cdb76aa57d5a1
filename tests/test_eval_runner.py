"""`run_eval` and `r1mega eval` (r1mega.eval): metrics per task, per file and overall from known
completions (a test double stands in for the rollout engine: a fixed response per prompt and sample
index), the written eval.json / eval.md, and one clear line for each bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1mega.cli import main
from r1mega.eval.config import EvalConfig
from r1mega.eval.metrics import pass_at_k
from r1mega.rollout.types import Sample

ROOT = Path(__file__).resolve().parents[1]


class ScriptedEngine:
    """RolloutEngine double: the j-th time a prompt appears in a call it answers script[prompt][j]."""

    def __init__(self, tokenizer, script: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.script = script
        self.vocab_size = len(tokenizer)
        self.calls = []

    def generate(self, prompts_token_ids, sampling):
        self.calls.append(sampling)
        seen: dict[str, int] = {}
        out = []
        for ids in prompts_token_ids:
            text = self.tokenizer.decode(ids)
            key = next(q for q in self.script if f"User: {q}. Assistant:" in text)
            j = seen.get(key, 0)
            seen[key] = j + 1
            response = self.script[key][j]
            tokens = self.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append(Sample(prompt_token_ids=list(ids), response_token_ids=tokens, response_logprobs=[0.0] * len(tokens),
                              finish_reason="stop", response_text=response))
        return out

    def update_weights(self, buckets):
        raise AssertionError("not used")

    def release_memory(self):
        pass

    def resume_memory(self):
        pass


def R(think: str, answer: str) -> str:
    return f"<think>\n{think}\n</think> <answer>{answer}</answer>"


SCRIPT = {
    # arithmetic, 2+3+4=9: 2 correct of 4; votes 9, 9, 1,000 x2 -> tie, 9 first -> cons 1
    "Calculate 2+3+4": [R("2+3=5\n5+4=9", "9"), R("x", "1,000"), R("y", "9"), R("z", "1000")],
    # arithmetic, 5+5+5=15: 1 correct; votes 14 x2 (one unformatted), 15 -> cons 0
    "Calculate 5+5+5": ["<answer>14</answer>", R("5+5=10\n10+5=15", "15"), R("a", "14"), R("b", "13")],
    # countdown 3 8 2 -> 22: all correct (different expressions), one with mixed-language reasoning
    "Reach 22 with 3 8 2": [R("three times eight", "3*8-2"), R("三 times eight", "8*3-2"),
                            R("ok", "3*8-2"), R("ok", "(3*8)-2")],
}


def write_files(tmp_path: Path) -> tuple[Path, Path]:
    a = tmp_path / "arith.jsonl"
    a.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Calculate 2+3+4", "answer": "9", "task": "arithmetic"},
        {"prompt": "Calculate 5+5+5", "answer": "15", "task": "arithmetic"},
    ]) + "\n")
    b = tmp_path / "mixed.jsonl"
    b.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Reach 22 with 3 8 2", "answer": "22", "task": "countdown", "metadata": {"numbers": [3, 8, 2]}},
        {"prompt": "Calculate 5+5+5", "answer": "15", "task": "arithmetic"},
    ]) + "\n")
    return a, b


def fake_hf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(b"")
    return d


@pytest.fixture
def scripted(monkeypatch):
    engines = []

    def build(source, rollout_cfg, tokenizer, *, seed):
        engines.append(ScriptedEngine(tokenizer, SCRIPT))
        return engines[-1]

    monkeypatch.setattr("r1mega.eval.model_source.build_engine", build)
    return engines


def test_run_eval_metrics_per_task_file_and_overall(tmp_path, scripted):
    from r1mega.eval.runner import run_eval

    a, b = write_files(tmp_path)
    cfg = EvalConfig(samples_per_prompt=4, pass_k=[2, 4], seed=3, temperature=0.6, top_p=0.95)
    out = tmp_path / "out"
    report = run_eval(cfg, fake_hf_dir(tmp_path), [a, b], out)

    (sampling,) = {(s.temperature, s.top_p, s.seed) for s in scripted[0].calls}
    assert sampling == (0.6, 0.95, 3)
    ar = report["files"]["arith.jsonl"]
    assert set(ar["tasks"]) == {"arithmetic"} and ar["tasks"]["arithmetic"] == ar["all"]
    m = ar["all"]
    assert (m["prompts"], m["samples"]) == (2, 8)
    assert m["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert m["pass@2"] == pytest.approx((pass_at_k(4, 2, 2) + pass_at_k(4, 1, 2)) / 2)
    assert m["pass@4"] == pytest.approx(1.0)
    assert m["cons@4"] == pytest.approx(0.5)  # 9 wins the tie against 1,000 = 1000; 14 beats 15
    assert m["format"] == pytest.approx(7 / 8)
    assert m["language_consistency"] == 1.0  # the one without reasoning does not count

    mx = report["files"]["mixed.jsonl"]
    cd = mx["tasks"]["countdown"]
    assert (cd["pass@1"], cd["cons@4"]) == (1.0, 1.0)
    assert cd["language_consistency"] == pytest.approx((1 + 2 / 3 + 1 + 1) / 4)  # "三 times eight"
    assert mx["tasks"]["arithmetic"]["pass@1"] == pytest.approx(1 / 4)
    assert mx["all"]["prompts"] == 2 and mx["all"]["pass@1"] == pytest.approx((1 + 1 / 4) / 2)

    overall = report["all"]
    assert overall["prompts"] == 4 and overall["samples"] == 16
    assert overall["pass@1"] == pytest.approx((2 / 4 + 1 / 4 + 1 + 1 / 4) / 4)
    assert overall["cons@4"] == pytest.approx((1 + 0 + 1 + 0) / 4)
    lengths = [json.loads(line)["length"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(lengths) == 16 and overall["mean_length"] == pytest.approx(sum(lengths) / 16)

    assert json.loads((out / "eval.json").read_text())["all"] == overall
    md = (out / "eval.md").read_text()
    assert "| arith.jsonl | arithmetic | 2 | 8 | 37.5% |" in md and "| all | all | 4 | 16 |" in md


def test_max_prompts_and_response_prefix(tmp_path, scripted):
    from r1mega.config import load_config
    from r1mega.eval.runner import run_eval

    a, _ = write_files(tmp_path)
    # the prompt opens <think>: the scripted responses then hold a second <think>, so none is well formatted
    run_cfg = load_config(ROOT / "examples/configs/tiny.yaml", ["data.think_in_prompt=true"])
    report = run_eval(EvalConfig(samples_per_prompt=4, max_prompts=1), fake_hf_dir(tmp_path), [a], tmp_path / "o",
                      run_config=run_cfg)
    m = report["all"]
    assert m["prompts"] == 1 and m["format"] == 0.0
    assert m["pass@1"] == pytest.approx(0.5)  # answers are still read outside the reasoning


# -- bad input: one clear line, exit code 2 -----------------------------------------------------------

def run_cli(args, capsys) -> tuple[int, str]:
    code = main(["eval", str(ROOT / "examples/configs/tiny.yaml"), *args])
    err = capsys.readouterr().err.strip()
    return code, err


def test_missing_model_dir(tmp_path, capsys):
    a, _ = write_files(tmp_path)
    code, err = run_cli(["--model", str(tmp_path / "nope"), "--data", str(a)], capsys)
    assert code == 2 and err == f"r1mega eval: --model {tmp_path / 'nope'}: no such directory"


def test_not_a_model_dir(tmp_path, capsys):
    a, _ = write_files(tmp_path)
    code, err = run_cli(["--model", str(tmp_path), "--data", str(a)], capsys)
    assert code == 2 and "neither an HF directory" in err and len(err.splitlines()) == 1


def test_malformed_row_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Calculate 1+1", "answer": "2", "task": "arithmetic"}\n{"prompt": "Calculate 1+2", \n')
    code, err = run_cli(["--model", str(fake_hf_dir(tmp_path)), "--data", str(bad)], capsys)
    assert code == 2 and f"{bad}:2: bad_json" in err and len(err.splitlines()) == 1


def test_unknown_task_names_the_row(tmp_path, capsys):
    f = tmp_path / "poems.jsonl"
    f.write_text('{"prompt": "Write a poem", "answer": "-", "task": "poetry"}\n')
    code, err = run_cli(["--model", str(fake_hf_dir(tmp_path)), "--data", str(f)], capsys)
    assert code == 2 and f"{f}:1: unknown task 'poetry'" in err and len(err.splitlines()) == 1


def test_missing_data_file_and_bad_eval_config(tmp_path, capsys):
    code, err = run_cli(["--model", str(fake_hf_dir(tmp_path)), "--data", str(tmp_path / "x.jsonl")], capsys)
    assert code == 2 and err == f"r1mega eval: --data {tmp_path / 'x.jsonl'}: no such file"
    code, err = run_cli(["eval.pass_k=[8]", "--model", str(tmp_path), "--data", "x.jsonl"], capsys)
    assert code == 2 and "eval.pass_k[0]: 8 must be in [1, samples_per_prompt=4]" in err


def test_model_resolution(tmp_path):
    from r1mega.eval.model_source import resolve_model

    hf = fake_hf_dir(tmp_path)
    assert resolve_model(hf).kind == "hf"
    run = tmp_path / "run"
    for step in (5, 10):
        it = run / "checkpoints" / f"iter_{step:07d}"
        it.mkdir(parents=True)
        (it / "r1mega.json").write_text(json.dumps({"step": step}))
    (run / "checkpoints" / "iter_0000020.incomplete").mkdir()
    for path in (run, run / "checkpoints"):
        src = resolve_model(path)
        assert (src.kind, src.path.name, src.step) == ("megatron", "iter_0000010", 10)
    assert resolve_model(run / "checkpoints" / "iter_0000005").step == 5
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        (run / "checkpoints" / "iter_0000020.incomplete" / "r1mega.json").write_text('{"step": 20}')
        resolve_model(run / "checkpoints" / "iter_0000020.incomplete")


def test_megatron_loading_refuses_to_run_inside_an_existing_process_group(tmp_path, monkeypatch):
    import torch.distributed as dist

    from r1mega.eval.model_source import _megatron_weights

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    with pytest.raises(RuntimeError, match="builds its own one-process group"):
        _megatron_weights(tmp_path, 1 << 20)
