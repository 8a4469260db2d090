"""Where coinfer keeps caches (trained exits, policies, profiles, summaries): ``$COINFER_CACHE``
or ``~/.cache/coinfer``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*sub: str) -> Path:
    base = Path(os.environ.get("COINFER_CACHE") or Path.home() / ".cache" / "coinfer")
    p = base.joinpath(*sub)
    p.mkdir(parents=True, exist_ok=True)
    return p
