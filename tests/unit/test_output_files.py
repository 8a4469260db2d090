"""Writing an output (plan, trace, profile, figure, validation CSV) where the OS fails without naming the
file — EIO on close, as ``-o /proc/version`` gives — is one line naming the path, exit 2, like a path that
cannot be opened; a ``--plot`` path that cannot be written is refused before training."""

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


@pytest.fixture
def eio_on_savefig(monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    def fail(self: Figure, *_a: object, **_k: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Figure, "savefig", fail)


def _fdsp_plot(path: str) -> None:
    from types import SimpleNamespace

    from coinfer.cli.train_fdsp import _plot

    _plot(SimpleNamespace(curve=[(0, 0.5), (10, 0.9)], grid="2x2", wire={"quant": "int4"}, unpartitioned=0.95,
                          metric="accuracy", model="digits_cnn"), Path(path))


def _validation_png(path: str) -> None:
    from coinfer.sim.validation import CaseResult, scatter_png

    scatter_png([CaseResult("c", "m", "rows", "eq4", 100.0, 2, 4, 10.0, 11.0, -0.09, 0.1, 0.1, 1, 1, 9.0)], path)


def _distredge_curve(path: str) -> None:
    from coinfer.train.distredge import plot_curve

    plot_curve({"ddpg": [5.0, 4.0, 3.0]}, path)


def _gantt(path: str) -> None:
    from coinfer.trace import Event

    Trace(events=[Event("d0", "compute", "s0", 0.0, 1.0)]).gantt(path)


@pytest.mark.parametrize("write", [_fdsp_plot, _validation_png, _distredge_curve, _gantt])
def test_figures_name_the_path_of_an_unnamed_os_error(eio_on_savefig: None, write) -> None:  # type: ignore[no-untyped-def]
    # train fdsp --plot, bench --validate's validation.png, train distredge --plot, --gantt
    with pytest.raises(OSError) as e:
        write("/proc/version.png")
    assert e.value.filename == "/proc/version.png" and e.value.errno == errno.EIO


def test_validation_csv_names_the_path_of_an_unnamed_os_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from coinfer.sim import validation

    class Failing:
        def __enter__(self) -> Failing:
            return self

        def __exit__(self, *_a: object) -> None:
            raise OSError(errno.EIO, "Input/output error")  # as close() of /proc/version

        def write(self, s: str) -> int:
            return len(s)

    monkeypatch.setattr(validation, "open", lambda *_a, **_k: Failing(), raising=False)
    with pytest.raises(OSError) as e:
        validation.write_csv([], "/proc/version")
    assert e.value.filename == "/proc/version" and e.value.errno == errno.EIO


@pytest.mark.parametrize(("plot", "why"), [
    ("curve.txt", r"--plot curve\.txt ends in \.txt, which matplotlib cannot write; name a \.png"),
    ("curve", r"--plot curve has no file extension; name a \.png"),
    ("missing/curve.png", r"missing/curve\.png: folder missing does not exist \(--plot\)"),
])
def test_plot_paths_are_checked_before_training(plot: str, why: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from coinfer.cli.common import check_outputs
    from coinfer.errors import UserError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=why):
        check_outputs(plot=plot)
    check_outputs(plot="curve.png")
