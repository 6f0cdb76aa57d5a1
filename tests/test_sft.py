"""The supervised trainer: layout invariance of the training losses (TP=2, PP=2 with 2 microbatches,
DP=2 vs one process), the token-mean over data-parallel ranks, loss going down, response-only masks,
microbatch planning, the pretrain corpus knobs and the LR schedule."""

import math
import random

import pytest
import torch

from r1mega.configlib import ConfigError
from r1mega.parallel.launch import run_distributed
from r1mega.training.batching import build_microbatches, dp_share, make_microbatch, plan_microbatches
from tests import _sft_fns

LOSS_TOL = 1e-5  # relative, per step


# ------------------------------------------------------------------------------------------------
# layout invariance and the DP token-mean (multi-process)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sft_layouts"))
    (single,) = run_distributed(_sft_fns.train_layouts, 1, out, [dict(tp=1)], timeout=600)
    layouts = [dict(tp=2), dict(pp=2), dict(tp=1, pp=1)]  # the last one is DP=2
    per_rank = run_distributed(_sft_fns.train_layouts, 2, out, layouts, timeout=600)
    return single[0], per_rank


def _reported(per_rank, i):
    """The loss curve reported by the ranks of layout i that hold one (the last pipeline stage)."""
    curves = [r[i] for r in per_rank if r[i]["losses"][0] is not None]
    assert curves, "no rank reported losses"
    return curves


@pytest.mark.dist
@pytest.mark.parametrize("index,name", [(0, "tp2"), (1, "pp2, 2 microbatches"), (2, "dp2")])
def test_losses_equal_the_single_process_run_step_for_step(layout_runs, index, name):
    single, per_rank = layout_runs
    want = single["losses"]
    assert len(want) == 3 and want[0] > want[-1], want  # the run trains
    for run in _reported(per_rank, index):
        for step, (got, ref) in enumerate(zip(run["losses"], want, strict=True), start=1):
            assert abs(got - ref) <= LOSS_TOL * ref, f"{name}, step {step}: {got} vs {ref}"
        assert abs(run["eval_loss"] - single["eval_loss"]) <= LOSS_TOL * single["eval_loss"], name


@pytest.mark.dist
def test_dp_loss_is_the_token_mean_of_the_global_batch(layout_runs):
    """DP=2 ranks hold different token counts; the reported loss (and the gradient, since the next
    steps match) is the token-mean over both, not the mean of the two ranks' means."""
    single, per_rank = layout_runs
    ranks = sorted(_reported(per_rank, 2), key=lambda r: r["dp_rank"])
    assert len(ranks) == 2
    worst_wrong = 0.0
    for step in range(3):
        (sum0, n0), (sum1, n1) = ranks[0]["local"][step], ranks[1]["local"][step]
        assert n0 != n1, "the test needs unequal token counts per DP rank"
        token_mean = (sum0 + sum1) / (n0 + n1)
        assert token_mean == pytest.approx(single["losses"][step], rel=LOSS_TOL)
        # the single process saw all tokens of the batch
        s_sum, s_n = single["local"][step]
        assert s_n == n0 + n1 and s_sum == pytest.approx(sum0 + sum1, rel=LOSS_TOL)
        mean_of_means = (sum0 / n0 + sum1 / n1) / 2
        worst_wrong = max(worst_wrong, abs(mean_of_means - token_mean) / token_mean)
    # the wrong reduction lies well outside the tolerance: the comparison can tell them apart
    assert worst_wrong > 10 * LOSS_TOL


@pytest.mark.dist
def test_loss_decreases_and_the_job_writes_its_files(tmp_path):
    (result,) = run_distributed(_sft_fns.loss_curve, 1, str(tmp_path), 30, ["optimizer.lr=3e-3"], timeout=600)
    losses = [r["loss"] for r in result["rows"]]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3, losses
    run_dir = tmp_path / "tiny"
    assert (run_dir / "metrics.png").stat().st_size > 0
    assert (run_dir / "sft_config.yaml").is_file()
    assert result["checkpoint"].endswith("iter_0000030")
    assert "eval/loss" in result["rows"][-1]  # held-out loss at the end


# ------------------------------------------------------------------------------------------------
# masks and microbatches (single process, no megatron)
# ------------------------------------------------------------------------------------------------


def _sft_examples(overrides=(), split="train"):
    from r1mega.data.sft import load_sft_dataset
    from r1mega.data.tokenizer import load_tokenizer

    cfg = _sft_fns.sft_config("/tmp", ["data.procedural.train_size=24", *overrides])
    tok = load_tokenizer("tiny")
    return cfg, tok, load_sft_dataset(cfg.data, split, tok)


