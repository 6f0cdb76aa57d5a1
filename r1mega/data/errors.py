"""Malformed dataset rows: fail at the first one, or skip and count them; never silently.

Every problem is reported as `location: reason: detail`, where location is `file.jsonl:LINE`
(1-based) or `file.parquet:row N` (0-based row index), so the offending row can be opened directly.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DataError", "RowError", "ErrorReport", "REASONS"]

logger = logging.getLogger(__name__)

REASONS: tuple[str, ...] = (
    "bad_json",  # a line that is not JSON, or JSON that is not an object
    "missing_field",  # no prompt/messages, no answer, no response (SFT)
    "bad_field",  # a field of the wrong type or shape (e.g. countdown numbers not a list of ints)
    "empty_prompt",  # prompt (or every message) is empty or whitespace
    "too_long",  # templated prompt (or SFT example) longer than the configured limit
    "template",  # the row cannot be rendered with the configured template
)


class DataError(ValueError):
    """A dataset cannot be used as configured; the message names the file (and line or row)."""


class RowError(ValueError):
    """One row is malformed; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class ErrorReport:
    """Counts of skipped rows by reason, plus the first few locations, for logs and tests."""

    on_error: Literal["fail", "skip"] = "fail"
    counts: Counter = field(default_factory=Counter)
    first: list[str] = field(default_factory=list)
    max_listed: int = 20
    rows_read: int = 0

    def add(self, location: str, error: RowError) -> None:
        """Record a bad row: raise DataError under `fail`, count it under `skip`."""
        message = f"{location}: {error}"
        if self.on_error == "fail":
            raise DataError(message + "  (set data.on_error: skip to drop such rows and count them)")
        self.counts[error.reason] += 1
        if len(self.first) < self.max_listed:
            self.first.append(message)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.rows_read} rows read, none skipped"
        by_reason = ", ".join(f"{r}={n}" for r, n in sorted(self.counts.items()))
        listed = "\n  ".join(self.first)
        more = "" if self.skipped <= len(self.first) else f"\n  ... and {self.skipped - len(self.first)} more"
        return f"{self.rows_read} rows read, {self.skipped} skipped ({by_reason}):\n  {listed}{more}"

    def log(self, what: str) -> None:
        if self.skipped:
            logger.warning("%s: %s", what, self.summary())
        else:
            logger.info("%s: %s", what, self.summary())
