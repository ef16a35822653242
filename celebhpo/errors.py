"""One exception family. The CLI turns any of these into a one-line message and exit 1.

Each message names the file, key, line or id at fault and says what to do.
"""

from __future__ import annotations

import difflib
import errno
import os
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


class TrackingAuthError(TrackingError):
    """The MLflow tracking store refused this process's credentials (or their absence)."""


class ExpressionError(CelebhpoError):
    """A malformed `--where` expression or an unknown attribute in it."""


def did_you_mean(written: object, valid: Iterable[object], *, n: int = 1,
                 cutoff: float = 0.5) -> list[str]:
    """The up to `n` names in `valid` closest to `written` (difflib), best first; [] if none
    is close. Every "did you mean" hint in celebhpo comes from here."""
    return difflib.get_close_matches(str(written), [str(v) for v in valid], n=n, cutoff=cutoff)


# -- secrets ---------------------------------------------------------------------------------
# Query keys whose values are credentials (`?password=`, `&X-Amz-Signature=`, `;token=`, ...)
_SECRET_KEY = (r"[\w.-]*(?:password|passwd|pwd|token|secret|api[_-]?key|access[_-]?key|"
               r"credential|signature)[\w.-]*|sig")
_SECRET_QUERY = re.compile(rf"(?<![\w.-])({_SECRET_KEY})=[^&\s#'\"<>)\]]+", re.IGNORECASE)
_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*)://([^/?#\s]+)@")
# In these schemes a userinfo without a colon is a user name (libpq, SQLAlchemy), not a token
_DATABASE_SCHEMES = ("postgres", "mysql", "mariadb", "mssql", "oracle", "cockroachdb")
# Environment variables whose values are secrets wherever they turn up
SECRET_ENV = ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "PGPASSWORD")
_MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words


def _mask_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if ":" in userinfo:
        return f"{scheme}://{userinfo.split(':', 1)[0]}:***@"
    if scheme.lower().split("+")[0].startswith(_DATABASE_SCHEMES):
        return match.group(0)
    return f"{scheme}://***@"


def mask_url(text: str) -> str:
    """`text` with every credential in it replaced by ***: the password of any
    `scheme://user:password@host`, a token standing alone as userinfo
    (`https://TOKEN@host`; a database URL's lone user name stays), the values of query keys
    like `password=`, `token=`, `secret=`, `api_key=`, `access_token=`, and the values of
    MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_PASSWORD and PGPASSWORD wherever they appear."""
    text = _USERINFO.sub(_mask_userinfo, str(text))
    text = _SECRET_QUERY.sub(r"\1=***", text)
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= _MIN_SECRET_CHARS:
            text = text.replace(value, "***")
    return text


def _strip_userinfo(match: re.Match[str]) -> str:
    scheme, userinfo = match.group(1), match.group(2)
    if scheme.lower().split("+")[0].startswith(_DATABASE_SCHEMES):
        return f"{scheme}://{userinfo.split(':', 1)[0]}@"  # the user name stays, for libpq
    return f"{scheme}://"  # a server's user and password come from its environment


def without_credentials(url: str) -> str:
    """`url` as it may be stored: no password, no secret query keys, and outside database
    URLs (whose user name stays) no userinfo at all. Everything else is kept as written."""
    masked = _USERINFO.sub(_strip_userinfo, url)
    masked = _SECRET_QUERY.sub("", masked)
    # a removed key leaves its separator behind: "?&a=1" -> "?a=1", "?" at the end -> ""
    masked = re.sub(r"([?&;])[&;]+", r"\1", masked)
    return re.sub(r"[?&;]+(?=$|#)", "", masked)


# -- a disk that is full or refuses writes ---------------------------------------------------
# What waiting will not cure: the user frees space, fixes permissions or picks another folder
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def os_cause(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc` that says a disk is full or refuses access (DISK_ERRNOS):
    `exc` itself or the first one down its chain (`__cause__`, else `__context__`, which a
    `raise ... from None` hides but keeps); None when there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def disk_message(err: OSError, path: str | os.PathLike[str] | None = None, *,
                 option: str | None = None) -> str:
    """One line for `err` (see `os_cause`) that names `path`, the file or folder being
    written (by default the one `err` names: the destination of a copy or a rename), says why
    and what to do. `option` is the flag that chose the folder (e.g. "--out")."""
    if path is None:
        path = err.filename2 if err.filename2 is not None else err.filename
    where = os.fsdecode(path) if path is not None else "a file it does not name"
    reason = err.strerror or os.strerror(err.errno or 0)
    elsewhere = f"pass {option} another folder" if option else "choose another folder"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        quota = " (or have your quota raised)" if err.errno == errno.EDQUOT else ""
        return f"cannot write to {where}: {reason}; free space on its disk{quota} or {elsewhere}"
    if err.errno == errno.EROFS:
        return f"cannot write to {where}: {reason}; {elsewhere}"
    return f"{where}: {reason}; fix its permissions or {elsewhere}"
