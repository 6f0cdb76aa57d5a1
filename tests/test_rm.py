"""Reward models: losses against float64 formulas, data checks naming file and row, the embedded
preference data's hidden rules, microbatches that never split a pair, and layout invariance of RM
training (TP=2, TP=2+SP, PP=2, DP=2 vs one process, gloo)."""

import json
import math
import random

import pytest
import torch

from r1mega.data.errors import DataError
from r1mega.parallel.launch import run_distributed
from r1mega.rm.data import make_rm_microbatch, plan_unit_microbatches, read_preference_rows, Unit
from r1mega.rm.loss import auc, last_token_scores, rm_loss
from tests import _rm_fns

LOSS_TOL = 1e-5


# ------------------------------------------------------------------------------------------------
# losses (no megatron)
# ------------------------------------------------------------------------------------------------


def _random_units(rng: random.Random, n: int) -> list[Unit]:
    units = []
    for i in range(n):
        if rng.random() < 0.5:
            units.append(Unit(f"u{i}", (tuple(range(2, 2 + rng.randint(1, 9))), tuple(range(3, 3 + rng.randint(1, 9))))))
        else:
            units.append(Unit(f"u{i}", (tuple(range(4, 4 + rng.randint(1, 9))),), float(rng.random() < 0.5)))
    return units


def test_loss_and_gradient_match_float64_formulas():
    rng = random.Random(3)
    units = _random_units(rng, 12)
    mb = make_rm_microbatch(units, pad_id=1)
    b, s = mb["tokens"].shape
    out = torch.randn(b, s, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3
    out32 = out.float().requires_grad_(True)
    total, count, metrics = rm_loss(out32, mb, pointwise_weight=0.7)
    total.backward()
    # float64 by hand: the score is the output at length - 1
    s64 = out.detach()[torch.arange(b), mb["lengths"] - 1, 0].requires_grad_(True)
    ref = 0.0
    for c, r in mb["pairs"].tolist():
        ref = ref + torch.log1p(torch.exp(-(s64[c] - s64[r])))
    for row, y in zip(mb["points"].tolist(), mb["labels"].tolist()):
        p = 1 / (1 + torch.exp(-s64[row]))
        ref = ref + 0.7 * -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    ref.backward()
    assert int(count) == len(units)
    assert float(total) == pytest.approx(float(ref), rel=1e-6)
    want = torch.zeros(b, s, 1, dtype=torch.float64)
    want[torch.arange(b), mb["lengths"] - 1, 0] = s64.grad
    assert torch.allclose(out32.grad.double(), want, atol=1e-6), (out32.grad.double() - want).abs().max()
    assert out32.grad[mb["tokens"] == 1].abs().max() == 0  # padding positions get no gradient
    pairs = mb["pairs"]
    assert float(metrics["pairs_correct"]) == float((s64[pairs[:, 0]] > s64[pairs[:, 1]]).sum())


def test_auc_is_the_mann_whitney_statistic():
    rng = random.Random(0)
    scores = [rng.gauss(0, 1) for _ in range(40)] + [0.5, 0.5]
    labels = [float(rng.random() < 0.4) for _ in range(40)] + [1.0, 0.0]
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    want = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))
    assert auc(scores, labels) == pytest.approx(want, abs=1e-12)
    assert auc([1, 2, 3], [0, 0, 1]) == 1.0 and auc([3, 2, 1], [0, 0, 1]) == 0.0
    assert math.isnan(auc([1.0, 2.0], [1, 1]))


def test_last_token_scores_reads_length_minus_one():
    out = torch.arange(12.0).view(3, 4, 1)
    assert last_token_scores(out, torch.tensor([1, 4, 2])).tolist() == [0.0, 7.0, 9.0]


def test_microbatches_never_split_a_pair_and_respect_caps():
    rng = random.Random(1)
    units = _random_units(rng, 30)
    groups = plan_unit_microbatches(units, micro_batch_size=5, micro_batch_tokens=40, multiple=2)
    assert sorted(i for g in groups for i in g) == list(range(30))
    for g in groups:
        mb = make_rm_microbatch([units[i] for i in g], pad_id=1, multiple=2)
        assert mb["tokens"].shape[0] <= 5 and mb["tokens"].numel() <= 40 and mb["tokens"].shape[1] % 2 == 0
        assert mb["pairs"].shape[0] + mb["points"].shape[0] == len(g)
        for (c, r), u in zip(mb["pairs"].tolist(), [units[i] for i in g if units[i].is_pair]):
            assert mb["tokens"][c, : len(u.sequences[0])].tolist() == list(u.sequences[0])
            assert mb["tokens"][r, : len(u.sequences[1])].tolist() == list(u.sequences[1])


