"""r1mega.kernels: Triton kernels for the hot RL math, each with a torch reference of the same signature."""
