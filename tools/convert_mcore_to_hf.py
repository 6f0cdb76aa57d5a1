#!/usr/bin/env python3
"""megatron-core torch_dist checkpoint -> HF safetensors checkpoint.

    python tools/convert_mcore_to_hf.py --mcore-dir M --out O [--tp N --pp N --ep N] [--hf-config config.json]

Runs on CPU; a layout with several ranks starts them locally (or run it under torchrun). See
docs/conversion.md; the work is done by r1mega.convert.mcore_to_hf.
"""

import sys

from r1mega.convert.mcore_to_hf import main

if __name__ == "__main__":  # required: megatron's checkpoint writers start processes with spawn
    sys.exit(main())
