"""Why a retrieval found nothing: each attribute of the expression against its threshold (the
highest probability any face got, and which face), and the faces that came closest, each with
what kept it out. `retrieve` sets it as `RetrievalResult.empty`; report.py shows it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from celebhpo.inference.expr_tree import Attr, Expression, Node, Not

__all__ = ["AttributeReach", "EmptyAnswer", "explain_empty"]


@dataclass
class AttributeReach:
    """How far one attribute of the expression got over a folder, against its threshold."""

    attribute: str
    threshold: float
    highest: float  # the highest probability any image of the folder got
    highest_image: str  # the image that got it
    lowest: float
    n_above: int  # images above the threshold (present)
    wanted: str  # what the expression asks of it: "present", "absent" or "either"


@dataclass
class EmptyAnswer:
    """Why nothing matched: each attribute's reach, and the faces that came closest."""

    attributes: list[AttributeReach]
    closest: pd.DataFrame  # image, score, each attribute's probability, short_of (why not)
    n_threshold_matches: int = 0  # images that pass the thresholds but score below min_score
    min_score: float = 0.0



def explain_empty(expr: Expression, names: list[str], probs: np.ndarray,
                  attributes: list[str], thresholds: np.ndarray, min_score: float = 0.0,
                  n: int = 5) -> EmptyAnswer:
    """Why `rank` found nothing: each attribute's highest probability against its threshold,
    and the `n` faces with the highest score, each with the attributes that kept it out
    (`short_of`: "Eyeglasses 0.234 <= 0.610" when the expression wants it present)."""
    wanted = _wanted(expr.root)
    reach = []
    for a in expr.attributes:
        col, t = probs[:, attributes.index(a)], float(thresholds[attributes.index(a)])
        top = int(np.argmax(col))
        reach.append(AttributeReach(attribute=a, threshold=t, highest=float(col[top]),
                                    highest_image=names[top], lowest=float(col.min()),
                                    n_above=int((col > t).sum()), wanted=wanted[a]))
    score = expr.score(probs)
    passed = int(expr.holds(probs > thresholds[None, :]).sum())
    idx = sorted(range(len(names)), key=lambda i: (-score[i], names[i]))[:n]
    closest = pd.DataFrame({"image": [names[i] for i in idx],
                            "score": [float(score[i]) for i in idx]})
    for r in reach:
        closest[r.attribute] = [float(probs[i, attributes.index(r.attribute)]) for i in idx]
    closest["short_of"] = ["; ".join(filter(None, (_short_of(r, row[r.attribute]) for r in reach)))
                           for _, row in closest.iterrows()]
    return EmptyAnswer(attributes=reach, closest=closest, n_threshold_matches=passed,
                       min_score=min_score)


def _wanted(root: Node) -> dict[str, str]:
    """Attribute -> "present" (under an even number of `not`s), "absent" (odd) or "either"."""
    sides: dict[str, set[str]] = {}

    def walk(node: Node, negated: bool) -> None:
        if isinstance(node, Attr):
            sides.setdefault(node.name, set()).add("absent" if negated else "present")
        elif isinstance(node, Not):
            walk(node.operand, not negated)
        else:
            for op in node.operands:
                walk(op, negated)

    walk(root, False)
    return {a: s.pop() if len(s) == 1 else "either" for a, s in sides.items()}


def _short_of(r: AttributeReach, p: float) -> str:
    """"Eyeglasses 0.234 <= 0.610" when `p` is on the wrong side of the threshold, else ""."""
    if r.wanted == "present" and p <= r.threshold:
        return f"{r.attribute} {p:.3f} <= {r.threshold:.3f}"
    if r.wanted == "absent" and p > r.threshold:
        return f"{r.attribute} {p:.3f} > {r.threshold:.3f}"
    return ""
