"""What a parsed `--where` expression is and means: its syntax tree, a score and a truth value
per image, and its canonical text (`str`). Parsing lives in expr.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["And", "Attr", "Expression", "Node", "Not", "Or"]


# -- syntax tree -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Attr:
    index: int  # column in the (N, 40) prediction arrays
    name: str  # canonical name, e.g. "Wearing_Hat"


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]  # flat: "a and b and c" is one node, so chains add no depth


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


Node = Attr | Not | And | Or


@dataclass(frozen=True)
class Expression:
    """A parsed expression; `score` and `holds` take (N, 40) arrays in the model's order."""

    source: str
    root: Node
    attributes: tuple[str, ...]  # the names it mentions, in order of first use

    def score(self, probs: np.ndarray) -> np.ndarray:
        """(N, 40) probabilities -> (N,) probability of the expression (independence)."""
        return _score(self.root, np.asarray(probs, dtype=np.float64))

    def holds(self, present: np.ndarray) -> np.ndarray:
        """(N, 40) booleans (thresholded predictions) -> (N,) truth of the expression."""
        return _holds(self.root, np.asarray(present, dtype=bool))

    def __str__(self) -> str:
        return _render(self.root, parent=None)


def _score(node: Node, p: np.ndarray) -> np.ndarray:
    if isinstance(node, Attr):
        return p[:, node.index]
    if isinstance(node, Not):
        return 1.0 - _score(node.operand, p)
    parts = [_score(child, p) for child in node.operands]
    if isinstance(node, And):
        return np.prod(parts, axis=0)
    # or: 1 - prod(1 - p) is the n-ary form of pa + pb - pa*pb
    return 1.0 - np.prod([1.0 - q for q in parts], axis=0)


def _holds(node: Node, b: np.ndarray) -> np.ndarray:
    if isinstance(node, Attr):
        return b[:, node.index]
    if isinstance(node, Not):
        return ~_holds(node.operand, b)
    parts = [_holds(child, b) for child in node.operands]
    return np.all(parts, axis=0) if isinstance(node, And) else np.any(parts, axis=0)


def _render(node: Node, parent: type | None) -> str:
    if isinstance(node, Attr):
        return node.name
    if isinstance(node, Not):
        return f"not {_render(node.operand, Not)}"
    word = " and " if isinstance(node, And) else " or "
    text = word.join(_render(child, type(node)) for child in node.operands)
    # parentheses only where precedence needs them: an `or` inside `and`/`not`, an `and` in `not`
    needs = parent is Not or (parent is And and isinstance(node, Or))
    return f"({text})" if needs else text
