"""Reward models inside RL: summary-only and full scoring, mixed reasoning/general batches giving
each sample exactly its rewards, layout invariance of the scores, and the refusals (an RM of
another vocabulary, a causal LM named as an RM, a row with an unknown prompt type)."""

from __future__ import annotations

import json

import pytest

from r1mega.parallel.launch import run_distributed
from tests import _rm_rl_fns

REASONING = {"prompt": "What is 2 + 3?", "answer": "5", "task": "arithmetic", "prompt_type": "reasoning", "metadata": {}}
GENERAL = {"prompt": "Explain what 2 + 3 is.", "answer": "5", "task": "general", "prompt_type": "general", "metadata": {}}


def _spec(root, name, part, weight=1.0, types=("general",)):
    return {"name": name, "checkpoint": root, "part": part, "weight": weight, "prompt_types": list(types),
            "micro_batch_tokens": 64}


@pytest.fixture(scope="module")
def rms(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rms"))
    (help_root,) = run_distributed(_rm_rl_fns.save_random_rm, 1, out, "helpful", 7, timeout=600)
    (safe_root,) = run_distributed(_rm_rl_fns.save_random_rm, 1, out, "safety", 8, timeout=600)
    return out, help_root, safe_root


TEXTS = [
    "<think> 2 + 3 = 5 </think> The answer is 5.",      # 0
    "<think> two plus three, five </think> The answer is 5.",  # 1: other reasoning, same summary
    "<think> 2 + 3 = 5 </think> I worked it out above.",  # 2: same reasoning, other summary
    "<think> 2 + 3 = 5 </think> <answer>5</answer>",     # 3: reasoning task output
    "no closed reasoning at all",                           # 4: no summary
]


@pytest.fixture(scope="module")
def scored(rms):
    out, help_root, safe_root = rms
    specs = [_spec(help_root, "helpful", "summary", 0.5), _spec(safe_root, "safety", "full", 2.0, ("general", "reasoning"))]
    mixed = [(TEXTS[0], GENERAL), (TEXTS[3], REASONING), (TEXTS[1], GENERAL), (TEXTS[2], GENERAL),
             (TEXTS[4], GENERAL), (TEXTS[3], REASONING)]
    batches = [mixed] + [[pair] for pair in mixed]  # the mixed batch, then each sample alone
    (single,) = run_distributed(_rm_rl_fns.score_texts, 1, out, specs, {}, batches, timeout=600)
    per_rank = run_distributed(_rm_rl_fns.score_texts, 2, out, specs, {"tp": 2}, [mixed], timeout=600)
    dp = run_distributed(_rm_rl_fns.score_texts, 2, out, specs, {}, [mixed], timeout=600)
    return single, per_rank, dp


@pytest.mark.dist
def test_summary_scoring_reads_only_the_summary_and_full_scoring_everything(scored):
    single, _, _ = scored
    mixed = single[0]
    h = [d.get("rm/helpful") for d in mixed]
    s = [d.get("rm/safety") for d in mixed]
    # mixed[0] is TEXTS[0]; mixed[2] TEXTS[1] (other reasoning); mixed[3] TEXTS[2] (other summary)
    assert h[0] == h[2], "changing only the reasoning changed the summary RM's score"
    assert h[0] != h[3], "changing the summary did not change the summary RM's score"
    assert s[0] != s[2], "changing the reasoning did not change the full-response RM's score"
    assert s[0] != s[3]


@pytest.mark.dist
def test_mixed_batches_give_each_sample_exactly_its_rewards(scored):
    single, _, _ = scored
    mixed, alone = single[0], [b[0] for b in single[1:]]
    for i, (got, want) in enumerate(zip(mixed, alone, strict=True)):
        assert got == want, f"sample {i}: {got} vs alone {want}"
    general, reasoning = mixed[0], mixed[1]
    assert "accuracy" not in general and "rm/helpful" in general and "rm/safety" in general
    assert "accuracy" in reasoning and "rm/helpful" not in reasoning and "rm/safety" in reasoning
    assert general["reward"] == pytest.approx(0.5 * general["format"] + 0.5 * general["rm/helpful"] + 2.0 * general["rm/safety"])
    assert reasoning["reward"] == pytest.approx(reasoning["accuracy"] + 0.5 * reasoning["format"] + 2.0 * reasoning["rm/safety"])
    nosum = mixed[4]
    assert nosum["rm/helpful"] == 0.0 and nosum["rm/helpful/no_summary"] == 1.0 and "rm/safety" in nosum


@pytest.mark.dist
@pytest.mark.parametrize("which", [1, 2], ids=["tp2", "dp2"])
def test_scores_do_not_depend_on_the_layout(scored, which):
    single = scored[0][0]
    for rank_result in scored[which]:
        for got, want in zip(rank_result[0], single, strict=True):
            assert got.keys() == want.keys()
            for k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


@pytest.mark.dist
def test_an_rm_of_another_vocabulary_or_a_causal_lm_is_refused(tmp_path):
    from r1mega.configlib import ConfigError
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.rewards.config import RewardModelSpec
    from r1mega.rm.scoring import check_reward_models

    (root,) = run_distributed(_rm_rl_fns.save_random_rm, 1, str(tmp_path), "big", 3, 1024, timeout=600)
    cfg = _rm_rl_fns._cfg(str(tmp_path))
    tok = load_tokenizer("tiny")
    with pytest.raises(ConfigError, match=r"rewards.models\[0\] \(big\): .*vocabulary of 1024 tokens differs from the policy's 512") as e:
        check_reward_models([RewardModelSpec(name="big", checkpoint=root)], cfg.model, tok)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not a reward model checkpoint"):
        check_reward_models([RewardModelSpec(name="none", checkpoint=str(tmp_path / "nowhere"))], cfg.model, tok)


def test_a_row_with_an_unknown_prompt_type_is_refused(tmp_path):
    from r1mega.config import load_config
    from r1mega.data.errors import DataError
    from r1mega.data.prompts import load_prompt_dataset

    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "What is 2 + 3?", "answer": "5", "task": "arithmetic"},
            {"prompt": "Explain 2 + 3.", "prompt_type": "general"},
            {"prompt": "Hi", "prompt_type": "chitchat"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config("examples/configs/tiny_r1_zero.yaml", ["data.source=files", f"data.train_files=[{path}]"])
    with pytest.raises(DataError, match=rf"{path}:3: bad_field: prompt_type 'chitchat' is not one of \['reasoning', 'general'\]"):
        load_prompt_dataset(cfg.data, "train")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    ds = load_prompt_dataset(cfg.data, "train")
    assert [ex.reference["prompt_type"] for ex in ds] == ["reasoning", "general"]
    assert ds.tasks == {"arithmetic"}  # general prompts need no accuracy check


@pytest.mark.dist
def test_offloaded_rms_score_exactly_as_resident_ones(rms, scored):
    out, help_root, safe_root = rms
    specs = [{**_spec(help_root, "helpful", "summary", 0.5), "offload": True},
             {**_spec(safe_root, "safety", "full", 2.0, ("general", "reasoning")), "offload": True}]
    mixed = [(TEXTS[0], GENERAL), (TEXTS[3], REASONING), (TEXTS[1], GENERAL), (TEXTS[2], GENERAL),
             (TEXTS[4], GENERAL), (TEXTS[3], REASONING)]
    (offloaded,) = run_distributed(_rm_rl_fns.score_texts, 1, out, specs, {}, [mixed, mixed], timeout=600)
    single, _, _ = scored
    assert offloaded[0] == single[0] and offloaded[1] == single[0]  # twice: weights back after a visit
