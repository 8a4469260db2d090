"""The distributed runtime with real worker processes over ZeroMQ/TCP on loopback.

Every zoo model, three plan shapes (rows over 4 devices, a 2x2 grid, mixed
stages), lossless and int8 wire codecs, dynamic tiles: outputs equal the plain
model within the core tolerance.
"""

from __future__ import annotations

import pytest
import torch

from coinfer import zoo
from coinfer.cluster import parse_cluster
from coinfer.execute.local import TOLERANCE, compare, reference_output
from coinfer.inputs import random_input
from coinfer.modelspec import capture_model
from coinfer.plan.plan import Grid, RowPart, Rows, Stage, Whole, Wire
from coinfer.runtime.coordinator import Session
from coinfer.runtime.launcher import LocalCluster
from coinfer.strategies import PlanRequest
from coinfer.strategies.common import split_rows

pytestmark = pytest.mark.integration

DEVS = ["d0", "d1", "d2", "d3"]


@pytest.fixture(scope="module")
def cluster4():
    cl = parse_cluster({"source": "d0", "devices": [{"name": d, "cpu_share": 1.0} for d in DEVS],
                        "network": {"bandwidth_mbps": 1000, "latency_ms": 0, "shape": False}})
    lc = LocalCluster(cl, emulate_cpu=False).start()
    yield cl, lc
    lc.stop()


def _request(cm, cl):
    return PlanRequest(cm.graph, cl, cm.graph.name)


