"""Using a trained model: the predictor and its backends, predict, evaluate, retrieve.

The rest of celebhpo uses only the names below; their text views live in celebhpo.report.
"""

from __future__ import annotations

from celebhpo.inference.evaluate import Evaluation, SplitEvaluation, evaluate, evaluate_splits
from celebhpo.inference.expr import Expression, parse_expression
from celebhpo.inference.predict import PredictionResult, predict
from celebhpo.inference.predictor import EXPORT_FILES, Predictor, load_model
from celebhpo.inference.retrieve import RetrievalResult, retrieve

__all__ = [
    "EXPORT_FILES", "Evaluation", "Expression", "PredictionResult", "Predictor", "RetrievalResult",
    "SplitEvaluation", "evaluate", "evaluate_splits", "load_model", "parse_expression",
    "predict", "retrieve",
]
