"""r1mega: DeepSeek-R1 style RL post-training on megatron-core.

`kernels/` is installed as `r1mega.kernels` (never as a top-level `kernels`: that name belongs to a
PyPI package SGLang depends on).
"""
from setuptools import find_packages, setup

_packages = find_packages(include=["r1mega", "r1mega.*"])
_kernel_packages = ["r1mega.kernels"] + [
    "r1mega.kernels." + p for p in find_packages(where="kernels")
]

setup(
    name="r1mega",
    version="0.1.0",
    description="Megatron-style RL post-training for reasoning models (the DeepSeek-R1 recipe)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=_packages + _kernel_packages,
    package_dir={"r1mega.kernels": "kernels"},
    include_package_data=True,
    package_data={"r1mega": ["assets/*", "assets/**/*"]},
    install_requires=[
        # 2.11 is the GPU image's torch, 2.13.0 the CPU build CI installs first, 2.14.1 SGLang 0.5.23's
        # pin. Exact versions live in the locks (requirements/lock-*.txt, docs/install.md).
        "torch>=2.11,<2.15",
        # Exactly the release r1mega/parallel/cpu.py was written and verified against.
        "megatron-core==0.16.1",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        # The built-in rollout engine runs transformers 5 model code (fused MoE experts,
        # experts_implementation, transformers.initialization) and the export writes its formats:
        # from 5.19 (SGLang 0.5.23's pin) to the newest release the suite passed on.
        "transformers>=5.19,<5.26",
        "sympy>=1.12",
        "math-verify>=0.8",
        "pyarrow>=15",
        "tqdm>=4.66",
        # megatron's dist_checkpointing save workers need it (see docs/cpu_support.md).
        "psutil>=5.9",
        "matplotlib>=3.8",
        "tensorboard>=2.15",
    ],
    extras_require={
        # Binary wheels only, locked in requirements/lock-gpu.txt. The rollout adapter is written
        # against SGLang 0.5.23's weight-update session API, so exactly that release.
        "gpu": [
            "sglang==0.5.23",
            "nvidia-ml-py>=12",
        ],
        # Compiled against the installed torch and CUDA (pip install --no-build-isolation); not locked.
        "gpu-build": [
            "transformer-engine[pytorch]>=2.4",
            "flash-attn>=2.7",
        ],
        # triton runs the kernels under TRITON_INTERPRET=1 in the CPU tests; the kernels use its
        # language internals, so up to the newest release they were tested on.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "pytest-timeout>=2.3", "triton>=3.4,<3.10"],
        # Benchmark comparisons only, never imported by r1mega itself: liger-kernel for
        # `python -m r1mega.kernels.bench logprob`; TRL's GRPOTrainer for tools/bench_peer.py (pinned:
        # the peer benchmark is matched to this release's GRPOConfig; locked in lock-cpu.txt).
        "bench": ["liger-kernel>=0.5", "trl==1.16.0"],
        "dev": ["ruff>=0.6", "pytest>=8", "pytest-xdist>=3.5", "pytest-timeout>=2.3", "triton>=3.4,<3.10"],
    },
    entry_points={"console_scripts": ["r1mega=r1mega.cli:main"]},
)
