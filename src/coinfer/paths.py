"""Where coinfer keeps caches (trained exits, policies, profiles, summaries): ``$COINFER_CACHE``
or ``~/.cache/coinfer``; reading the files users name and writing the ones they ask for, with one-line
errors."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
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


def read_user_text(path: str | Path, *, what: str, kind: str, fix: str,
                   error: Callable[[str], Exception], missing: str | None = None) -> str:
    """The text of a file the user named (a plan, cluster, profile, trace, CSV, policy): ``error(line)``,
    one line naming ``what`` and the file, what is wrong and ``fix``, when it does not exist (``missing``
    replaces ``fix`` there), is a folder, cannot be read or is not text (``kind``: JSON, YAML, CSV)."""
    p = Path(path).expanduser()
    name = f"{what} {str(p)!r}"
    if p.is_dir():
        raise error(f"{name} is a folder, not a {kind} file; {fix}")
    try:
        return p.read_text()
    except FileNotFoundError:
        raise error(f"{name} does not exist; {missing or fix}") from None
    except UnicodeDecodeError:
        raise error(f"{name} is not a text ({kind}) file — {fix}") from None
    except OSError as e:
        raise error(f"{name} cannot be read ({e.strerror or e}); {fix}") from None


def write_text(path: str | Path, text: str) -> None:
    """``Path(path).write_text(text)`` under :func:`output_file`: plans, profiles, traces written for the user."""
    with output_file(path) as p:
        p.write_text(text)


def save_figure(fig: Any, path: str | Path, **kw: Any) -> None:
    """``fig.savefig(path, **kw)`` under :func:`output_file`: Gantt charts, learning curves and plots
    written for the user."""
    with output_file(path):
        fig.savefig(path, **kw)
