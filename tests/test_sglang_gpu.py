"""The SGLang engine on a real GPU (marked `gpu`; written, not yet run: no GPU was available).

    python -m pytest -m gpu tests/test_sglang_gpu.py

One colocated engine on GPU 0 serving a tiny Qwen2 checkpoint: start-up releases its memory; a
push (resume weights, begin, buckets, end, version, resume caches) loads the checkpoint; sampled
log-probs equal the built-in engine's teacher-forced log softmax(logits / T) of the same tokens;
every response carries the pushed version; an update outside a session is refused by SGLang; and
release gives the memory back.
"""

from __future__ import annotations

import shutil

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("sglang", reason="needs sglang==0.5.23 (pip install -c requirements/lock-gpu.txt -e '.[gpu]')")
    from r1mega.data.tiny_tokenizer import TINY_TOKENIZER_DIR
    from tests.convert_helpers import make_hf_checkpoint

    directory = make_hf_checkpoint("qwen2", tmp_path_factory.mktemp("sglang_gpu"), seed=5)
    for f in TINY_TOKENIZER_DIR.iterdir():
        shutil.copy(f, directory / f.name)
    return directory


def test_colocated_engine_step(checkpoint):
    from r1mega.rollout.builtin import BuiltinEngine
    from r1mega.rollout.config import RolloutConfig
    from r1mega.rollout.hf_model import iter_safetensors_buckets
    from r1mega.rollout.sglang_engine import SGLangEngine
    from r1mega.rollout.sglang_payloads import serialize_bucket
    from r1mega.rollout.types import SamplingParams

    free_before = torch.cuda.mem_get_info()[0]
    cfg = RolloutConfig(engine="sglang", tp=1, mem_fraction=0.3)
    engine = SGLangEngine.launch(cfg, model_path=str(checkpoint), base_gpu_id=0, seed=0, dtype="float32")
    try:
        assert torch.cuda.mem_get_info()[0] > free_before - (1 << 30), "start-up left the engine's memory held"
        cuda = [[(n, t.cuda()) for n, t in b] for b in iter_safetensors_buckets(checkpoint, bucket_bytes=64 << 10)]
        assert len(cuda) > 1
        engine.update_weights(iter(cuda), version="1")
        prompts = [[1, 5, 9, 13], [2, 4], [7, 7, 7]]
        samples = engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.8, seed=3))
        assert all(s.metadata["weight_version"] == "1" for s in samples)
        ref = BuiltinEngine(checkpoint, dtype="float32", device="cuda", eos_token_ids=[])
        want = ref.compute_logprobs(prompts, [s.response_token_ids for s in samples], temperature=0.8)
        for s, w in zip(samples, want):
            assert len(s.response_logprobs) == len(w)
            assert max(abs(a - b) for a, b in zip(s.response_logprobs, w)) < 2e-3
        # SGLang 0.5.23 refuses an update outside a begin/end session
        ok, message = engine.engine.update_weights_from_tensor(
            named_tensors=[serialize_bucket(cuda[0])], load_format="flattened_bucket", flush_cache=False)
        assert not ok and "begin_weight_update" in message
        engine.release_memory()
        assert torch.cuda.mem_get_info()[0] > free_before - (1 << 30)
    finally:
        engine.shutdown()
