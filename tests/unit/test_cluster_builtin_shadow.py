"""A folder in the current directory named like a built-in cluster (``coinfer demo --out demo4`` makes one)
does not hide the built-in; only a regular file of that name does."""

from __future__ import annotations

from pathlib import Path

import pytest

from coinfer.cluster import builtin_cluster, resolve_cluster
from coinfer.runtime import upstate


def test_folder_named_like_a_builtin_gives_the_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo4").mkdir()
    assert resolve_cluster("demo4") == builtin_cluster("demo4")


def test_regular_file_named_like_a_builtin_is_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo4").write_text("source: a\ndevices: [{name: a}, {name: b}]\n")
    assert [d.name for d in resolve_cluster("demo4").devices] == ["a", "b"]


def test_up_state_key_of_a_builtin_ignores_a_folder_of_that_name(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    before = upstate.state_path("demo4")
    (tmp_path / "demo4").mkdir()
    assert upstate.state_path("demo4") == before
