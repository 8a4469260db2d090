"""coinfer bench: bad input, the validation's plans and reports, trace comparison, measured-energy reporting."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from coinfer.cli.main import build_app
from coinfer.cluster import builtin_cluster, parse_cluster
from coinfer.cost import CostModel, DeviceProfile
from coinfer.cost.model import load_cost_model
from coinfer.cost.power import RaplDomain, RaplReader
from coinfer.modelspec import capture_model
from coinfer.plan.lower import lower
from coinfer.runtime import report
from coinfer.sim import simulate
from coinfer.sim import validation as V
from coinfer.sim.compare import compare_traces, format_pairs, summary
from coinfer.trace import Trace

runner = CliRunner()
USER, SHAPE = "core_helpers.user_models:user_net", "1,3,37,29"


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(build_app(), [str(a) for a in args])


@pytest.fixture(scope="module")
def graph():  # type: ignore[no-untyped-def]
    return capture_model(USER, SHAPE).graph


def test_bench_bad_input(tmp_path: Path) -> None:
    r = invoke("bench")
    assert r.exit_code == 2 and "--model, --cluster and --strategies" in r.output
    r = invoke("bench", "-m", USER, "-c", "het4", "-s", "local,nope")
    assert r.exit_code == 2 and "unknown strategies ['nope']" in r.output
    neg = tmp_path / "neg.yaml"
    neg.write_text("source: a\ndevices: [{name: a}, {name: b}]\nnetwork: {bandwidth_mbps: -1}\n")
    r = invoke("bench", "-m", USER, "-c", neg, "-s", "local")
    assert r.exit_code == 2 and "bandwidth_mbps" in r.output
    r = invoke("bench", "--validate", "--bandwidths", "100,-5")
    assert r.exit_code == 2 and "must be > 0" in r.output
    r = invoke("bench", "--validate", "--kinds", "rows,diagonal")
    assert r.exit_code == 2 and "diagonal" in r.output
    r = invoke("bench", "--validate", "--clusters", "edgent")
    assert r.exit_code == 2 and "need 4" in r.output
    r = invoke("bench", "--validate", "--models", "no_such_model")
    assert r.exit_code == 2 and "no_such_model" in r.output


def test_bench_refuses_profiles_of_another_model_or_device(tmp_path: Path, graph) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "p"
    d.mkdir()
    DeviceProfile("d0", "other", "sha256:x", stages={("x", "a"): [(1, 1.0)]}).save(d / "d0.json")
    r = invoke("bench", "-m", USER, "--input-shape", SHAPE, "-c", "het4", "-s", "local", "--profiles", d)
    assert r.exit_code == 2 and "measured for model 'other'" in r.output and "coinfer profile" in r.output
    (d / "d0.json").unlink()
    DeviceProfile("d9", graph.name, graph.fingerprint(), stages={("x", "a"): [(1, 1.0)]}).save(d / "d9.json")
    r = invoke("bench", "-m", USER, "--input-shape", SHAPE, "-c", "het4", "-s", "local", "--profiles", d)
    assert r.exit_code == 2 and "device 'd9', which the cluster does not have" in r.output


def test_simulate_probed_links_need_probes(tmp_path: Path, graph) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "p"
    d.mkdir()
    DeviceProfile("d0", graph.name, graph.fingerprint(), stages={}, whole={}).save(d / "d0.json")
    cl = builtin_cluster("het4")
    plan = V.rows_plan(USER, graph, cl, CostModel(graph, cl))
    plan.save(tmp_path / "plan.json")
    r = invoke("simulate", tmp_path / "plan.json", "-c", "het4", "--profiles", d, "--links", "probed")
    assert r.exit_code == 2 and "no probe of link" in r.output and "re-run coinfer profile" in r.output
    r = invoke("simulate", tmp_path / "plan.json", "-c", "het4", "--links", "probed")
    assert r.exit_code == 2 and "need profiles" in r.output
    ok = invoke("simulate", tmp_path / "plan.json", "-c", "het4", "--ideal", "--json")
    assert ok.exit_code == 0, ok.output


def test_validation_matrix_and_plans(graph) -> None:  # type: ignore[no-untyped-def]
    cases = V.validation_cases()
    assert len(cases) == 36 and len({c.name for c in cases}) == 36  # >= 20: 3 models x 3 kinds x 2 x 2
    assert {c.model for c in cases} == set(V.DEFAULT_MODELS) and {c.kind for c in cases} == set(V.KINDS)
    for cl_name in ("het4", "eq4"):
        cl = builtin_cluster(cl_name)
        costs = CostModel(graph, cl)
        for kind, make in V.PLANNERS.items():
            plan = make(USER, graph, cl, costs)
            plan.validate(graph)
            res = simulate(lower(plan, graph), costs)
            assert res.latency_ms > 0, kind
        whole = V.whole_plan(USER, graph, cl, costs)
        assert len(whole.stages) == 2 and whole.stages[1].partition.device != cl.source
        grid = V.grid_plan(USER, graph, cl, costs)
        assert any(s.partition.type == "grid" for s in grid.stages)


def _result(case: str, pred: float, meas: float, kind: str = "rows") -> V.CaseResult:
    return V.CaseResult(case, "m", kind, "het4", 100.0, 3, 4, pred, meas, (pred - meas) / meas, 1.0, 1.1, 10, 10,
                        pred * 0.8, [meas, meas * 1.1], 1.5)


def test_error_stats_csv_and_plot(tmp_path: Path) -> None:
    rs = [_result(f"c{i}", 100.0 + e, 100.0) for i, e in enumerate([-5, 2, 10, 20, -1])]
    st = V.error_stats(rs)
    assert st["n"] == 5 and st["median"] == pytest.approx(0.05) and st["max"] == pytest.approx(0.2)
    assert st["p90"] == pytest.approx(0.16)
    V.write_csv(rs, tmp_path / "v.csv")
    again = V.read_csv(tmp_path / "v.csv")
    assert [r.case for r in again] == [r.case for r in rs] and again[2].error == pytest.approx(0.1)
    V.scatter_png(rs + [_result("g", 50, 60, "grid")], tmp_path / "v.png")
    assert (tmp_path / "v.png").stat().st_size > 5000
    assert V.error_stats([]) == {"n": 0}


def test_trace_comparison_matches_instructions(graph) -> None:  # type: ignore[no-untyped-def]
    cl = builtin_cluster("het4")
    costs = CostModel(graph, cl)
    low = lower(V.rows_plan(USER, graph, cl, costs), graph)
    a = simulate(low, costs).trace
    b = simulate(low, costs, overheads=False).trace
    pairs = compare_traces(a, a)
    assert pairs and all(p.end_error_ms == 0 and p.dur_error_ms == 0 for p in pairs)
    n = sum(1 for e in a.events if e.lane in ("compute", "recv"))
    assert len(pairs) == n
    s = summary(a, b)
    assert s["matched"] == n and set(s["devices"]) <= set(cl.names) and s["error"] is not None
    assert "compute s0.p0" in format_pairs(compare_traces(a, b))


def _trace() -> Trace:
    t = Trace(meta={"latency_ms": 100.0})
    t.add("d0", "compute", "compute s0.p0", 0.0, 40.0)
    t.add("d0", "send", "send    s0 rows[0,4) cols[0,8) to d1 (125000 B)", 40.0, 41.0, bytes=125_000)
    t.add("d1", "recv", "recv    s0 rows[0,4) cols[0,8) from d0 (125000 B)", 40.0, 52.0, bytes=125_000, peer="d0")
    t.add("d1", "compute", "compute s1.p0", 52.0, 90.0)
    return t


def test_critical_compute_is_the_busiest_device_per_stage() -> None:
    t = _trace()  # s0: d0 40 ms; s1: d1 38 ms
    assert t.critical_compute_ms() == pytest.approx(78.0)
    t.add("d2", "compute", "compute s1.p1", 52.0, 95.0)  # a slower part of the same stage sets its time
    t.add("d3", "compute", "compute s2.p0 (tile)", 95.0, 100.0)  # tiles of a dynamic stage add up per device
    t.add("d3", "compute", "compute s2.p1 (tile)", 100.0, 103.0)
    t.add("d0", "compute", "compute s2.p2 (tile)", 95.0, 101.0)
    t.add("d0", "send", "send    s2 rows[0,1) cols[0,8) to d1 (8 B)", 101.0, 150.0, bytes=8)  # not compute
    assert t.critical_compute_ms() == pytest.approx(40 + 43 + 8)
    st = t.stage_times()
    assert [(x.stage, x.device) for x in st] == [(0, "d0"), (1, "d2"), (2, "d3")]
    assert [x.compute_ms for x in st] == pytest.approx([40, 43, 8])
    assert [x.end_ms for x in st] == pytest.approx([40, 95, 103])
    assert [x.lost_ms for x in st] == pytest.approx([0, 12, 0])  # s1: 40 → 95 with 43 ms of compute
    assert sum(x.lost_ms for x in st) == pytest.approx(st[-1].end_ms - t.critical_compute_ms())
    t.add("d1", "compute", "compute s3.p0", 101.0, 110.0)  # began before s2's slowest part ended
    assert t.stage_times()[-1].lost_ms == pytest.approx(110 - 103 - 9)
    assert report.summarize(t, parse_cluster({"source": "d0", "devices": [{"name": f"d{i}"} for i in range(4)]}))[
        "critical_compute_ms"] == pytest.approx(100.0)  # 40 + 43 + 8 + 9


def test_summarize_energy_source_and_link_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cl = parse_cluster({"source": "d0", "devices": [
        {"name": "d0", "power": {"busy_w": 5, "idle_w": 1, "tx_w": 2}},
        {"name": "d1", "power": {"busy_w": 10, "idle_w": 2, "tx_w": 1, "rx_w": 3}}],
        "network": {"bandwidth_mbps": 100, "latency_ms": 1}})
    s = report.summarize(_trace(), cl)
    assert s["energy_source"] == "model" and s["tx_ms"] == {"d0": 10.0, "d1": 0.0} and s["rx_ms"]["d1"] == 10.0
    want = (5 * 40 + 2 * 10 + 1 * 60 + 10 * 38 + 3 * 10 + 2 * 62) / 1e3
    assert s["energy_j"] == pytest.approx(want)
    m = report.summarize(_trace(), cl, measured_energy_j=1.25, energy_source="rapl")
    assert m["energy_j"] == 1.25 and m["model_energy_j"] == pytest.approx(want) and m["energy_source"] == "rapl"
    # a RAPL reader when the hardware has one (a fake powercap counter that advances 2 J per read)
    dom = tmp_path / "intel-rapl:0"
    dom.mkdir()
    (dom / "energy_uj").write_text("1000000")
    reads = iter([1_000_000, 3_000_000])
    fake = RaplReader((RaplDomain(dom, "package-0", 2**32),))
    monkeypatch.setattr(fake.__class__, "read_uj", lambda self: (next(reads),))
    monkeypatch.setattr("coinfer.cost.power.find_rapl", lambda *a, **k: fake)
    out, joules, src = report.measure_energy(lambda: 42)
    assert (out, joules, src) == (42, pytest.approx(2.0), "rapl")
    monkeypatch.setattr("coinfer.cost.power.find_rapl", lambda *a, **k: None)
    monkeypatch.setattr("coinfer.cost.power.find_ina3221", lambda *a, **k: None)
    assert report.measure_energy(lambda: 7) == (7, None, "model")


def test_resimulate_keeps_measurements_and_repredicts(tmp_path: Path, graph) -> None:  # type: ignore[no-untyped-def]
    """--resimulate: saved plans predicted again with the current model; the measured columns are kept."""
    cl = V.pinned_backend(builtin_cluster("het4")).with_bandwidth(100.0)
    plan = V.rows_plan(USER, graph, cl, CostModel(graph, cl))
    run_dir = tmp_path / "run"
    (run_dir / "traces").mkdir(parents=True)
    case = f"{USER}-rows-het4-100"
    plan.save(run_dir / "traces" / f"{case}.plan.json")
    old = V.CaseResult(case, USER, "rows", "het4", 100.0, len(plan.stages), 4, 1.0, 50.0, -0.98, 0.1, 0.2, 1, 2,
                       1.0, [49.0, 50.0, 51.0], 3.0)
    V.write_csv([old], run_dir / "validation.csv")
    key = "-".join(f"{d.name}{d.cpu_share:g}" for d in cl.devices)
    prof = tmp_path / "profiles" / key / USER
    prof.mkdir(parents=True)
    DeviceProfile("d0", graph.name, graph.fingerprint(), stages={}, whole={}).save(prof / "d0.json")
    r = invoke("bench", "--validate", "--resimulate", run_dir / "validation.csv", "--profiles-root",
               tmp_path / "profiles", "--out", tmp_path / "re", "--json")
    assert r.exit_code == 0, r.output
    (new,) = V.read_csv(tmp_path / "re" / "validation.csv")
    want = simulate(lower(plan, graph), load_cost_model(graph, cl, str(prof))).latency_ms
    assert new.predicted_ms == pytest.approx(want, rel=1e-3) and new.measured_ms == 50.0 and new.runs_ms == [49, 50, 51]
    assert new.error == pytest.approx((want - 50.0) / 50.0, abs=1e-3)
    assert (run_dir / "traces" / f"{case}.simulated.json").is_file() and (tmp_path / "re" / "validation.png").is_file()
    r = invoke("bench", "--validate", "--resimulate", tmp_path / "nope.csv", "--profiles-root", tmp_path)
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("bench", "--validate", "--resimulate", run_dir / "validation.csv")
    assert r.exit_code == 2 and "--profiles-root" in r.output


def test_rounds_merge_into_the_median_of_all_runs() -> None:
    a = V.Measured(10.0, [9.0, 10.0, 11.0], Trace([], {"r": "a"}), {"latency_ms": 10.0, "bytes_moved": 1})
    b = V.Measured(20.0, [19.0, 20.0, 30.0], Trace([], {"r": "b"}), {"latency_ms": 20.0, "bytes_moved": 2})
    c = V.Measured(14.0, [13.0, 14.0, 15.0], Trace([], {"r": "c"}), {"latency_ms": 14.0, "bytes_moved": 3})
    m = V.merge_measured([a, b, c])
    assert m.latencies_ms == [9.0, 10.0, 11.0, 19.0, 20.0, 30.0, 13.0, 14.0, 15.0]
    assert m.latency_ms == 14.0 and m.summary["latency_ms"] == 14.0
    assert m.trace.meta["r"] == "c" and m.summary["bytes_moved"] == 3  # the round closest to the median
    assert V.merge_measured([a]).latency_ms == 10.0


def test_validate_rejects_zero_rounds(tmp_path: Path) -> None:
    r = CliRunner().invoke(build_app(), ["bench", "--validate", "--rounds", "0", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "rounds" in r.output


def test_validate_rounds_rotate_and_report_each_case_after_its_last_round(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    order: list[str] = []
    reported: list[str] = []

    class Bed:
        def __init__(self, **kw: object) -> None: ...

        def __enter__(self) -> Bed:
            return self

        def __exit__(self, *a: object) -> None: ...

        def measure(self, plan: str, cluster: object, **kw: object) -> V.Measured:
            order.append(plan)
            return V.Measured(float(len(order)), [float(len(order))], Trace([], {}), {"latency_ms": 0.0})

    monkeypatch.setattr(V, "Testbed", Bed)
    monkeypatch.setattr(V, "profiles_for", lambda *a, **k: "p")
    monkeypatch.setattr(V, "prepare_case", lambda case, cl, prof: V.Prepared(case, cl, case.name, 4, None, None))
    monkeypatch.setattr(V, "case_result", lambda p, m, load, tdir: (p.case.name, m.latencies_ms))
    cases = V.validation_cases(("resnet18",), ("rows", "grid", "whole"), ("eq4",), (100.0,))
    names = [c.name for c in cases]
    res = V.validate(cases, tmp_path, rounds=3, on_result=lambda r: reported.append(r[0]))  # type: ignore[arg-type,return-value]
    assert order == names + names[1:] + names[:1] + names[2:] + names[:2]  # rotated by one case per round
    assert reported == names[2:] + names[:2]  # in the order of the last round
    assert [r[0] for r in res] == names and res[0][1] == [1.0, 6.0, 8.0]  # type: ignore[index]
    order.clear()
    assert [r[0] for r in V.validate(cases, tmp_path)] == names and order == names  # type: ignore[index]


class _FakeBed:
    """Stands in for the emulated cluster (no worker processes): every plan 'measures' 10 ms."""
    plans: ClassVar[list[Any]] = []

    def __init__(self, **_: object) -> None:
        pass

    def __enter__(self) -> _FakeBed:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def measure(self, plan, cluster, **_: object):  # type: ignore[no-untyped-def]
        _FakeBed.plans.append(plan)
        return V.Measured(10.0, [10.0], Trace(), {"energy_j": 0.5, "bytes_moved": 123, "busy_ms": {"d0": 9.0},
                                   "critical_compute_ms": 8.0})


def test_bench_deadline_and_params_reach_every_strategy_and_json_has_the_contract_keys(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """bench had no --deadline-ms (edgent could not be benched: 'No such option'); --param is passed to every
    strategy and checked as plan checks it; each result carries DESIGN.md's latency_ms, energy_j, bytes_moved,
    busy_ms."""
    import json

    monkeypatch.setattr(V, "Testbed", _FakeBed)
    _FakeBed.plans = []
    r = invoke("bench", "-m", "resnet18_digits", "-c", "edgent", "-s", "edgent,local", "-n", "1",
               "--deadline-ms", "5000", "-p", "exit=exit1", "--json")
    assert r.exit_code == 0, r.output
    js = json.loads(next(line for line in r.output.splitlines() if line.startswith("{")))
    assert [p.strategy.name for p in _FakeBed.plans] == ["edgent", "local"]
    assert _FakeBed.plans[0].strategy.params["deadline_ms"] == 5000
    assert all(p.exit == "exit1" for p in _FakeBed.plans)  # the --param reached both
    for row in js["results"]:
        assert row["latency_ms"] == 10.0 and row["energy_j"] == 0.5 and row["bytes_moved"] == 123
        assert row["busy_ms"] == {"d0": 9.0}
    assert js["deadline_ms"] == 5000 and js["params"] == {"exit": "exit1"}


def test_bench_refuses_a_param_one_strategy_does_not_take(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(V, "Testbed", _FakeBed)
    r = invoke("bench", "-m", "resnet18_digits", "-c", "het4", "-s", "even,local", "-p", "max_redundancy=0.2")
    assert r.exit_code == 2 and "--param max_redundancy: unknown parameter" in r.output and "strategy local" in r.output
    r = invoke("bench", "-m", "resnet18_digits", "-c", "het4", "-s", "local", "--deadline-ms", "0")
    assert r.exit_code == 2 and "--deadline-ms must be > 0" in r.output
