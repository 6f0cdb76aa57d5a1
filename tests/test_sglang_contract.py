"""Contract of the SGLang adapter against SGLang 0.5.23's real modules (installed by .ci/sglang_cpu.sh).

No GPU and no SGLang engine here: what is checked is everything the adapter assumes about SGLang's
Python API. The Engine methods it calls take the parameters it passes; `ServerArgs` (a msgspec
Struct, which raises on an unknown field) accepts its kwargs; SGLang's SamplingParams accepts its
per-request dicts; payloads built from gloo training layouts open through SGLang's own serializer
and bucket class into the export's tensors, bit for bit, on every SGLang TP rank; SGLang's safe
unpickler refuses a class outside its allow-list; and one step's call sequence, on an engine object
that speaks in SGLang's own request classes, including a failing bucket.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

from r1mega.rollout.config import RolloutConfig
from r1mega.rollout.sglang_engine import MEMORY_TAGS, SGLangEngine, SGLangError, server_args_kwargs
from r1mega.rollout.sglang_payloads import expert_filter, serialize_bucket
from r1mega.rollout.types import SamplingParams
from tests.sglang_cpu import sglang_modules
from tests.sglang_recording import RecordingEngine, request_names


@pytest.fixture(scope="module")
def sgl():
    return sglang_modules()


def _params(fn) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


def test_engine_methods_take_what_the_adapter_passes(sgl):
    engine = sgl["sglang.srt.entrypoints.engine"].Engine
    assert {"named_tensors", "load_format", "flush_cache"} <= set(_params(engine.update_weights_from_tensor))
    assert "weight_version" not in _params(engine.update_weights_from_tensor)  # set separately, see _set_version
    assert set(_params(engine.begin_weight_update)) == {"self", "selector"}
    assert set(_params(engine.end_weight_update)) == {"self"}
    for name in ("release_memory_occupation", "resume_memory_occupation"):
        assert "tags" in _params(getattr(engine, name))
    assert {"input_ids", "sampling_params", "return_logprob", "return_routed_experts"} <= set(_params(engine.generate))
    assert callable(engine.shutdown)
    assert set(_params(engine.flush_cache)) == {"self"}
    mixin = sgl["sglang.srt.managers.io_struct"]
    assert {"new_version", "abort_all_requests"} <= set(mixin.UpdateWeightVersionReqInput.__struct_fields__)
    from sglang.srt.managers.tokenizer_control_mixin import TokenizerControlMixin

    assert inspect.iscoroutinefunction(TokenizerControlMixin.update_weight_version)
    assert sgl["sglang.srt.constants"].GPU_MEMORY_ALL_TYPES == MEMORY_TAGS


def test_server_args_accept_the_adapter_kwargs(sgl):
    server_args = sgl["sglang.srt.server_args"].ServerArgs
    cfg = RolloutConfig(engine="sglang", tp=4, ep=2, mem_fraction=0.6)
    kwargs = server_args_kwargs(cfg, model_path="/models/x", base_gpu_id=4, seed=7, dtype="bfloat16")
    args = server_args(**kwargs)
    assert (args.tp_size, args.ep_size, args.base_gpu_id, args.enable_memory_saver) == (4, 2, 4, True)
    with pytest.raises(TypeError):  # negative control: a misspelt field is refused at construction
        server_args(**{**kwargs, "mem_fraction": 0.6})


def test_sglang_sampling_params_accept_the_adapter_requests(sgl):
    from sglang.srt.sampling.sampling_params import SamplingParams as SGLangSamplingParams

    recorder = RecordingEngine(sgl, tp=1)
    adapter = SGLangEngine(recorder, tp_size=1)
    adapter.version = recorder.version = "3"
    adapter.generate([[1, 2], [3]], SamplingParams(max_new_tokens=4, temperature=0.7, seed=5, stop=["x"], first_sample_index=2))
    adapter.generate([[1]], SamplingParams(max_new_tokens=4, temperature=0.5, top_k=0, seed=5))
    for call in recorder.generate_calls:
        for p in call["sampling_params"]:
            # TypeError on a key SGLang does not know, ValueError on a value it refuses
            SGLangSamplingParams(**p).verify(vocab_size=300)
    seeds = [p["sampling_seed"] for p in recorder.generate_calls[0]["sampling_params"]]
    assert len(set(seeds)) == 2


@dataclasses.dataclass
class NotAllowed:
    """A class of ours: SGLang's safe unpickler must refuse it inside a payload."""

    name: str


