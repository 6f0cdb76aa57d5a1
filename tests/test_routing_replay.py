"""MoE routing replay (R3): the built-in engine reports the experts it routed each token to, and
megatron's routers replay them in the trainer's forwards.

- The engine's record is exactly what its routers chose: rows = prompt + response - 1 (SGLang's
  layout), dense layers -1, the same whatever the batching / prefill chunking.
- With the engine's weights in megatron, replayed and free routing choose the same experts and give
  the same log-probs (and the rollout's, within float noise).
- With perturbed router weights, free routing leaves the rollout's experts; replay keeps them and
  its log-probs equal a float64 transformers forward with those experts forced (1e-5), while free
  routing's do not (negative control). TP=2 with sequence parallelism and EP=2 replay the same.
"""

import pytest
import torch

from r1mega.parallel.launch import run_distributed
from tests import _routing_fns
from tests.convert_helpers import make_hf_checkpoint
from tests.rollout_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

FAMILIES = ["qwen3_moe", "deepseek_v3"]


@pytest.fixture(scope="module", params=FAMILIES)
def hf_dir(request, tmp_path_factory):
    return str(make_hf_checkpoint(request.param, tmp_path_factory.mktemp(request.param), seed=11))


def _moe_layers(samples) -> list[int]:
    routed = samples[0].metadata["routed_experts"]
    return [i for i in range(routed.shape[1]) if bool((routed[:, i] >= 0).all())]


def test_engine_records_its_routers_choices(hf_dir):
    from transformers import AutoModelForCausalLM

    from r1mega.rollout.routing import RoutingRecorder

    samples = _routing_fns.engine_samples(hf_dir, seed=3)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    recorder = RoutingRecorder(model)
    for s in samples:
        seq = s.prompt_token_ids + s.response_token_ids
        routed = s.metadata["routed_experts"]
        assert routed.dtype == torch.int32
        assert tuple(routed.shape) == (len(seq) - 1, model.config.num_hidden_layers, recorder.top_k)
        with torch.no_grad():
            model(torch.tensor([seq[:-1]]), use_cache=False)  # one unpadded forward, no cache
        want = recorder.take(1, len(seq) - 1)[0]
        # the same experts per token (order within the top-k is the router's, compare as sets)
        assert torch.equal(routed.sort(-1).values, want.sort(-1).values)
    dense = [i for i in range(model.config.num_hidden_layers) if i not in recorder.routers]
    for i in dense:  # DeepSeek-V3's first layer is dense: -1
        assert bool((samples[0].metadata["routed_experts"][:, i] == -1).all())


def _by_sample(recorded: torch.Tensor, batch: dict, row: int, fed: int) -> torch.Tensor:
    """Megatron's [s * b, top_k] router record (tokens in [s, b] order) -> sample `row`'s first `fed` positions."""
    b, s = batch["tokens"].shape
    return recorded.view(s, b, -1)[:fed, row]


