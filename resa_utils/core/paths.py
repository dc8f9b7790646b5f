"""Where caches live: `$RESA_CACHE_DIR`, else `~/.cache/resa_utils`."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "RESA_CACHE_DIR"


def cache_dir() -> Path:
    """Root of all caches: $RESA_CACHE_DIR, else ~/.cache/resa_utils."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "resa_utils"
