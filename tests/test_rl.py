"""The RL loop: response log-probs from hidden states, microbatches, the job end to end, and
layout equivalence (TP=2 and DP=2 against TP=1 / one process)."""

from __future__ import annotations

import json

import pytest
import torch

from r1mega.parallel.launch import run_distributed
from r1mega.training.rl_batch import Trajectory, build_rl_microbatches, make_rl_microbatch
from tests import _rl_fns


def _traj(prompt, response, index=0, **kw):
    return Trajectory(prompt_token_ids=list(prompt), response_token_ids=list(response),
                      rollout_logprobs=[-0.5 - 0.1 * i for i in range(len(response))], index=index, **kw)


def test_microbatch_positions_predict_the_response_tokens():
    items = [_traj([7, 8, 9], [4, 5], 0, advantage=1.5), _traj([3], [6, 7, 8, 2], 1, advantage=-0.5)]
    b = make_rl_microbatch(items, pad_id=0, multiple=4)
    assert b["tokens"].shape == (2, 8)  # longest 5 tokens padded to a multiple of 4
    for row, t in enumerate(items):
        seq = b["tokens"][row]
        r = len(t.response_token_ids)
        # the hidden state at resp_pos[j] sees tokens[:resp_pos[j] + 1] and predicts tokens[resp_pos[j] + 1]
        assert torch.equal(seq[b["resp_pos"][row, :r] + 1], torch.tensor(t.response_token_ids))
        assert torch.equal(b["resp_targets"][row, :r], torch.tensor(t.response_token_ids))
        assert b["resp_mask"][row].sum() == r
        assert (b["resp_targets"][row, r:] == -100).all()
        assert torch.allclose(b["rollout_logp"][row, :r], torch.tensor(t.rollout_logprobs))
    assert torch.equal(b["advantages"], torch.tensor([1.5, -0.5]))
    assert "old_logp" not in b and "ref_logp" not in b


def test_microbatches_cover_every_item_once_within_the_token_budget():
    gen = torch.Generator().manual_seed(0)
    items = []
    for i in range(23):
        p, r = (int(x) for x in torch.randint(1, 20, (2,), generator=gen))
        items.append(_traj(range(1, p + 1), range(1, r + 1), i, old_logprobs=[0.0] * r))
    mbs = build_rl_microbatches(items, pad_id=0, micro_batch_size=5, micro_batch_tokens=96)
    seen = sorted(i for mb in mbs for i in mb["index"].tolist())
    assert seen == list(range(23))
    for mb in mbs:
        assert mb["tokens"].numel() <= 96 and mb["tokens"].shape[0] <= 5
        assert "old_logp" in mb


