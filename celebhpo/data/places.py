"""Where celebhpo writes what it derives from a data root: the decode cache and `data inspect`'s
plots go beside the data when its folder is writable, elsewhere when it is not (a shared,
read-only copy of CelebA is the normal case), and one warning line says where.

- decode cache: ROOT/.celebhpo-cache, else USER_CACHE/images/NAME-HASH;
- `data inspect` plots: ROOT/inspect, else ./inspect-NAME in the working folder;
- USER_CACHE: $CELEBHPO_CACHE_DIR, else $XDG_CACHE_HOME/celebhpo, else ~/.cache/celebhpo
  (retrieve keeps its prediction cache there too).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

__all__ = ["default_cache_dir", "default_plot_dir", "user_cache_dir", "writable_dir"]


def user_cache_dir() -> Path:
    """$CELEBHPO_CACHE_DIR, else $XDG_CACHE_HOME/celebhpo, else ~/.cache/celebhpo."""
    if os.environ.get("CELEBHPO_CACHE_DIR"):
        return Path(os.environ["CELEBHPO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "celebhpo"


def writable_dir(path: str | Path) -> bool:
    """Whether `path` is, or can be made, a folder this process can write into (False on a
    read-only mount, for root too)."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK)


def default_cache_dir(root: str | Path) -> Path:
    """ROOT/.celebhpo-cache, or, when the data root is read-only, the user cache dir's
    images/NAME-HASH (one folder per data root), said in one warning line."""
    beside = Path(root) / ".celebhpo-cache"
    if writable_dir(beside):
        return beside
    resolved = Path(root).resolve()
    key = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    elsewhere = user_cache_dir() / "images" / f"{resolved.name}-{key}"
    warnings.warn(f"{root} is read-only: decoded images are cached in {elsewhere} instead "
                  "(data.cache_dir chooses another folder)", stacklevel=2)
    return elsewhere


def default_plot_dir(root: str | Path) -> Path:
    """ROOT/inspect, or, when the data root is read-only, inspect-NAME in the working folder,
    said in one warning line."""
    beside = Path(root) / "inspect"
    if writable_dir(beside):
        return beside
    elsewhere = Path(f"inspect-{Path(root).resolve().name or 'data'}")
    warnings.warn(f"{root} is read-only: the plots go to {elsewhere} instead (--out chooses "
                  "another folder)", stacklevel=2)
    return elsewhere