def rows_plan(cm, cl):
    """Rows over 4 devices: one stage to the middle splittable cut, one to the last, then the tail."""
    g = cm.graph
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    mid, last = split[len(split) // 2], split[-1]
    w = {d: 1.0 + i for i, d in enumerate(DEVS)}
    stages = []
    for c in (mid, last):
        parts = split_rows(g[c].height, w)
        stages.append(Stage(c, Rows(tuple(RowPart(d, r) for d, r in parts))))
    if g.resolve(last) != g.output.name:
        stages.append(Stage("output", Whole("d0")))
    return _request(cm, cl).make_plan(stages, "test-rows")


def grid_plan(cm, cl, schedule="static"):
    g = cm.graph
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    c = split[len(split) // 3]
    n = g[c]
    rows = [0, n.height // 2, n.height] if n.height > 1 else [0, 1]
    cols = [0, n.width // 2, n.width] if n.width > 1 else [0, 1]
    devs = tuple(tuple(DEVS[(i * 2 + j) % 4] for j in range(len(cols) - 1)) for i in range(len(rows) - 1))
    stages = [Stage(c, Grid(tuple(rows), tuple(cols), devs, schedule))]
    if g.resolve(c) != g.output.name:
        stages.append(Stage("output", Whole("d1")))
    return _request(cm, cl).make_plan(stages, "test-grid")


def mixed_plan(cm, cl):
    g = cm.graph
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    a, b, c = split[0], split[len(split) // 2], split[-1]
    stages = [Stage(a, Whole("d2"))]
    if b != a:
        parts = split_rows(g[b].height, {"d0": 1, "d3": 2})
        stages.append(Stage(b, Rows(tuple(RowPart(d, r) for d, r in parts))))
    if c not in (a, b):
        n = g[c]
        rows = [0, max(1, n.height // 3), n.height] if n.height > 1 else [0, 1]
        stages.append(Stage(c, Grid(tuple(rows), (0, n.width), tuple(("d1",) if i % 2 else ("d2",)
                                                                      for i in range(len(rows) - 1)))))
    if g.resolve(stages[-1].until) != g.output.name:
        stages.append(Stage("output", Whole("d3")))
    return _request(cm, cl).make_plan(stages, "test-mixed")


def _check(session, cm, plan, x, tol=TOLERANCE):
    y = session(x)
    ref = reference_output(cm, x, plan.exit)
    _diff, rel = compare(y, ref)
    assert y.shape == ref.shape
    assert rel <= tol, f"{plan.strategy.name} on {cm.graph.name}: rel {rel:.3g} > {tol}"
    return rel


@pytest.mark.parametrize("model", zoo.names())
def test_zoo_models_exact_over_workers(cluster4, model):
    cl, lc = cluster4
    cm = capture_model(model)
    x = random_input(tuple(cm.graph.input_shape), 1)
    for make in (rows_plan, grid_plan, mixed_plan):
        plan = make(cm, cl)
        with Session(plan, cl, lc.addresses) as s:
            _check(s, cm, plan, x)
            tr = s.last_trace
            assert tr is not None and tr.meta["latency_ms"] > 0
            assert {e.device for e in tr.events} >= set(plan.devices_used_names()) - {plan.source}


@pytest.mark.parametrize("codec,quant,tol", [("lz4", None, TOLERANCE), ("zstd", None, TOLERANCE),
                                             ("raw", "int8", 0.05), ("raw", "int8c", 0.05)])
def test_wire_codecs(cluster4, codec, quant, tol):
    cl, lc = cluster4
    cm = capture_model("resnet18")
    plan = rows_plan(cm, cl)
    plan.wire = Wire(codec, quant)
    x = random_input(tuple(cm.graph.input_shape), 2)
    with Session(plan, cl, lc.addresses) as s:
        rel = _check(s, cm, plan, x, tol)
    if quant is None:
        assert rel <= TOLERANCE
    else:
        assert rel > 0  # int8 really quantised the transfers


def test_quantised_wire_leaves_the_model_input_and_output_alone(cluster4):
    """Quantisation is for activations (Plan.wire_for): an int8 plan whose only transfers are the input
    going out and the output coming back is exact; one more stage boundary makes it approximate."""
    cl, lc = cluster4
    cm = capture_model("resnet18")
    g = cm.graph
    x = random_input(tuple(g.input_shape), 4)
    offload = _request(cm, cl).make_plan([Stage("output", Whole("d1"))], "test-offload", wire=Wire("raw", "int8"))
    mid = [c for c, ok in g.splittable_cuts().items() if ok][3]
    two = _request(cm, cl).make_plan([Stage(mid, Whole("d1")), Stage("output", Whole("d2"))], "test-two",
                                     wire=Wire("raw", "int8"))
    with Session(offload, cl, lc.addresses) as s:
        assert _check(s, cm, offload, x) <= TOLERANCE
        sends = [e for e in s.last_trace.events if e.lane == "send"]
        assert sends, "the offload plan sends the output back"
    with Session(two, cl, lc.addresses) as s:
        assert _check(s, cm, two, x, 0.05) > TOLERANCE


def test_dynamic_tiles_exact(cluster4):
    cl, lc = cluster4
    cm = capture_model("vgg16")
    plan = grid_plan(cm, cl, schedule="dynamic")
    x = random_input(tuple(cm.graph.input_shape), 3)
    with Session(plan, cl, lc.addresses) as s:
        _check(s, cm, plan, x)
        tiles = [e for e in s.last_trace.events if "(tile)" in e.name]
        assert len(tiles) == 4


def test_concurrent_deployments_do_not_mix(cluster4):
    """Two sessions (two deployments of different models) on the same workers, interleaved."""
    cl, lc = cluster4
    cm1, cm2 = capture_model("resnet18"), capture_model("mobilenet_v2")
    p1, p2 = rows_plan(cm1, cl), grid_plan(cm2, cl)
    x1, x2 = random_input(tuple(cm1.graph.input_shape), 4), random_input(tuple(cm2.graph.input_shape), 5)
    with Session(p1, cl, lc.addresses) as s1, Session(p2, cl, lc.addresses) as s2:
        import threading

        errs: list[BaseException] = []

        def go(s, cm, p, x):
            try:
                for _ in range(3):
                    _check(s, cm, p, x)
            except BaseException as e:  # noqa: BLE001
                errs.append(e)

        ts = [threading.Thread(target=go, args=a) for a in ((s1, cm1, p1, x1), (s2, cm2, p2, x2))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert not errs, errs


def test_early_exit_over_workers(cluster4):
    cl, lc = cluster4
    cm = capture_model("resnet18")
    g = cm.graph.for_exit("exit2")
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    parts = split_rows(g[split[-1]].height, {"d1": 1, "d2": 1})
    plan = _request(cm, cl).make_plan([Stage(split[-1], Rows(tuple(RowPart(d, r) for d, r in parts))),
                                       Stage("output", Whole("d0"))], "test-exit", exit="exit2")
    x = random_input(tuple(cm.graph.input_shape), 6)
    with Session(plan, cl, lc.addresses) as s:
        y = s(x)
    with torch.no_grad():
        ref = cm.module.forward_exits(x)["exit2"]
    assert compare(y, ref)[1] <= TOLERANCE
    assert y.shape == ref.shape


def test_bad_input_shape_is_rejected(cluster4):
    cl, lc = cluster4
    cm = capture_model("alexnet_digits")
    plan = rows_plan(cm, cl)
    with Session(plan, cl, lc.addresses) as s:
        with pytest.raises(ValueError, match="input shape"):
            s(torch.zeros(1, 3, 32, 32))
        _check(s, cm, plan, random_input(tuple(cm.graph.input_shape), 7))


def test_switch_back_to_a_kept_deployment_builds_nothing(cluster4):
    """keep_deployments: switching between two plans builds each once; outputs stay exact."""
    cl, lc = cluster4
    cm = capture_model("resnet18_digits")
    a, b = rows_plan(cm, cl), grid_plan(cm, cl)
    x = random_input(tuple(cm.graph.input_shape), 7)
    ref = reference_output(cm, x)
    with Session(a, cl, lc.addresses, keep_deployments=2) as s:
        assert compare(s(x), ref)[1] <= TOLERANCE
        for target in (b, a, b, a):
            s.switch(target)
            assert s.plan is target or s.plan.to_json() == target.to_json()
            assert compare(s(x), ref)[1] <= TOLERANCE
        assert s.deploys == 2, s.deploys  # a, then b; every later switch reused a kept one
        assert len(s.kept) == 1
    # without keeping, every switch deploys
    with Session(a, cl, lc.addresses) as s:
        s.switch(b)
        s.switch(a)
        assert compare(s(x), ref)[1] <= TOLERANCE
        assert s.deploys == 3 and not s.kept
