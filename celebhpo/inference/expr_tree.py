"""What a parsed `--where` expression is and means: its syntax tree, a score and a truth value
per image, and its canonical text (`str`). Parsing lives in expr.py.

The score is the exact probability that the expression holds when distinct attributes are
independent (a repeated attribute is the same event, not a fresh one: "Male or not Male" is 1,
"Male and Male" is p(Male)). Where the operands of an and/or share no attribute they are
independent, and p(a and b) = pa * pb, p(a or b) = 1 - (1 - pa)(1 - pb) are exact. Where they
share some, the node conditions on those: it sums, over their 2^k truth values, the product of
their probabilities times the node's probability given them (Shannon expansion), so only
attributes named more than once are ever enumerated, and only at the node that joins them.
`enumerated(root)` is the most attributes fixed at once; parsing refuses more than MAX_ENUMERATED.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from functools import reduce

import numpy as np

__all__ = ["MAX_ENUMERATED", "And", "Attr", "Expression", "Node", "Not", "Or", "enumerated"]

# 2^16 cases per image at worst: still seconds; no expression a person writes comes near it
MAX_ENUMERATED = 16


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
        """(N, 40) probabilities -> (N,) exact probability of the expression, distinct
        attributes taken as independent (module docstring)."""
        p = np.asarray(probs, dtype=np.float64)
        names: dict[int, frozenset[int]] = {}
        _names(self.root, names)
        return np.broadcast_to(_score(self.root, p, {}, names), (len(p),)).copy()

    def holds(self, present: np.ndarray) -> np.ndarray:
        """(N, 40) booleans (thresholded predictions) -> (N,) truth of the expression."""
        return _holds(self.root, np.asarray(present, dtype=bool))

    def __str__(self) -> str:
        return _render(self.root, parent=None)


# -- score -----------------------------------------------------------------------------------
Prob = np.ndarray | float  # (N,) probabilities, or a constant once every attribute is fixed


def _names(node: Node, out: dict[int, frozenset[int]]) -> frozenset[int]:
    """The attribute indices under `node`; fills out[id(each node)] on the way."""
    if isinstance(node, Attr):
        found = frozenset((node.index,))
    elif isinstance(node, Not):
        found = _names(node.operand, out)
    else:
        found = frozenset().union(*(_names(child, out) for child in node.operands))
    out[id(node)] = found
    return found


def _shared(node: And | Or, fixed: dict[int, float] | frozenset[int],
            names: dict[int, frozenset[int]]) -> list[int]:
    """Attributes under two or more operands of `node` and not fixed yet, in index order."""
    counts = Counter(a for child in node.operands for a in names[id(child)])
    return sorted(a for a, n in counts.items() if n > 1 and a not in fixed)


def _score(node: Node, p: np.ndarray, fixed: dict[int, float],
           names: dict[int, frozenset[int]]) -> Prob:
    """P(node | the attributes in `fixed` have those truth values (1.0 / 0.0))."""
    if isinstance(node, Attr):
        return fixed[node.index] if node.index in fixed else p[:, node.index]
    if isinstance(node, Not):
        return 1.0 - _score(node.operand, p, fixed, names)
    return _expand(node, p, fixed, _shared(node, fixed, names), names)


def _expand(node: And | Or, p: np.ndarray, fixed: dict[int, float], shared: list[int],
            names: dict[int, frozenset[int]]) -> Prob:
    """Condition on `shared` one attribute at a time; then the operands are independent."""
    if shared:
        a, rest = shared[0], shared[1:]
        yes = _expand(node, p, {**fixed, a: 1.0}, rest, names)
        no = _expand(node, p, {**fixed, a: 0.0}, rest, names)
        return p[:, a] * yes + (1.0 - p[:, a]) * no
    parts = [_score(child, p, fixed, names) for child in node.operands]
    if isinstance(node, And):
        return reduce(lambda x, y: x * y, parts)
    # or: 1 - prod(1 - p) is the n-ary form of pa + pb - pa*pb
    return 1.0 - reduce(lambda x, y: x * y, [1.0 - q for q in parts])


def enumerated(root: Node) -> int:
    """The most attributes `score` fixes at once for this tree: its cost is 2^this per image."""
    names: dict[int, frozenset[int]] = {}
    _names(root, names)

    def deepest(node: Node, fixed: frozenset[int]) -> int:
        if isinstance(node, Attr):
            return len(fixed)
        if isinstance(node, Not):
            return deepest(node.operand, fixed)
        fixed = fixed | frozenset(_shared(node, fixed, names))
        return max(deepest(child, fixed) for child in node.operands)

    return deepest(root, frozenset())


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