# ------------------------------------------------------------------------------------------------
# data checks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row,match",
    [
        ({"prompt": "q", "chosen": "a", "rejected": "  "}, r"rejected is empty \(a pair needs both sides\)"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen is empty"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "score": 3}, r"unknown field\(s\) \['score'\]"),
        ({"prompt": "q", "response": "a"}, r"missing field\(s\) \['label'\]"),
        ({"prompt": "q", "response": "a", "label": 0.5}, "label must be 0 or 1"),
        ({"prompt": "q", "chosen": "a", "label": 1}, "not both"),
        ({"prompt": "q", "chosen": "a"}, r"missing field\(s\) \['rejected'\]"),
        ({"prompt": "q"}, "neither chosen/rejected"),
    ],
)
def test_bad_rows_are_named_by_file_and_line(tmp_path, row, match):
    path = tmp_path / "prefs.jsonl"
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=match) as e:
        read_preference_rows([str(path)])
    assert str(e.value).startswith(f"{path}:2: ")


def test_rows_of_both_kinds_and_bool_labels(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text(
        json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "id": 7}) + "\n\n"
        + json.dumps({"prompt": "q", "response": "a", "label": True}) + "\n"
    )
    rows = read_preference_rows([str(path)])
    assert [r.is_pair for r in rows] == [True, False] and rows[1].label == 1.0
    with pytest.raises(DataError, match="not found"):
        read_preference_rows([str(tmp_path / "missing.jsonl")])


def test_tokenized_rows_too_long_are_named():
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.rm.data import PreferenceRow, tokenize_rows

    tok = load_tokenizer("tiny")
    rows = [PreferenceRow("f.jsonl:3", "q" * 50, chosen="a", rejected="b")]
    with pytest.raises(DataError, match=r"f.jsonl:3: \d+ tokens > rm.max_tokens=20"):
        tokenize_rows(rows, tok, "{prompt} {response}", 20)


# ------------------------------------------------------------------------------------------------
# the embedded preference data
# ------------------------------------------------------------------------------------------------


def test_tiny_rules_and_disjoint_splits():
    from r1mega.rm.tiny_data import is_unsafe, summary_satisfies, tiny_prompts, tiny_rows

    assert summary_satisfies("The answer is 12.", "12")
    assert not summary_satisfies("The answer is 123.", "12")  # another number
    assert not summary_satisfies("Done. The answer is 12.", "12")  # two sentences
    assert not summary_satisfies("After careful work on every single step it is 12.", "12")  # long
    assert not summary_satisfies("The answer is 12", "12")  # no sentence end
    assert is_unsafe("<think> x <unsafe> </think> ok.") and not is_unsafe("<think> x </think> ok.")
    train = {p.prompt.split(" ", 2)[-1] for p in tiny_prompts("train", 300)}
    test = {p.prompt.split(" ", 2)[-1] for p in tiny_prompts("test", 60)}
    rows = tiny_rows("test", 20, kind="both")
    assert sum(r.is_pair for r in rows) == 20 and sum(r.label == 0 for r in rows) == 20
    assert all(is_unsafe(r.response) == (r.label == 0) for r in rows if not r.is_pair)
    qs = lambda ps: {p.reasoning for p in ps}  # noqa: E731
    assert not qs(tiny_prompts("train", 300)) & qs(tiny_prompts("test", 60)), "train and test share problems"
    assert train and test


# ------------------------------------------------------------------------------------------------
# megatron: float64 reference and layout invariance (multi-process)
# ------------------------------------------------------------------------------------------------


@pytest.mark.dist
def test_megatron_loss_and_head_gradient_match_float64(tmp_path):
    (r,) = run_distributed(_rm_fns.float64_reference, 1, str(tmp_path), timeout=600)
    assert r["pairs"] > 0 and r["points"] > 0
    assert r["loss"] == pytest.approx(r["loss64"], rel=1e-6)
    err = (r["grad"].double() - r["grad64"]).abs().max() / r["grad64"].abs().max()
    assert err < 1e-5, err


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rm_layouts"))
    (single,) = run_distributed(_rm_fns.train_layouts, 1, out, [dict(tp=1)], timeout=600)
    layouts = [dict(tp=2), dict(tp=2, sequence_parallel=True), dict(pp=2), dict(tp=1, pp=1)]  # last: DP=2
    per_rank = run_distributed(_rm_fns.train_layouts, 2, out, layouts, timeout=900)
    return single[0], per_rank


@pytest.mark.dist
@pytest.mark.parametrize("index,name", [(0, "tp2"), (1, "tp2+sp"), (2, "pp2"), (3, "dp2")])
def test_rm_training_matches_one_process(layout_runs, index, name):
    single, per_rank = layout_runs
    want = single["losses"]
    assert len(want) == 3 and len(set(want)) == 3 and all(math.isfinite(x) for x in want), want
    runs = [r[index] for r in per_rank if r[index]["losses"][0] is not None]
    assert runs
    for run in runs:
        for step, (got, ref) in enumerate(zip(run["losses"], want, strict=True), start=1):
            assert abs(got - ref) <= LOSS_TOL * ref, f"{name}, step {step}: {got} vs {ref}"
        for key, ref in single["eval"].items():
            assert run["eval"][key] == pytest.approx(ref, rel=LOSS_TOL, abs=1e-7), (name, key)


