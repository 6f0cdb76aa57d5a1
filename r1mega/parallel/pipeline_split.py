"""Which transformer layers each pipeline stage holds, uneven splits included (torch-free).

megatron-core 0.16.1 accepts three ways to split `num_layers` over `pp` ranks (times `vpp` virtual
stages each): evenly; `num_layers_in_first/last_pipeline_stage` (the rest spread evenly over the
middle ranks, each rank's count split evenly over its virtual stages); or a layout string such as
`"Et*3|t*2L"` (one `|`-separated stage per (virtual stage, rank), in the order
vpp_rank * pp + pp_rank; `E` embedding, `t` transformer layer, `L` loss). This module computes the
per-stage layer counts the same way, so the config check, the memory planner and the messages
agree with what megatron will build, and it proposes a valid split when the given one is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from r1mega.configlib import ConfigError

__all__ = ["PipelineSplit", "parse_layout", "stage_layer_counts", "propose_split"]


@dataclass(frozen=True)
class PipelineSplit:
    """The split settings of a ParallelConfig (see its fields)."""

    pp: int
    vpp: Optional[int] = None
    first: Optional[int] = None
    last: Optional[int] = None
    layout: Optional[str] = None

    @property
    def virtual(self) -> int:
        return self.vpp or 1


_PAREN = re.compile(r"\(([^)]+)\)\*(\d+)")
_SINGLE = re.compile(r"(.)\*(\d+)")


def parse_layout(text: str) -> list[str]:
    """'Et|(tt|)*2L' -> ['Et', 'tt', 'tt', 'L']: megatron's expansion of a layout string."""
    flat = text.replace(",", "").replace(" ", "")
    flat = _PAREN.sub(lambda m: m.group(1) * int(m.group(2)), flat)
    flat = _SINGLE.sub(lambda m: m.group(1) * int(m.group(2)), flat)
    stages = flat.split("|")
    for stage in stages:
        bad = set(stage) - set("EtLm")
        if bad:
            raise ConfigError(
                f"parallel.pipeline_layout: unknown character(s) {''.join(sorted(bad))!r} in {text!r} "
                "(E embedding, t transformer layer, L loss, | next stage, (..)*n and x*n repeat)"
            )
    return stages


def _layout_counts(num_layers: int, split: PipelineSplit) -> list[list[int]]:
    stages = parse_layout(split.layout)
    key = "parallel.pipeline_layout"
    if len(stages) % split.pp:
        raise ConfigError(f"{key}: {len(stages)} stages is not a multiple of parallel.pp={split.pp}")
    implied_vpp = len(stages) // split.pp
    if implied_vpp != split.virtual:
        # megatron would set its vpp from the layout while r1mega builds `vpp` chunks per rank:
        # the layers of the other virtual stages would silently be missing
        raise ConfigError(
            f"{key}: {len(stages)} stages over pp={split.pp} means {implied_vpp} virtual stages per "
            f"rank, but parallel.vpp={split.vpp}; set parallel.vpp={implied_vpp if implied_vpp > 1 else 'null'}"
        )
    flat = "".join(stages)
    if "m" in flat:
        raise ConfigError(f"{key}: multi-token-prediction layers ('m') are not trained by r1mega")
    if flat.count("E") != 1 or not flat.startswith("E"):
        raise ConfigError(f"{key}: must start with the embedding 'E' exactly once, got {split.layout!r}")
    if flat.count("L") != 1 or not flat.endswith("L"):
        raise ConfigError(f"{key}: must end with the loss 'L' exactly once, got {split.layout!r}")
    if flat.count("t") != num_layers:
        raise ConfigError(
            f"{key}: {flat.count('t')} transformer layers ('t') in {split.layout!r}, "
            f"but model.num_layers={num_layers}"
        )
    for i, stage in enumerate(stages):
        if not stage:
            raise ConfigError(f"{key}: stage {i} of {split.layout!r} is empty; give it a layer or drop it")
    # stage list order is vpp_rank * pp + pp_rank
    return [[stages[v * split.pp + r].count("t") for v in range(split.virtual)] for r in range(split.pp)]


