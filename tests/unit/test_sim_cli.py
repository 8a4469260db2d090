"""``coinfer simulate`` / ``coinfer plan`` predictions, bad input, and the simulator's speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import machine_oversubscribed
from typer.testing import CliRunner

import coinfer
from coinfer.cli.main import build_app
from coinfer.cluster import builtin_cluster
from coinfer.cost import CostModel, DeviceProfile, ProfileSet
from coinfer.plan.lower import lower
from coinfer.plan.plan import Plan
from coinfer.sim import simulate
from coinfer.trace import Trace

MODEL = "alexnet_digits"  # small: 64x64 input
runner = CliRunner()


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(build_app(), [str(a) for a in args])


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    r = invoke("plan", "-m", MODEL, "-c", "het4", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    for k in ("plan_path", "predicted", "latency_ms", "energy_j", "bytes_moved", "busy_ms"):
        assert k in s, k
    assert s["predicted"]["source"] == "simulator" and s["latency_ms"] > 0
    assert set(s["busy_ms"]) <= {"d0", "d1", "d2", "d3"}
    return out


def test_plan_writes_predictions(plan_file: Path) -> None:
    plan = Plan.load(plan_file)
    assert plan.predicted is not None
    assert plan.predicted["latency_ms"] > 0 and plan.predicted["energy_j"] > 0
    again = coinfer.simulate(plan, "het4")
    assert again.latency_ms == pytest.approx(plan.predicted["latency_ms"], abs=1e-3)


def test_simulate_json_trace_gantt(plan_file: Path, tmp_path: Path) -> None:
    tr, png = tmp_path / "t.json", tmp_path / "g.png"
    r = invoke("simulate", plan_file, "-c", "het4", "--json", "--trace", tr, "--gantt", png)
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    for k in ("latency_ms", "energy_j", "dynamic_energy_j", "bytes_moved", "busy_ms", "idle_ms", "tx_ms", "rx_ms"):
        assert k in s, k
    t = Trace.load(tr)
    assert t.meta["kind"] == "simulated" and t.meta["latency_ms"] == pytest.approx(s["latency_ms"], abs=1e-3)
    assert t.span_ms <= s["latency_ms"] + 1e-3  # the result's return to the coordinator has no event
    assert png.stat().st_size > 1000
    # the compute on the critical path: each stage's busiest device, from the same trace
    assert s["critical_compute_ms"] == pytest.approx(t.critical_compute_ms(), abs=1e-3)
    assert 0 < s["critical_compute_ms"] <= s["latency_ms"]
    text = invoke("simulate", plan_file, "-c", "het4", "--nic", "shared", "--stages")
    assert text.exit_code == 0 and "predicted latency" in text.stdout
    assert "ms the busiest device's compute per stage;" in text.stdout.replace("\n", " ")
    assert "lost ms" in text.stdout and "(to the result)" in text.stdout
    r = invoke("simulate", plan_file, "-c", "het4", "--json", "--stages")
    rows = json.loads(r.stdout)["stages"]
    assert [x["stage"] for x in rows] == list(range(len(rows))) and rows[-1]["until"] == "output"
    assert sum(x["compute_ms"] for x in rows) == pytest.approx(s["critical_compute_ms"], abs=0.01)


def test_simulate_bandwidth_trace_option(plan_file: Path, tmp_path: Path) -> None:
    slow = tmp_path / "slow.csv"
    slow.write_text("t_s,mbps\n0,10\n")
    base = json.loads(invoke("simulate", plan_file, "-c", "het4", "--json").stdout)
    r = invoke("simulate", plan_file, "-c", "het4", "--json", "--bandwidth-trace", slow)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["latency_ms"] > base["latency_ms"]


def bad(r) -> str:  # type: ignore[no-untyped-def]
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in r.output
    return err


def test_profiles_of_another_model(plan_file: Path, tmp_path: Path) -> None:
    ProfileSet({"d0": DeviceProfile("d0", "vgg16", "sha256:" + "0" * 64)}).save_dir(tmp_path)
    err = bad(invoke("simulate", plan_file, "-c", "het4", "--profiles", tmp_path))
    assert "vgg16" in err and "coinfer profile" in err


def test_profiles_of_another_device(plan_file: Path, tmp_path: Path) -> None:
    fp = Plan.load(plan_file).model.fingerprint
    ProfileSet({"pi7": DeviceProfile("pi7", MODEL, fp)}).save_dir(tmp_path)
    assert "pi7" in bad(invoke("simulate", plan_file, "-c", "het4", "--profiles", tmp_path))
    assert "does not exist" in bad(invoke("simulate", plan_file, "-c", "het4", "--profiles", tmp_path / "x"))


def test_cluster_missing_a_device(plan_file: Path, tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("source: d0\ndevices: [{name: d0}, {name: d1}]\n")
    assert "does not have" in bad(invoke("simulate", plan_file, "-c", y))


def test_negative_bandwidth(plan_file: Path, tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("source: d0\ndevices: [{name: d0}, {name: d1}, {name: d2}, {name: d3}]\n"
                 "network: {bandwidth_mbps: -5}\n")
    assert "bandwidth_mbps" in bad(invoke("simulate", plan_file, "-c", y))
    csv = tmp_path / "bw.csv"
    csv.write_text("0,10\n1,-3\n")
    assert "bw.csv:2: rate must be > 0 Mbit/s" in bad(invoke("simulate", plan_file, "-c", "het4", "--bandwidth-trace", csv))
    assert "--nic" in bad(invoke("simulate", plan_file, "-c", "het4", "--nic", "wifi"))


def test_link_to_an_unknown_device(plan_file: Path, tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("source: d0\ndevices: [{name: d0}, {name: d1}, {name: d2}, {name: d3}]\n"
                 "network: {links: [{between: [d0, pi9], bandwidth_mbps: 10}]}\n")
    assert "pi9" in bad(invoke("simulate", plan_file, "-c", y))


def test_resnet50_rows_plan_on_16_devices_simulates_fast() -> None:
    """Issue 5: simulating a ResNet-50 rows plan on 16 devices < 50 ms (asserted generously)."""
    from coinfer.api import plan_result
    from coinfer.modelspec import capture_model

    g = capture_model("resnet50").graph
    cl = builtin_cluster("eq16")
    plan = plan_result("resnet50", cl, "proportional").plan
    low = lower(plan, g)
    assert len(low.programs) == 16
    costs = CostModel(g, cl)
    times = []
    for _ in range(3):  # the best of three: a busy moment of the machine is not the simulator's cost
        t0 = time.perf_counter()
        res = simulate(low, costs)
        times.append(time.perf_counter() - t0)
    dt = min(times)
    assert res.latency_ms > 0 and len(res.trace.events) > 1000
    if not machine_oversubscribed():  # an absolute time: only on a machine that is not oversubscribed
        assert dt < 0.2, f"simulating took {dt * 1e3:.1f} ms"


def test_plan_notes_the_builtin_calibration_and_calibrates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`coinfer plan` says when analytic costs use another machine's speeds; --calibrate measures this host."""
    monkeypatch.setenv("COINFER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "300")
    out = tmp_path / "p.json"
    r = invoke("plan", "-m", MODEL, "-c", "het4", "-o", out)
    assert r.exit_code == 0, r.output
    assert "built-in calibration" in r.output and "--calibrate" in r.output
    r = invoke("plan", "-m", MODEL, "-c", "het4", "-o", out, "--calibrate")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cache" / "calibration.json").is_file()
    assert "built-in calibration" not in r.output
    r = invoke("plan", "-m", MODEL, "-c", "het4", "-o", out)  # later plans use the cached one
    assert "built-in calibration" not in r.output
    assert json.loads((tmp_path / "cache" / "calibration.json").read_text())["source"] == "measured"