@pytest.mark.parametrize("template", ["raw", "r1_zero"])
def test_response_only_targets(template):
    """The targets of each row are exactly the response tokens and EOS, each predicted from the
    token before it; prompt and padding positions are never targets."""
    from r1mega.data.tasks import generate

    cfg, tok, ds = _sft_examples([f"data.template={template}"])
    problems = generate(cfg.data.procedural, "train")
    examples = [ds[i] for i in range(5)]
    mb = make_microbatch(examples, tok.pad_token_id)
    for row, (ex, problem) in enumerate(zip(examples, problems, strict=False)):
        targets = mb["labels"][row][mb["loss_mask"][row] == 1].tolist()
        assert tok.decode(targets) == problem.solution + tok.eos_token
        n = len(ex.input_ids)
        p = ex.prompt_length
        # label t is token t+1; the first target is the first response token, predicted at p - 1
        assert mb["loss_mask"][row, : p - 1].sum() == 0 and mb["loss_mask"][row, p - 1 : n - 1].min() == 1
        assert mb["loss_mask"][row, n - 1 :].sum() == 0  # last real position and the padding
        assert torch.equal(mb["labels"][row, : n - 1], torch.tensor(ex.input_ids[1:]))
        assert torch.equal(mb["tokens"][row, :n], torch.tensor(ex.input_ids))


def test_token_sum_loss_counts_only_targets():
    from r1mega.training.sft import token_sum_loss

    gen = torch.Generator().manual_seed(3)
    per_token = torch.rand((3, 7), generator=gen, dtype=torch.float32)
    mask = (torch.rand((3, 7), generator=gen) > 0.4).float()
    loss_sum, n, metrics = token_sum_loss(per_token, {"loss_mask": mask})
    want = sum(per_token[i, j].double() for i in range(3) for j in range(7) if mask[i, j] == 1)
    assert loss_sum.item() == pytest.approx(float(want), rel=1e-6)
    assert int(n) == int(mask.sum()) and metrics["num_tokens"].item() == int(mask.sum())


