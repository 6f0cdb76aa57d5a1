#!/usr/bin/env bash
# Install SGLang 0.5.23's Python modules on a CPU-only machine, so the rollout adapter's contract tests
# (tests/test_sglang_contract.py) run against SGLang's real classes in every CI run.
#
# Run it inside the CI virtualenv after r1mega is installed from requirements/lock-cpu.txt, without
# PIP_CONSTRAINT (sglang's own requirements are not installed: each package is --no-deps). sglang's
# metadata pins torch 2.14.1 and CUDA-13 kernels; installing it with deps would pull GBs of CUDA.
# The list is what `import sglang.srt.entrypoints.engine` needs, found by importing until it worked
# with torch 2.13.0+cpu, transformers 5.25.0, Python 3.11 (2026-12-05). Do not run `pip check` after
# it: sglang's ~40 GPU requirements are deliberately absent.
#
# torchvision is deliberately NOT installed: the registry has only its CUDA build, which does not
# load against CPU torch ("operator torchvision::nms does not exist") and, once installed, breaks
# transformers' image utilities for the whole suite. tests/sglang_cpu.py explains how the two
# SGLang modules that import it at module level are handled.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --no-deps \
    sglang==0.5.23 \
    aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiosignal==1.4.0 apache-tvm-ffi==0.1.15.post2 attrs==26.1.0 \
    certifi==2026.10.19.post1 charset-normalizer==3.5.3 compressed-tensors==0.20.1 dill==0.4.1 einops==0.8.2 \
    fastapi==0.165.0 frozenlist==1.8.0 gguf==0.19.0 ipython==9.18.1 loguru==0.7.3 msgspec==0.23.0 \
    multidict==7.2.1 openai==3.63.0 opentelemetry-api==1.45.3 orjson==3.13.0 partial-json-parser==0.2.1.1.post7 \
    propcache==0.5.4 pybase64==1.5.1 pyzmq==27.3.0 requests==2.34.2 sentencepiece==0.2.3 setproctitle==1.3.8 \
    sniffio==1.3.1 starlette==1.10.0 traitlets==5.16.1 urllib3==2.8.0 uvicorn==0.55.0 uvloop==0.23.0 \
    yarl==1.25.1
python -W ignore - <<'PY'
from tests.sglang_cpu import sglang_modules
mods = sglang_modules()
print("sglang", __import__("sglang").__version__, "modules:", ", ".join(sorted(mods)))
PY
