"""One exception family. The CLI turns any of these into a one-line message and exit 1.

Each message names the file, key, line or id at fault and says what to do.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class CelebhpoError(Exception):
    """Base class: an error the user can fix; its message is shown as it is."""


class ConfigError(CelebhpoError):
    """A study file or override is wrong (unknown key, wrong type, bad range)."""


class DataError(CelebhpoError):
    """A CelebA folder, label file, partition file or image is unusable."""


class ModelError(CelebhpoError):
    """Unknown architecture, or pretrained weights that cannot be had."""


class TrainingError(CelebhpoError):
    """Training stopped for a reason the user should see (NaN/inf loss)."""


class CheckpointError(CelebhpoError):
    """A checkpoint or model directory that is not ours, or is damaged."""


class StudyError(CelebhpoError):
    """Study missing, ambiguous, conflicting, or with nothing to export."""


class TrackingError(CelebhpoError):
    """MLflow tracking store unreachable or inconsistent."""


class ExpressionError(CelebhpoError):
    """A malformed `--where` expression or an unknown attribute in it."""


def did_you_mean(written: object, valid: Iterable[object], *, n: int = 1,
                 cutoff: float = 0.5) -> list[str]:
    """The up to `n` names in `valid` closest to `written` (difflib), best first; [] if none
    is close. Every "did you mean" hint in celebhpo comes from here."""
    return difflib.get_close_matches(str(written), [str(v) for v in valid], n=n, cutoff=cutoff)


def mask_url(text: str) -> str:
    """Replace the password in any `scheme://user:password@host` inside `text` with ***."""
    return re.sub(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
