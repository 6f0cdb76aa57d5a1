"""megatron-core torch_dist checkpoint -> HF safetensors directory (the body of
tools/convert_mcore_to_hf.py).

The model is rebuilt from the checkpoint's own record (r1mega_model.json: ModelConfig, original
config.json, dtype), or from --model-config + --hf-config for a checkpoint without one. A training
checkpoint of `r1mega train/sft/pretrain` (a run's checkpoints/ directory, or one iter_N in it) is
read through r1mega.training.checkpoint: its r1mega.json records the ModelConfig, and the tokenizer
comes from the run's saved config (or --tokenizer); it is written by `write_hf_export`, as the
pretrain stage writes its own export. The
checkpoint is checked before megatron reads it (storage files present and complete, metadata
unpickled only with checkpoint-metadata classes), loaded at any layout, and streamed out with
`export_hf_tensors`; rank 0 writes safetensors shards, the index, config.json and the tokenizer
files that came along, into a temporary directory renamed into place at the end.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Optional

from r1mega.convert import cli
from r1mega.convert.hf_to_mcore import ASSETS_DIR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_mcore_to_hf.py",
        description="Convert a megatron-core torch_dist checkpoint into an HF safetensors checkpoint.",
    )
    p.add_argument("--mcore-dir", required=True,
                   help="torch_dist checkpoint directory (or a Megatron-LM save dir with latest_checkpointed_iteration.txt)")
    p.add_argument("--out", required=True, help="destination HF checkpoint directory")
    p.add_argument("--hf-config", default=None,
                   help="HF config.json (or its directory) the checkpoint must match; its non-architecture "
                        "fields (token ids, ...) are kept in the written config.json")
    p.add_argument("--model-config", default=None,
                   help="r1mega model YAML, for a checkpoint without r1mega_model.json (needs --hf-config)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer (HF directory or 'tiny') written with a training checkpoint's export; "
                        "default: the one named by the run's saved config beside the checkpoints")
    p.add_argument("--max-shard-size", type=int, default=5 * 1024, help="MiB per safetensors file (default 5120)")
    p.add_argument("--bucket-size", type=int, default=512, help="MiB gathered per export step (default 512)")
    cli.add_layout_args(p, "to load with (any layout works; larger ones spread the memory)")
    cli.add_common_args(p)
    return p


def convert(args) -> None:
    """Rank body (see the module docstring)."""
    from r1mega.convert.atomic import atomic_directory
    from r1mega.convert.export import export_hf_tensors, export_plan
    from r1mega.convert.hf_checkpoint import write_safetensors_shards
    from r1mega.convert.hf_config import check_config_matches, hf_config_from_model_config, load_hf_config
    from r1mega.convert.mcore_checkpoint import (
        check_mcore_checkpoint,
        load_model_checkpoint,
        read_record,
        resolve_checkpoint_dir,
    )
    from r1mega.models.builder import build_model
    from r1mega.parallel.distributed import init_distributed

    training = find_training_checkpoint(args.mcore_dir)
    if training is not None:
        convert_training_checkpoint(args, training)
        return
    source = resolve_checkpoint_dir(args.mcore_dir)
    metadata = check_mcore_checkpoint(source)
    if args.model_config:
        if not args.hf_config:
            raise ValueError("--model-config needs --hf-config (the config.json to write)")
        model_cfg = cli.load_model_config_file(args.model_config)
        hf_base = load_hf_config(args.hf_config).to_dict()
        dtype = cli.DTYPES["float32" if args.dtype == "auto" else args.dtype]
    else:
        record = read_record(source)
        model_cfg, hf_base, dtype = record.model_config, record["hf_config"], record.dtype
        if args.dtype != "auto":
            dtype = cli.DTYPES[args.dtype]
    if args.hf_config:
        check_config_matches(model_cfg, args.hf_config, where=str(args.hf_config))
        hf_base = load_hf_config(args.hf_config).to_dict()
    pcfg = _check_output_and_layout(args, model_cfg)
    init_distributed(pcfg, seed=0, model_cfg=model_cfg)
    chunks = build_model(model_cfg, pcfg, params_dtype=dtype)
    cli.say(f"loading {source} (tp={pcfg.tp}, pp={pcfg.pp}, ep={pcfg.ep}) ...")
    load_model_checkpoint(chunks, source, checked=metadata)
    total = sum(len(it.layout.hf_names) for it in export_plan(chunks, model_cfg))
    with atomic_directory(args.out, overwrite=args.overwrite) as tmp:
        buckets = export_hf_tensors(chunks, args.bucket_size << 20, model_cfg=model_cfg)
        if cli.is_rank0():
            with cli.progress_bar(total, "export", args.no_progress) as bar:
                write_safetensors_shards(buckets, tmp, max_shard_bytes=args.max_shard_size << 20, progress=bar.update)
            config = hf_config_from_model_config(model_cfg, base=hf_base)
            config.dtype = str(dtype).removeprefix("torch.")
            config.save_pretrained(str(tmp))
            assets = Path(source) / ASSETS_DIR
            if assets.is_dir():
                for p in sorted(assets.iterdir()):
                    if p.is_file():
                        shutil.copy2(p, tmp / p.name)
        else:
            for bucket in buckets:  # every rank takes part in the gathers
                del bucket
    cli.say(f"wrote {Path(args.out).resolve()}")


def _check_output_and_layout(args, model_cfg):
    """The checks every rank makes before any collective: sizes, destination, layout."""
    from r1mega.convert.atomic import check_destination

    for name, value in (("--max-shard-size", args.max_shard_size), ("--bucket-size", args.bucket_size)):
        if value < 1:
            raise ValueError(f"{name}: must be >= 1 MiB, got {value}")
    check_destination(args.out, overwrite=args.overwrite)
    return cli.parallel_config(args, model_cfg)


def find_training_checkpoint(directory) -> Optional[Path]:
    """The checkpoint to convert when `directory` is a training checkpoint (an iter_N with
    r1mega.json) or a run's checkpoint root (the latest complete one); None for other checkpoints."""
    from r1mega.training import checkpoint as ckpt

    directory = Path(directory)
    if (directory / ckpt.INFO_FILE).is_file():
        if not ckpt.is_complete(directory):
            raise ValueError(f"{directory}: an incomplete training checkpoint (its save did not finish)")
        return directory
    if (directory / ckpt.LATEST_FILE).is_file() or any(directory.glob("iter_*/" + ckpt.INFO_FILE)):
        latest = ckpt.find_latest_checkpoint(directory)
        if latest is None:
            raise ValueError(f"{directory}: no complete training checkpoint in it")
        return latest
    return None


