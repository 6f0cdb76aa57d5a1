"""Safe evaluation of small arithmetic expressions (countdown answers, arithmetic tasks).

Model outputs are untrusted text, so nothing here calls `eval`: the text is parsed with
`ast.parse(mode="eval")` and a walker accepts only integer literals, parentheses, the binary operators
a caller allows and (optionally) unary minus. Arithmetic is exact (`fractions.Fraction`), and every
step is bounded so that no input can stall a reward worker or exhaust memory: the text length, the
number of operations, the size of every intermediate value (in bits) and the exponent of `**`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["ExprError", "Evaluated", "evaluate", "normalize_operators"]

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}

# Typeset operator glyphs a model may write; mapped to their ASCII form before parsing.
_GLYPHS = {"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-"}


class ExprError(ValueError):
    """The text is not an allowed expression, or evaluating it would exceed a bound."""


@dataclass(frozen=True)
class Evaluated:
    value: Fraction
    literals: tuple[int, ...]
    """Integer literals in the order they appear (countdown checks which numbers were used)."""


def normalize_operators(text: str) -> str:
    """Replace typeset operators (×, ÷, −) with ASCII ones."""
    for glyph, ascii_op in _GLYPHS.items():
        text = text.replace(glyph, ascii_op)
    return text


def evaluate(
    text: str,
    *,
    operators: str | frozenset[str] = frozenset({"+", "-", "*", "/"}),
    allow_unary_minus: bool = False,
    max_chars: int = 512,
    max_ops: int = 64,
    max_bits: int = 4096,
    max_exponent: int = 64,
) -> Evaluated:
    """Evaluate `text` exactly; raise ExprError for anything outside the allowed grammar or bounds.

    `operators` is a subset of {"+", "-", "*", "/", "**"}. Division is exact (a Fraction); dividing
    by zero is an ExprError. `max_bits` bounds the numerator and denominator of every intermediate
    value, so `9**9**9` is rejected before it is computed.
    """
    allowed = frozenset(operators)
    unknown = allowed - set(_BINOPS.values())
    if unknown:
        raise ValueError(f"unknown operators {sorted(unknown)}; allowed are {sorted(_BINOPS.values())}")
    text = normalize_operators(text).strip()
    if not text:
        raise ExprError("empty expression")
    if len(text) > max_chars:
        raise ExprError(f"expression longer than {max_chars} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ExprError(f"not an expression: {type(e).__name__}") from None
    walker = _Walker(allowed, allow_unary_minus, max_ops, max_bits, max_exponent)
    try:
        value = walker.visit(tree.body)
    except RecursionError:
        raise ExprError("expression nested too deeply") from None
    return Evaluated(value=value, literals=tuple(walker.literals))


class _Walker:
    def __init__(self, allowed: frozenset[str], unary: bool, max_ops: int, max_bits: int, max_exp: int):
        self.allowed = allowed
        self.unary = unary
        self.max_ops = max_ops
        self.max_bits = max_bits
        self.max_exp = max_exp
        self.ops = 0
        self.literals: list[int] = []

    def _count_op(self) -> None:
        self.ops += 1
        if self.ops > self.max_ops:
            raise ExprError(f"more than {self.max_ops} operations")

    def _bounded(self, v: Fraction) -> Fraction:
        if v.numerator.bit_length() > self.max_bits or v.denominator.bit_length() > self.max_bits:
            raise ExprError(f"intermediate value exceeds {self.max_bits} bits")
        return v

    def visit(self, node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant):
            # bool is an int subclass: `True` is not a number a model may use
            if type(node.value) is not int:
                raise ExprError(f"only integer literals are allowed, got {type(node.value).__name__}")
            self.literals.append(node.value)
            return self._bounded(Fraction(node.value))
        if isinstance(node, ast.UnaryOp):
            if not self.unary or not isinstance(node.op, (ast.USub, ast.UAdd)):
                raise ExprError("unary operators are not allowed")
            self._count_op()
            v = self.visit(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            symbol = _BINOPS.get(type(node.op))
            if symbol is None or symbol not in self.allowed:
                raise ExprError(f"operator {type(node.op).__name__} is not allowed")
            self._count_op()
            a = self.visit(node.left)
            b = self.visit(node.right)
            return self._apply(symbol, a, b)
        raise ExprError(f"{type(node).__name__} is not allowed in an arithmetic expression")

    def _apply(self, symbol: str, a: Fraction, b: Fraction) -> Fraction:
        if symbol == "+":
            return self._bounded(a + b)
        if symbol == "-":
            return self._bounded(a - b)
        if symbol == "*":
            if _bits(a) + _bits(b) > 2 * self.max_bits:
                raise ExprError(f"product exceeds {self.max_bits} bits")
            return self._bounded(a * b)
        if symbol == "/":
            if b == 0:
                raise ExprError("division by zero")
            return self._bounded(a / b)
        # "**": integer exponents only, and the result size is estimated before computing it
        if b.denominator != 1:
            raise ExprError("non-integer exponent")
        e = b.numerator
        if abs(e) > self.max_exp:
            raise ExprError(f"exponent {e} exceeds {self.max_exp}")
        if a == 0 and e < 0:
            raise ExprError("zero to a negative power")
        if _bits(a) * abs(e) > self.max_bits:
            raise ExprError(f"power exceeds {self.max_bits} bits")
        return self._bounded(a**e)


def _bits(v: Fraction) -> int:
    return max(v.numerator.bit_length(), v.denominator.bit_length())
