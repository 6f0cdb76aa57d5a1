#!/usr/bin/env python3
"""HF safetensors checkpoint -> megatron-core torch_dist checkpoint.

    python tools/convert_hf_to_mcore.py --hf-dir D --out O [--tp N --pp N --ep N] [--model-config M.yaml]

Runs on CPU; a layout with several ranks starts them locally (or run it under torchrun). See
docs/conversion.md; the work is done by r1mega.convert.hf_to_mcore.
"""

import sys

from r1mega.convert.hf_to_mcore import main

if __name__ == "__main__":  # required: megatron's checkpoint writers start processes with spawn
    sys.exit(main())
