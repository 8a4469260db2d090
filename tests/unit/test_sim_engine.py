"""The discrete-event simulator on toy plans with exactly known timelines (torch-free)."""

from __future__ import annotations

from collections import Counter

import pytest

from coinfer.cluster import ClusterError, parse_cluster
from coinfer.cost import BandwidthTrace, CostModel
from coinfer.cost.calibration import HostCalibration
from coinfer.graph.geometry import PartGeom
from coinfer.graph.ir import Graph, Node
from coinfer.plan.lower import lower
from coinfer.plan.plan import ModelRef, Plan, RowPart, Rows, Stage, Whole, Wire
from coinfer.sim import SimResult
from coinfer.sim import simulate as _simulate
from coinfer.sim.run import simulate_lowered


def simulate(*a: object, **kw: object) -> SimResult:
    """The ideal machine (no runtime overheads): these timelines are known by hand."""
    return _simulate(*a, overheads=False, **kw)  # type: ignore[arg-type]

H, W = 100, 250  # one channel: 50 rows = 50 * 250 * 4 = 50,000 B


def conv1x1(name: str, src: str) -> Node:
    return Node(name, "conv", (src,), (1, 1, H, W),
                {"kernel": [1, 1], "stride": [1, 1], "dilation": [1, 1], "pad": [0, 0, 0, 0], "groups": 1,
                 "cin": 1, "cout": 1}, flops=2 * H * W, params=1, param_bytes=4)


def toy_graph() -> Graph:
    return Graph("toy", [Node("x", "input", (), (1, 1, H, W)), conv1x1("a", "x"), conv1x1("b", "a")])


def cluster(n: int = 2, mbps: float = 8.0, latency_ms: float = 1.0) -> object:
    # 8 Mbit/s = 1,000 bytes per ms
    power = [{"busy_w": 5.0, "idle_w": 2.0, "tx_w": 1.0, "rx_w": 0.5},
             {"busy_w": 10.0, "idle_w": 1.0, "tx_w": 2.0},
             {"busy_w": 4.0, "idle_w": 1.0, "tx_w": 1.0}]
    return parse_cluster({"source": "d0",
                          "devices": [{"name": f"d{i}", "cpu_share": 1.0, "power": power[i]} for i in range(n)],
                          "network": {"bandwidth_mbps": mbps, "latency_ms": latency_ms}})


class FixedCosts(CostModel):
    """Part latency fixed per (device, stage end): the compute side of a timeline known by hand."""

    def __init__(self, graph: Graph, cl: object, ms: dict[tuple[str, str], float], **kw: object) -> None:
        super().__init__(graph, cl, calibration=HostCalibration(), **kw)  # type: ignore[arg-type]
        self.ms = ms

    def part_ms(self, device: str, geom: PartGeom) -> float:
        return self.ms[(device, geom.end)]


def plan_of(g: Graph, stages: list[Stage], devices: list[str], wire: Wire | None = None) -> Plan:
    return Plan(ModelRef("toy", g.input_shape, g.fingerprint()), devices, "d0", stages, wire=wire or Wire())


def two_device_plan(g: Graph, wire: Wire | None = None) -> Plan:
    return plan_of(g, [Stage("a", Rows((RowPart("d0", (0, 50)), RowPart("d1", (50, 100))))),
                       Stage("output", Whole("d0"))], ["d0", "d1"], wire)


def events(res: SimResult) -> list[tuple[str, str, str, float, float]]:
    return sorted((e.device, e.lane, e.name, round(e.start_ms, 9), round(e.end_ms, 9)) for e in res.trace.events)