def convert_training_checkpoint(args, path: Path) -> None:
    """Rank body for a training checkpoint: build the model its r1mega.json describes, load the
    weights (any layout), and write the HF directory with `write_hf_export`."""
    from r1mega.configlib import ConfigError, from_dict
    from r1mega.convert.export import export_plan
    from r1mega.convert.hf_config import check_config_matches
    from r1mega.convert.mcore_checkpoint import check_mcore_checkpoint
    from r1mega.models.builder import build_model
    from r1mega.models.config import ModelConfig
    from r1mega.parallel.distributed import init_distributed
    from r1mega.training import checkpoint as ckpt
    from r1mega.training.hf_export import write_hf_export

    info = ckpt.read_checkpoint_info(path)
    if args.model_config:
        model_cfg = cli.load_model_config_file(args.model_config)
    elif info.get("model_config") is None:
        raise ValueError(f"{path / ckpt.INFO_FILE}: no model_config recorded; say which model this is with --model-config")
    else:
        try:
            model_cfg = from_dict(ModelConfig, info["model_config"], where=f"{path / ckpt.INFO_FILE}: model_config")
        except ConfigError as e:
            raise ValueError(str(e)) from None
    if args.hf_config:
        check_config_matches(model_cfg, args.hf_config, where=str(args.hf_config))
    metadata = check_mcore_checkpoint(path)
    dtype = stored_weight_dtype(metadata, path) if args.dtype == "auto" else cli.DTYPES[args.dtype]
    tokenizer = _run_tokenizer(args.tokenizer, path)
    pcfg = _check_output_and_layout(args, model_cfg)
    init_distributed(pcfg, seed=0, model_cfg=model_cfg)
    chunks = build_model(model_cfg, pcfg, params_dtype=dtype)
    cli.say(f"loading {path} (step {info.get('step')}; tp={pcfg.tp}, pp={pcfg.pp}, ep={pcfg.ep}) ...")
    ckpt.load_checkpoint(path, chunks, model_config=model_cfg, load_optimizer=False, load_rng=False)
    total = sum(len(it.layout.hf_names) for it in export_plan(chunks, model_cfg))
    with cli.progress_bar(total, "export", args.no_progress) as bar:
        write_hf_export(
            chunks, model_cfg, tokenizer, args.out,
            bucket_bytes=args.bucket_size << 20, max_shard_bytes=args.max_shard_size << 20,
            overwrite=args.overwrite, hf_base=args.hf_config, progress=bar.update,
        )
    cli.say(f"wrote {Path(args.out).resolve()}")


_MODEL_KEYS = ("embedding.", "decoder.", "output_layer.")


def stored_weight_dtype(metadata, path: Path):
    """The dtype the model's tensors were saved in: the training dtype (the fp32 master weights of
    bf16 training live under the optimizer's keys, which are not the model's)."""
    for key, entry in metadata.state_dict_metadata.items():
        dtype = getattr(getattr(entry, "properties", None), "dtype", None)
        if key.startswith(_MODEL_KEYS) and dtype is not None and dtype.is_floating_point:
            return dtype
    raise ValueError(f"{path}: no model weights in the checkpoint's index")


_RUN_CONFIGS = ("train_config.yaml", "sft_config.yaml", "pretrain_config.yaml", "rm_config.yaml")


def _run_tokenizer(spec: Optional[str], path: Path):
    """--tokenizer, else data.tokenizer of the run config saved in the run directory (the parent of
    the checkpoint root)."""
    from r1mega.configlib import load_yaml_tree
    from r1mega.data.tokenizer import load_tokenizer

    if spec is None:
        run_dir = path.parent.parent
        for name in _RUN_CONFIGS:
            if (run_dir / name).is_file():
                spec = (load_yaml_tree(run_dir / name).get("data") or {}).get("tokenizer")
                if spec:
                    break
        if not spec:
            raise ValueError(
                f"{path}: no run config ({', '.join(_RUN_CONFIGS)}) with data.tokenizer in {run_dir}; "
                "name the tokenizer with --tokenizer"
            )
    return load_tokenizer(spec)


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_tool(convert, args)
