"""r1mega.kernels: the hot RL math, as Triton kernels with a torch reference of the same signature.

- `fused_logprob`: per-token log-probs (and entropy) from hidden states and a (vocab-parallel)
  output-layer weight, forward and backward, without materialising [tokens, vocab] logits.
- `group_advantages`: GRPO / Dr.GRPO / RLOO / REINFORCE++ advantages from rewards.
- `policy_loss` + `PolicyLossOptions`: the fused per-token policy loss (PPO-clip with asymmetric
  and dual clip, GSPO sequence ratio, CISPO, KL to a reference, entropy bonus, TIS) with its
  backward and the metrics RL runs log.

Each op dispatches Triton on CUDA and the torch reference elsewhere (`r1mega.kernels.dispatch`:
`set_backend` / `use_backend` / R1MEGA_KERNEL_BACKEND / per-call `backend=`). Importing this
package does not import triton; the Triton modules load at their first use.
"""

if __name__ == "kernels":
    # This directory is `r1mega.kernels`. Python started in the repo root (`python -m pytest`,
    # `python -c`, a notebook) puts the root on sys.path, so `import kernels` would find this file
    # before PyPI's `kernels` (a transformers and SGLang dependency) and break them. Reached under
    # that name, hand the import over to the real top-level `kernels`, or fail as if absent.
    from r1mega._top_level_kernels import hand_over_to_pypi_kernels

    hand_over_to_pypi_kernels(__file__)
else:
    from r1mega.kernels.advantages import ADVANTAGE_MODES, group_advantages
    from r1mega.kernels.dispatch import get_backend, set_backend, use_backend
    from r1mega.kernels.logprob import fused_logprob
    from r1mega.kernels.policy_loss import METRIC_NAMES, PolicyLossOptions, policy_loss

    __all__ = [
        "fused_logprob",
        "group_advantages",
        "ADVANTAGE_MODES",
        "policy_loss",
        "PolicyLossOptions",
        "METRIC_NAMES",
        "get_backend",
        "set_backend",
        "use_backend",
    ]
