"""Countdown: reach a target from given numbers with + - * /; the answer is an expression.

A problem is built backwards from a random solution: numbers are drawn, then pairs are combined
with random operators (every intermediate value a positive integer, as in the game) until one value
is left (`use_all`) or until a random subset of at least two numbers is used; that value is the
target. The worked solution lists the combinations, one per line, and answers the expression:

    Using the numbers [3, 7, 25, 50], create an equation that equals 125. ...
    <think>
    50-25=25
    25*7=175
    175-3=172 ...
    </think> <answer>(50-25)*7-...</answer>

A wrong solution changes one operator of the correct solution (or leaves out its last step) and
recomputes the trace truthfully from there, so it ends at a value other than the target: the kind of
near miss a search makes.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Optional

from r1mega.data.config import CountdownConfig
from r1mega.data.tasks.base import TaskExample

__all__ = ["TASK", "sample_problem", "corrupt", "Node"]

TASK = "countdown"

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


@dataclass
class Node:
    """A solution tree: a leaf holds a given number, an inner node `left op right`."""

    value: int
    op: Optional[str] = None
    left: Optional["Node"] = None
    right: Optional["Node"] = None
    order: int = -1
    """When the inner node was combined (the line of the worked solution it becomes)."""

    @property
    def prec(self) -> int:
        return _ATOM if self.op is None else _PREC[self.op]

    def expr(self) -> str:
        """The expression with the parentheses precedence needs and no others."""
        if self.op is None:
            return str(self.value)
        left = self.left.expr()
        right = self.right.expr()
        if self.left.prec < self.prec:
            left = f"({left})"
        # a-(b+c), a-(b-c), a/(b*c), a/(b/c) need them; a+(b-c) and a*(b/c) do not
        if self.right.prec < self.prec or (self.right.prec == self.prec and self.op in "-/"):
            right = f"({right})"
        return f"{left}{self.op}{right}"

    def inner_nodes(self) -> list["Node"]:
        if self.op is None:
            return []
        return self.left.inner_nodes() + self.right.inner_nodes() + [self]


def _combine(a: int, op: str, b: int) -> Optional[int]:
    """The game's rules: every intermediate value is a positive integer."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a > b else None
    if op == "*":
        return a * b
    if op == "/":
        return a // b if b > 1 and a % b == 0 else None
    raise ValueError(f"unknown operator {op!r}")


def _recompute(node: Node) -> Optional[int]:
    """Re-evaluate a (possibly altered) tree; None if some step breaks the rules."""
    if node.op is None:
        return node.value
    a, b = _recompute(node.left), _recompute(node.right)
    if a is None or b is None:
        return None
    v = _combine(a, node.op, b)
    if v is not None:
        node.value = v
    return v


def _steps(root: Node) -> list[str]:
    inner = sorted(root.inner_nodes(), key=lambda n: n.order)
    return [f"{n.left.value}{n.op}{n.right.value}={n.value}" for n in inner]


def _build(rng: random.Random, numbers: list[int], knobs: CountdownConfig) -> Optional[Node]:
    count = len(numbers) if knobs.use_all else rng.randint(2, len(numbers))
    pool = [Node(v) for v in rng.sample(numbers, count)]
    order = 0
    while len(pool) > 1:
        for _ in range(50):
            i, j = rng.sample(range(len(pool)), 2)
            op = rng.choice(knobs.operators)
            a, b = pool[i], pool[j]
            if op in "-/" and a.value < b.value:
                a, b = b, a
            v = _combine(a.value, op, b.value)
            if v is not None:
                break
        else:
            return None  # e.g. operators ["/"] with coprime numbers
        node = Node(v, op, a, b, order)
        order += 1
        pool = [n for k, n in enumerate(pool) if k not in (i, j)] + [node]
    return pool[0]


def _prompt(numbers: list[int], target: int, use_all: bool, operators: list[str]) -> str:
    rule = "each number exactly once" if use_all else "each number at most once"
    return (
        f"Using the numbers [{', '.join(map(str, numbers))}], create an equation that equals {target}. "
        f"Use {' '.join(operators)} and {rule}"
    )


def sample_problem(rng: random.Random, knobs: CountdownConfig) -> TaskExample:
    """One problem with a correct worked solution (retries until the target is in range)."""
    for _ in range(1000):
        n = rng.randint(knobs.min_numbers, knobs.max_numbers)
        numbers = [rng.randint(knobs.min_number, knobs.max_number) for _ in range(n)]
        root = _build(rng, numbers, knobs)
        if root is None or root.op is None or not knobs.min_target <= root.value <= knobs.max_target:
            continue
        target = root.value
        expr = root.expr()
        key = f"{sorted(numbers)}->{target}|{'all' if knobs.use_all else 'any'}"
        return TaskExample(
            task=TASK,
            key=key,
            prompt=_prompt(numbers, target, knobs.use_all, knobs.operators),
            answer=str(target),
            metadata={
                "numbers": numbers,
                "target": target,
                "use_all": knobs.use_all,
                "operators": list(knobs.operators),
                "solution": expr,
            },
            steps=_steps(root),
            solution_answer=expr,
            solution_correct=True,
            internal=root,
        )
    raise ValueError(
        "countdown: no problem with a target in "
        f"[{knobs.min_target}, {knobs.max_target}] after 1000 tries; widen the target range or the "
        "number range, or allow more operators"
    )


def corrupt(example: TaskExample, rng: random.Random, knobs: CountdownConfig) -> TaskExample:
    """The same problem with a plausible wrong solution (see the module docstring)."""
    target = int(example.answer)
    root: Node = example.internal
    inner = root.inner_nodes()
    attempts = [(k, op) for k in range(len(inner)) for op in knobs.operators if op != inner[k].op]
    rng.shuffle(attempts)
    for k, op in attempts:
        tree = copy.deepcopy(root)
        node = tree.inner_nodes()[k]
        node.op = op
        if op in "-/" and node.left.value < node.right.value:
            node.left, node.right = node.right, node.left
        value = _recompute(tree)
        if value is not None and value != target:
            return example.with_wrong_solution(_steps(tree), tree.expr())
    # No operator swap stays within the rules: leave out the last combination instead.
    if root.left.op is not None or root.right.op is not None:
        part = root.left if root.left.op is not None else root.right
        if part.value != target:
            return example.with_wrong_solution(_steps(part), part.expr())
    # A single combination of two numbers: answer with one of them alone.
    lone = root.left if root.left.value != target else root.right
    return example.with_wrong_solution([f"{lone.value}"], lone.expr())
