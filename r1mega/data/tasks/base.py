"""What every procedural task produces: a problem with a verifiable answer and a worked solution."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["TaskExample", "format_solution"]


def format_solution(steps: list[str], answer: str) -> str:
    """The R1 response format: `<think>` one step per line `</think> <answer>` answer `</answer>`."""
    return "<think>\n" + "\n".join(steps) + "\n</think> <answer>" + answer + "</answer>"


@dataclass
class TaskExample:
    task: str
    key: str
    """Canonical problem identity: decides the split and de-duplicates within one."""
    prompt: str
    """The user's question, without any template."""
    answer: str
    """The ground truth the accuracy reward checks against."""
    metadata: dict[str, Any] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    """The worked solution's reasoning, one short step per line."""
    solution_answer: str = ""
    """The answer the worked solution ends with (differs from `answer` when the solution is wrong)."""
    solution_correct: bool = True
    internal: Any = field(default=None, repr=False, compare=False)
    """Generator state that `corrupt` needs (e.g. the countdown solution tree); never written out."""

    def with_wrong_solution(self, steps: list[str], solution_answer: str) -> TaskExample:
        """The same problem carrying a worked solution that ends in a wrong answer (no generator state)."""
        return replace(
            self, metadata=dict(self.metadata), steps=steps, solution_answer=solution_answer,
            solution_correct=False, internal=None,
        )

    @property
    def solution(self) -> str:
        return format_solution(self.steps, self.solution_answer)

    def to_row(self, with_solution: bool = False) -> dict[str, Any]:
        """A dataset row (the jsonl schema `r1mega data` writes and the prompt datasets read)."""
        row: dict[str, Any] = {
            "prompt": self.prompt,
            "answer": self.answer,
            "task": self.task,
            "metadata": dict(self.metadata),
        }
        if with_solution:
            row["response"] = self.solution
            row["metadata"]["solution_correct"] = self.solution_correct
        return row
