"""Where coinfer keeps caches (trained exits, policies, profiles, summaries): ``$COINFER_CACHE``
or ``~/.cache/coinfer``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def cache_dir(*sub: str) -> Path:
    base = Path(os.environ.get("COINFER_CACHE") or Path.home() / ".cache" / "coinfer")
    p = base.joinpath(*sub)
    p.mkdir(parents=True, exist_ok=True)
    return p


@contextmanager
def output_file(path: str | Path) -> Iterator[Path]:
    """Write ``path`` inside this block: any OSError then carries the path's name, so the CLI's
    one-line error names it (an error raised on close, e.g. EIO writing /proc/version, has none)."""
    try:
        yield Path(path)
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror or str(e) or type(e).__name__, str(path)) from None


def write_text(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)`` under :func:`output_file`: plans, profiles, traces written for the user."""
    with output_file(path) as p:
        p.write_text(text)


def save_figure(fig: Any, path: str | Path, **kw: Any) -> None:
    """``fig.savefig(path, **kw)`` under :func:`output_file`: Gantt charts, learning curves and plots
    written for the user."""
    with output_file(path):
        fig.savefig(path, **kw)
