"""HF safetensors directory -> megatron-core torch_dist checkpoint (the body of
tools/convert_hf_to_mcore.py).

Order of work: every check that needs no model first (config.json maps to a ModelConfig and matches
--model-config, the shard index agrees with the files, no file is truncated, the destination may be
written), then the model is built at the requested layout and each rank reads only its own shards
(`load_hf_into_model`, which also checks every tensor's presence and shape), and only then is
anything written, into a temporary directory renamed into place at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Optional

from r1mega.convert import cli

ASSETS_DIR = "hf_assets"
"""Where the HF checkpoint's non-weight files (tokenizer, generation config) travel along."""
_NOT_ASSETS = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_hf_to_mcore.py",
        description="Convert an HF safetensors checkpoint into a megatron-core torch_dist checkpoint.",
    )
    p.add_argument("--hf-dir", required=True, help="HF checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--out", required=True, help="destination directory of the torch_dist checkpoint")
    p.add_argument("--model-config", default=None,
                   help="r1mega model YAML the checkpoint must match (refused, field by field, if not); "
                        "its training-only fields (e.g. make_vocab_size_divisible_by) are kept")
    cli.add_layout_args(p, "to build and save with (the saved checkpoint loads at any layout)")
    cli.add_common_args(p)
    return p


def hf_assets(hf_dir: Path) -> list[Path]:
    """Top-level non-weight files of an HF checkpoint, except config.json and the index."""
    skip = {"config.json", "model.safetensors.index.json"}
    return sorted(
        p for p in hf_dir.iterdir()
        if p.is_file() and p.name not in skip and not p.name.endswith(_NOT_ASSETS) and not p.name.startswith(".")
    )


def convert(args) -> None:
    """Rank body (see the module docstring)."""
    from r1mega.convert.atomic import atomic_directory, check_destination
    from r1mega.convert.hf_checkpoint import HFCheckpoint
    from r1mega.convert.hf_config import check_config_matches, model_config_from_hf
    from r1mega.convert.live import local_tensors
    from r1mega.convert.load import load_hf_into_model
    from r1mega.convert.mcore_checkpoint import save_model_checkpoint, write_record
    from r1mega.models.builder import build_model
    from r1mega.parallel.distributed import init_distributed

    hf_dir = Path(args.hf_dir)
    config_json = hf_dir / "config.json"
    if not config_json.is_file():
        raise ValueError(f"{hf_dir}: no config.json (not an HF checkpoint directory)")
    model_cfg = model_config_from_hf(config_json)
    if args.model_config:
        given = cli.load_model_config_file(args.model_config)
        check_config_matches(given, config_json, where=str(config_json))
        model_cfg = given
    checkpoint = HFCheckpoint(hf_dir)
    dtype = cli.DTYPES[args.dtype] if args.dtype != "auto" else checkpoint.dtype_of("model.embed_tokens.weight")
    if dtype not in cli.DTYPES.values():
        raise ValueError(f"{hf_dir}: weights are {dtype}; pass --dtype (float32, bfloat16 or float16)")
    check_destination(args.out, overwrite=args.overwrite)
    pcfg = cli.parallel_config(args, model_cfg)

    init_distributed(pcfg, seed=0, model_cfg=model_cfg)
    chunks = build_model(model_cfg, pcfg, params_dtype=dtype)
    n_local = len(local_tensors(chunks, model_cfg))
    with cli.progress_bar(n_local, "load (rank 0's shards)", args.no_progress) as bar:
        load_hf_into_model(chunks, checkpoint, model_cfg=model_cfg, progress=bar.update)
    checkpoint.close()
    with atomic_directory(args.out, overwrite=args.overwrite) as tmp:
        cli.say(f"saving torch_dist checkpoint (tp={pcfg.tp}, pp={pcfg.pp}, ep={pcfg.ep}) ...")
        save_model_checkpoint(chunks, tmp)
        if cli.is_rank0():
            write_record(
                tmp, model_cfg, json.loads(config_json.read_text(encoding="utf-8")), dtype,
                source=str(hf_dir.resolve()), saved_layout={"tp": pcfg.tp, "pp": pcfg.pp, "ep": pcfg.ep},
            )
            assets = hf_assets(hf_dir)
            if assets:
                (tmp / ASSETS_DIR).mkdir()
                for p in assets:
                    shutil.copy2(p, tmp / ASSETS_DIR / p.name)
    cli.say(f"wrote {Path(args.out).resolve()}")


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run_tool(convert, args)