def test_two_devices_one_transfer_each_way_exact_timeline() -> None:
    g = toy_graph()
    costs = FixedCosts(g, cluster(), {("d0", "a"): 10.0, ("d1", "a"): 20.0, ("d0", "b"): 5.0})
    res = simulate(lower(two_device_plan(g), g), costs)
    # d0 scatters 50,000 B (50 ms on the link, +1 ms latency) while computing its half;
    # d1 computes 20 ms and returns 50,000 B; d0 finishes the whole tail stage in 5 ms.
    assert events(res) == sorted([
        ("d0", "send", "send    input rows[50,100) cols[0,250) to d1 (50000 B)", 0.0, 50.0),
        ("d0", "compute", "compute s0.p0 rows[0,50) cols[0,250)", 0.0, 10.0),
        ("d1", "recv", "recv    input rows[50,100) cols[0,250) from d0 (50000 B)", 1.0, 51.0),
        ("d1", "compute", "compute s0.p1 rows[50,100) cols[0,250)", 51.0, 71.0),
        ("d1", "send", "send    s0 rows[50,100) cols[0,250) to d0 (50000 B)", 71.0, 121.0),
        ("d0", "recv", "recv    s0 rows[50,100) cols[0,250) from d1 (50000 B)", 72.0, 122.0),
        ("d0", "compute", "compute s1.p0 rows[0,100) cols[0,250)", 122.0, 127.0),
    ])
    assert res.latency_ms == pytest.approx(127.0)
    assert res.busy_ms == pytest.approx({"d0": 15.0, "d1": 20.0})
    assert res.idle_ms == pytest.approx({"d0": 112.0, "d1": 107.0})
    assert res.tx_ms == pytest.approx({"d0": 50.0, "d1": 50.0})
    assert res.rx_ms == pytest.approx({"d0": 50.0, "d1": 50.0})
    assert res.bytes_moved == res.raw_bytes == 100_000
    assert res.trace.meta["kind"] == "simulated"
    assert res.trace.meta["latency_ms"] == pytest.approx(127.0)


def test_energy_accounting_sums() -> None:
    g = toy_graph()
    costs = FixedCosts(g, cluster(), {("d0", "a"): 10.0, ("d1", "a"): 20.0, ("d0", "b"): 5.0})
    res = simulate(lower(two_device_plan(g), g), costs)
    # d0: 5 W x 15 ms + 2 W x 112 ms + 1 W x 50 ms tx + 0.5 W x 50 ms rx
    e0 = (5 * 15 + 2 * 112 + 1 * 50 + 0.5 * 50) / 1e3
    # d1: 10 W x 20 ms + 1 W x 107 ms + 2 W x 50 ms tx + 2 W (rx_w defaults to tx_w) x 50 ms rx
    e1 = (10 * 20 + 1 * 107 + 2 * 50 + 2 * 50) / 1e3
    assert res.device_energy_j == pytest.approx({"d0": e0, "d1": e1})
    assert res.energy_j == pytest.approx(e0 + e1)
    assert res.dynamic_energy_j == pytest.approx(e0 + e1 - (2 * 112 + 1 * 107) / 1e3)
    for d in res.devices:
        assert res.busy_ms[d] + res.idle_ms[d] == pytest.approx(res.latency_ms)
        assert res.trace.busy_ms(d) == pytest.approx(res.busy_ms[d])


def test_trace_events_are_the_program_instructions() -> None:
    g = toy_graph()
    costs = FixedCosts(g, cluster(), {("d0", "a"): 1.0, ("d1", "a"): 1.0, ("d0", "b"): 1.0})
    low = lower(two_device_plan(g), g)
    res = simulate(low, costs)
    want = Counter((d, i.text()) for d, prog in low.programs.items() for i in prog
                   if i.op in ("send", "recv", "compute"))
    assert Counter((e.device, e.name) for e in res.trace.events) == want


def test_bandwidth_trace_changes_transfer_time() -> None:
    g = toy_graph()
    ms = {("d0", "a"): 10.0, ("d1", "a"): 20.0, ("d0", "b"): 5.0}
    low = lower(two_device_plan(g), g)
    base = simulate(low, FixedCosts(g, cluster(), ms)).latency_ms
    # 4 Mbit/s (500 B/ms) for the first 20 ms, then 16 Mbit/s (2,000 B/ms):
    # scatter: 10,000 B by 20 ms, 40,000 B in 20 ms more -> [0, 40]; arrives 41
    # d1 computes [41, 61]; return at 2,000 B/ms -> [61, 86]; arrives 87; tail [87, 92]
    tr = BandwidthTrace.from_points([(0.0, 4.0), (0.02, 16.0), (10.0, 16.0)])
    res = simulate(low, FixedCosts(g, cluster(), ms), bandwidth_trace=tr)
    assert base == pytest.approx(127.0)
    assert res.latency_ms == pytest.approx(92.0)
    send = [e for e in res.trace.events if e.lane == "send"]
    assert sorted((e.start_ms, e.end_ms) for e in send) == [pytest.approx((0.0, 40.0)), pytest.approx((61.0, 86.0))]