@pytest.fixture(scope="module")
def start_weights(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rl_start"))
    (path,) = run_distributed(_rl_fns.save_random_start, 1, out, timeout=300)
    return out


@pytest.fixture(scope="module")
def single_logprobs(start_weights):
    (res,) = run_distributed(_rl_fns.logprob_layouts, 1, start_weights, {}, timeout=300)
    return res


def test_response_logprobs_match_a_float64_softmax_of_the_model_logits(single_logprobs):
    mask = single_logprobs["mask"].bool()
    ref = single_logprobs["reference"]
    assert mask.sum() == 7 + 3 + 11
    logp, ent = single_logprobs["logp"].double(), single_logprobs["entropy"].double()
    assert (logp[mask] < 0).all() and (ent[mask] > 0).all()  # not trivially zero
    torch.testing.assert_close(logp[mask], ref["logp"][mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent[mask], ref["entropy"][mask], rtol=1e-5, atol=1e-5)
    assert (logp[~mask] == 0).all() and (ent[~mask] == 0).all()


@pytest.mark.dist
@pytest.mark.parametrize("layout", [dict(tp=2), dict(tp=2, sequence_parallel=True)], ids=["tp2", "tp2-sp"])
def test_response_logprobs_and_grads_under_tensor_parallel(start_weights, single_logprobs, layout):
    per_rank = run_distributed(_rl_fns.logprob_layouts, 2, start_weights, layout, single_logprobs["grads"], timeout=600)
    mask = single_logprobs["mask"].bool()
    for res in per_rank:
        torch.testing.assert_close(res["logp"][mask], single_logprobs["logp"][mask], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(res["entropy"][mask], single_logprobs["entropy"][mask], rtol=1e-5, atol=1e-5)
        errors = res["grad_errors"]
        # tiny_qwen2 ties the output layer to the embedding: its gradient holds both paths
        assert "embedding.word_embeddings.weight" in errors and any("linear_qkv" in k for k in errors)
        worst = max(errors, key=errors.get)
        assert errors[worst] < 1e-5, (worst, errors[worst])


# ------------------------------------------------------------------------------------------------
# the job
# ------------------------------------------------------------------------------------------------

REQUIRED_METRICS = (
    "loss", "pg_loss", "grad_norm", "lr", "entropy", "clip_frac_low", "clip_frac_high", "ratio_mean",
    "reward/mean", "reward/accuracy", "reward/format", "accuracy", "response_length/mean",
    "response_length/max", "response_length/clip_frac", "mismatch/mean_abs", "mismatch/kl",
    "rollout_s", "reward_s", "train_s", "sync_s", "throughput/generated_tokens_per_s",
    "throughput/train_tokens_per_s",
)


@pytest.fixture(scope="module")
def tp1_run(start_weights):
    (res,) = run_distributed(
        _rl_fns.run_job, 1, start_weights,
        [f"checkpoint.init_from={start_weights}/start", "run.name=tp1", "rl.steps=3", "rl.eval_every=3",
         "rl.eval_samples=4", "rl.eval_pass_k=2", "rewards.num_workers=1", "rl.log_samples_every=3",
         "checkpoint.save_every=0"],
        timeout=600,
    )
    return res


def test_job_logs_every_metric_and_the_engine_matches_the_trainer(tp1_run, start_weights):
    rows = [r for r in tp1_run["rows"] if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        missing = [k for k in REQUIRED_METRICS if k not in row]
        assert not missing, missing
        # the weight sync is right: the engine samples with exactly the trainer's weights (fp32)
        assert row["mismatch/mean_abs"] < 1e-5, row["mismatch/mean_abs"]
        assert row["grad_norm"] > 0
    start = [r for r in tp1_run["rows"] if r["step"] == 0]
    assert start and "eval/greedy_accuracy" in start[0] and "eval/pass@1" in start[0]
    assert "eval/greedy_accuracy" in rows[-1]
    summary = json.loads(open(tp1_run["summary"]).read())
    assert summary["steps"] == 3 and summary["start"]["greedy_accuracy"] is not None
    run_dir = f"{start_weights}/tp1"
    import os

    assert os.path.exists(f"{run_dir}/metrics.png")
    assert os.path.exists(f"{run_dir}/rollouts/step3.jsonl")
    assert os.path.isdir(f"{run_dir}/checkpoints/iter_0000003")


def test_step_profile_adds_up_to_the_measured_step(tp1_run, start_weights):
    from r1mega.training.step_profile import PHASES, profile_keys

    rows = tp1_run["rows"]
    steps = [r for r in rows if r["step"] > 0]
    for prev, row in zip(rows, steps):
        parts = sum(row[f"time/{p}"] for p in PHASES) + row["time/other"]
        assert abs(parts - row["time/step"]) < 1e-6, (row["step"], parts, row["time/step"])
        # measured independently: the wall clock between two metrics rows (written to the ms)
        between = row["time"] - prev["time"]
        assert abs(between - row["time/step"]) < 0.05 + 0.02 * between, (row["step"], between, row["time/step"])
        # the named phases hold the step: what no phase claims is small
        assert row["time/other"] < 0.2 * row["time/step"], row
        for p in ("generate", "reward", "fwd_bwd", "optimizer", "sync", "bookkeeping"):
            assert row[f"time/{p}"] > 0, p
    assert steps[-1]["time/eval"] > 0 and steps[0]["time/eval"] == 0  # evaluation only at step 3
    run_dir = f"{start_weights}/tp1"
    profile = [json.loads(x) for x in open(f"{run_dir}/profile.jsonl").read().splitlines()]
    assert [(r["step"], r["rank"]) for r in profile] == [(1, 0), (2, 0), (3, 0)]
    assert all(set(profile_keys()) <= set(r) for r in profile)
    import os

    assert os.path.exists(f"{run_dir}/profile.png")


def test_a_single_update_per_batch_has_ratio_one(tp1_run):
    rows = [r for r in tp1_run["rows"] if r["step"] > 0]
    # after the first update, steps still sample at the synced weights (mismatch ~0 above) and the
    # importance ratio of a single update is exactly 1
    assert all(abs(r["ratio_mean"] - 1.0) < 1e-6 for r in rows)


@pytest.mark.dist
def test_tp2_matches_tp1_step_for_step(tp1_run, start_weights):
    per_rank = run_distributed(
        _rl_fns.run_job, 2, start_weights,
        [f"checkpoint.init_from={start_weights}/start", "run.name=tp2", "rl.steps=3", "rl.eval_every=-1",
         "parallel.tp=2", "checkpoint.save_every=0", "checkpoint.save_at_end=false"],
        timeout=900,
    )
    tp1 = [r for r in tp1_run["rows"] if r["step"] > 0]
    tp2 = [r for r in per_rank[0]["rows"] if r["step"] > 0]
    assert len(tp2) == len(tp1) == 3
    for a, b in zip(tp1, tp2):
        # same seed: the same samples, hence the same rewards
        assert a["reward/mean"] == b["reward/mean"] and a["response_length/mean"] == b["response_length/mean"]
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a["step"], a["loss"], b["loss"])
        # on-policy GRPO's loss is ~0 by construction (zero-mean advantages): the gradient and the
        # entropy of the updated policy are what show the two layouts train alike
        assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
        assert abs(a["entropy"] - b["entropy"]) < 1e-4
        assert b["mismatch/mean_abs"] < 1e-5


@pytest.mark.dist
def test_dp2_matches_one_process_step_for_step(tp1_run, start_weights):
    per_rank = run_distributed(
        _rl_fns.run_job, 2, start_weights,
        [f"checkpoint.init_from={start_weights}/start", "run.name=dp2", "rl.steps=3", "rl.eval_every=-1",
         "checkpoint.save_every=0", "checkpoint.save_at_end=false"],
        timeout=900,
    )
    tp1 = [r for r in tp1_run["rows"] if r["step"] > 0]
    dp2 = [r for r in per_rank[0]["rows"] if r["step"] > 0]
    for a, b in zip(tp1, dp2, strict=True):
        assert a["reward/mean"] == b["reward/mean"]
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"])
    # every rank's step profile, each adding up
    profile = [json.loads(x) for x in open(f"{start_weights}/dp2/profile.jsonl").read().splitlines()]
    assert sorted((r["step"], r["rank"]) for r in profile) == [(s, k) for s in (1, 2, 3) for k in (0, 1)]
    for r in profile:
        parts = sum(v for k, v in r.items() if k.startswith("time/") and k != "time/step")
        assert abs(parts - r["time/step"]) < 1e-4 and r["time/fwd_bwd"] > 0


def test_bad_rl_layouts_are_refused():
    from r1mega.configlib import ConfigError
    from r1mega.training.rl_config import RLConfig

    with pytest.raises(ConfigError, match="updates_per_batch"):
        RLConfig(prompts_per_step=3).check_layout(dp=1, group_size=3, updates_per_batch=2)
    with pytest.raises(ConfigError, match="data-parallel size 4"):
        RLConfig(prompts_per_step=3).check_layout(dp=4, group_size=2, updates_per_batch=1)
    with pytest.raises(ConfigError, match="eval_temperature"):
        RLConfig(eval_temperature=0.0).validate()


@pytest.mark.parametrize(
    "overrides, expect",
    [
        (["algorithm.name=grpo", "algorithm.kl_coef=0.01", "algorithm.updates_per_batch=2",
          "algorithm.ref_refresh_every=1"], ("kl", "logprob_s")),
        # DAPO filters on accuracy: a random model is never right, so its accuracy comes from a rule
        # that varies within a group (the filter itself is tested in test_rl_collect.py)
        (["algorithm.name=dapo", "algorithm.max_resample_rounds=1",
          "rewards.task_accuracy.arithmetic=tests._reward_fns:even_length_is_right"],
         ("groups_kept", "reward/overlong_penalty")),
        (["algorithm.name=reinforce++", "algorithm.kl_in=reward", "algorithm.kl_type=k1"], ("kl_reward_penalty",)),
        # shared-prompt rows in every pass: old and reference log-probs, the updates, the mismatch check
        (["algorithm.name=grpo", "rl.share_prompts=true", "algorithm.kl_coef=0.01", "algorithm.updates_per_batch=2",
          "rl.micro_batch_size=3"], ("kl", "logprob_s")),
    ],
    ids=["grpo-kl-2updates", "dapo", "reinforce++-kl-in-reward", "grpo-shared-prompts"],
)
def test_algorithm_paths_run_and_report(start_weights, overrides, expect):
    name = overrides[0].split("=")[1].replace("+", "p") + ("_shared" if "rl.share_prompts=true" in overrides else "")
    (res,) = run_distributed(
        _rl_fns.run_job, 1, start_weights,
        [f"checkpoint.init_from={start_weights}/start", f"run.name=alg_{name}", "rl.steps=2",
         "checkpoint.save_every=0", "checkpoint.save_at_end=false", *overrides],
        timeout=600,
    )
    rows = [r for r in res["rows"] if r["step"] > 0]
    assert len(rows) == 2
    for row in rows:
        for key in expect:
            assert key in row, (key, sorted(row))
        assert row["mismatch/mean_abs"] < 1e-5
    if "algorithm.updates_per_batch=2" in overrides:
        # the second update of a batch sees weights moved by the first: the ratio leaves 1
        assert any(abs(r["ratio_mean"] - 1.0) > 1e-7 for r in rows)
        assert all(r["kl"] >= 0 for r in rows)


def test_resume_reproduces_the_uninterrupted_run(tp1_run, start_weights):
    common = [f"checkpoint.init_from={start_weights}/start", "run.name=resumed", "rl.eval_every=-1",
              "rewards.num_workers=1"]
    run_distributed(_rl_fns.run_job, 1, start_weights, [*common, "rl.steps=2"], timeout=600)
    (res,) = run_distributed(_rl_fns.run_job, 1, start_weights, [*common, "rl.steps=3", "checkpoint.resume=auto"],
                             timeout=600)
    third = [r for r in res["rows"] if r["step"] == 3]
    want = [r for r in tp1_run["rows"] if r["step"] == 3][0]
    assert len(third) == 1
    # same sampler position, weights, optimizer moments and per-step sampling seed
    assert third[0]["reward/mean"] == want["reward/mean"]
    assert third[0]["response_length/mean"] == want["response_length/mean"]
    assert abs(third[0]["grad_norm"] - want["grad_norm"]) < 1e-5 * max(1.0, want["grad_norm"])


@pytest.mark.dist
def test_shared_prompt_rows_dp2_and_tp2_match_one_process(start_weights):
    common = [f"checkpoint.init_from={start_weights}/start", "rl.steps=2", "rl.eval_every=-1", "rl.share_prompts=true",
              "checkpoint.save_every=0", "checkpoint.save_at_end=false"]
    (one,) = run_distributed(_rl_fns.run_job, 1, start_weights, [*common, "run.name=shared1"], timeout=600)
    ref = [r for r in one["rows"] if r["step"] > 0]
    for name, layout in (("shared_dp2", []), ("shared_tp2", ["parallel.tp=2"])):
        per_rank = run_distributed(_rl_fns.run_job, 2, start_weights, [*common, f"run.name={name}", *layout],
                                   timeout=900)
        rows = [r for r in per_rank[0]["rows"] if r["step"] > 0]
        for a, b in zip(ref, rows, strict=True):
            assert a["reward/mean"] == b["reward/mean"], name
            assert abs(a["loss"] - b["loss"]) < 1e-5, (name, a["loss"], b["loss"])
            assert abs(a["grad_norm"] - b["grad_norm"]) < 1e-4 * max(1.0, a["grad_norm"]), name
            assert b["mismatch/mean_abs"] < 1e-5, name
