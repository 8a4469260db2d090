"""Local workers get the caller's import paths (so a model importable here builds there), in the
caller's order: a first version put those paths before PYTHONPATH's own entries, so with PYTHONPATH at a
checkout and the same package installed elsewhere (an editable install's path from a .pth file) the
workers imported the *other* copy."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from coinfer.runtime.launcher import child_pythonpath


def test_the_callers_paths_keep_their_order_and_pythonpath_wins(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    checkout, script_dir, installed = (tmp_path / n for n in ("checkout", "scripts", "installed"))
    for d in (checkout, script_dir, installed):
        d.mkdir()
    # as a process started with PYTHONPATH=checkout has it: its script's folder, PYTHONPATH, ..., a .pth entry
    monkeypatch.setattr(sys, "path", [str(script_dir), str(checkout), *sys.path, str(installed)])
    got = [os.path.realpath(p) for p in child_pythonpath(str(checkout)).split(os.pathsep)]
    want = [os.path.realpath(p) for p in (script_dir, checkout, installed)]
    assert [p for p in got if p in want] == want, got
    assert not any(p.startswith(os.path.realpath(sys.prefix) + os.sep) for p in got)  # not the venv's own
