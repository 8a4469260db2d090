"""Time-dilation CPU emulation with real worker processes (``emulation: {cpu: dilate}``).

* Two workers at 0.25 and 0.5 of a core run a rows plan of ResNet-18: the
  results are exact, the launcher reports the mode, and every compute in the
  trace lasted its CPU time (the worker's own ``cpu_ms``) ÷ its device's
  share — a ratio within one run, so it holds on a loaded machine.
* Without a writable cgroup the launcher dilates instead of throttling.
* A compute longer than ``dead_after_s`` does not stop the heartbeat, and a
  source computing its own tile still hands tiles out (only computes wait for
  a device's CPU).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from coinfer.cluster import parse_cluster
from coinfer.execute.local import TOLERANCE, compare, reference_output
from coinfer.modelspec import capture_model
from coinfer.plan.plan import RowPart, Rows, Stage, Whole
from coinfer.runtime.coordinator import Session
from coinfer.runtime.launcher import LocalCluster
from coinfer.strategies import PlanRequest
from coinfer.strategies.common import split_rows

pytestmark = pytest.mark.integration

SHARES = {"d0": 0.25, "d1": 0.5}


def test_dilated_workers_compute_at_their_share_and_stay_exact() -> None:
    cl = parse_cluster({"source": "d0", "devices": [{"name": d, "cpu_share": s} for d, s in SHARES.items()],
                        "network": {"shape": False}, "emulation": {"cpu": "dilate"}})
    cm = capture_model("resnet18")
    g = cm.graph
    cut = [c for c, ok in g.splittable_cuts().items() if ok][-1]
    rows = split_rows(g[cut].height, {"d0": 1.0, "d1": 2.0})
    plan = PlanRequest(g, cl, "resnet18").make_plan(
        [Stage(cut, Rows(tuple(RowPart(d, r) for d, r in rows))), Stage("output", Whole("d0"))], "test-dilate")
    x = torch.randn(g.input_shape, generator=torch.Generator().manual_seed(0))
    ref = reference_output(cm, x)
    with LocalCluster(cl) as lc:
        assert lc.cpu_modes() == {"d0": "dilate", "d1": "dilate"}
        assert all(w.limiter is None for w in lc.workers.values())  # no cgroup, no SIGSTOP
        with Session(plan, cl, lc.addresses) as s:
            ratios: dict[str, list[float]] = {d: [] for d in SHARES}
            for _ in range(3):
                y = s(x)
                assert compare(y, ref)[1] <= TOLERANCE
                for e in s.last_trace.events:
                    if e.lane == "compute" and e.args.get("cpu_ms", 0) > 1.0:
                        ratios[e.device].append(e.dur_ms / (e.args["cpu_ms"] / SHARES[e.device]))
    for dev, r in ratios.items():
        med = statistics.median(r)
        print(f"{dev}: compute wall ÷ (cpu_ms ÷ share) median {med:.3f} over {len(r)} computes")
        assert len(r) >= 3
        # never shorter than the dilated time; a little longer by the sleep's wake-up
        assert min(r) >= 0.97
        assert med <= 1.3


def test_without_a_writable_cgroup_the_launcher_dilates(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from coinfer.runtime import launcher
    from coinfer.runtime.emulation import cpu_count

    monkeypatch.setattr(launcher, "cpu_mode_available", lambda: "duty-cycle")
    big = float(cpu_count())  # a device as fast as the machine: nothing to emulate
    cl = parse_cluster({"source": "a", "devices": [{"name": "a", "cpu_share": 0.5}, {"name": "b", "cpu_share": big}],
                        "network": {"shape": False}})
    assert cl.emulation.cpu == "quota"
    with LocalCluster(cl) as lc:
        assert lc.cpu_modes() == {"a": "dilate", "b": "none"}
        assert all(w.limiter is None for w in lc.workers.values())  # no SIGSTOP thread in the launcher
    with LocalCluster(cl, emulate_cpu=False) as lc:
        assert lc.cpu_modes() == {"a": "none", "b": "none"}


def test_a_long_dilated_compute_does_not_stop_the_heartbeat() -> None:
    """A dilated device answers pings while it computes: ResNet-18 whole on a 0.02 device is one
    section of ≈ 1.3 s, longer than ``dead_after_s``; the device must not be declared dead (a
    message handler that waited for the device's CPU did that)."""
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0", "cpu_share": 0.02}, {"name": "d1"}],
                        "network": {"shape": False}, "emulation": {"cpu": "dilate"}})
    cm = capture_model("resnet18")
    g = cm.graph
    plan = PlanRequest(g, cl, "resnet18").make_plan([Stage("output", Whole("d0"))], "test-long")
    x = torch.randn(g.input_shape, generator=torch.Generator().manual_seed(1))
    with LocalCluster(cl) as lc, Session(plan, cl, lc.addresses, heartbeat_s=0.1, dead_after_s=0.5,
                                         replan=False) as s:
        assert compare(s(x), reference_output(cm, x))[1] <= TOLERANCE
        comp = [e for e in s.last_trace.events if e.lane == "compute"]
        assert max(e.dur_ms for e in comp) > 1000  # the section really outlasted dead_after_s
        assert "d0" not in s.dead_at


def test_a_dilated_source_hands_out_tiles_while_it_computes_its_own() -> None:
    """Dynamic tiles (DeepThings) on dilated workers: the source's own tile compute must not hold
    back the tiles it sends to the others (sends run beside a compute): the helper's first tile
    starts before the source's first tile ends, and the result is exact."""
    from coinfer.strategies import run as run_strategy

    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0", "cpu_share": 0.1}, {"name": "d1", "cpu_share": 0.5}],
                        "network": {"shape": False}, "emulation": {"cpu": "dilate"}})
    cm = capture_model("yolov2_tiny")
    g = cm.graph
    until = [c for c, ok in g.splittable_cuts().items() if ok and g[c].height == 26][-1]
    plan = run_strategy("deepthings", PlanRequest(g, cl, "yolov2_tiny", None, "latency", None,
                                                  {"grid": "2x2", "until": until, "tail": "source",
                                                   "devices": ["d0", "d1"]})).plan
    x = torch.randn(g.input_shape, generator=torch.Generator().manual_seed(2))
    ref = reference_output(cm, x)
    with LocalCluster(cl) as lc, Session(plan, cl, lc.addresses) as s:
        for _ in range(4):
            assert compare(s(x), ref)[1] <= TOLERANCE
            tiles = [e for e in s.last_trace.events if e.lane == "compute" and "(tile)" in e.name]
            first = {d: min((e for e in tiles if e.device == d), key=lambda e: e.start_ms) for d in ("d0", "d1")}
            # every request (a source whose sends waited for its own tile lost this race most times)
            assert first["d1"].start_ms < first["d0"].end_ms, (first["d0"], first["d1"])
