"""ADCNN: the planner (FDSP grid, head/tail, wire), its rate-based tile scheduler, the simulator's dynamic
stages with it (and the tile deadline), and bad input (exit 2)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coinfer.cli.main import build_app
from coinfer.cluster import builtin_cluster
from coinfer.cost import BUILTIN, CostModel
from coinfer.plan.plan import Grid, Whole
from coinfer.runtime.schedulers import AdcnnScheduler, make_scheduler
from coinfer.sim.run import simulate_lowered
from coinfer.strategies import PlanRequest, StrategyError, run
from coinfer.strategies.adcnn import FINER_GRID_MARGIN, auto_grids, parse_grid, parse_wire

MODEL = "alexnet_digits"
runner = CliRunner()


def _req(captured, cluster: str = "het4", model: str = MODEL, **params):  # type: ignore[no-untyped-def]
    g = captured(model).graph
    cl = builtin_cluster(cluster)
    return PlanRequest(g, cl, model, CostModel(g, cl, calibration=BUILTIN), params=params)  # machine-independent


def test_plan_shape_int4_default(captured) -> None:  # type: ignore[no-untyped-def]
    res = run("adcnn", _req(captured, fc_split=False))  # the paper's shape (the FC split: its own test)
    p = res.plan
    assert p.wire.quant == "int4" and p.wire.codec == "raw" and not res.info["exact"]
    grid, *tail = p.stages  # as in the paper, the tiles start at the input image
    assert isinstance(grid.partition, Grid) and grid.halo == "zero" and grid.partition.schedule == "dynamic"
    assert p.strategy.params["scheduler"] == "adcnn"
    sp = p.strategy.params["scheduler_params"]
    assert set(sp["rates"]) <= set(p.devices) and sp["window_ms"] >= 30
    # the rates follow the devices' speeds (het4: d3 is the fastest)
    assert sp["rates"]["d3"] > sp["rates"]["d0"]
    assert [isinstance(s.partition, Whole) and s.partition.device == p.source for s in tail] == [True] * len(tail)
    assert res.info["summary"].startswith(f"grid {res.info['grid']} until {res.info['until']}, tiles on ")
    assert "wire int4" in res.info["summary"] and "approximate" in res.info["summary"]
    # the planner keeps an earlier (simpler) candidate unless a later one is >0.1% faster, or for a finer
    # grid FINER_GRID_MARGIN faster
    best_tried = min(t["latency_ms"] for t in res.info["tried"])
    assert res.info["tried"] and best_tried <= res.info["predicted_latency_ms"] <= \
        best_tried / (1 - FINER_GRID_MARGIN) + 1e-3


def _tiles(grid: str) -> int:
    r, c = grid.split("x")
    return int(r) * int(c)


@pytest.mark.parametrize(("model", "cluster"), [("yolov2_tiny", "eq8"), (MODEL, "het4")])
def test_auto_grid_prefers_the_coarser_grid_in_a_near_tie(captured, model: str, cluster: str) -> None:
    """A finer grid must simulate FINER_GRID_MARGIN faster: on eq8 YOLOv2-tiny 4x4 simulates ≈ 4 %
    faster than 3x3 but measured 1.6x slower (docs/results.md), so 3x3 wins over 4x4 — and 7x1 (one tile
    per worker, fewer tiles) over both."""
    res = run("adcnn", _req(captured, cluster, model))
    best: dict | None = None
    for t in res.info["tried"]:  # the rule, replayed over the candidates in the planner's order
        margin = FINER_GRID_MARGIN if best is not None and _tiles(t["grid"]) > _tiles(best["grid"]) else 1e-3
        if best is None or t["latency_ms"] < best["latency_ms"] * (1 - margin):
            best = t
    assert best is not None and res.info["grid"] == best["grid"]
    if model == "yolov2_tiny":
        by_grid = {t["grid"]: min(u["latency_ms"] for u in res.info["tried"] if u["grid"] == t["grid"])
                   for t in res.info["tried"]}
        assert by_grid["4x4"] < by_grid["3x3"] < by_grid["4x4"] / (1 - FINER_GRID_MARGIN)  # the near tie
        # ... and one tile per worker (7 of them: 7x1, fewer tiles than 3x3) beats both
        assert res.info["grid"] == "7x1" and by_grid["7x1"] < by_grid["3x3"]


def test_auto_grids_add_one_tile_per_pool_device() -> None:
    squares = [(n, n) for n in range(2, 9)]
    assert auto_grids([]) == squares
    # fewest tiles first, the squarer grid first among equals
    assert auto_grids([7, 8]) == [(2, 2), (7, 1), (4, 2), (8, 1), *squares[1:]]
    assert auto_grids([4]) == [(2, 2), (4, 1), *squares[1:]]
    assert auto_grids([6]) == [(2, 2), (3, 2), (6, 1), *squares[1:]]
    assert auto_grids([9]) == squares  # 9x1 has a side over 8; 3x3 is there already


def test_head_act_keeps_the_image_on_the_source(captured) -> None:  # type: ignore[no-untyped-def]
    p = run("adcnn", _req(captured, head="act", grid="2x2")).plan
    g = captured(MODEL).graph
    head, grid, *_ = p.stages
    assert isinstance(head.partition, Whole) and head.partition.device == p.source
    assert g[head.until].op == "act"  # only (non-negative) activations cross the 4-bit wire
    assert isinstance(grid.partition, Grid) and grid.halo == "zero"
    with pytest.raises(StrategyError, match="auto, input, act"):
        run("adcnn", _req(captured, head="nope"))


def test_given_grid_lossless_wire_and_tail(captured) -> None:  # type: ignore[no-untyped-def]
    res = run("adcnn", _req(captured, grid="2x3", wire="zstd", depth=1))
    p = res.plan
    grid = next(s for s in p.stages if isinstance(s.partition, Grid))
    assert (len(grid.partition.rows) - 1, len(grid.partition.cols) - 1) == (2, 3)
    assert p.wire.codec == "zstd" and p.wire.quant is None
    assert isinstance(p.stages[0].partition, Grid)  # lossless: tiles start at the input (no head)
    assert p.strategy.params["scheduler_params"]["depth"] == 1
    # with a lossless wire the tail may leave the source: the device that finishes it first
    assert res.info["tail"] in p.devices
    w = run("adcnn", _req(captured, grid="2x2", pool="workers", tail="source"))
    assert w.plan.source not in {d for r in next(s for s in w.plan.stages if isinstance(s.partition, Grid))
                                  .partition.devices for d in r}


@pytest.mark.parametrize("params, match", [
    ({"grid": "4x4", "until": "features_11"}, "finer than the 3x3 feature map"),
    ({"grid": "80x80"}, "finer than every feature map"),
    ({"grid": "1x1"}, "at least 2 tiles"),
    ({"grid": "axb"}, "RxC"),
    ({"wire": "int4", "lossless": True}, "lossless"),
    ({"lossless": "ture"}, "lossless='ture': use true or false"),  # a typo is not silently false
    ({"wire": "int3"}, "unknown"),
    ({"until": "nope"}, "not a node"),
    ({"pool": "some"}, "pool"),
    ({"bogus": 1}, "unknown parameter"),
])
def test_bad_input(captured, params: dict, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(StrategyError, match=match):
        run("adcnn", _req(captured, **params))


def test_cli_bad_input_exits_2(tmp_path: Path) -> None:
    out = str(tmp_path / "p.json")
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", "het4", "-s", "adcnn", "-p", "grid=4x4",
                                    "-p", "until=features_11", "-o", out])
    assert r.exit_code == 2 and "finer than" in r.output and "Traceback" not in r.output
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", "het4", "-s", "adcnn", "-p", "lossless=true",
                                    "-p", "wire=int4", "-o", out])
    assert r.exit_code == 2 and "lossless" in r.output
    r = runner.invoke(build_app(), ["plan", "-m", MODEL, "-c", "het4", "-s", "adcnn", "-p", "grid=2x2", "-o", out,
                                    "--json"])
    assert r.exit_code == 0, r.output


def test_parsers() -> None:
    assert parse_grid("4x4") == (4, 4) and parse_grid(3) == (3, 3) and parse_grid("2×3") == (2, 3)
    assert parse_grid("auto") is None
    assert parse_wire("int4+zstd", False).to_dict() == {"codec": "zstd", "quant": "int4"}
    assert parse_wire("lz4", True).lossless


# -- the scheduler -------------------------------------------------------------------------------
def _drain(s: AdcnnScheduler, devices: list[str]) -> dict[str, list[int]]:
    got: dict[str, list[int]] = {d: [] for d in devices}
    for d in devices:
        while True:
            t = s.next_tile(d)
            if t is None:
                break
            got[d].append(t)
    return got


def test_assignment_least_increases_max_load() -> None:
    s = AdcnnScheduler(list(range(8)), ["a", "b"], {}, depth=8, rates={"a": 3.0, "b": 1.0})
    got = _drain(s, ["a", "b"])
    assert Counter({d: len(v) for d, v in got.items()}) == Counter({"a": 6, "b": 2})
    assert sorted(got["a"] + got["b"]) == list(range(8))
    # storage: at most depth tiles outstanding per device; the rest wait at the source
    s = AdcnnScheduler(list(range(8)), ["a", "b"], {}, depth=2, rates={"a": 3.0, "b": 1.0})
    got = _drain(s, ["a", "b"])
    assert {d: len(v) for d, v in got.items()} == {"a": 2, "b": 2} and len(s.pending) == 4
    s.done("a", got["a"][0], 1.0, now_ms=0.0)
    assert s.next_tile("b") is None and s.next_tile("a") is not None  # freed storage on a, and a is fast


def test_rates_update_per_window_and_persist() -> None:
    state: dict = {}
    s = AdcnnScheduler(list(range(10)), ["a", "b"], {}, depth=10, gamma=0.9, window_ms=30.0,
                       rates={"a": 1.0, "b": 1.0}, state=state)
    s._roll(0.0)
    _drain(s, ["a", "b"])
    for t in range(3):  # a returns 3 results in the first window, b none
        s.done("a", t, 5.0, now_ms=5.0 + t)
    s.done("a", 3, 5.0, now_ms=31.0)  # closes window 0
    assert s.s["a"] == pytest.approx(0.1 * 1.0 + 0.9 * 3)
    assert s.s["b"] == pytest.approx(max(0.05, 0.1 * 1.0 + 0.9 * 0))  # busy but silent: decays (floored)
    assert state["rates"] == s.s
    # the next request starts from what this one learnt
    s2 = AdcnnScheduler(list(range(8)), ["a", "b"], {}, depth=8, rates={"a": 1.0, "b": 1.0}, state=state)
    got = _drain(s2, ["a", "b"])
    assert len(got["a"]) > len(got["b"])


def test_make_scheduler_passes_state_only_to_stateful() -> None:
    st: dict = {}
    sch = make_scheduler({"scheduler": "adcnn", "scheduler_params": {"depth": 2}}, [0, 1], ["a"], {}, state=st)
    assert isinstance(sch, AdcnnScheduler) and sch.state is st
    steal = make_scheduler({}, [0, 1], ["a"], {0: "a", 1: "a"}, state=st)
    assert steal.next_tile("a") == 0
    steal.done("a", 0, 1.0, now_ms=3.0)  # the common signature
    with pytest.raises(ValueError, match="unknown tile scheduler"):
        make_scheduler({"scheduler": "nope"}, [0], ["a"], {})


def test_simulated_tiles_follow_rates_and_deadline(captured) -> None:  # type: ignore[no-untyped-def]
    req = _req(captured, model="vgg16", grid="4x4", depth=16, pool="workers")  # tiles of tens of ms
    res = run("adcnn", req)
    g, costs = req.graph, req.costs
    sim = simulate_lowered(res.plan, g, costs)
    per = Counter(e.device for e in sim.trace.events if e.lane == "compute" and e.args.get("tile"))
    assert sum(per.values()) == 16 and per["d3"] > per["d1"]  # the fast device computes more tiles
    # a tile deadline caps the dynamic stage: zero-filled tiles, a faster (approximate) answer
    p2 = res.plan
    p2.strategy.params["tile_deadline_ms"] = 1.0
    sim2 = simulate_lowered(p2, g, costs)
    assert sim2.latency_ms < sim.latency_ms


def test_fc_tail_split_by_features_when_it_simulates_faster(captured) -> None:  # type: ignore[no-untyped-def]
    """fc_split unset: adcnn splits the classifier by features over its devices when the simulator says it
    is faster (VGG-16 on eq8: measured 414 -> 369 ms); fc_split=false keeps the paper's whole tail."""
    auto = run("adcnn", _req(captured, "eq8"))
    whole = run("adcnn", _req(captured, "eq8", fc_split=False))
    kinds = [s.partition.type for s in auto.plan.stages]
    assert "features" in kinds and auto.info["fc_split"]
    assert [s.partition.type for s in whole.plan.stages] == ["grid", "whole"]
    assert auto.info["predicted_latency_ms"] < whole.info["predicted_latency_ms"]
