"""Where Tandem keeps its state. Read from the environment here, once, and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path


def tandem_home() -> Path:
    """All writable state (model cache, later the audit log and chat store): TANDEM_HOME,
    default ~/.cache/tandem. Tests point it at a temporary directory."""
    return Path(os.environ.get("TANDEM_HOME") or Path.home() / ".cache" / "tandem").expanduser()
