"""The profiler's measurement core (torch side) on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import coinfer
from coinfer.cluster import parse_cluster
from coinfer.cost import CostModel, DeviceProfile
from coinfer.cost.measure import (
    CHAIN_SCALE_MAX,
    CHAIN_SCALE_MIN,
    measure_stage_rows,
    measure_whole,
    profile_device,
    rows_sweep,
    segments,
    time_nodes,
)
from coinfer.graph.geometry import part_geometry


@pytest.fixture(scope="module")
def cm():  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(16, 10)).eval()
    return coinfer.capture(m, (1, 3, 32, 32), "tiny")


def test_rows_sweep() -> None:
    assert rows_sweep(5, 8) == [1, 2, 3, 4, 5]
    s = rows_sweep(224, 8)
    assert s[0] == 1 and s[-1] == 224 and len(s) == 8 and s == sorted(set(s))


def test_measure_stage_rows_and_nodes(cm) -> None:  # type: ignore[no-untyped-def]
    g = cm.graph
    start, end, split = segments(g)[0]
    assert split
    pts = measure_stage_rows(cm, start, end, [1, 8, g[end].height], reps=2, warmup=1)
    assert [r for r, _ in pts] == [1, 8, g[end].height] and all(ms > 0 for _, ms in pts)
    assert measure_whole(cm, g.input.name, g.output.name, reps=1, warmup=0) > 0
    geom = part_geometry(g, g.input.name, g.output.name, None)
    t = time_nodes(cm, geom, reps=2, warmup=1)
    assert [n for n, _ in t] == [ng.name for ng in geom.nodes] and all(ms >= 0 for _, ms in t)
    with pytest.raises(ValueError, match="outside"):
        measure_stage_rows(cm, start, end, [0], reps=1, warmup=0)


def test_profile_device_feeds_the_cost_model(cm) -> None:  # type: ignore[no-untyped-def]
    seen = []
    prof = profile_device(cm, "d0", rows_points=3, reps=1, warmup=0, layer_reps=1, calibrate=False,
                          progress=lambda what, k, n: seen.append((k, n)))
    g = cm.graph
    segs = segments(g)
    assert seen[-1] == (len(segs), len(segs))
    assert set(prof.stages) == {(s, e) for s, e, split in segs if split}
    assert set(prof.whole) == {(s, e) for s, e, split in segs if not split}
    # width points at about half the height: half and quarter width and the full width
    assert set(prof.cols) == {(s, e) for s, e, split in segs if split and g[e].width >= 4}
    rows, pts = prof.cols[(segs[0][0], segs[0][1])]
    w0 = g[segs[0][1]].width
    assert rows == g[segs[0][1]].height // 2 and [c for c, _ in pts] == [w0 // 4, w0 // 2, w0]
    assert {"conv", "act"} <= set(prof.regressions)
    assert prof.fingerprint == g.fingerprint() and prof.machine.get("torch")
    again = DeviceProfile.from_dict(json.loads(prof.to_json()))
    assert again == prof
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0"}, {"name": "d1"}]})
    costs = CostModel(g, cl, {"d0": again})
    assert costs.source_of("d0") == "profile"
    whole = costs.stage_ms("d0", g.input.name, g.output.name)
    full = {k: pts[-1][1] for k, pts in prof.stages.items()} | dict(prof.whole)
    first = (segs[0][0], segs[0][1])
    assert set(prof.chained) == {(s, e) for s, e, _ in segs[1:]}  # every segment after the first, in pairs
    # a whole-model part: the first segment alone, then what each later one adds in one part after its
    # predecessor (its chained cost) — the feature-map segments' scaled so that the whole model costs what
    # it measured as one part, the flat ones (after the flatten) as measured
    table_sum = full[first] + prof.chain_scale * sum(prof.chained[k] for k in prof.stages if k != first) \
        + sum(prof.chained[k] for k in prof.whole if k != first)
    assert prof.whole, "the test model has a flat tail"
    assert whole == pytest.approx(table_sum)
    assert prof.whole_model_ms is not None and CHAIN_SCALE_MIN <= prof.chain_scale <= CHAIN_SCALE_MAX
    if CHAIN_SCALE_MIN < prof.chain_scale < CHAIN_SCALE_MAX and prof.chain_scale != 1.0:
        assert whole == pytest.approx(prof.whole_model_ms, rel=1e-3)
    # resume: measured segments are kept, not measured again
    resumed = profile_device(cm, "d0", rows_points=3, reps=1, warmup=0, layer_reps=0, calibrate=False,
                             resume=prof)
    assert resumed.stages == prof.stages and resumed.whole == prof.whole


def test_chain_scale_fits_the_feature_map_segments_only(cm) -> None:  # type: ignore[no-untyped-def]
    """A flat segment (the linear layer) costs its chained figure; the scale covers the conv segments."""
    from coinfer.cost.measure import chain_scale

    g = cm.graph
    segs = segments(g)
    flat = [(s, e) for s, e, split in segs if not split]
    spatial = [(s, e) for s, e, split in segs[1:] if split]
    assert flat and spatial
    prof = DeviceProfile("d0", g.name, g.fingerprint())
    for s, e, split in segs:
        if split:
            prof.stages[(s, e)] = [(1, 0.1), (g[e].height, 2.0)]
        else:
            prof.whole[(s, e)] = 3.0
        if (s, e) != (segs[0][0], segs[0][1]):
            prof.chained[(s, e)] = 2.0 if split else 3.0
    # measured whole model: the first segment (2.0) + flat segments as chained + spatial ones at half
    whole_ms = 2.0 + 3.0 * len(flat) + 0.5 * 2.0 * len(spatial)
    prof.chain_scale = chain_scale(prof, g, whole_ms)
    assert prof.chain_scale == pytest.approx(0.5)
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0"}]})
    costs = CostModel(g, cl, {"d0": prof})
    assert costs.stage_ms("d0", g.input.name, g.output.name) == pytest.approx(whole_ms)
    # a part of the flat tail after its predecessor: its chained cost, unscaled
    s0, e0 = flat[0]
    prev = next(s for s, e, _ in segs if e == s0)
    assert costs.stage_ms("d0", prev, e0) == pytest.approx(_full(prof, prev, s0) + 3.0)


def _full(prof: DeviceProfile, s: str, e: str) -> float:
    return prof.stages[(s, e)][-1][1] if (s, e) in prof.stages else prof.whole[(s, e)]


def test_timed_runs_start_on_cold_caches(cm, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Under ``evicting`` every timed run (not the warm-up) follows a write of the buffer; it is freed after."""
    from coinfer.cost import measure

    calls = []
    real = measure._Evictor.__call__
    monkeypatch.setattr(measure._Evictor, "__call__", lambda self: (calls.append(self.buf.nbytes), real(self)))
    g = cm.graph
    geom = part_geometry(g, g.input.name, g.output.name, None)
    measure.measure_part(cm, geom, reps=3, warmup=2)
    assert calls == []  # outside: back to back
    with measure.evicting(2):
        measure.measure_part(cm, geom, reps=3, warmup=2)
        assert calls == [2 << 20] * 3
        measure.run_timed(cm, geom, reps=2, warmup=1)
        assert len(calls) == 5
    assert measure._EVICT == []
    calls.clear()
    prof = profile_device(cm, "d0", rows_points=3, reps=1, warmup=0, layer_reps=0, calibrate=False, evict_mb=1)
    assert prof.complete and calls and set(calls) == {1 << 20} and measure._EVICT == []
    calls.clear()
    profile_device(cm, "d0", rows_points=3, reps=1, warmup=0, layer_reps=0, calibrate=False, evict_mb=0)
    assert calls == []


