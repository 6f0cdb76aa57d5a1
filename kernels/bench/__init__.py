"""Kernel benchmarks: `python -m r1mega.kernels.bench logprob|grpo_loss|advantages --json OUT`.

`common` (timing, measured reference rates, provenance, the JSON schema), `memory` (peak extra
memory on CUDA and CPU), `logprob` and `grpo` (the ops' cases). Results: docs/benchmarks.md.
"""
