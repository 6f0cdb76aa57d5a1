"""An object standing where `sglang.Engine` stands, speaking in SGLang 0.5.23's own request classes.

Every call the adapter makes becomes the request object `sglang.Engine` would build from it, and
weight payloads are opened as SGLang's TP ranks open them (`MultiprocessingSerializer`,
`FlattenedTensorBucket`). Used by the contract tests and the weight-sync tests.
"""

from __future__ import annotations

import asyncio
import base64

import torch


class RecordingEngine:
    """Stands where `sglang.Engine` stands; every call becomes the SGLang request object that
    sglang.Engine would build from it (SGLang's own classes), and payloads are opened as SGLang's
    TP ranks open them. `fail_bucket`: that update returns SGLang's failure tuple."""

    def __init__(self, sgl, tp: int, fail_bucket: int | None = None, routing: tuple[int, int] | None = None):
        self.io = sgl["sglang.srt.managers.io_struct"]
        self.utils = sgl["sglang.srt.utils"]
        self.bucket_cls = sgl["sglang.srt.weight_sync.tensor_bucket"].FlattenedTensorBucket
        self.tp = tp
        self.fail_bucket = fail_bucket
        self.requests: list = []
        self.loaded: list[dict[str, torch.Tensor]] = [dict() for _ in range(tp)]
        self.generate_calls: list[dict] = []
        self.loop = asyncio.new_event_loop()
        self.tokenizer_manager = self
        self.version = "default"
        self.routing = routing  # (num_layers, top_k): answer return_routed_experts as SGLang does

    def release_memory_occupation(self, tags=None):
        self.requests.append(self.io.ReleaseMemoryOccupationReqInput(tags=tags))

    def resume_memory_occupation(self, tags=None):
        self.requests.append(self.io.ResumeMemoryOccupationReqInput(tags=tags))

    def begin_weight_update(self, selector="all"):
        self.requests.append(self.io.BeginWeightUpdateReqInput(selector=selector))
        return True, "ok"

    def end_weight_update(self):
        self.requests.append(self.io.EndWeightUpdateReqInput())
        return True, "ok"

    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        req = self.io.UpdateWeightsFromTensorReqInput(
            serialized_named_tensors=named_tensors, load_format=load_format, flush_cache=flush_cache)
        self.requests.append(req)
        index = sum(isinstance(r, self.io.UpdateWeightsFromTensorReqInput) for r in self.requests) - 1
        if index == self.fail_bucket:
            return False, "Failed to update weights: shape mismatch for model.layers.0.mlp.up_proj.weight"
        assert len(req.serialized_named_tensors) == self.tp
        for rank, payload in enumerate(req.serialized_named_tensors):
            obj = self.utils.MultiprocessingSerializer.deserialize(payload)
            if obj["metadata"]:
                for n, t in self.bucket_cls(flattened_tensor=obj["flattened_tensor"], metadata=obj["metadata"]).reconstruct_tensors():
                    self.loaded[rank][n] = t.clone()
        return True, "Succeeded to update model weights."

    def flush_cache(self):
        self.requests.append(self.io.FlushCacheReqInput())
        return self.io.FlushCacheReqOutput(success=True)

    async def update_weight_version(self, obj):
        self.requests.append(obj)
        self.version = obj.new_version

    def generate(self, input_ids=None, sampling_params=None, return_logprob=False, return_routed_experts=False, **_):
        self.requests.append(self.io.GenerateReqInput(input_ids=input_ids, sampling_params=sampling_params,
                                                      return_logprob=return_logprob,
                                                      return_routed_experts=return_routed_experts))
        self.generate_calls.append({"input_ids": input_ids, "sampling_params": sampling_params,
                                    "return_routed_experts": return_routed_experts})
        outputs = []
        for ids in input_ids:
            meta = {"finish_reason": {"type": "length", "length": 2}, "weight_version": self.version,
                    "output_token_logprobs": [(-0.5, 5, None), (-1.25, 6, None)]}
            if return_routed_experts and self.routing:
                # int32 [prompt + 2 output - 1, layers, top_k], base64 as the tokenizer manager sends it
                rows = len(ids) + 2 - 1
                routed = torch.arange(rows * self.routing[0] * self.routing[1], dtype=torch.int32) % 8
                meta["routed_experts"] = base64.b64encode(routed.numpy().tobytes()).decode("utf-8")
            outputs.append({"output_ids": [5, 6], "meta_info": meta})
        return outputs


def request_names(requests) -> list[str]:
    """Compact names of the recorded requests, with the fields the sequence tests assert on."""
    out = []
    for r in requests:
        kind = type(r).__name__.removesuffix("ReqInput")
        if kind in ("ReleaseMemoryOccupation", "ResumeMemoryOccupation"):
            kind += f"{r.tags}"
        elif kind == "UpdateWeightsFromTensor":
            kind += f"(flush={r.flush_cache}, {r.load_format})"
        elif kind == "UpdateWeightVersion":
            kind += f"({r.new_version})"
        out.append(kind)
    return out
