"""Distributed start-up (torch.distributed + megatron parallel_state) and CPU/gloo support."""
