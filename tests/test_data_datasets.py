"""Prompt and SFT datasets from jsonl/parquet/procedural sources; malformed rows; templates; sampler; CLI."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from r1mega.cli import main
from r1mega.config import load_config
from r1mega.configlib import ConfigError, from_dict
from r1mega.data.config import DataConfig
from r1mega.data.errors import DataError
from r1mega.data.prompts import load_prompt_dataset
from r1mega.data.sampler import PromptSampler
from r1mega.data.sft import collate_sft, load_sft_dataset
from r1mega.data.templates import R1_ZERO_TEMPLATE, TemplateError, render_prompt, response_prefix
from r1mega.data.tiny_tokenizer import TINY_TOKENIZER_DIR
from r1mega.data.tokenizer import load_tokenizer
from r1mega.rewards.config import RewardConfig
from r1mega.rewards.pool import RewardPool
from r1mega.rewards.types import SampleView

PAPER_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: {prompt}. "
    "Assistant:"
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def _jsonl(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def _data(**raw):
    """A DataConfig built the way a YAML section is: strictly typed and validated."""
    return from_dict(DataConfig, raw, where="data")


def _files_cfg(path, **raw):
    return _data(source="files", train_files=[str(path)], **raw)


# ---------------------------------------------------------------------------------------------
# templates
# ---------------------------------------------------------------------------------------------


def test_r1_zero_template_is_the_papers():
    assert R1_ZERO_TEMPLATE == PAPER_TEMPLATE
    text = render_prompt(template="r1_zero", prompt="What is 2+3?")
    assert text == PAPER_TEMPLATE.replace("{prompt}", "What is 2+3?")
    assert text.endswith("User: What is 2+3?. Assistant:")  # the paper's literal form
    assert response_prefix(text) == ""  # the template mentions <think> but does not open one


def test_think_in_prompt_opens_the_reasoning():
    text = render_prompt(template="r1_zero", prompt="Q", think_in_prompt=True)
    assert text.endswith("Assistant: <think>") and response_prefix(text) == "<think>"
    assert render_prompt(template="raw", prompt="Q", think_in_prompt=True) == "Q<think>"
    assert response_prefix("x <think>\n") == "<think>\n"
    assert response_prefix("<think>a</think>") == ""


def test_chat_template_and_its_absence(tok, tmp_path):
    text = render_prompt(template="chat", prompt="Hi", tokenizer=tok, system_prompt="Be brief.")
    assert text == "Be brief.\nUser: Hi\nAssistant:"
    d = tmp_path / "nochat"
    shutil.copytree(TINY_TOKENIZER_DIR, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("chat_template")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    plain = load_tokenizer(d)
    with pytest.raises(TemplateError, match=r"has no chat template"):
        render_prompt(template="chat", prompt="Hi", tokenizer=plain)
    with pytest.raises(TemplateError, match=r"has no chat template"):
        load_prompt_dataset(_data(template="chat", procedural={"train_size": 3}), "train", plain)


def test_r1_zero_takes_only_a_single_user_message():
    user = {"role": "user", "content": "Q"}
    assert render_prompt(template="r1_zero", messages=[user]).endswith("User: Q. Assistant:")
    with pytest.raises(TemplateError, match=r"roles \['system', 'user'\]"):
        render_prompt(template="r1_zero", messages=[{"role": "system", "content": "s"}, user])


# ---------------------------------------------------------------------------------------------
# prompt datasets from files
# ---------------------------------------------------------------------------------------------

GOOD = {"prompt": "What is 2+3?", "answer": "5", "task": "math"}
BAD_ROWS = {
    "bad_json": '{"prompt": "What is", "answer": ',
    "not_object": "[1, 2]",
    "missing_answer": {"prompt": "What is 2+3?"},
    "missing_prompt": {"answer": "5"},
    "empty_prompt": {"prompt": "   ", "answer": "5"},
    "too_long": {"prompt": "What is " + "2+" * 200 + "3?", "answer": "5"},
    "bad_countdown": {"prompt": "Make 10", "answer": "10", "task": "countdown", "metadata": {"numbers": "1 2"}},
    "bad_metadata": {"prompt": "Q", "answer": "5", "metadata": [1]},
    "bad_answer_type": {"prompt": "Q", "answer": ["5"]},
    "bad_messages": {"messages": [{"role": "wizard", "content": "Q"}], "answer": "5"},
    "chat_ends_with_reply": {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "5"}],
                             "answer": "5"},
}
REASONS = {
    "bad_json": "bad_json: invalid JSON",
    "not_object": "bad_json: expected a JSON object, got list",
    "missing_answer": "missing_field: no answer field",
    "missing_prompt": "missing_field: neither 'prompt' nor 'messages'",
    "empty_prompt": "empty_prompt: 'prompt' is empty",
    "too_long": "too_long: prompt has \\d+ tokens > data.max_prompt_tokens=128",
    "bad_countdown": "bad_field: countdown rows need metadata.numbers",
    "bad_metadata": "bad_field: metadata 'metadata' must be a mapping",
    "bad_answer_type": "bad_field: answer 'answer' must be a string or a number",
    "bad_messages": "bad_field: messages\\[0\\].role 'wizard'",
    "chat_ends_with_reply": "template: an RL prompt's chat must not end with an assistant message",
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_each_malformed_row_fails_with_file_and_line(tmp_path, tok, kind):
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, "", BAD_ROWS[kind], GOOD])  # line 2 is blank: not a row
    with pytest.raises(DataError, match=f"{path}:3: {REASONS[kind]}"):
        load_prompt_dataset(_files_cfg(path, max_prompt_tokens=128), "train", tok)


def test_skip_counts_every_malformed_row_and_keeps_the_rest(tmp_path, tok, caplog):
    kinds = sorted(BAD_ROWS)
    path = _jsonl(tmp_path / "d.jsonl", [GOOD] + [BAD_ROWS[k] for k in kinds] + [dict(GOOD, answer="6")])
    ds = load_prompt_dataset(_files_cfg(path, max_prompt_tokens=128, on_error="skip"), "train", tok)
    assert [ex.reference["answer"] for ex in ds] == ["5", "6"]
    assert ds.report.rows_read == len(kinds) + 2
    assert dict(ds.report.counts) == {
        "bad_json": 2, "missing_field": 2, "empty_prompt": 1, "too_long": 1, "bad_field": 4, "template": 1,
    }
    assert ds.report.first[0].startswith(f"{path}:2: ")
    assert "11 skipped" in caplog.text and f"{path}:3:" in caplog.text  # reported, never silent


def test_invalid_utf8_spoils_only_its_line(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    good = json.dumps(GOOD).encode()
    path.write_bytes(good + b"\n" + b'{"prompt": "\xff\xfe", "answer": "1"}\n' + good)
    with pytest.raises(DataError, match=rf"{path}:2: bad_json: not valid UTF-8"):
        load_prompt_dataset(_files_cfg(path), "train", tok)
    assert len(load_prompt_dataset(_files_cfg(path, on_error="skip"), "train", tok)) == 2


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path, tok):
    path = _jsonl(tmp_path / "d.jsonl", [BAD_ROWS["missing_answer"]] * 3)
    with pytest.raises(DataError, match="no usable rows"):
        load_prompt_dataset(_files_cfg(path, on_error="skip"), "train", tok)


def test_parquet_rows_are_located_by_row_index(tmp_path, tok):
    path = tmp_path / "d.parquet"
    rows = [GOOD, {"prompt": "Q2", "answer": None}, {"prompt": "Q3", "answer": "7"}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=rf"{path}:row 1: missing_field"):
        load_prompt_dataset(_files_cfg(path), "train", tok)
    ds = load_prompt_dataset(_files_cfg(path, on_error="skip"), "train", tok)
    assert [ex.reference["source"] for ex in ds] == [f"{path}:row 0", f"{path}:row 2"]


def test_missing_file_and_unreadable_parquet(tmp_path, tok):
    with pytest.raises(DataError, match="dataset file not found"):
        load_prompt_dataset(_files_cfg(tmp_path / "nope.jsonl"), "train", tok)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match=rf"{bad}: cannot read as parquet"):
        load_prompt_dataset(_files_cfg(bad), "train", tok)


def test_answer_aliases_nested_fields_and_verl_layout(tmp_path, tok):
    path = _jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "A", "ground_truth": 12},  # alias, numeric answer
            {"prompt": "B", "solution": "x+1", "task": "math"},
            {"prompt": [{"role": "user", "content": "C"}], "reward_model": {"ground_truth": "3"}, "data_source": "z"},
        ],
    )
    fields = {"answer": ["answer", "ground_truth", "solution", "reward_model.ground_truth"]}
    ds = load_prompt_dataset(_files_cfg(path, fields=fields), "train", tok)
    assert [(ex.reference["prompt"], ex.reference["answer"]) for ex in ds] == [("A", "12"), ("B", "x+1"), ("C", "3")]
    assert all(ex.reference["task"] == "math" for ex in ds)  # default_task


def test_prompt_examples_are_templated_and_tokenized(tmp_path, tok):
    meta = {"numbers": [2, 3, 5, 7], "use_all": True}
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "Make 29", "answer": 29, "task": "countdown", "metadata": meta}])
    (ex,) = load_prompt_dataset(_files_cfg(path, think_in_prompt=True), "train", tok)
    assert ex.prompt_text == render_prompt(template="r1_zero", prompt="Make 29", think_in_prompt=True)
    assert ex.prompt_token_ids == tok(ex.prompt_text)["input_ids"]
    assert ex.reference == {
        "answer": "29", "task": "countdown", "metadata": meta, "prompt": "Make 29",
        "response_prefix": "<think>", "source": f"{path}:1", "prompt_type": "reasoning",
    }


def test_json_array_files(tmp_path, tok):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([GOOD, 3]))
    with pytest.raises(DataError, match=rf"{path}:item 1: bad_json"):
        load_prompt_dataset(_files_cfg(path), "train", tok)


def test_procedural_source_needs_no_files(tok):
    cfg = load_config(
        "examples/configs/tiny.yaml",
        ["data.procedural.train_size=40", "data.procedural.test_size=10", "data.procedural.task=arithmetic"],
    )
    train = load_prompt_dataset(cfg.data, "train", tok)
    test = load_prompt_dataset(cfg.data, "test", tok)
    assert len(train) == 40 and len(test) == 10 and train.tasks == {"arithmetic"}
    assert not {ex.reference["prompt"] for ex in train} & {ex.reference["prompt"] for ex in test}
    assert all(len(ex.prompt_token_ids) <= cfg.data.max_prompt_tokens for ex in train)
    RewardConfig().check_tasks(train.tasks)


# ---------------------------------------------------------------------------------------------
# SFT datasets
# ---------------------------------------------------------------------------------------------


def test_sft_mask_covers_exactly_the_response_and_eos(tmp_path, tok):
    response = "<think>\n2+3=5\n</think> <answer>5</answer>"
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "What is 2+3?", "response": response}])
    (ex,) = load_sft_dataset(_files_cfg(path), "train", tok)
    prompt = render_prompt(template="r1_zero", prompt="What is 2+3?")
    n = len(tok(prompt)["input_ids"])
    assert ex.input_ids[:n] == tok(prompt)["input_ids"]
    assert ex.loss_mask == [0] * n + [1] * (len(ex.input_ids) - n)
    assert ex.input_ids[-1] == tok.eos_token_id
    assert tok.decode(ex.input_ids[n:-1]) == response


def test_sft_with_think_in_prompt_drops_the_duplicate_tag(tmp_path, tok):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "Q", "response": "<think>r</think> <answer>1</answer>"}])
    (ex,) = load_sft_dataset(_files_cfg(path, think_in_prompt=True), "train", tok)
    assert tok.decode(ex.input_ids[ex.prompt_length:], skip_special_tokens=True) == "r</think> <answer>1</answer>"
    assert tok.decode(ex.input_ids[: ex.prompt_length]).endswith("Assistant: <think>")


def test_sft_chat_rows_train_only_the_last_assistant_turn(tmp_path, tok):
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    path = _jsonl(tmp_path / "d.jsonl", [{"messages": chat}])
    (ex,) = load_sft_dataset(_files_cfg(path, template="chat"), "train", tok)
    prompt = tok.decode(ex.input_ids[: ex.prompt_length])
    target = tok.decode(ex.input_ids[ex.prompt_length:])
    assert prompt == "User: Hi\nAssistant: Hello<|endoftext|>\nUser: 2+2?\nAssistant:"
    assert target == " 4<|endoftext|>\n"  # the template's own end-of-turn is part of the target


def test_sft_chat_template_that_rewrites_history_is_a_row_error(tmp_path, tok):
    d = tmp_path / "tok"
    shutil.copytree(TINY_TOKENIZER_DIR, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    # generation prompt "Assistant:" but assistant turns rendered as "Bot: ...": not a prefix
    cfg["chat_template"] = (
        "{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
        "{% else %}Bot: {{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
    )
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    chat = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    path = _jsonl(tmp_path / "d.jsonl", [{"messages": chat}])
    with pytest.raises(DataError, match=rf"{path}:1: template: .* does not start with"):
        load_sft_dataset(_files_cfg(path, template="chat"), "train", load_tokenizer(d))


def test_sft_row_errors(tmp_path, tok):
    path = _jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Q"},  # no response
            {"messages": [{"role": "user", "content": "Q"}]},  # chat without a reply
            {"prompt": "Q", "response": "x " * 600},  # too long
            {"prompt": "Q", "response": "fine"},
        ],
    )
    ds = load_sft_dataset(_files_cfg(path, on_error="skip"), "train", tok)
    assert len(ds) == 1 and dict(ds.report.counts) == {"missing_field": 2, "too_long": 1}


def test_procedural_sft_and_collate(tok):
    cfg = _data(procedural={"task": "countdown", "train_size": 16, "wrong_solution_fraction": 0.25})
    ds = load_sft_dataset(cfg, "train", tok)
    assert len(ds) == 16
    batch = collate_sft(ds.examples[:5], tok.pad_token_id)
    lengths = [len(ex.input_ids) for ex in ds.examples[:5]]
    assert batch["input_ids"].shape == (5, max(lengths))
    for i, ex in enumerate(ds.examples[:5]):
        n = lengths[i]
        assert batch["input_ids"][i, :n].tolist() == ex.input_ids
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        assert batch["loss_mask"][i].tolist() == ex.loss_mask + [0.0] * (batch["input_ids"].shape[1] - n)
        assert batch["attention_mask"][i].sum().item() == n


# ---------------------------------------------------------------------------------------------
# sampler
# ---------------------------------------------------------------------------------------------


def test_sampler_epochs_are_seeded_permutations():
    s = PromptSampler(10, seed=3)
    first, second = s.next_indices(10), s.next_indices(10)
    assert sorted(first) == sorted(second) == list(range(10))
    assert first != second and s.epoch == 2
    assert PromptSampler(10, seed=3).next_indices(20) == first + second
    assert PromptSampler(10, seed=4).next_indices(10) != first
    assert PromptSampler(5, shuffle=False).next_indices(7) == [0, 1, 2, 3, 4, 0, 1]


def test_sampler_resumes_exactly_across_an_epoch_boundary():
    reference = PromptSampler(12, seed=9)
    expected = [reference.next_indices(5) for _ in range(7)]
    run = PromptSampler(12, seed=9)
    got = [run.next_indices(5) for _ in range(3)]
    state = json.loads(json.dumps(run.state_dict()))  # checkpoints store plain data
    resumed = PromptSampler(12, seed=9)
    resumed.load_state_dict(state)
    got += [resumed.next_indices(5) for _ in range(4)]
    assert got == expected
    with pytest.raises(ValueError, match="checkpoint has num_examples=12, this run has 13"):
        PromptSampler(13, seed=9).load_state_dict(state)


# ---------------------------------------------------------------------------------------------
# config and CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"source": "files"}, r"data.train_files: source is 'files' but no train file"),
        ({"source": "files", "train_files": ["a.csv"]}, r"data.train_files\[0\]: 'a.csv' must end with"),
        ({"system_prompt": "x"}, r"data.system_prompt: only the chat template"),
        ({"max_prompt_tokens": 0}, r"data.max_prompt_tokens: must be >= 1"),
        ({"on_error": "ignore"}, r"data.on_error: 'ignore' is not one of"),
        ({"fields": {"answer": []}}, r"data.fields.answer: must list at least one"),
    ],
)
def test_data_config_validation(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(DataConfig, raw, where="data")


def test_existing_configs_load_with_data_and_reward_defaults():
    cfg = load_config("examples/configs/tiny.yaml")
    assert cfg.data.source == "procedural" and cfg.data.tokenizer == "tiny"
    assert cfg.rewards.weights == {"accuracy": 1.0, "format": 1.0, "language": 0.0}
    # generating stages check that prompt + response fit the model's positions (512 for tiny_qwen2)
    fits = load_config("examples/configs/tiny.yaml", ["data.max_prompt_tokens=256", "rollout.max_new_tokens=256"])
    fits.check_sequence_budget()
    too_long = load_config("examples/configs/tiny.yaml", ["data.max_prompt_tokens=300", "rollout.max_new_tokens=256"])
    with pytest.raises(ConfigError, match=r"300 \+ 256 = 556 exceeds model.max_position_embeddings=512"):
        too_long.check_sequence_budget()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_cli_writes_a_split_that_reads_back_and_scores(tmp_path, tok, suffix, capsys):
    out = tmp_path / f"test{suffix}"
    assert main(["data", "--split", "test", "--num", "12", "--solutions", "--out", str(out),
                 "data.procedural.task=countdown", "data.procedural.countdown.max_numbers=3"]) == 0
    assert "wrote 12 countdown problems (test split)" in capsys.readouterr().out
    cfg = _files_cfg(out)
    prompts = load_prompt_dataset(cfg, "train", tok)
    sft = load_sft_dataset(cfg, "train", tok)
    assert len(prompts) == len(sft) == 12
    assert all(len(ex.reference["metadata"]["numbers"]) <= 3 for ex in prompts)
    # the written worked solutions earn full reward when scored against the read-back references
    rows = [json.loads(line) for line in out.read_text().splitlines()] if suffix == ".jsonl" else None
    responses = [r["response"] for r in rows] if rows else pq.read_table(out).column("response").to_pylist()
    samples = [SampleView([], [], [], "stop", r) for r in responses]
    with RewardPool(RewardConfig(num_workers=0)) as pool:
        scores = pool.score(samples, [ex.reference for ex in prompts])
    assert [s["reward"] for s in scores] == [2.0] * 12


def test_cli_rejects_non_data_overrides_without_a_config(tmp_path, capsys):
    assert main(["data", "--out", str(tmp_path / "x.jsonl"), "model.num_layers=2"]) == 2
    assert "only data.* overrides apply" in capsys.readouterr().err
