"""ADCNN and DistrEdge plans on real worker processes.

* lossless wires (raw, lz4, zstd) give exactly the in-process FDSP result, and DistrEdge plans equal the
  plain model;
* the 4-bit wire gives exactly what :class:`coinfer.train.fdsp.WireExecutor` (the codecs, in process)
  predicts, and the run reports accuracy and top-1 agreement;
* the ``adcnn`` scheduler hands the first request's tiles out by the planned rates;
* a tile deadline zero-fills late tiles and says how many.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from coinfer.cluster import parse_cluster
from coinfer.cost import CostModel
from coinfer.execute.local import TOLERANCE, InProcessExecutor, compare, reference_output
from coinfer.plan.lower import lower
from coinfer.runtime.coordinator import Session
from coinfer.runtime.launcher import LocalCluster
from coinfer.runtime.schedulers import AdcnnScheduler
from coinfer.strategies import PlanRequest, run

pytestmark = pytest.mark.integration

DEVS = ["d0", "d1", "d2", "d3"]
SPEC = "coinfer.train.fdsp:digits_cnn"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Seeded digits-CNN weights in a private cache (the workers load them by import path), 4 workers."""
    from coinfer.train import fdsp

    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    mp.setenv("COINFER_CACHE", str(cache))
    torch.manual_seed(0)
    fdsp.save_weights(fdsp.DigitsCNN().eval(), fdsp._weights_path("digits_cnn"))  # under COINFER_CACHE
    cl = parse_cluster({"source": "d0", "devices": [{"name": d, "cpu_share": 1.0} for d in DEVS],
                        "network": {"bandwidth_mbps": 1000, "latency_ms": 0, "shape": False}})
    lc = LocalCluster(cl, emulate_cpu=False).start()
    from coinfer.modelspec import capture_model

    cm = capture_model(SPEC, fdsp.DIGITS_SHAPE)
    _, _, xte, yte = fdsp.load_digits()
    yield cl, lc, cm, xte[:8], yte[:8]
    lc.stop()
    mp.undo()


def _adcnn(cl, cm, **params):  # type: ignore[no-untyped-def]
    g = cm.graph
    return run("adcnn", PlanRequest(g, cl, SPEC, CostModel(g, cl), params={"grid": "2x2", "pool": "workers",
                                                                             **params})).plan


@pytest.mark.parametrize("wire", ["raw", "lz4", "zstd"])
def test_lossless_wires_equal_in_process_fdsp(env, wire: str) -> None:  # type: ignore[no-untyped-def]
    cl, lc, cm, x, _ = env
    plan = _adcnn(cl, cm, wire=wire)
    assert plan.wire.quant is None and plan.wire.codec == wire
    ex = InProcessExecutor(cm, plan)
    with Session(plan, cl, lc.addresses) as s:
        for i in range(2):
            y = s(x[i:i + 1])
            assert compare(y, ex(x[i:i + 1]))[1] <= TOLERANCE
        # FDSP is approximate: the zero-halo result is not the plain model's
        assert compare(y, reference_output(cm, x[1:2]))[1] > TOLERANCE


def test_int4_wire_matches_codec_emulation_and_reports_agreement(env) -> None:  # type: ignore[no-untyped-def]
    from coinfer.train.fdsp import WireExecutor

    cl, lc, cm, x, y_true = env
    plan = _adcnn(cl, cm)  # int4 + RLE by default
    assert plan.wire.quant == "int4"
    emu = WireExecutor(cm, plan)
    with Session(plan, cl, lc.addresses) as s:
        ys = torch.cat([s(x[i:i + 1]) for i in range(len(x))])
    want = emu(x)
    assert compare(ys, want)[1] <= 1e-5  # the same quantisation, message by message
    plain = reference_output(cm, x)
    agreement = float((ys.argmax(1) == plain.argmax(1)).float().mean())
    accuracy = float((ys.argmax(1) == y_true).float().mean())
    assert agreement == float((want.argmax(1) == plain.argmax(1)).float().mean())
    assert 0.0 <= accuracy <= 1.0 and emu.stats["wire_bytes"] < emu.stats["raw_bytes"] / 4


def test_first_request_follows_planned_rates(env) -> None:  # type: ignore[no-untyped-def]
    cl, lc, cm, x, _ = env
    plan = _adcnn(cl, cm, grid="4x4", depth=16)
    rates = {"d1": 3.0, "d2": 1.0, "d3": 1.0}
    plan.strategy.params["scheduler_params"]["rates"] = rates
    lw = lower(plan, cm.graph)
    dyn = next(st for st in lw.stages if st.dynamic)
    tiles = sorted(p for (s, p) in lw.parts if s == dyn.stage)
    offline = AdcnnScheduler(tiles, list(dyn.devices), {}, depth=16, rates=rates)
    want: Counter[str] = Counter()
    for d in dyn.devices:
        while offline.next_tile(d) is not None:
            want[d] += 1
    with Session(plan, cl, lc.addresses) as s:
        s(x[:1])
        got = Counter(e.device for e in s.last_trace.events if e.lane == "compute" and "(tile)" in e.name)
    assert got == want and got["d1"] > got["d2"]


def test_tile_deadline_zero_fills_late_tiles(env) -> None:  # type: ignore[no-untyped-def]
    cl, lc, cm, x, _ = env
    plan = _adcnn(cl, cm, wire="raw", tile_deadline_ms=0.001)
    with Session(plan, cl, lc.addresses) as s:
        y = s(x[:1])
        late = [e for e in s.last_trace.events if e.lane == "late"]
    assert y.shape == (1, 10) and late and late[0].args["late_tiles"] >= 1


def test_distredge_plan_exact_over_workers(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cl, lc, cm, x, _ = env
    g = cm.graph
    res = run("distredge", PlanRequest(g, cl, SPEC, CostModel(g, cl),
                                       params={"train_episodes": 20, "costs": "analytic", "wire": "lz4"}))
    plan = res.plan
    with Session(plan, cl, lc.addresses) as s:
        y = s(x[:1])
    assert compare(y, reference_output(cm, x[:1]))[1] <= TOLERANCE
