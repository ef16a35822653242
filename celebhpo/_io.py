"""The one place files are published: written under a temporary name in the same folder, then
`os.replace`d, so a reader (or a worker on another machine) sees the old file or the new one,
never half of one; a failure leaves no temporary file behind. Plus `check_writable` and
`output_errors`, which turn an output that cannot be written into one line naming it (before
any work where possible), `to_jsonable` for the numpy values that results carry, and
`report_to_dict` for a per-class report published as JSON.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from celebhpo.errors import CelebhpoError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["atomic_open", "atomic_path", "atomic_write", "check_writable", "describe_os_error",
           "fsync_dir", "output_errors", "report_to_dict", "to_jsonable"]


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; when the block ends without an error it
    replaces `path`, otherwise it is removed. For writers that want a file name (np.save,
    torch.jit.save, PIL). `durable` also fsyncs the folder, so the rename survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None:  # a failed write() (disk full, file too large) names no file
            e.filename = str(tmp)
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", *, durable: bool = False,
                **kwargs: Any) -> Iterator[IO]:
    """`open(path, mode)` that publishes the file only when the block succeeds."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode, **kwargs) as f:
        yield f
        f.flush()


def atomic_write(path: str | Path, data: str | bytes, *, durable: bool = False) -> Path:
    """Write text (UTF-8, "\\n" line ends) or bytes to `path` atomically; returns `path`."""
    if isinstance(data, bytes):
        with atomic_open(path, "wb", durable=durable) as f:
            f.write(data)
    else:
        with atomic_open(path, "w", durable=durable, encoding="utf-8", newline="\n") as f:
            f.write(data)
    return Path(path)


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- outputs that cannot be written ---------------------------------------------------------
def _unwritable(path: Path, reason: str, option: str, folder: bool) -> CelebhpoError:
    where = "a writable folder" if folder else "a file path in a writable folder"
    return CelebhpoError(f"cannot write to {path}: {reason}; pass {option} {where}")


def check_writable(path: str | Path, option: str, *, folder: bool = False) -> None:
    """Raise CelebhpoError now, before any work, when `path` (a file, or with `folder` a
    folder) could not be written: it is the wrong kind, sits under a file, or its nearest
    existing folder refuses a new file (read-only, no permission). Creates nothing: the probe
    is an anonymous temporary file."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        kind = "a folder" if path.is_dir() else "a file"
        raise _unwritable(path, f"it is {kind}", option, folder)
    probe = path if folder else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent  # the folders in between are made when the output is written
    if not probe.is_dir():
        raise _unwritable(path, f"{probe} is a file, not a folder", option, folder)
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise _unwritable(path, e.strerror or type(e).__name__, option, folder) from e


@contextlib.contextmanager
def output_errors(path: str | Path, option: str, *, folder: bool = False) -> Iterator[None]:
    """Turn an OSError raised while writing `path` (the file or folder itself, a folder above
    it, or a temporary file beside or inside it) into one CelebhpoError naming `path`, the
    reason and `option`. Other OSErrors (an input that cannot be read) pass unchanged."""
    try:
        yield
    except OSError as e:
        if not _concerns(e, Path(path), folder):
            raise
        raise _unwritable(Path(path), e.strerror or type(e).__name__, option, folder) from e


def _concerns(e: OSError, path: Path, folder: bool) -> bool:
    """Whether `e` is about writing `path`: its file name is `path`, a folder above it, a
    file in the folder that receives the output, or inside a temporary file or folder made
    beside `path` (named `.NAME.tmp-*`, as atomic_path and export-best name theirs)."""
    target = os.path.abspath(path)
    home = target if folder else os.path.dirname(target)
    scratch = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.tmp-")
    for name in (e.filename, e.filename2):
        if name is None:
            continue
        name = os.path.abspath(os.fsdecode(name))
        if (name == target or target.startswith(name.rstrip(os.sep) + os.sep)
                or os.path.dirname(name) == home or name.startswith(scratch)):
            return True
    return False


def describe_os_error(e: OSError) -> str:
    """Any OSError as one line: the file it names and the system's reason."""
    reason = e.strerror or str(e) or type(e).__name__
    names = [os.fsdecode(n) for n in (e.filename, e.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def to_jsonable(value: Any) -> Any:
    """`json.dumps(..., default=to_jsonable)`: numpy arrays and scalars become lists and
    numbers, paths and anything else their string."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def report_to_dict(report: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """A per-class report (training.metrics.per_class_report) as `{attribute: {column:
    value}}`, JSON-able: numpy scalars become Python numbers, NaN becomes None (strict JSON
    has no NaN)."""
    raw = report.set_index("attribute").to_dict(orient="index")  # keeps int columns int
    return {str(name): {str(k): _plain(v) for k, v in row.items()} for name, row in raw.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