def test_payload_round_trip_and_allow_list(sgl):
    """Mixed dtypes in an order whose byte offsets are misaligned for SGLang's rebuild (30 bytes of
    bf16 before fp32): the payload must still open."""
    utils = sgl["sglang.srt.utils"]
    bucket_mod = sgl["sglang.srt.weight_sync.tensor_bucket"]
    tensors = [("a.weight", torch.randn(3, 5, dtype=torch.bfloat16)), ("b.bias", torch.randn(7)),
               ("c", torch.arange(6, dtype=torch.int64).view(2, 3))]
    obj = utils.MultiprocessingSerializer.deserialize(serialize_bucket(tensors))
    back = dict(bucket_mod.FlattenedTensorBucket(flattened_tensor=obj["flattened_tensor"], metadata=obj["metadata"]).reconstruct_tensors())
    assert sorted(back) == sorted(n for n, _ in tensors)
    for n, a in tensors:
        b = back[n]
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    empty = utils.MultiprocessingSerializer.deserialize(serialize_bucket([]))
    assert empty["metadata"] == [] and empty["flattened_tensor"].numel() == 0

    bad = utils.MultiprocessingSerializer.serialize({"flattened_tensor": torch.zeros(1, dtype=torch.uint8),
                                                     "metadata": [NotAllowed("x")]})
    with pytest.raises(RuntimeError, match="Blocked unsafe global"):
        utils.MultiprocessingSerializer.deserialize(bad)


def test_expert_filter_follows_sglang_ep_layout():
    keep = expert_filter(tp_size=4, ep_size=2, num_experts=8)  # moe_tp 2: TP ranks 0,1 -> EP rank 0
    name = "model.layers.1.mlp.experts.{}.up_proj.weight"
    assert [keep(r, name.format(0)) for r in range(4)] == [True, True, False, False]
    assert [keep(r, name.format(7)) for r in range(4)] == [False, False, True, True]
    assert all(keep(r, "model.layers.1.mlp.shared_experts.up_proj.weight") for r in range(4))
    assert all(keep(r, "model.layers.1.mlp.gate.weight") for r in range(4))
    assert all(expert_filter(4, 1, 8)(r, name.format(5)) for r in range(4))


def test_routing_replay_asks_for_and_decodes_routed_experts(sgl):
    recorder = RecordingEngine(sgl, tp=1, routing=(3, 2))
    adapter = SGLangEngine(recorder, tp_size=1, routing_shape=(3, 2))
    adapter.version = recorder.version = "1"
    samples = adapter.generate([[1, 2, 3], [4]], SamplingParams(max_new_tokens=2, seed=1))
    request = recorder.requests[-1]
    assert request.return_routed_experts is True  # SGLang's GenerateReqInput carries the flag
    for s in samples:
        rows = len(s.prompt_token_ids) + len(s.response_token_ids) - 1
        want = (torch.arange(rows * 6, dtype=torch.int32) % 8).view(rows, 3, 2)
        assert torch.equal(s.metadata["routed_experts"], want)
    plain = SGLangEngine(RecordingEngine(sgl, tp=1), tp_size=1)  # replay off: nothing asked for
    plain.version = plain.engine.version = "1"
    plain.generate([[1]], SamplingParams(max_new_tokens=2, seed=1))
    assert plain.engine.generate_calls[-1]["return_routed_experts"] is False
    silent = SGLangEngine(RecordingEngine(sgl, tp=1), tp_size=1, routing_shape=(3, 2))  # engine answers without them
    silent.version = silent.engine.version = "1"
    with pytest.raises(Exception, match="returned no routed_experts"):
        silent.generate([[1]], SamplingParams(max_new_tokens=2, seed=1))


# -- the adapter's call sequence ------------------------------------------------------------------


def test_one_step_call_sequence(sgl):
    recorder = RecordingEngine(sgl, tp=2)
    adapter = SGLangEngine(recorder, tp_size=2)
    adapter.release_memory()  # what launch() does right after building the engine
    buckets = [[("x.weight", torch.randn(4, 3))], [("y.bias", torch.randn(5)), ("z", torch.randn(2, dtype=torch.bfloat16))]]
    adapter.update_weights(iter(buckets), version="7")
    samples = adapter.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2, seed=1))
    adapter.release_memory()
    assert request_names(recorder.requests) == [
        "ReleaseMemoryOccupation['kv_cache', 'weights', 'cuda_graph']",
        "ResumeMemoryOccupation['weights']",
        "BeginWeightUpdate",
        "UpdateWeightsFromTensor(flush=False, flattened_bucket)",
        "UpdateWeightsFromTensor(flush=False, flattened_bucket)",
        "EndWeightUpdate",
        "UpdateWeightVersion(7)",
        "ResumeMemoryOccupation['kv_cache', 'cuda_graph']",
        "FlushCache",
        "Generate",
        "ReleaseMemoryOccupation['kv_cache', 'weights', 'cuda_graph']",
    ]
    for rank in range(2):  # each TP rank got its own complete copy
        assert sorted(recorder.loaded[rank]) == ["x.weight", "y.bias", "z"]
        for n, t in (p for b in buckets for p in b):
            assert torch.equal(recorder.loaded[rank][n], t)
    assert samples[0].response_logprobs == [-0.5, -1.25] and samples[0].finish_reason == "length"
    assert samples[0].metadata["weight_version"] == "7"


