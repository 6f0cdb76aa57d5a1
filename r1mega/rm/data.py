"""Preference data for reward-model training: jsonl rows -> tokenized units -> padded microbatches.

A unit is what one loss term is computed on:
- a pair (pairwise row {"prompt", "chosen", "rejected"}): two sequences, Bradley-Terry loss;
- a point (pointwise row {"prompt", "response", "label"}): one sequence, BCE on its score.
Each sequence is `template.format(prompt=..., response=...)` tokenized (no special tokens added).

Rows are checked strictly, each problem naming `file:LINE` (1-based): bad JSON, an unknown field,
a missing or empty field, a label that is not 0/1, a row of both kinds, too many tokens. Nothing is
skipped silently: the first bad row stops the job.

Microbatches never split a pair: units are grouped longest first, a microbatch holds at most
`micro_batch_size` sequences and, with a token budget, at most that many padded tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from r1mega.data.errors import DataError

__all__ = ["PreferenceRow", "Unit", "read_preference_rows", "tokenize_rows", "plan_unit_microbatches", "make_rm_microbatch"]

PAIR_FIELDS = ("prompt", "chosen", "rejected")
POINT_FIELDS = ("prompt", "response", "label")
OPTIONAL_FIELDS = ("id",)


@dataclass(frozen=True)
class PreferenceRow:
    """One parsed row: a pair (chosen/rejected set) or a point (response/label set)."""

    location: str
    prompt: str
    chosen: Optional[str] = None
    rejected: Optional[str] = None
    response: Optional[str] = None
    label: Optional[float] = None

    @property
    def is_pair(self) -> bool:
        return self.chosen is not None


@dataclass(frozen=True)
class Unit:
    """Tokenized unit: `sequences` is (chosen, rejected) for a pair, (response,) for a point."""

    location: str
    sequences: tuple[tuple[int, ...], ...]
    label: Optional[float] = None

    @property
    def is_pair(self) -> bool:
        return len(self.sequences) == 2

    @property
    def length(self) -> int:
        return max(len(s) for s in self.sequences)


def parse_row(data: object, location: str) -> PreferenceRow:
    """Validate one decoded JSON row (DataError naming `location` on any problem)."""
    if not isinstance(data, dict):
        raise DataError(f"{location}: a row must be a JSON object, got {type(data).__name__}")
    keys = set(data)
    unknown = sorted(keys - set(PAIR_FIELDS) - set(POINT_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise DataError(
            f"{location}: unknown field(s) {unknown}; a pairwise row has {list(PAIR_FIELDS)}, "
            f"a pointwise row {list(POINT_FIELDS)} (optional: {list(OPTIONAL_FIELDS)})"
        )
    pair = keys & {"chosen", "rejected"}
    point = keys & {"response", "label"}
    if pair and point:
        raise DataError(f"{location}: a row is either pairwise (chosen/rejected) or pointwise (response/label), not both")
    if not pair and not point:
        raise DataError(f"{location}: neither chosen/rejected (pairwise) nor response/label (pointwise)")
    need = PAIR_FIELDS if pair else POINT_FIELDS
    missing = [k for k in need if k not in data]
    if missing:
        raise DataError(f"{location}: missing field(s) {missing} of a {'pairwise' if pair else 'pointwise'} row")
    for k in need:
        if k == "label":
            continue
        if not isinstance(data[k], str):
            raise DataError(f"{location}: {k} must be a string, got {type(data[k]).__name__}")
        if not data[k].strip():
            raise DataError(f"{location}: {k} is empty" + (" (a pair needs both sides)" if k in ("chosen", "rejected") else ""))
    if pair:
        return PreferenceRow(location, data["prompt"], chosen=data["chosen"], rejected=data["rejected"])
    label = data["label"]
    if isinstance(label, bool):
        label = float(label)
    if label not in (0, 1) or isinstance(label, str):
        raise DataError(f"{location}: label must be 0 or 1 (or false/true), got {label!r}")
    return PreferenceRow(location, data["prompt"], response=data["response"], label=float(label))


def read_preference_rows(paths: Sequence[str]) -> list[PreferenceRow]:
    """Every row of the jsonl files, in order; DataError at the first bad row or a missing file."""
    rows: list[PreferenceRow] = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: preference file not found")
        with open(p, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                location = f"{p}:{lineno}"
                try:
                    data = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{location}: not valid JSON ({e.msg})") from None
                rows.append(parse_row(data, location))
        if not rows:
            raise DataError(f"{p}: no rows")
    return rows


def render(template: str, prompt: str, response: str) -> str:
    return template.format(prompt=prompt, response=response)


def tokenize_rows(rows: Sequence[PreferenceRow], tokenizer, template: str, max_tokens: int) -> list[Unit]:
    """Units of the rows; DataError naming the row when a sequence is empty or over `max_tokens`,
    or holds the pad token (the score is read at the last non-pad token, as transformers does)."""
    pad = tokenizer.pad_token_id
    units = []
    for row in rows:
        texts = (row.chosen, row.rejected) if row.is_pair else (row.response,)
        seqs = []
        for text in texts:
            ids = tuple(tokenizer(render(template, row.prompt, text), add_special_tokens=False)["input_ids"])
            if len(ids) > max_tokens:
                raise DataError(f"{row.location}: {len(ids)} tokens > rm.max_tokens={max_tokens}")
            if pad is not None and pad in ids:
                raise DataError(f"{row.location}: the text contains the pad token {pad}; the score position would be ambiguous")
            seqs.append(ids)
        units.append(Unit(row.location, tuple(seqs), row.label))
    return units


def _padded(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def plan_unit_microbatches(
    units: Sequence[Unit], *, micro_batch_size: int, micro_batch_tokens: Optional[int] = None, multiple: int = 1
) -> list[list[int]]:
    """Group unit positions into microbatches, longest first, never splitting a pair."""
    order = sorted(range(len(units)), key=lambda i: (-units[i].length, i))
    groups: list[list[int]] = []
    current: list[int] = []
    rows = width = 0
    for i in order:
        need = _padded(units[i].length, multiple)
        n = len(units[i].sequences)
        if micro_batch_tokens is not None and n * need > micro_batch_tokens:
            raise ValueError(f"rm.micro_batch_tokens: {micro_batch_tokens} is smaller than {units[i].location} ({n} x {need} tokens)")
        if current and (rows + n > micro_batch_size or (micro_batch_tokens is not None and (rows + n) * width > micro_batch_tokens)):
            groups.append(current)
            current, rows = [], 0
        if not current:
            width = need
        current.append(i)
        rows += n
    if current:
        groups.append(current)
    return groups


def make_rm_microbatch(units: Sequence[Unit], pad_id: int, multiple: int = 1) -> dict:
    """Right-padded tokens [B, S] plus where each unit's sequences are:
    pairs [P, 2] (row of chosen, row of rejected), points [Q] (rows), labels [Q], lengths [B]."""
    seqs = [s for u in units for s in u.sequences]
    width = _padded(max(len(s) for s in seqs), multiple)
    b = len(seqs)
    tokens = torch.full((b, width), pad_id, dtype=torch.long)  # [B, S]
    lengths = torch.empty(b, dtype=torch.long)  # [B]
    pairs, points, labels = [], [], []
    row = 0
    for u in units:
        for s in u.sequences:
            tokens[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            lengths[row] = len(s)
            row += 1
        if u.is_pair:
            pairs.append((row - 2, row - 1))
        else:
            points.append(row - 1)
            labels.append(u.label)
    position_ids = torch.arange(width, dtype=torch.long).unsqueeze(0).expand(b, width).contiguous()  # [B, S]
    return {
        "tokens": tokens,
        "position_ids": position_ids,
        "lengths": lengths,
        "pairs": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),  # [P, 2]
        "points": torch.tensor(points, dtype=torch.long),  # [Q]
        "labels": torch.tensor(labels, dtype=torch.float32),  # [Q]
    }