@pytest.mark.dist
def test_replay_with_equal_weights_changes_nothing(hf_dir):
    (res,) = run_distributed(_routing_fns.replay_logprobs, 1, hf_dir, {}, None, timeout=300)
    batch, samples = res["batch"], res["samples"]
    for layer in _moe_layers(samples):
        for row, s in enumerate(samples):
            fed = len(s.prompt_token_ids) + len(s.response_token_ids) - 1
            free = _by_sample(res["recorded"][layer], batch, row, fed)
            engine = s.metadata["routed_experts"][:, layer].long()
            assert torch.equal(free.sort(-1).values, engine.sort(-1).values), f"layer {layer} sample {row}"
    mask = batch["resp_mask"].bool()
    torch.testing.assert_close(res["replayed"][mask], res["free"][mask], atol=1e-6, rtol=0)
    torch.testing.assert_close(res["replayed"][mask], batch["rollout_logp"][mask], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def perturbed(hf_dir):
    (res,) = run_distributed(_routing_fns.replay_logprobs, 1, hf_dir, {}, 7, timeout=300)
    res["reference"] = _routing_fns.forced_reference(hf_dir, res["samples"], 7)
    return res


@pytest.mark.dist
def test_replay_keeps_the_rollouts_experts_when_the_router_moved(perturbed):
    batch, samples = perturbed["batch"], perturbed["samples"]
    moved = total = 0
    for layer in _moe_layers(samples):
        for row, s in enumerate(samples):
            fed = len(s.prompt_token_ids) + len(s.response_token_ids) - 1
            free = _by_sample(perturbed["recorded"][layer], batch, row, fed).sort(-1).values
            engine = s.metadata["routed_experts"][:, layer].long().sort(-1).values
            moved += int((free != engine).any(-1).sum())
            total += fed
    assert moved / total > 0.2, f"the perturbation moved only {moved}/{total} routing decisions"
    for row, want in enumerate(perturbed["reference"]):
        n = len(want)
        torch.testing.assert_close(perturbed["replayed"][row, :n].double(), want, atol=1e-5, rtol=0)
    free_err = max((perturbed["free"][row, : len(w)].double() - w).abs().max().item()
                   for row, w in enumerate(perturbed["reference"]))
    assert free_err > 1e-3, "free routing matched the forced reference: the comparison cannot see routing"


@pytest.mark.dist
@pytest.mark.parametrize(
    "family, layout",
    [("qwen3_moe", {"tp": 2, "sequence_parallel": True}), ("deepseek_v3", {"ep": 2})],
    ids=["qwen3_moe-tp2-sp", "deepseek_v3-ep2"],
)
def test_replay_under_tensor_and_expert_parallel_matches_one_process(family, layout, tmp_path):
    hf = str(make_hf_checkpoint(family, tmp_path, seed=11))
    (single,) = run_distributed(_routing_fns.replay_logprobs, 1, hf, {}, 7, timeout=300)
    per_rank = run_distributed(_routing_fns.replay_logprobs, 2, hf, layout, 7, timeout=300)
    mask = single["batch"]["resp_mask"].bool()
    got = [r["replayed"] for r in per_rank if r["replayed"] is not None]
    assert got
    for logp in got:
        torch.testing.assert_close(logp[mask], single["replayed"][mask], atol=1e-5, rtol=0)
    # under sequence parallelism each TP rank replays its own shard of the sequence: a wrong shard
    # would hand one half's tokens the other half's experts, and the log-probs would leave these


@pytest.mark.dist
def test_rl_job_with_routing_replay(tmp_path):
    """`r1mega train` on a tiny MoE policy with replay: the trainer's log-probs of the sampled tokens
    equal the engine's (same weights, same experts) and the loss trains."""
    from tests import _rl_fns

    (res,) = run_distributed(
        _rl_fns.run_job, 1, str(tmp_path),
        ["model=models/tiny_qwen3_moe.yaml", "model.vocab_size=512", "model.max_position_embeddings=512",
         "rollout.routing_replay=true",
         "rl.steps=2", "checkpoint.save_every=0"],
        timeout=600,
    )
    rows = [r for r in res["rows"] if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["mismatch/mean_abs"] < 1e-5, row["mismatch/mean_abs"]
        assert row["grad_norm"] > 0


def test_microbatch_layout_and_bad_records():
    from r1mega.training.rl_batch import Trajectory, make_rl_microbatch

    g = torch.Generator().manual_seed(4)
    items = []
    for i, (p, r) in enumerate([(3, 4), (6, 2)]):
        routed = torch.randint(0, 8, (p + r - 1, 3, 2), generator=g, dtype=torch.int32)
        routed[:, 0] = -1  # a dense first layer
        items.append(Trajectory(prompt_token_ids=list(range(1, p + 1)), response_token_ids=list(range(r)),
                                rollout_logprobs=[0.0] * r, index=i, extra={"routed_experts": routed}))
    batch = make_rl_microbatch(items, pad_id=0, multiple=4)
    b, s = batch["tokens"].shape
    assert batch["routed_experts"].shape == (b, s, 3, 2)
    for row, t in enumerate(items):
        fed = t.length - 1
        assert torch.equal(batch["routed_experts"][row, :fed], t.extra["routed_experts"])
        assert bool((batch["routed_experts"][row, fed:] >= 0).all())  # the rest: valid, never read
    items[1].extra["routed_experts"] = items[1].extra["routed_experts"][:-1]
    with pytest.raises(ValueError, match="trajectory 1: routed_experts"):
        make_rl_microbatch(items, pad_id=0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=models/tiny_qwen2.yaml"], "no MoE layers"),
        (["parallel.recompute_granularity=full"], "full recompute"),
        (["parallel.recompute_granularity=selective", "parallel.recompute_modules=[moe]"], "contains 'moe'"),
        (["rl.share_prompts=true"], "share_prompts"),
    ],
)
def test_configurations_replay_cannot_honour_are_refused(overrides, message):
    from r1mega.config import load_config
    from r1mega.configlib import ConfigError

    base = ["model=models/tiny_qwen3_moe.yaml", "rollout.routing_replay=true"]
    load_config("examples/configs/tiny.yaml", base)  # accepted
    with pytest.raises(ConfigError, match=message):
        load_config("examples/configs/tiny.yaml", [*base, *overrides])


def test_sglang_payload_decodes_to_the_engine_layout():
    import base64

    import numpy as np

    from r1mega.rollout.routing import decode_sglang

    want = torch.randint(-1, 8, (7, 3, 2), generator=torch.Generator().manual_seed(2), dtype=torch.int32)
    text = base64.b64encode(want.numpy().astype(np.int32).tobytes()).decode("utf-8")
    assert torch.equal(decode_sglang(text, num_layers=3, top_k=2, tokens=7), want)
    with pytest.raises(ValueError, match="expected 8"):
        decode_sglang(text, num_layers=3, top_k=2, tokens=8)
    with pytest.raises(ValueError, match="not a multiple"):
        decode_sglang(text, num_layers=4, top_k=2)
