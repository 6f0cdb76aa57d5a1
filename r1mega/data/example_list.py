"""A dataset as the trainers see it: a list of built examples plus the report of rows skipped."""

from __future__ import annotations

from typing import Generic, Iterator, Sequence, TypeVar

from r1mega.data.errors import ErrorReport

__all__ = ["ExampleList"]

T = TypeVar("T")


class ExampleList(Sequence[T], Generic[T]):
    """Examples in file (or generation) order; `report` counts what was skipped, with file:line."""

    def __init__(self, examples: list[T], report: ErrorReport, name: str = ""):
        self.examples = examples
        self.report = report
        self.name = name

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):  # type: ignore[override]
        return self.examples[i]

    def __iter__(self) -> Iterator[T]:
        return iter(self.examples)