def test_quantised_wire_shrinks_bytes_and_time() -> None:
    g = toy_graph()
    ms = {("d0", "a"): 10.0, ("d1", "a"): 20.0, ("d0", "b"): 5.0}
    res = simulate(lower(two_device_plan(g, Wire("raw", "int8")), g), FixedCosts(g, cluster(), ms))
    # the scatter is the model input, which is never quantised (Plan.wire_for): 50,000 B; the return
    # is an activation: 12,500 B
    assert res.raw_bytes == 100_000 and res.bytes_moved == 62_500
    # scatter [0,50] -> 51; d1 [51,71]; back 12.5 ms [71,83.5] -> 84.5; tail [84.5,89.5]
    assert res.latency_ms == pytest.approx(89.5)
    sends = sorted((e.start_ms, e.args["wire_bytes"]) for e in res.trace.events if e.lane == "send")
    assert sends == [(0.0, 50_000), (71.0, 12_500)]


def test_codec_cpu_is_charged_to_sender_and_receiver() -> None:
    """With the runtime's overheads, a quantised / compressed wire costs the sender its encode and the
    receiver its decode (codecs.cpu_us, at the device's speed); a raw wire costs neither."""
    from coinfer.compress.codecs import cpu_us

    g = toy_graph()
    ms = {("d0", "a"): 10.0, ("d1", "a"): 20.0, ("d0", "b"): 5.0}
    cl = cluster(mbps=1e6, latency_ms=0.0)  # transfers ~free: the codec's CPU is what differs
    lat = {}
    for name, wire in (("raw", Wire()), ("int8", Wire("raw", "int8")), ("zstd", Wire("zstd", None))):
        res = _simulate(lower(two_device_plan(g, wire), g), FixedCosts(g, cl, ms), overheads=True)
        lat[name] = res.latency_ms
    # the scatter is the model input (int8 leaves it raw, zstd compresses it) and the return 50,000 B of
    # activation; both on the critical path, at full speed (cpu_share 1)
    enc, dec = cpu_us("raw", "int8", 50_000)
    assert lat["int8"] - lat["raw"] == pytest.approx((enc + dec) / 1e3, rel=0.05)
    zin, zout = cpu_us("zstd", None, 50_000, dense=True), cpu_us("zstd", None, 50_000)
    assert lat["zstd"] - lat["raw"] == pytest.approx((sum(zin) + sum(zout)) / 1e3, rel=0.05)


def scatter_plan(g: Graph) -> Plan:
    return plan_of(g, [Stage("a", Rows((RowPart("d0", (0, 20)), RowPart("d1", (20, 60)),
                                        RowPart("d2", (60, 100))))),
                       Stage("output", Whole("d0"))], ["d0", "d1", "d2"])


def test_nic_per_link_vs_shared() -> None:
    g = toy_graph()
    ms = {("d0", "a"): 1.0, ("d1", "a"): 1.0, ("d2", "a"): 1.0, ("d0", "b"): 1.0}
    low = lower(scatter_plan(g), g)
    costs = FixedCosts(g, cluster(3), ms)
    per = simulate(low, costs)
    shared = simulate(low, costs, nic="shared")
    sends = lambda r: sorted((e.start_ms, e.end_ms) for e in r.trace.events
                             if e.device == "d0" and e.lane == "send")
    # 40 rows = 40,000 B = 40 ms each: in parallel on their own links, or one after the other
    assert sends(per) == [pytest.approx((0.0, 40.0)), pytest.approx((0.0, 40.0))]
    assert sends(shared) == [pytest.approx((0.0, 40.0)), pytest.approx((40.0, 80.0))]
    # returns: d1 done at 42, d2 at 42 (per link) / 82 (shared); 40 ms back + 1 ms; tail 1 ms
    assert per.latency_ms == pytest.approx(42 + 40 + 1 + 1)
    assert shared.latency_ms == pytest.approx(82 + 40 + 1 + 1)


def test_sends_on_one_link_are_fifo() -> None:
    g = toy_graph()
    # d1 holds two parts: the source scatters both inputs on the same link, one after the other
    plan = plan_of(g, [Stage("a", Rows((RowPart("d0", (0, 50)), RowPart("d1", (50, 75)),
                                        RowPart("d1", (75, 100))))),
                       Stage("output", Whole("d0"))], ["d0", "d1"])
    ms = {("d0", "a"): 1.0, ("d1", "a"): 1.0, ("d0", "b"): 1.0}
    res = simulate(lower(plan, g), FixedCosts(g, cluster(), ms))
    sends = lambda d: sorted((e.start_ms, e.end_ms) for e in res.trace.events
                             if e.device == d and e.lane == "send")
    # 25,000 B = 25 ms each; the second input waits for the first to leave the link
    assert sends("d0") == [pytest.approx((0.0, 25.0)), pytest.approx((25.0, 50.0))]
    # d1: part 1 [26, 27] -> back [27, 52]; part 2 waits for its input (51): [51, 52] -> back [52, 77]
    assert sends("d1") == [pytest.approx((27.0, 52.0)), pytest.approx((52.0, 77.0))]
    assert res.latency_ms == pytest.approx(78.0 + 1.0)


