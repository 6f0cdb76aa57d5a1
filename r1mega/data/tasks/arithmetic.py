"""Multi-digit arithmetic: `Calculate 345+78*12` -> 1281.

The worked solution evaluates with the usual precedence, one binary operation per line (products
first, left to right, then sums and differences left to right):

    78*12=936
    345+936=1281

A wrong solution makes one realistic slip in one step (a dropped carry, a forgotten borrow, or a
carry lost inside a partial product) and carries the wrong value through the remaining steps, so the
trace stays self-consistent apart from that one slip, as a student's would.
"""

from __future__ import annotations

import random

from r1mega.data.config import ArithmeticConfig
from r1mega.data.tasks.base import TaskExample

__all__ = ["TASK", "sample_problem", "corrupt", "solve_steps", "slip"]

TASK = "arithmetic"


def _operand(rng: random.Random, digits: int) -> int:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def solve_steps(operands: list[int], ops: list[str], slip_at: int | None = None, rng: random.Random | None = None):
    """Evaluate with precedence, one step per operation; return (step lines, final value).

    With `slip_at=i`, step i's result is replaced by `slip(...)` and later steps use that value.
    """
    assert len(ops) == len(operands) - 1
    lines: list[str] = []
    step = 0

    def do(a: int, op: str, b: int) -> int:
        nonlocal step
        c = _apply(a, op, b)
        if slip_at is not None and step == slip_at:
            assert rng is not None
            c = slip(a, op, b, rng)
        lines.append(f"{a}{op}{b}={c}")
        step += 1
        return c

    # Pass 1: products, left to right.
    values = [operands[0]]
    rest_ops: list[str] = []
    for op, b in zip(ops, operands[1:], strict=True):
        if op == "*":
            values[-1] = do(values[-1], "*", b)
        else:
            rest_ops.append(op)
            values.append(b)
    # Pass 2: sums and differences, left to right.
    acc = values[0]
    for op, b in zip(rest_ops, values[1:], strict=True):
        acc = do(acc, op, b)
    if not lines:  # a lone operand never happens (>= 2 operands), kept as an invariant
        raise AssertionError("an arithmetic problem needs at least one operation")
    return lines, acc


def _digits(n: int) -> list[int]:
    """Least significant digit first."""
    return [int(ch) for ch in reversed(str(n))]


def slip(a: int, op: str, b: int, rng: random.Random) -> int:
    """A wrong result for `a op b` that a person computing by hand could plausibly write."""
    correct = _apply(a, op, b)
    candidates: list[int] = []
    if op == "+" and a >= 0 and b >= 0:
        # Dropped carry: a column that produced a carry, whose carry never reaches the next column.
        da, db, carry = _digits(a), _digits(b), 0
        for i in range(max(len(da), len(db))):
            s = (da[i] if i < len(da) else 0) + (db[i] if i < len(db) else 0) + carry
            carry = s // 10
            if carry:
                candidates.append(correct - 10 ** (i + 1))
    elif op == "-" and a >= b >= 0:
        # Forgotten borrow: a column that borrowed, but the next column is not decremented.
        da, db, borrow = _digits(a), _digits(b), 0
        for i in range(len(da)):
            d = da[i] - (db[i] if i < len(db) else 0) - borrow
            borrow = 1 if d < 0 else 0
            if borrow:
                candidates.append(correct + 10 ** (i + 1))
    elif op == "*" and a >= 0 and b >= 0:
        # A carry lost while multiplying `a` by one digit of `b` (one partial product).
        da = _digits(a)
        for i, d in enumerate(_digits(b)):
            carry = 0
            for j, x in enumerate(da):
                carry = (x * d + carry) // 10
                if carry:
                    candidates.append(correct - carry * 10 ** (i + j + 1))
    candidates = [c for c in candidates if c != correct]
    if candidates:
        return rng.choice(candidates)
    # No carry to drop (e.g. 12+31): a digit slip in the result instead.
    k = rng.randrange(len(str(abs(correct))))
    wrong = correct + rng.choice((-1, 1)) * 10**k
    return wrong if wrong != correct else correct + 1


def sample_problem(rng: random.Random, knobs: ArithmeticConfig) -> TaskExample:
    n = rng.randint(knobs.min_operands, knobs.max_operands)
    operands = [_operand(rng, rng.randint(knobs.min_digits, knobs.max_digits)) for _ in range(n)]
    ops = [rng.choice(knobs.operators) for _ in range(n - 1)]
    expr = str(operands[0]) + "".join(op + str(b) for op, b in zip(ops, operands[1:], strict=True))
    steps, value = solve_steps(operands, ops)
    return TaskExample(
        task=TASK,
        key=expr,
        prompt=f"Calculate {expr}",
        answer=str(value),
        metadata={"expression": expr},
        steps=steps,
        solution_answer=str(value),
        solution_correct=True,
    )


def _parse(expr: str) -> tuple[list[int], list[str]]:
    operands, ops, cur = [], [], ""
    for ch in expr:
        if ch.isdigit():
            cur += ch
        else:
            operands.append(int(cur))
            ops.append(ch)
            cur = ""
    operands.append(int(cur))
    return operands, ops


def corrupt(example: TaskExample, rng: random.Random) -> TaskExample:
    """The same problem with a worked solution that slips once (its answer is then wrong)."""
    operands, ops = _parse(example.metadata["expression"])
    slip_at = rng.randrange(len(ops))
    steps, value = solve_steps(operands, ops, slip_at=slip_at, rng=rng)
    if str(value) == example.answer:
        # Only a later `*0` can cancel a slip (the trace is wrong, the answer is not): make the last
        # step slip as well, so the solution is wrong as promised.
        steps[-1] = steps[-1].rsplit("=", 1)[0] + f"={value + 1}"
        value += 1
    return example.with_wrong_solution(steps, str(value))
