"""`python -m r1mega.kernels.bench logprob|grpo_loss|advantages --json OUT`

Runs the op's benchmark on the best device present (CUDA, else CPU with small shapes), prints a
table and writes the JSON report (schema in `r1mega.kernels.bench.common`). The device's matmul
rate and copy bandwidth are measured in the same run and every rate is reported against them.

Examples (GPU, the headline numbers of docs/benchmarks.md):
    python -m r1mega.kernels.bench logprob --json out/logprob.json
    python -m r1mega.kernels.bench grpo_loss --json out/grpo_loss.json
    python -m r1mega.kernels.bench logprob --sweep --json out/logprob_sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
from typing import Optional

import torch

from r1mega.kernels.bench import common

OPS = ("logprob", "grpo_loss", "advantages")


def _parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m r1mega.kernels.bench", description=__doc__.splitlines()[0])
    p.add_argument("op", choices=OPS)
    p.add_argument("--json", required=True, help="where to write the JSON report")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--shapes", default=None, choices=("headline", "small", "tiny"),
                   help="shape set; default headline on CUDA, small on CPU")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="comma list of fwd, fwd+bwd")
    p.add_argument("--impls", default=None,
                   help="comma list; logprob: fused,naive,liger; grpo_loss/advantages: fused,torch")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float32"),
                   help="logprob input dtype; default bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None, help="timed calls; the median is reported")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU: torch threads (1 avoids oversubscription stalls on a shared machine)")
    p.add_argument("--sweep", action="store_true",
                   help="logprob on CUDA: time the fused forward+backward over candidate tilings")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> dict:
    args = _parse(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available")
    gpu = device.type == "cuda"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    shapes_key = args.shapes or ("headline" if gpu else "small")
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    repeats = args.repeats if args.repeats is not None else (20 if gpu else 3)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("fwd", "fwd+bwd"):
            raise SystemExit(f"--modes: unknown mode {m!r} (fwd, fwd+bwd)")

    ref_reps = 10 if gpu else 3
    mm, mm_what = common.matmul_rate(device, warmup=2, repeats=ref_reps)
    bw, bw_what = common.copy_bandwidth(device, warmup=2, repeats=ref_reps)
    reference = {"matmul_tflops": mm, "matmul": mm_what, "copy_gbps": bw, "copy": bw_what}

    if args.op == "logprob":
        from r1mega.kernels.bench import logprob

        dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if gpu else torch.float32)
        impls = _impls(args.impls, ("fused", "naive", "liger"), ["fused", "naive", "liger"])
        shapes = logprob.SHAPES[shapes_key]
        if args.sweep:
            records = _sweep(device, shapes[:1], dtype, warmup, repeats, reference)
        else:
            records = logprob.run(device, shapes, modes, impls, dtype, warmup, repeats, reference)
    elif args.op == "grpo_loss":
        from r1mega.kernels.bench import grpo

        impls = _impls(args.impls, ("fused", "torch"), ["fused", "torch"] if gpu else ["fused"])
        records = grpo.run_loss(device, grpo.LOSS_SHAPES[shapes_key], modes, impls, warmup, repeats, reference)
    else:
        from r1mega.kernels.bench import grpo

        impls = _impls(args.impls, ("fused", "torch"), ["fused", "torch"] if gpu else ["fused"])
        records = grpo.run_advantages(device, grpo.ADV_SHAPES[shapes_key], impls, warmup, repeats, reference)

    doc = common.write_report(args.json, args.op, device, reference, records)
    _print_table(doc)
    return doc


def _impls(arg: Optional[str], allowed: tuple[str, ...], default: list[str]) -> list[str]:
    if arg is None:
        return default
    chosen = [x.strip() for x in arg.split(",") if x.strip()]
    for x in chosen:
        if x not in allowed:
            raise SystemExit(f"--impls: unknown implementation {x!r}; expected some of {allowed}")
    return chosen


def _sweep(device, shapes, dtype, warmup, repeats, reference):
    """Fused forward+backward over a grid of tilings (CUDA only: the interpreter's timings mean nothing)."""
    if device.type != "cuda":
        raise SystemExit("--sweep times compiled kernels: it needs a CUDA device")
    from r1mega.kernels.bench import logprob
    from r1mega.kernels.logprob_triton import override_tiling

    records = []
    grid = itertools.product((64, 128), (64, 128, 256), (32, 64), (4, 8), (3, 4))
    for bn, bv, bh, warps, stages in grid:
        fields = dict(block_n=bn, block_v=bv, block_h=bh, num_warps=warps, num_stages=stages)
        with override_tiling(**fields):
            try:
                recs = logprob.run(device, shapes, ["fwd+bwd"], ["fused"], dtype, warmup, repeats, reference)
            except Exception as e:  # a tiling that does not compile (shared memory) is a result too
                recs = [common.Record(op="logprob", impl="fused", mode="fwd+bwd", shape={}, dtype=str(dtype),
                                      device="cuda", backend="triton", error=f"{type(e).__name__}: {e}"[:300])]
        for r in recs:
            r.impl = "fused[" + ",".join(f"{k}={v}" for k, v in fields.items()) + "]"
        records.extend(recs)
    return records


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def _print_table(doc: dict) -> None:
    ref = doc["reference"]
    print(f"{doc['op']} on {doc['device']} @ {doc['commit'][:12]} {doc['date']}")
    print(f"  measured matmul {ref['matmul_tflops']:.2f} TFLOP/s ({ref['matmul']}), "
          f"copy {ref['copy_gbps']:.1f} GB/s ({ref['copy']})")
    header = f"  {'impl':<10} {'mode':<8} {'shape':<28} {'ms':>10} {'TFLOP/s':>8} {'%mm':>6} {'GB/s':>8} " \
             f"{'%copy':>6} {'extra MiB':>10} {'%logits':>8}"
    print(header)
    for r in doc["results"]:
        shape = ",".join(f"{k}={v}" for k, v in r["shape"].items())
        t = r["time"]["median_ms"] if r["time"] else None
        extra = None if r["peak_extra_bytes"] is None else r["peak_extra_bytes"] / 2**20
        print(f"  {r['impl'][:10]:<10} {r['mode']:<8} {shape:<28} {_fmt(t, '10.3f')} {_fmt(r['tflops'], '8.3f')} "
              f"{_fmt(r['pct_of_matmul'], '6.1f')} {_fmt(r['gbps'], '8.2f')} {_fmt(r['pct_of_copy'], '6.1f')} "
              f"{_fmt(extra, '10.2f')} {_fmt(r['peak_extra_pct_of_logits'], '8.2f')}"
              + (f"  [{r['error']}]" if r["error"] else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
