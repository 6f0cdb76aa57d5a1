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
