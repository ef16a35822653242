"""`celebhpo export-best`: the best trial's flow, the exported formats, the model card.

The rest of celebhpo uses only the names below.
"""

from __future__ import annotations

from celebhpo.export.best import ExportResult, export_best

__all__ = ["ExportResult", "export_best"]
