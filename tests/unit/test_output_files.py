"""Writing an output (plan, trace, profile) where the OS fails without naming the file — EIO on close, as
``-o /proc/version`` gives — is one line naming the path, exit 2, like a path that cannot be opened."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import typer

from coinfer.cli.common import EXIT_BAD_INPUT, user_errors
from coinfer.paths import output_file, write_text
from coinfer.trace import Trace


@pytest.fixture
def eio_on_write(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(self: Path, *_a: object, **_k: object) -> None:
        raise OSError(errno.EIO, "Input/output error")  # no filename, as from close()

    monkeypatch.setattr(Path, "write_text", fail)


def test_write_text_names_the_path_of_an_unnamed_os_error(eio_on_write: None) -> None:
    with pytest.raises(OSError) as e:
        write_text("/proc/version", "{}")
    assert e.value.filename == "/proc/version" and e.value.errno == errno.EIO


def test_output_file_keeps_the_error_type_and_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(PermissionError) as e, output_file(tmp_path / "x"):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert e.value.filename == str(tmp_path / "x")
    with pytest.raises(FileNotFoundError) as e2, output_file(tmp_path / "x"):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/else")
    assert e2.value.filename == "/else"


def test_cli_gives_one_line_and_exit_2_for_a_trace_written_to_a_failing_file(
        eio_on_write: None, capsys: pytest.CaptureFixture[str]) -> None:
    @user_errors
    def cmd() -> None:
        Trace().save("/proc/version")

    with pytest.raises(typer.Exit) as e:
        cmd()
    assert e.value.exit_code == EXIT_BAD_INPUT
    assert capsys.readouterr().err == ("error: /proc/version: Input/output error; "
                                       "check the path and its permissions\n")