def test_partial_width_parts_use_the_measured_width_points(cm) -> None:  # type: ignore[no-untyped-def]
    """A half-width tile costs what the profile's cols points say, not its analytic share of the slab."""
    g = cm.graph
    s, e, split = segments(g)[0]
    assert split
    h, w = g[e].height, g[e].width
    prof = DeviceProfile("d0", g.name, g.fingerprint(), stages={(s, e): [(1, 0.1), (h, 4.0)]})
    cl = parse_cluster({"source": "d0", "devices": [{"name": "d0"}]})
    plain = CostModel(g, cl, {"d0": prof})
    half = (0, h // 2, 0, w // 2)
    before = plain.stage_ms("d0", s, e, half)
    slab = plain.stage_ms("d0", s, e, (0, h // 2, 0, w))
    a_ratio = plain._analytic_ngs(plain.calibration, 1.0, part_geometry(g, s, e, (0, h // 2, 0, w // 2)).nodes) \
        / plain._analytic_ngs(plain.calibration, 1.0, part_geometry(g, s, e, (0, h // 2, 0, w)).nodes)
    assert before == pytest.approx(slab * a_ratio, rel=1e-6)  # without width points: the analytic share
    # measured: the half-width part takes 0.9 of the full-width one at the same rows
    prof.cols[(s, e)] = (h // 2, [(w // 2, 1.8), (w, 2.0)])
    with_cols = CostModel(g, cl, {"d0": prof})
    assert with_cols.stage_ms("d0", s, e, half) == pytest.approx(before * 0.9 / a_ratio, rel=1e-6)
    assert with_cols.stage_ms("d0", s, e, (0, h // 2, 0, w)) == pytest.approx(slab)  # full width: unchanged
    again = DeviceProfile.from_dict(json.loads(prof.to_json()))
    assert again.cols == prof.cols


@pytest.mark.parametrize("cols", [{"rows": 0, "points": [[4, 1.0]]}, {"rows": 2, "points": []},
                                  {"rows": 2, "points": [[4, -1.0]]}, {"rows": 2}])
def test_malformed_width_points_are_refused(cm, cols) -> None:  # type: ignore[no-untyped-def]
    from coinfer.cost.profile import ProfileError

    g = cm.graph
    s, e, _ = segments(g)[0]
    d = DeviceProfile("d0", g.name, g.fingerprint(), stages={(s, e): [(1, 0.1)]}).to_dict()
    d["stages"][0]["cols"] = cols
    with pytest.raises(ProfileError, match="cols|malformed"):
        DeviceProfile.from_dict(d)


def test_profiles_size_the_cold_cache_buffer_by_the_model(cm) -> None:  # type: ignore[no-untyped-def]
    from coinfer.cost.measure import EVICT_MB
    from coinfer.cost.remote import auto_evict_mb
    from coinfer.modelspec import capture_model

    assert auto_evict_mb(cm.graph, 4) == 16  # a tiny model: the floor
    mb = auto_evict_mb(capture_model("mobilenet_v2").graph, 4)
    assert 50 <= mb <= 60 and auto_evict_mb(capture_model("mobilenet_v2").graph, 2) == pytest.approx(mb / 2, abs=1)
    assert auto_evict_mb(capture_model("vgg16").graph, 4) == EVICT_MB  # capped


def test_cpu_clock_of_a_multi_thread_device_is_the_process_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: a ``threads: 2`` emulated device was profiled by its main thread's CPU time, which counted
    OpenMP spin-waiting: 86 ms against 9 ms for a 1-thread device on a busy host (the run: 12 ms). Now
    the process's CPU time, with the launcher's workers waiting passively (OMP_WAIT_POLICY=PASSIVE):
    the same repro predicted 22.8 ms for a measured 22.7 ms."""
    import time

    import torch

    from coinfer.cluster import resolve_cluster
    from coinfer.cost.measure import _clock
    from coinfer.runtime.launcher import LocalCluster

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _clock("cpu") is time.thread_time and _clock("wall") is time.perf_counter
        torch.set_num_threads(2)
        assert _clock("cpu") is time.process_time
    finally:
        torch.set_num_threads(old)
    seen: dict[str, dict[str, str]] = {}
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr("subprocess.Popen", lambda cmd, **kw: seen.setdefault(cmd[cmd.index("--name") + 1], kw["env"]))
    lc = LocalCluster(resolve_cluster("demo4"), emulate_cpu=True)
    lc.cpu_emulation = "quota"
    lc._spawn("two", "tcp://127.0.0.1:0", 2, 0.5)
    lc._spawn("one", "tcp://127.0.0.1:0", 1, 0.5)
    lc._spawn("free", "tcp://127.0.0.1:0", 2, 64.0)  # as fast as the machine: not emulated
    assert seen["two"].get("OMP_WAIT_POLICY") == "PASSIVE"
    assert "OMP_WAIT_POLICY" not in seen["one"], seen["one"].get("OMP_WAIT_POLICY")
    assert "OMP_WAIT_POLICY" not in seen["free"], seen["free"].get("OMP_WAIT_POLICY")
