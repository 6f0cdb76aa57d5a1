"""r1mega: DeepSeek-R1 style RL post-training on megatron-core."""

__version__ = "0.1.0"