def test_microbatch_plan_respects_caps_and_covers_every_sample():
    rng = random.Random(5)
    lengths = [rng.randint(3, 60) for _ in range(37)]
    for mbs, budget, multiple in [(4, None, 1), (8, 128, 1), (16, 200, 8), (1, None, 4)]:
        groups = plan_microbatches(lengths, micro_batch_size=mbs, micro_batch_tokens=budget, multiple=multiple)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        for g in groups:
            assert len(g) <= mbs
            width = -(-max(lengths[i] for i in g) // multiple) * multiple
            if budget is not None:
                assert len(g) * width <= budget
    with pytest.raises(ValueError, match=r"micro_batch_tokens: 32 is smaller than one sample of 60 tokens"):
        plan_microbatches([10, 60], micro_batch_size=4, micro_batch_tokens=32)


def test_microbatches_pad_to_the_multiple():
    cfg, tok, ds = _sft_examples()
    mbs = build_microbatches(list(ds)[:9], pad_id=tok.pad_token_id, micro_batch_size=4, multiple=8)
    assert [mb["tokens"].shape[0] for mb in mbs] == [4, 4, 1]
    assert all(mb["tokens"].shape[1] % 8 == 0 for mb in mbs)
    assert sum(mb["loss_mask"].sum().item() for mb in mbs) == sum(sum(ex.loss_mask) - ex.loss_mask[0] for ex in list(ds)[:9])


def test_dp_share_is_contiguous_and_complete():
    batch = list(range(100, 112))
    shares = [dp_share(batch, r, 3) for r in range(3)]
    assert shares == [batch[0:4], batch[4:8], batch[8:12]]
    with pytest.raises(ValueError, match="does not split over 5 DP ranks"):
        dp_share(batch, 0, 5)


# ------------------------------------------------------------------------------------------------
# pretrain corpus
# ------------------------------------------------------------------------------------------------


def _pretrain(overrides):
    from r1mega.data.tokenizer import load_tokenizer
    from r1mega.training.pretrain_data import load_pretrain_dataset, pretrain_rows

    cfg = _sft_fns.sft_config("/tmp", ["data.template=r1_zero", "data.procedural.train_size=200", *overrides])
    tok = load_tokenizer("tiny")
    return cfg, tok, pretrain_rows(cfg.data, cfg.pretrain, "train"), load_pretrain_dataset(cfg.data, cfg.pretrain, "train", tok)


def test_pretrain_corpus_mixes_formatted_and_bare_answers():
    from r1mega.rewards.format import is_well_formatted

    cfg, tok, rows, ds = _pretrain(["pretrain.format_fraction=0.3", "data.procedural.wrong_solution_fraction=0.25"])
    formatted = [r for r in rows if r.metadata["formatted"]]
    assert len(formatted) == 60  # exactly round(200 * 0.3)
    assert all(is_well_formatted(r.response) for r in formatted)
    assert all(r.response.lstrip("-").isdigit() for r in rows if not r.metadata["formatted"])
    assert sum(not r.metadata["solution_correct"] for r in rows) == 50
    # a wrong worked solution's answer differs from the truth; a correct one's agrees
    for r in formatted:
        answer = r.response.split("<answer>")[1].split("</answer>")[0]
        assert (answer == r.answer) == r.metadata["solution_correct"]
    # document loss: every token but the first is a target
    assert all(ex.loss_mask == [0] + [1] * (len(ex.input_ids) - 1) for ex in ds)


def test_pretrain_corpus_response_loss_and_split_disjointness():
    from r1mega.training.pretrain_data import pretrain_rows

    cfg, tok, rows, ds = _pretrain(["pretrain.loss_on=response", "pretrain.format_fraction=1.0"])
    prompt_len = [ex.prompt_length for ex in ds]
    assert all(p > 10 for p in prompt_len)  # the template is not a target
    test_rows = pretrain_rows(cfg.data, cfg.pretrain, "test")
    assert not {r.prompt for r in rows} & {r.prompt for r in test_rows}


def test_pretrain_needs_procedural_data():
    from r1mega.data.errors import DataError
    from r1mega.training.pretrain_data import pretrain_rows

    cfg = _sft_fns.sft_config("/tmp", ["data.source=files", "data.train_files=[x.jsonl]"])
    with pytest.raises(DataError, match="data.source: `r1mega pretrain` builds its corpus from generated problems"):
        pretrain_rows(cfg.data, cfg.pretrain, "train")


# ------------------------------------------------------------------------------------------------
# LR schedule and config
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["constant", "linear", "cosine"])
def test_megatron_scheduler_follows_the_closed_form(style):
    from r1mega.training.optimizer import OptimizerConfig
    from r1mega.training.schedule import build_lr_scheduler, lr_at

    cfg = OptimizerConfig(lr=5e-5, min_lr=5e-6, lr_warmup_steps=3, lr_warmup_init=1e-6, lr_decay_style=style)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    sched = build_lr_scheduler(opt, cfg, total_steps=20)
    seen = []
    for step in range(25):
        seen.append(opt.param_groups[0]["lr"])
        assert seen[-1] == pytest.approx(lr_at(cfg, 20, step), rel=1e-12)
        sched.step(1)
    assert seen[0] == pytest.approx(1e-6) and seen[3] == pytest.approx(5e-5)
    if style == "cosine":
        # half way through the decay: the midpoint of lr and min_lr
        assert seen[3 + 17 // 2] == pytest.approx(5e-6 + (5e-5 - 5e-6) * 0.5 * (1 + math.cos(math.pi * 8 / 17)))
    if style != "constant":
        assert seen[20] == pytest.approx(5e-6) and seen[24] == pytest.approx(5e-6)
    # resume: a fresh scheduler given the state continues the curve
    fresh = build_lr_scheduler(opt, cfg, total_steps=20)
    fresh.load_state_dict(sched.state_dict())
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_at(cfg, 20, 25))


@pytest.mark.parametrize(
    "override,match",
    [
        ("sft.steps=0", r"sft.steps: must be >= 1"),
        ("sft.epochs=2", r"sft.steps: set exactly one of steps and epochs"),
        ("sft.micro_batch_tokens=0", r"sft.micro_batch_tokens: must be >= 1"),
        ("sft.accuracy_every=-2", r"sft.accuracy_every: must be >= -1"),
        ("pretrain.format_fraction=1.5", r"pretrain.format_fraction: must be in \[0, 1\]"),
        ("pretrain.loss_on=prompt", r"pretrain.loss_on: 'prompt' is not one of"),
        ("optimizer.lr_warmup_steps=-1", r"optimizer.lr_warmup_steps: must be >= 0"),
        ("optimizer.lr_decay_style=exp", r"optimizer.lr_decay_style: 'exp' is not one of"),
    ],
)
def test_config_mistakes_are_named(override, match):
    from r1mega.config import load_config

    with pytest.raises(ConfigError, match=match):
        load_config(_sft_fns.TINY, [override])


def test_epochs_give_steps_and_dp_must_divide_the_batch():
    from r1mega.training.sft_config import SFTConfig

    cfg = SFTConfig(steps=None, epochs=2.5, global_batch_size=32)
    assert cfg.total_steps(1000) == math.ceil(2500 / 32)
    with pytest.raises(ConfigError, match="sft.global_batch_size: 32 is not divisible by the data-parallel size 3"):
        cfg.check_data_parallel(3)
    from r1mega.training.schedule import decay_steps
    from r1mega.training.optimizer import OptimizerConfig

    with pytest.raises(ConfigError, match="optimizer.lr_warmup_steps: 50 leaves no decay within 40 steps"):
        decay_steps(OptimizerConfig(lr_warmup_steps=50), 40)
