"""Model configs per family and the megatron-core GPTModel builder."""