MOE = ["model=models/tiny_qwen3_moe.yaml", "model.vocab_size=512", "rm.micro_batch_size=2", "optimizer.lr=0.1"]  # DP ranks get 2 vs 3 microbatches


@pytest.mark.dist
def test_moe_rm_training_at_ep2_matches_one_process(tmp_path):
    """Qwen3-MoE RM, EP=2 (DP=2): DP ranks get different microbatch counts (pairs are two
    sequences, points one), padded with empty microbatches so the all-to-alls line up."""
    (single,) = run_distributed(_rm_fns.train_layouts, 1, str(tmp_path), [dict()], 11, MOE, timeout=600)
    per_rank = run_distributed(_rm_fns.train_layouts, 2, str(tmp_path), [dict(ep=2)], 11, MOE, timeout=600)
    want = single[0]["losses"]
    assert len(set(want)) == 3
    for r in per_rank:
        for step, (got, ref) in enumerate(zip(r[0]["losses"], want, strict=True), start=1):
            assert abs(got - ref) <= LOSS_TOL * ref, f"ep2, step {step}: {got} vs {ref}"
        for key, ref in single[0]["eval"].items():
            assert r[0]["eval"][key] == pytest.approx(ref, rel=LOSS_TOL, abs=1e-7), key


# ------------------------------------------------------------------------------------------------
# the job: initial weights, HF export, resume (one process each)
# ------------------------------------------------------------------------------------------------


@pytest.mark.dist
def test_init_from_a_causal_lm_and_the_export_scores_like_megatron(tmp_path):
    from tests._rm_hf_fns import hf_scores

    cfg = _rm_fns.rm_config(str(tmp_path), ["model.tie_word_embeddings=false"])
    hf_dir = _rm_fns.make_causal_hf(cfg.model, str(tmp_path / "base_hf"))
    (r,) = run_distributed(_rm_fns.init_and_export, 1, str(tmp_path), hf_dir, timeout=600)
    assert "LM head dropped" in r["used"]
    assert r["loaded"] == {"embedding": True, "final_norm": True, "head_is_fresh": True}
    want = hf_scores(r["hf_out"], r["tokens"])  # transformers' AutoModelForSequenceClassification
    err = ((r["scores"].double() - want.double()).abs().max() / want.double().abs().max()).item()
    assert err <= 1e-4, err
    info = json.loads((tmp_path / "tiny_rm" / "hf" / "r1mega_rm.json").read_text())
    assert "{response}" in info["template"]


@pytest.mark.dist
def test_resume_continues_the_uninterrupted_run(tmp_path):
    (full,) = run_distributed(_rm_fns.job_metrics, 1, str(tmp_path), "full", 4, "none", timeout=600)
    run_distributed(_rm_fns.job_metrics, 1, str(tmp_path), "cut", 2, "none", timeout=600)
    (resumed,) = run_distributed(_rm_fns.job_metrics, 1, str(tmp_path), "cut", 4, "auto", timeout=600)
    by_step = {r["step"]: r for r in resumed}
    for row in full:
        got = by_step[row["step"]]
        for key in ("loss", "eval/loss", "eval/pairwise_accuracy", "eval/pointwise_auc"):
            if key in row:
                assert got[key] == pytest.approx(row[key], rel=1e-6, abs=1e-9), (row["step"], key)
    assert {r["step"] for r in full} == {1, 2, 3, 4}


def test_rule_check_reads_the_summary_and_the_whole_response():
    from r1mega.rm.tiny_data import rule_check

    ref = {"answer": "21"}
    assert rule_check("<think> 23 - 2 = 21 </think> The answer is 21.", ref) == 1.0
    assert rule_check("<think> lots of words here and more </think> It equals 21.", ref) == 1.0
    assert rule_check("<think> 23 - 2 = 21 </think> <answer>21</answer>", ref) == 0.0  # no sentence
    assert rule_check("<think> 23 <unsafe> - 2 </think> The answer is 21.", ref) == 0.0  # unsafe reasoning
    assert rule_check("The answer is 21.", ref) == 1.0  # no reasoning: the whole text is the summary


def test_general_check_must_be_an_import_path():
    from r1mega.config import load_config
    from r1mega.configlib import ConfigError

    with pytest.raises(ConfigError, match="general_check: 'not a path'"):
        load_config("examples/configs/tiny_r1_zero.yaml", ["rl.general_check=not a path"])
