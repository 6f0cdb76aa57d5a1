"""Memory planning: pure arithmetic over ModelConfig + ParallelConfig + rollout settings that says,
before anything is allocated, whether a layout fits its GPUs (r1mega plan, and every job's start-up)."""
