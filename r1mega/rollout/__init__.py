"""r1mega.rollout: the generation engines behind the `RolloutEngine` interface (types.py).

builtin.py: BuiltinEngine, KV-cache sampling on the transformers model (CPU, tests); config.py: the
`rollout:` config section; engines.py: `make_engine(cfg, ...)`.
"""
