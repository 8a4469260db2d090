"""Cost formulas on hand-computed cases (torch-free)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from coinfer.cluster import ClusterError, parse_cluster
from coinfer.cost import BandwidthTrace, CostModel, DeviceProfile, HostCalibration, interpolate
from coinfer.cost.regression import FEATURES, LayerRegression
from coinfer.cost.wire import wire_ratio
from coinfer.errors import UserError
from coinfer.graph.geometry import part_geometry
from coinfer.graph.ir import Graph, Node

H, W = 100, 250
CAL = HostCalibration(gemm_gflops=50.0, dwconv_gflops=5.0, pool_gops=0.02, mem_gbps=10.0, weight_gbps=5.0,
                      node_overhead_us=20.0)


def conv1x1(name: str, src: str) -> Node:
    return Node(name, "conv", (src,), (1, 1, H, W),
                {"kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pad": [0, 0, 0, 0], "groups": 1,
                 "cin": 1, "cout": 1}, flops=2 * H * W, params=1, param_bytes=4)


def toy_graph() -> Graph:
    return Graph("toy", [Node("x", "input", (), (1, 1, H, W)), conv1x1("a", "x"), conv1x1("b", "a")])


def cluster(**net: object) -> object:
    return parse_cluster({
        "source": "d0",
        "devices": [{"name": "d0", "cpu_share": 1.0, "power": {"busy_w": 5, "idle_w": 2, "tx_w": 1, "rx_w": 0.5}},
                    {"name": "d1", "cpu_share": 0.5, "threads": 1},
                    {"name": "d2", "cpu_share": 4.0, "threads": 2},
                    {"name": "d3", "cpu_share": 0.2, "speed_gflops": 25.0}],
        "network": {"bandwidth_mbps": 100, "latency_ms": 1.0, **net}})


# one 1x1 conv on the whole 100x250 map: 50,000 FLOPs; 25,000 elements in and out
WHOLE_NODE_MS = (50_000 / 50e6          # FLOPs / 50 GFLOP/s
                 + 200_000 / 10e6       # (in + out) x 4 B / 10 GB/s
                 + 4 / 5e6              # 4 B of weights / 5 GB/s
                 + 0.020)               # 20 us overhead


def test_interpolate_piecewise_linear() -> None:
    pts = [(10, 1.0), (50, 3.0), (100, 8.0)]
    assert interpolate(pts, 10) == 1.0
    assert interpolate(pts, 30) == pytest.approx(2.0)
    assert interpolate(pts, 75) == pytest.approx(5.5)
    assert interpolate(pts, 120) == pytest.approx(10.0)  # last segment extended
    assert interpolate(pts, 2) == pytest.approx(0.6)  # first segment extended
    assert interpolate(pts, 0) == pytest.approx(0.5)
    assert interpolate([(10, 2.0)], 5) == pytest.approx(1.0)
    assert interpolate([(10, 1.0), (20, 5.0)], 0) == 0.0  # clamped


def test_analytic_node_and_part() -> None:
    g = toy_graph()
    cm = CostModel(g, cluster(), calibration=CAL)
    assert cm.node_ms("d0", "a") == pytest.approx(WHOLE_NODE_MS)
    assert cm.node_ms("d1", "a") == pytest.approx(2 * WHOLE_NODE_MS)  # cpu_share 0.5
    assert cm.node_ms("d2", "a") == pytest.approx(WHOLE_NODE_MS / 2)  # 4 cores but 2 threads
    assert cm.node_ms("d3", "a") == pytest.approx(WHOLE_NODE_MS * 50 / 25)  # speed_gflops overrides
    half = 25_000 / 50e6 + 100_000 / 10e6 + 4 / 5e6 + 0.020
    assert cm.node_ms("d0", "a", (0, 50, 0, W)) == pytest.approx(half)
    geom = part_geometry(g, "x", "b", (0, 50, 0, W))
    assert cm.part_ms("d0", geom) == pytest.approx(2 * half)
    assert cm.stage_ms("d0", "x", "b", (0, 50, 0, W)) == pytest.approx(2 * half)
    assert cm.stage_ms("d0", "x", "output") == pytest.approx(2 * WHOLE_NODE_MS)


def test_analytic_pool_and_depthwise_terms() -> None:
    g = Graph("p", [Node("x", "input", (), (1, 8, 10, 10)),
                    Node("dw", "conv", ("x",), (1, 8, 10, 10),
                         {"kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1], "pad": [1, 1, 1, 1],
                          "groups": 8, "cin": 8, "cout": 8}, flops=2 * 9 * 800, param_bytes=288),
                    Node("mp", "maxpool", ("dw",), (1, 8, 5, 5),
                         {"kernel": [2, 2], "stride": [2, 2], "dilation": [1, 1], "pad": [0, 0, 0, 0],
                          "ceil_mode": False})])
    cm = CostModel(g, cluster(), calibration=CAL)
    dw = 14_400 / 5e6 + 1600 * 4 / 10e6 + 288 / 5e6 + 0.020  # depthwise rate
    mp = 200 / 0.02e6 + 1000 * 4 / 10e6 + 0.020  # 200 pooled outputs at 0.02 G/s
    assert cm.node_ms("d0", "dw") == pytest.approx(dw)
    assert cm.node_ms("d0", "mp") == pytest.approx(mp)


def test_speed_is_proportional_to_scale() -> None:
    cm = CostModel(toy_graph(), cluster(), calibration=CAL)
    s0 = cm.speed("d0")
    assert s0 == pytest.approx(100_000 / (2 * WHOLE_NODE_MS * 1e6))  # GFLOP/s over the whole model
    assert cm.speed("d1") == pytest.approx(s0 / 2)
    assert cm.speed("d3") == pytest.approx(s0 / 2)  # 25 of the host's 50 GFLOP/s


def test_transfer_latency_bandwidth_codec() -> None:
    cl = cluster(links=[{"between": ["d0", "d1"], "bandwidth_mbps": 50, "latency_ms": 2.0}])
    cm = CostModel(toy_graph(), cl, calibration=CAL)
    assert cm.transfer_ms("d0", "d2", 1_000_000) == pytest.approx(1.0 + 80.0)  # 8 Mbit at 100 Mbit/s
    assert cm.transfer_ms("d1", "d0", 1_000_000) == pytest.approx(2.0 + 160.0)  # the link's own figures
    assert cm.transfer_ms("d0", "d0", 1_000_000) == 0.0
    assert cm.transfer_ms("d0", "d2", 1_000_000, "zstd") == pytest.approx(1.0 + 80.0 * 0.74)
    assert cm.transfer_ms("d0", "d2", 1_000_000, "raw", "int8") == pytest.approx(1.0 + 20.0)
    assert cm.transfer_ms("d0", "d2", 1_000_000, "lz4", "int4") == pytest.approx(1.0 + 80 * 0.07)
    assert cm.wire_bytes(1000, "lz4") == pytest.approx(830)
    assert wire_ratio("raw", None) == 1.0
    with pytest.raises(UserError, match="codec"):
        wire_ratio("gzip")


def test_transfer_under_bandwidth_trace(tmp_path: Path) -> None:
    csv = tmp_path / "bw.csv"
    csv.write_text("t_s,mbps\n# the link drops, then recovers\n5,10\n6,100\n")
    tr = BandwidthTrace.load(csv)
    # times count from the first row; the last row holds one mean step (1 s); then it loops (2 s)
    assert tr.times_s == (0.0, 1.0) and tr.period_s == 2.0
    assert tr.mbps_at(0.5) == 10 and tr.mbps_at(1.5) == 100 and tr.mbps_at(2.5) == 10 and tr.mbps_at(7) == 100
    # 20 Mbit from t=0: 10 Mbit in the first second, the rest at 100 Mbit/s: 1.1 s
    assert tr.transfer_s(20e6, 0.0) == pytest.approx(1.1)
    assert tr.transfer_s(20e6, 1.0) == pytest.approx(0.2)
    assert tr.transfer_s(20e6, 2.0) == pytest.approx(1.1)  # looped
    # 200 Mbit: a period carries 110 Mbit; then 10 Mbit in 1 s and 80 Mbit in 0.8 s
    assert tr.transfer_s(200e6, 0.0) == pytest.approx(3.8)
    cl = cluster(links=[{"between": ["d0", "d1"], "bandwidth_mbps": 50, "latency_ms": 3.0}], trace=str(csv))
    cm = CostModel(toy_graph(), cl, calibration=CAL)
    assert cm.trace is not None and cm.describe()["bandwidth_trace"] == "bw.csv"
    assert cm.transfer_ms("d0", "d2", 2_500_000) == pytest.approx(1.0 + 1100.0)
    # the trace is every link's rate; the link keeps its latency
    assert cm.transfer_ms("d0", "d1", 2_500_000) == pytest.approx(3.0 + 1100.0)
    assert cm.transfer_ms("d0", "d2", 2_500_000, t_ms=1000.0) == pytest.approx(1.0 + 200.0)
    assert cm.with_trace(None).transfer_ms("d0", "d2", 2_500_000) == pytest.approx(1.0 + 200.0)


def test_trace_matches_the_runtime_link_shaper() -> None:
    shaping = pytest.importorskip("coinfer.runtime.shaping")
    import random

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 5)
        t, rows = rng.uniform(0, 3), []
        for _ in range(n):
            rows.append((round(t, 3), round(rng.uniform(0.5, 200), 2)))
            t += rng.uniform(0.01, 2)
        start, nbytes = rng.uniform(0, 20), rng.randint(1, 50_000_000)
        sh = shaping.LinkShaper(100.0, 0.0, rows, t0=0.0)
        want = sh.schedule(nbytes, start) - start
        got = BandwidthTrace.from_points(rows).transfer_s(8.0 * nbytes, start)
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9), (rows, start, nbytes)


@pytest.mark.parametrize("body, msg", [
    ("0,10\n1,-5\n", "bw.csv:2: rate must be > 0 Mbit/s (got -5)"),
    ("0,10\n0,20\n", "bw.csv:2: t_s 0 is not after the previous row's 0; times must increase"),
    ("0,10\nabc,1\n", "bw.csv:2: 'abc,1' is not two numbers t_s,mbps"),
    ("", "no rows"),
])
def test_bad_bandwidth_trace(tmp_path: Path, body: str, msg: str) -> None:
    p = tmp_path / "bw.csv"
    p.write_text(body)
    with pytest.raises(ClusterError, match=re.escape(msg)):
        BandwidthTrace.load(p)


def test_missing_trace_file_and_device() -> None:
    with pytest.raises(ClusterError, match=r"bandwidth trace '/nonexistent/bw\.csv' does not exist; give a CSV"):
        CostModel(toy_graph(), cluster(trace="/nonexistent/bw.csv"), calibration=CAL)
    cm = CostModel(toy_graph(), cluster(), calibration=CAL)
    with pytest.raises(ClusterError, match="not in the cluster"):
        cm.transfer_ms("d0", "zz", 10)
    with pytest.raises(ClusterError, match="not in the cluster"):
        cm.stage_ms("zz", "x", "a")


def test_energy_formula() -> None:
    cm = CostModel(toy_graph(), cluster(), calibration=CAL)
    # 5 W x 10 ms + 2 W x 20 ms + 1 W x 5 ms + 0.5 W x 4 ms
    assert cm.energy_j("d0", 10, 20, 5, 4) == pytest.approx((50 + 40 + 5 + 2) / 1e3)
    assert cm.dynamic_energy_j("d0", 10, 5, 4) == pytest.approx((50 + 5 + 2) / 1e3)
    # defaults: busy 5, idle 2, tx 1, rx = tx
    assert cm.energy_j("d1", 1, 1, 1, 1) == pytest.approx((5 + 2 + 1 + 1) / 1e3)


def profile_for(g: Graph, **kw: object) -> DeviceProfile:
    return DeviceProfile("d0", g.name, g.fingerprint(), **kw)  # type: ignore[arg-type]


def test_profiled_tables_are_interpolated() -> None:
    g = toy_graph()
    prof = profile_for(g, stages={("x", "a"): [(10, 1.0), (50, 3.0), (100, 8.0)]}, whole={("a", "b"): 4.0})
    cm = CostModel(g, cluster(), {"d0": prof}, calibration=CAL)
    assert cm.source_of("d0") == "profile" and cm.source_of("d1") == "analytic"
    assert cm.stage_ms("d0", "x", "a", (0, 30, 0, W)) == pytest.approx(2.0)
    assert cm.stage_ms("d0", "x", "a", (30, 60, 0, W)) == pytest.approx(2.0)  # 1x1: no halo, same cost
    assert cm.stage_ms("d0", "x", "a") == pytest.approx(8.0)
    assert cm.stage_ms("d0", "a", "b") == pytest.approx(4.0)  # whole-stage latency
    assert cm.stage_ms("d0", "x", "b") == pytest.approx(12.0)  # a fused stage: per segment
    # a grid tile: the table at its rows, scaled by analytic(tile) / analytic(full-width rows)
    tile = cm.stage_ms("d0", "x", "a", (0, 30, 0, 125))
    ref = cm.stage_ms("d1", "x", "a", (0, 30, 0, W))
    assert tile == pytest.approx(2.0 * cm.stage_ms("d1", "x", "a", (0, 30, 0, 125)) / ref)
    # the unprofiled segment of a rows part falls back to the analytic model
    part = cm.stage_ms("d0", "x", "b", (0, 50, 0, W))
    assert part == pytest.approx(3.0 + cm.node_ms("d0", "b", (0, 50, 0, W)))


def test_regressions_price_unprofiled_nodes() -> None:
    g = toy_graph()
    reg = LayerRegression("conv", FEATURES["conv"], (2.0, 0.0, 0.0, 0.5), 10, 0.0)
    cm = CostModel(g, cluster(), {"d0": profile_for(g, regressions={"conv": reg})}, calibration=CAL)
    # 2 ms per million input elements + 0.5 ms
    assert cm.node_ms("d0", "a") == pytest.approx(2.0 * 0.025 + 0.5)
    assert cm.stage_ms("d0", "x", "b") == pytest.approx(2 * (2.0 * 0.025 + 0.5))


def test_profile_calibration_is_used_unscaled() -> None:
    g = toy_graph()
    slow = HostCalibration(gemm_gflops=25.0, dwconv_gflops=5.0, pool_gops=0.02, mem_gbps=5.0, weight_gbps=2.5,
                           node_overhead_us=40.0)
    prof = DeviceProfile("d1", g.name, g.fingerprint(), calibration=slow,
                         emulation={"mode": "cgroup-v1", "cpu_share": 0.5})  # wall time under d1's quota
    cm = CostModel(g, cluster(), {"d1": prof}, calibration=CAL)
    assert cm.node_ms("d1", "a") == pytest.approx(2 * WHOLE_NODE_MS)  # its own figures, not cpu_share


def test_emulation_off_prices_local_devices_at_the_host_s_speed_and_unemulated_profiles_are_checked() -> None:
    """QA: with ``emulation: {cpu: off}`` local devices run unthrottled, but the cost model priced them at
    their cpu_share (25.6 ms predicted, 13.6 measured); a wall profile measured without emulation was
    used for a device the cluster emulates (8.3 ms predicted, 29.6 measured)."""
    from coinfer.cost.profile import ProfileError

    g = toy_graph()
    on, off = cluster(), cluster().model_copy(update={"emulation": cluster().emulation.model_copy(update={"cpu": "off"})})
    assert CostModel(g, on, calibration=CAL).emulated_share("d1") == 0.5
    cm = CostModel(g, off, calibration=CAL)
    assert cm.emulated_share("d1") == 1.0 and cm.quota("d1") is None
    assert cm.node_ms("d1", "a") == pytest.approx(CostModel(g, off, calibration=CAL).node_ms("d0", "a"))
    assert CostModel(g, on, calibration=CAL).node_ms("d1", "a") == pytest.approx(2 * cm.node_ms("d1", "a"))
    bare = DeviceProfile("d1", g.name, g.fingerprint(), calibration=CAL,  # wall, measured here, no emulation
                         machine={"hostname": "vm", "cpus": 2})
    with pytest.raises(ProfileError, match=r"measured in wall time without CPU emulation .* emulates d1 at "
                                           r"cpu_share 0\.5; re-profile .* or set emulation: \{cpu: off\}"):
        CostModel(g, on, {"d1": bare}, calibration=CAL)
    CostModel(g, off, {"d1": bare}, calibration=CAL)  # what it was measured as
