"""Peak extra host memory and seconds of a checkpoint save and load (the 62M rows of
docs/checkpoints.md), on two gloo processes, with r1mega's measures ("after") or without them
("before", megatron-core's own path).

    python tools/measure_checkpoint_memory.py --layout '{"tp": 2}'          # after
    python tools/measure_checkpoint_memory.py --layout '{}' --before        # DP=2, before
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from r1mega.parallel.launch import run_distributed  # noqa: E402
from tests import _checkpoint_memory_fns as fns  # noqa: E402

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", default='{"tp": 2}', help="ParallelConfig fields as JSON (2 processes)")
    parser.add_argument("--before", action="store_true", help="megatron-core's own save/load path")
    args = parser.parse_args()
    layout = json.loads(args.layout)
    fn = fns.megatron_path_save_and_load if args.before else fns.save_and_load
    with tempfile.TemporaryDirectory() as out:
        results = run_distributed(fn, 2, out, layout, timeout=900)
    for rank, r in enumerate(results):
        row = {k: {"peak_extra_GiB": round(r[k]["peak_extra_bytes"] / GIB, 3), "seconds": round(r[k]["seconds"], 1),
                   "state_GiB": round(r[k]["state_bytes"] / GIB, 3)} for k in ("save", "load")}
        print(json.dumps({"rank": rank, "layout": layout, "before": args.before, **row}))


if __name__ == "__main__":
    main()