def test_dynamic_tile_stage_work_stealing() -> None:
    g = toy_graph()
    plan = plan_of(g, [Stage("a", Rows(tuple(RowPart(d, (r, r + 25)) for d, r in
                                             (("d0", 0), ("d1", 25), ("d0", 50), ("d1", 75))), "dynamic")),
                       Stage("output", Whole("d0"))], ["d0", "d1"])
    low = lower(plan, g)
    assert [i.op for i in low.programs["d1"]] == ["dyn_worker"]
    costs = FixedCosts(g, cluster(), {("d0", "a"): 10.0, ("d1", "a"): 10.0, ("d0", "b"): 5.0})
    res = simulate(low, costs)
    comp = sorted((e.device, e.name, e.start_ms, e.end_ms) for e in res.trace.events if e.lane == "compute")
    # at 0 the master pushes one tile to each pool device (the plan's own first): d0 computes
    # tile 0 itself [0, 10]; tile 1's 25,000 B input reaches d1 at 26, it computes [26, 36] and
    # its output is back at 62. Meanwhile d0, free again at 10, takes its own tile 2 and then
    # steals tile 3 from d1's queue.
    assert comp == [
        ("d0", "compute s0.p0 (tile)", 0.0, 10.0),
        ("d0", "compute s0.p2 (tile)", 10.0, 20.0),
        ("d0", "compute s0.p3 (tile)", 20.0, 30.0),
        ("d0", "compute s1.p0 rows[0,100) cols[0,250)", 62.0, 67.0),
        ("d1", "compute s0.p1 (tile)", 26.0, 36.0),
    ]
    sends = sorted((e.device, e.name, e.start_ms, e.end_ms) for e in res.trace.events if e.lane == "send")
    assert sends == [("d0", "send tile s0.p1 to d1", 0.0, 25.0), ("d1", "send tile_out s0.p1 to d0", 36.0, 61.0)]
    assert res.latency_ms == pytest.approx(67.0)
    assert res.bytes_moved == 50_000
    assert res.busy_ms == pytest.approx({"d0": 35.0, "d1": 10.0})


def test_dynamic_stage_without_the_source_in_the_pool() -> None:
    g = toy_graph()
    plan = plan_of(g, [Stage("a", Rows((RowPart("d1", (0, 50)), RowPart("d2", (50, 100))), "dynamic")),
                       Stage("output", Whole("d0"))], ["d0", "d1", "d2"])
    costs = FixedCosts(g, cluster(3), {("d1", "a"): 10.0, ("d2", "a"): 10.0, ("d0", "b"): 5.0})
    res = simulate(lower(plan, g), costs)
    # each worker: 50,000 B in on its own link [0, 50] -> 51, compute [51, 61], out [61, 111] -> 112
    assert res.latency_ms == pytest.approx(112.0 + 5.0)
    assert res.busy_ms == pytest.approx({"d0": 5.0, "d1": 10.0, "d2": 10.0})


def test_plan_device_missing_from_cluster() -> None:
    g = toy_graph()
    low = lower(scatter_plan(g), g)
    with pytest.raises(ClusterError, match="does not have"):
        simulate(low, FixedCosts(g, cluster(2), {}))


def test_simulate_lowered_with_analytic_costs_is_consistent() -> None:
    g = toy_graph()
    costs = CostModel(g, cluster(), calibration=HostCalibration())
    res = simulate_lowered(two_device_plan(g), g, costs)
    local = simulate_lowered(plan_of(g, [Stage("output", Whole("d0"))], ["d0", "d1"]), g, costs, overheads=False)
    assert local.bytes_moved == 0 and local.busy_ms == {"d0": pytest.approx(local.latency_ms)}
    assert res.latency_ms > 0 and res.bytes_moved == 100_000


def test_geometries_are_rebuilt_when_missing() -> None:
    g = toy_graph()
    costs = FixedCosts(g, cluster(), {("d0", "a"): 10.0, ("d1", "a"): 20.0, ("d0", "b"): 5.0})
    low = lower(two_device_plan(g), g)
    low.geoms.clear()
    assert simulate(low, costs).latency_ms == pytest.approx(127.0)