def _first_last_counts(num_layers: int, split: PipelineSplit) -> list[list[int]]:
    pp, vpp = split.pp, split.virtual
    if pp == 1:
        raise ConfigError("parallel.num_layers_in_first_pipeline_stage: uneven stages need parallel.pp > 1")
    if pp == 2 and vpp > 1 and split.first is not None and split.last is not None:
        # megatron-core 0.16.1 divides by the number of middle stages (0) in get_transformer_layer_offset
        raise ConfigError(
            "parallel.num_layers_in_last_pipeline_stage: with pp=2 and virtual stages megatron-core "
            "cannot take both first and last counts (it crashes); set only "
            "num_layers_in_first_pipeline_stage, or use parallel.pipeline_layout"
        )
    rest, middle = num_layers, pp
    per_rank: list[Optional[int]] = [None] * pp
    for key, value, rank in (("first", split.first, 0), ("last", split.last, pp - 1)):
        if value is None:
            continue
        if value < 1:
            raise ConfigError(f"parallel.num_layers_in_{key}_pipeline_stage: must be >= 1, got {value}")
        if value % vpp:
            raise ConfigError(
                f"parallel.num_layers_in_{key}_pipeline_stage: {value} is not divisible by vpp={vpp} "
                "(each virtual stage holds the same number of that rank's layers)"
            )
        per_rank[rank] = value
        rest -= value
        middle -= 1
    if rest < 0 or (middle == 0 and rest != 0) or (middle > 0 and rest < middle * vpp):
        raise ConfigError(
            f"parallel.pp: first/last stage counts leave {rest} layer(s) for {middle} other stage(s) "
            f"of model.num_layers={num_layers} (a stage would be empty); {propose_split(num_layers, pp, split.vpp)}"
        )
    if middle and rest % (middle * vpp):
        raise ConfigError(
            f"parallel.pp: the {rest} layers left after the first/last stages do not divide over "
            f"{middle} stage(s) x vpp={vpp}; {propose_split(num_layers, pp, split.vpp)}"
        )
    each = rest // middle if middle else 0
    return [[(c if c is not None else each) // vpp] * vpp for c in per_rank]


def stage_layer_counts(num_layers: int, split: PipelineSplit) -> list[list[int]]:
    """counts[pp_rank][vp_stage]: transformer layers of that chunk. ConfigError (naming the key and
    proposing a valid split) when megatron would refuse the split or build it wrong."""
    if split.layout is not None:
        if split.first is not None or split.last is not None:
            raise ConfigError(
                "parallel.pipeline_layout: cannot be combined with num_layers_in_first/last_pipeline_stage"
            )
        return _layout_counts(num_layers, split)
    if split.first is not None or split.last is not None:
        return _first_last_counts(num_layers, split)
    stages = split.pp * split.virtual
    if num_layers % stages:
        raise ConfigError(
            f"parallel.pp: model.num_layers={num_layers} is not divisible by pp*vpp = "
            f"{split.pp}*{split.virtual} = {stages}; {propose_split(num_layers, split.pp, split.vpp)}"
        )
    return [[num_layers // stages] * split.virtual for _ in range(split.pp)]


def _candidates(num_layers: int, pp: int, vpp: int):
    """(largest rank, first, last) for every valid first/last split; first/last may be smaller."""
    for first in [None, *range(vpp, num_layers + 1, vpp)]:
        for last in [None, *range(vpp, num_layers + 1, vpp)]:
            if first is None and last is None:
                continue
            if pp == 2 and vpp > 1 and first is not None and last is not None:
                continue
            middle = pp - (first is not None) - (last is not None)
            rest = num_layers - (first or 0) - (last or 0)
            if middle == 0:
                if rest != 0:
                    continue
                each = 0
            elif rest < middle * vpp or rest % (middle * vpp):
                continue
            else:
                each = rest // middle
            ends = [c for c in (first, last) if c is not None]
            if any(c > each for c in ends) and middle:
                continue  # the embedding and loss already weigh on the ends: keep them no larger
            yield max([each, *ends]), first, last


def propose_split(num_layers: int, pp: int, vpp: Optional[int]) -> str:
    """A sentence proposing the most balanced valid split (first/last counts, or a layout string)."""
    v = vpp or 1
    if num_layers % (pp * v) == 0:
        return f"an even split works: {num_layers // (pp * v)} layers per stage"
    # most balanced first, then the fewest keys to set
    best = min(
        _candidates(num_layers, pp, v),
        default=None,
        key=lambda c: (c[0], (c[1] is not None) + (c[2] is not None), -((c[1] or 0) + (c[2] or 0))),
    )
    if best is not None:
        _, first, last = best
        keys = []
        if first is not None:
            keys.append(f"parallel.num_layers_in_first_pipeline_stage={first}")
        if last is not None:
            keys.append(f"parallel.num_layers_in_last_pipeline_stage={last}")
        return "for example set " + " ".join(keys)
    if num_layers < pp * v:
        return f"use at most pp*vpp = {num_layers} stages for {num_layers} layers"
    # any count works with a layout string: the remainder goes to the middle stages first (the
    # first stage also holds the embedding, the last the output layer and loss)
    stages = pp * v
    base, extra = divmod(num_layers, stages)
    order = [*range(1, stages - 1), 0, stages - 1]
    parts = ["t" * (base + (i in order[:extra])) for i in range(stages)]
    parts[0], parts[-1] = "E" + parts[0], parts[-1] + "L"
    return f"for example set parallel.pipeline_layout='{'|'.join(parts)}'"