def test_a_failing_bucket_closes_the_session_and_raises_sglang_message(sgl):
    recorder = RecordingEngine(sgl, tp=1, fail_bucket=1)
    adapter = SGLangEngine(recorder, tp_size=1)
    adapter.release_memory()
    buckets = [[("x.weight", torch.randn(4, 3))], [("y.bias", torch.randn(5))], [("z", torch.randn(2))]]
    with pytest.raises(SGLangError, match=r"shape mismatch for model\.layers\.0\.mlp\.up_proj\.weight.*weight bucket 1"):
        adapter.update_weights(iter(buckets), version="2")
    names = request_names(recorder.requests)
    assert names[-3:] == ["UpdateWeightsFromTensor(flush=False, flattened_bucket)",
                          "UpdateWeightsFromTensor(flush=False, flattened_bucket)", "EndWeightUpdate"]
    assert "UpdateWeightVersion(2)" not in names and adapter.version is None


def test_a_response_from_other_weights_is_refused(sgl):
    recorder = RecordingEngine(sgl, tp=1)
    adapter = SGLangEngine(recorder, tp_size=1)
    adapter.update_weights(iter([[("x", torch.randn(2))]]), version="4")
    recorder.version = "3"  # as if the engine still served the previous step's weights
    with pytest.raises(SGLangError, match="weight version '3', expected '4'"):
        adapter.generate([[1]], SamplingParams(max_new_tokens=2, seed=0))


# -- payloads from gloo training layouts ----------------------------------------------------------


@pytest.fixture(scope="module")
def moe_checkpoint(tmp_path_factory):
    from tests.convert_helpers import make_hf_checkpoint

    return str(make_hf_checkpoint("qwen3_moe", tmp_path_factory.mktemp("sglang_payload"), seed=61))


ROLLOUT_LAYOUTS = [(1, 1), (2, 1), (2, 2), (4, 1), (4, 4)]  # (SGLang TP, SGLang EP)


@pytest.mark.dist
@pytest.mark.parametrize("layout", [{"tp": 2, "pp": 2, "sequence_parallel": True}, {"ep": 2}], ids=["tp2pp2", "ep2"])
def test_payloads_per_sglang_rank_are_the_export_bit_for_bit(sgl, moe_checkpoint, layout):
    from r1mega.parallel.launch import run_distributed
    from tests._sglang_fns import payload_case
    from tests.convert_helpers import safetensors_state

    per_rank = run_distributed(payload_case, 4, moe_checkpoint, layout, ROLLOUT_LAYOUTS, timeout=900)
    all_names = sorted(safetensors_state(moe_checkpoint))
    experts = [n for n in all_names if ".mlp.experts." in n]
    for results in per_rank:
        for r in results:
            assert r["differences"] == [], (layout, r["tp"], r["ep"], r["differences"][:3])
            if not r["is_owner"]:
                continue
            for tp_rank in range(r["tp"]):
                assert r["missing"][tp_rank] == [] and r["extra"][tp_rank] == []
                names = r["names"][tp_rank]
                if r["ep"] == 1:  # every rank's payload is the whole model
                    assert names == all_names
                else:  # exactly the experts of its EP rank, everything else
                    held = [n for n in experts if n in names]
                    assert len(held) == len(experts) // r["ep"]
                    assert sorted(set(all_names) - set(experts)) == [n for n in names if n not in experts]
    # expert filtering sends less: compare one non-owner rank's bytes at (4, 1) and (4, 4)
    by = {(r["tp"], r["ep"]): r["sent_bytes"] for r in per_rank[1]}
    assert by[(4, 4)] < by[(4, 1)]


@pytest.mark.dist
def test_job_weight_sync_pushes_each_ranks_payload_in_one_session(sgl):
    """push_to_sglang on 2 gloo ranks, one engine of SGLang TP 2 (EP 1 and 2): the owner's engine
    receives both ranks' payloads per bucket inside one session, each TP rank gets exactly its
    tensors bit for bit, and expert filtering halves what each rank sends for the experts."""
    from r1mega.parallel.launch import run_distributed
    from r1mega.rollout.sglang_payloads import expert_filter
    from tests._sglang_fns import _sync_buckets, push_case

    per_rank = run_distributed(push_case, 2, [(2, 1), (2, 2)], timeout=300)
    buckets = _sync_buckets()
    for case in range(2):
        owner, other = per_rank[0][case], per_rank[1][case]
        assert owner["owner"] and not other["owner"]
        assert owner["requests"][1:] == [
            "ResumeMemoryOccupation['weights']", "BeginWeightUpdate",
            "UpdateWeightsFromTensor(flush=False, flattened_bucket)",
            "UpdateWeightsFromTensor(flush=False, flattened_bucket)",
            "EndWeightUpdate", "UpdateWeightVersion(5)", "ResumeMemoryOccupation['kv_cache', 'cuda_graph']",
            "FlushCache",
        ]
        keep = expert_filter(2, owner["ep"], 4)
        for tp_rank in range(2):
            want = {n: t for b in buckets for n, t in b if keep(tp_rank, n)}
            got = owner["loaded"][tp_rank]
            assert sorted(got) == sorted(want)
            assert all(got[n].dtype == t.dtype and torch.equal(got[n], t) for n, t in want.items())
        assert owner["stats"]["sync_buckets"] == other["stats"]["sync_buckets"] == 2
    expert_bytes = 4 * 3 * 4 * 4
    assert per_rank[1][0]["stats"]["sync_bytes"] - per_rank[1][1]["stats"]["sync_bytes"] == expert_bytes // 2
