"""Run in a process of its own (a fake process group): one rank's parameters built on the meta device."""

import json
import sys
import warnings


def main() -> None:
    warnings.filterwarnings("ignore")
    from r1mega.config import load_config
    from r1mega.parallel.config import ParallelConfig
    from r1mega.plan.meta_build import meta_rank_parameter_counts

    config, overrides, layout, world, stages = json.loads(sys.argv[1])
    cfg = load_config(config, overrides)
    parallel = ParallelConfig(**layout) if layout is not None else cfg.parallel
    out = [meta_rank_parameter_counts(cfg.model, parallel, world, r) for r in stages]
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
