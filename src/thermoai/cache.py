"""thermoai's cache directory, shared by the embedded models (``thermoai.memory.model``) and the compiled
noise kernel (``thermoai.philox``)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """thermoai's cache directory: ``$THERMOAI_CACHE_DIR`` if set (the test suite points it at a folder of
    its own), else ``$XDG_CACHE_HOME/thermoai`` or ``~/.cache/thermoai``."""
    own = os.environ.get("THERMOAI_CACHE_DIR")
    if own:
        return Path(own)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "thermoai"
