"""A binary file (an image, an .onnx) given where a plan or a cluster file is expected is one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from coinfer.cluster import ClusterError, load_cluster, resolve_cluster
from coinfer.plan.plan import Plan, PlanError

PNG_HEAD = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


@pytest.fixture
def binary_file(tmp_path: Path) -> Path:
    p = tmp_path / "cat.png"
    p.write_bytes(PNG_HEAD)
    return p


def test_binary_plan_file_is_named_not_a_text_file(binary_file: Path) -> None:
    with pytest.raises(PlanError, match=r"plan file '.*cat\.png' is not a text \(JSON\) file — give the plan "
                                        r"written by coinfer plan"):
        Plan.load(binary_file)


@pytest.mark.parametrize("load", [load_cluster, resolve_cluster])
def test_binary_cluster_file_is_named_not_a_text_file(binary_file: Path, load) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ClusterError, match=r"cluster file '.*cat\.png' is not a text \(YAML\) file — give a cluster "
                                           r"YAML file .* or a built-in \(demo4, "):
        load(str(binary_file))


def test_binary_profile_is_named_not_a_text_file(binary_file: Path, tmp_path: Path) -> None:
    from coinfer.cost.profile import DeviceProfile, ProfileError, ProfileSet

    (tmp_path / "pi1.json").write_bytes(PNG_HEAD)  # --profiles DIR holding an image named like a profile
    with pytest.raises(ProfileError, match=r"^profile '.*pi1\.json' is not a text \(JSON\) file — give a directory "
                                           r"of the <device>\.json files coinfer profile writes$"):
        ProfileSet.load_dir(tmp_path)
    with pytest.raises(ProfileError, match=r"cat\.png' is not a text \(JSON\) file"):
        DeviceProfile.load(binary_file)


def test_binary_bandwidth_trace_is_named_not_a_text_file(binary_file: Path) -> None:
    from coinfer.cost.bandwidth import BandwidthTrace, TraceError, read_trace_csv

    # simulate --bandwidth-trace, network.trace in a cluster file, edgent's --param trace
    for read in (read_trace_csv, BandwidthTrace.load):
        with pytest.raises(TraceError, match=r"^bandwidth trace '.*cat\.png' is not a text \(CSV\) file — give a CSV "
                                             r"of t_s,mbps rows"):
            read(binary_file)


def test_stored_trace_that_is_missing_binary_or_not_a_trace_is_one_line(binary_file: Path, tmp_path: Path) -> None:
    from coinfer.errors import UserError
    from coinfer.trace import Trace

    fix = r"give the trace JSON written by coinfer run or coinfer simulate --trace$"
    with pytest.raises(UserError, match=r"^trace file '.*cat\.png' is not a text \(JSON\) file — " + fix):
        Trace.load(binary_file)
    with pytest.raises(UserError, match=r"^trace file '.*nope\.json' does not exist; " + fix):
        Trace.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match=r"^trace file '.*bad\.json' is not valid JSON \(.*line 1\); " + fix):
        Trace.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"traceEvents": [{"ph": "X", "name": "x"}]}')
    with pytest.raises(UserError, match=r"^trace file '.*other\.json' is not a coinfer trace .*; " + fix):
        Trace.load(tmp_path / "other.json")


def test_validation_csv_to_resimulate_that_is_binary_or_other_is_one_line(binary_file: Path, tmp_path: Path) -> None:
    from coinfer.errors import UserError
    from coinfer.sim.validation import CaseResult, read_csv, write_csv

    fix = r"give a validation\.csv written by coinfer bench --validate$"
    with pytest.raises(UserError, match=r"^validation CSV '.*cat\.png' is not a text \(CSV\) file — " + fix):
        read_csv(binary_file)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"other\.csv has no column 'case'; " + fix):
        read_csv(tmp_path / "other.csv")
    good = tmp_path / "validation.csv"
    write_csv([CaseResult("c", "m", "rows", "eq4", 100.0, 2, 4, 10.0, 11.0, -0.09, 0.1, 0.1, 1, 1, 9.0, [1.0])], good)
    assert read_csv(good)[0].runs_ms == [1.0]
    good.write_text(good.read_text().replace(",100.0,", ",fast,"))
    with pytest.raises(UserError, match=r"validation\.csv:2: could not convert string to float: 'fast'; " + fix):
        read_csv(good)


def test_every_reader_names_a_folder_or_a_missing_file_in_one_line(tmp_path: Path) -> None:
    """One helper (``paths.read_user_text``) reads the files users name: a folder given for a plan used to
    read 'does not exist', for a profile or a bandwidth trace it was an IsADirectoryError traceback."""
    from coinfer.cost.bandwidth import TraceError, read_trace_csv
    from coinfer.cost.profile import DeviceProfile, ProfileError
    from coinfer.errors import UserError
    from coinfer.sim.validation import read_csv
    from coinfer.trace import Trace

    folder = tmp_path / "adir"
    folder.mkdir()
    readers = [(Plan.load, PlanError, "plan file", "JSON"), (load_cluster, ClusterError, "cluster file", "YAML"),
               (DeviceProfile.load, ProfileError, "profile", "JSON"), (read_trace_csv, TraceError, "bandwidth trace", "CSV"),
               (Trace.load, UserError, "trace file", "JSON"), (read_csv, UserError, "validation CSV", "CSV")]
    for load, error, what, kind in readers:
        with pytest.raises(error, match=rf"^{what} '.*adir' is a folder, not a {kind} file; \w"):
            load(folder)
        with pytest.raises(error, match=rf"^{what} '.*nope' does not exist; \w"):
            load(tmp_path / "nope")


def test_a_json_file_that_is_not_a_trace_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """QA (stop 26): `python -m coinfer.sim.compare plan.json sim.json` took a plan for an empty trace
    and exited 0; a JSON object without trace events is now 'not a coinfer trace'."""
    from coinfer.trace import Trace, TraceFileError

    p = tmp_path / "plan.json"
    p.write_text('{"format": "coinfer.plan/1", "stages": []}')
    with pytest.raises(TraceFileError, match="is not a coinfer trace"):
        Trace.load(p)
