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
    # predecessor (its chained cost), scaled so that the whole model costs what it measured as one part
    table_sum = full[first] + prof.chain_scale * sum(prof.chained[k] for k in full if k != first)
    assert whole == pytest.approx(table_sum)
    assert prof.whole_model_ms is not None and 0.5 <= prof.chain_scale <= 1.5
    if 0.5 < prof.chain_scale < 1.5 and prof.chain_scale != 1.0:
        assert whole == pytest.approx(prof.whole_model_ms, rel=1e-3)
    # resume: measured segments are kept, not measured again
    resumed = profile_device(cm, "d0", rows_points=3, reps=1, warmup=0, layer_reps=0, calibrate=False,
                             resume=prof)
    assert resumed.stages == prof.stages and resumed.whole == prof.whole
