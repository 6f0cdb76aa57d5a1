"""Build the transformers model the built-in engine runs: from a config object or a local checkpoint.

Nothing is downloaded: a config object builds a randomly initialised model (tests, or a model whose
weights arrive through `update_weights`); a directory must hold `config.json` and `*.safetensors`
(pickled `.bin` checkpoints are refused), read tensor by tensor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional, Union

import torch
import transformers

if int(transformers.__version__.split(".")[0]) < 5:  # fused MoE experts, `dtype=`, experts_implementation
    raise ImportError(
        f"r1mega's built-in rollout engine needs transformers >= 5 (found {transformers.__version__})"
    )

from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig  # noqa: E402
from transformers.initialization import no_init_weights  # noqa: E402

# The families r1mega trains (model_type -> HF architecture); the engine runs their transformers code.
SUPPORTED_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

ModelSource = Union[PretrainedConfig, str, Path]


def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype: {dtype} is not one of {list(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {list(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: Union[str, torch.device]) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was requested but torch sees no CUDA device")
    return device


def load_hf_config(source: ModelSource) -> tuple[PretrainedConfig, Optional[Path]]:
    """(config, checkpoint directory or None); the model type must be one r1mega supports."""
    if isinstance(source, PretrainedConfig):
        config, directory = source, None
    else:
        directory = Path(source)
        if not (directory / "config.json").is_file():
            raise ValueError(f"{directory}: not a HF checkpoint directory (no config.json)")
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        where = f"{directory}/config.json" if directory else "config"
        raise ValueError(
            f"{where}: model_type {config.model_type!r} is not supported by the built-in engine "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    return config, directory


def build_hf_model(
    config: PretrainedConfig,
    *,
    dtype: torch.dtype,
    device: torch.device,
    attn_implementation: str = "sdpa",
    experts_implementation: Optional[str] = None,
    initialize: bool = True,
) -> torch.nn.Module:
    """The transformers CausalLM for `config`, in eval mode without grads, on `device` in `dtype`.

    With initialize=False the weights are left uninitialised (they are about to be loaded); tied
    embeddings are tied either way.
    """
    kwargs = {"dtype": dtype, "attn_implementation": attn_implementation}
    if experts_implementation is not None:
        kwargs["experts_implementation"] = experts_implementation
    with torch.device(device):
        if initialize:
            model = AutoModelForCausalLM.from_config(config, **kwargs)
        else:
            with no_init_weights():
                model = AutoModelForCausalLM.from_config(config, **kwargs)
            model.tie_weights()  # tying is part of initialisation, which was skipped
    model.eval()
    model.requires_grad_(False)
    return model


def safetensors_files(directory: Path) -> list[Path]:
    """The checkpoint's safetensors shards (from the index when there is one)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' mapping")
        files = [directory / f for f in sorted(set(weight_map.values()))]
    else:
        files = sorted(directory.glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in directory.glob("*.bin"))
        extra = f" (found {pickled}: pickle checkpoints are not loaded, convert them to safetensors)" if pickled else ""
        raise ValueError(f"{directory}: no *.safetensors weights{extra}")
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f}: listed in the checkpoint index but missing")
    return files


def iter_safetensors_buckets(
    directory: Path, bucket_bytes: int = 256 << 20
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Stream a checkpoint as HF-named buckets of about `bucket_bytes`, one tensor read at a time."""
    from safetensors import safe_open

    bucket, size = [], 0
    for path in safetensors_files(directory):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for name in f.keys():
                tensor = f.get_tensor(name)
                bucket.append((name, tensor))
                size += tensor.numel() * tensor.element_size()
                if size >= bucket_bytes:
                    yield bucket
                    bucket, size = [], 0
    if bucket:
        yield bucket


def eos_token_ids(config: PretrainedConfig, directory: Optional[Path]) -> list[int]:
    """EOS ids from the model config and, for a checkpoint, its generation_config.json."""
    found: list[int] = []

    def add(value) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v not in found:
                found.append(v)

    add(getattr(config, "eos_token_id", None))
    if directory is not None and (directory / "generation_config.json").is_file():
        gen = json.loads((directory / "generation_config.json").read_text(encoding="utf-8"))
        add(gen.get("eos_token_id"))
    return found
