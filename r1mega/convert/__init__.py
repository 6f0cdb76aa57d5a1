"""HF <-> megatron-core conversion: per-family name/layout maps, config translation, streaming
export of a live sharded model (tools and rollout weight sync) and sharded import.

Read in this order: rules.py (how a map is written), common.py + <family>.py (the maps),
layouts.py (fused QKV, gate/up, vocabulary padding), live.py (matching a live model), export.py,
load.py, hf_checkpoint.py, mcore_checkpoint.py; docs/conversion.md explains the decisions.
"""

from r1mega.convert.export import export_hf_tensors
from r1mega.convert.hf_config import (
    check_config_matches,
    config_mismatches,
    hf_config_from_model_config,
    load_hf_config,
    model_config_from_hf,
)
from r1mega.convert.load import load_hf_into_model

__all__ = [
    "export_hf_tensors",
    "load_hf_into_model",
    "model_config_from_hf",
    "hf_config_from_model_config",
    "load_hf_config",
    "config_mismatches",
    "check_config_matches",
]
