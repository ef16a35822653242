"""The one place files are published: written under a temporary name in the same folder, then
`os.replace`d, so a reader (or a worker on another machine) sees the old file or the new one,
never half of one; a failure leaves no temporary file behind. Plus `to_jsonable` for the
numpy values that results carry.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = ["atomic_open", "atomic_path", "atomic_write", "fsync_dir", "to_jsonable"]


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


def to_jsonable(value: Any) -> Any:
    """`json.dumps(..., default=to_jsonable)`: numpy arrays and scalars become lists and
    numbers, paths and anything else their string."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
