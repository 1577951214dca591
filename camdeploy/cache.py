"""Where camdeploy caches exports: ``$CAMDEPLOY_CACHE_DIR``, else ``$XDG_CACHE_HOME/camdeploy``,
else ``~/.cache/camdeploy``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("CAMDEPLOY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "camdeploy"
