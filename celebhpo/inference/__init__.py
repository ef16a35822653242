"""Using a trained model: the predictor and its backends, predict, evaluate, retrieve.

The rest of celebhpo uses only the names below.
"""

from __future__ import annotations

from celebhpo.inference.expr import Expression, parse_expression
from celebhpo.inference.predictor import (
    Predictor,
    evaluate,
    format_evaluation,
    format_predictions,
    format_retrieval,
    load_model,
    predict,
    retrieve,
)

__all__ = [
    "Expression", "Predictor", "evaluate", "format_evaluation", "format_predictions",
    "format_retrieval", "load_model", "parse_expression", "predict", "retrieve",
]
