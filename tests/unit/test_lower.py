"""Lowering plans to per-device programs (coinfer.plan.lower)."""

from __future__ import annotations

import pytest
from core_helpers.plangen import check_lowered, random_plan
from hypothesis import given, settings
from torch import nn

from coinfer.graph.capture import capture
from coinfer.plan.lower import Instr, lower
from coinfer.plan.plan import Grid, ModelRef, Plan, RowPart, Rows, Stage, Whole


@pytest.fixture(scope="module")
def two():  # type: ignore[no-untyped-def]
    """conv3 -> relu -> conv3 on 8x6: cut points _0, _1, _2."""
    m = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1)).eval()
    return capture(m, (1, 2, 8, 6), "two").graph


def _plan(g, devices, source, stages) -> Plan:  # type: ignore[no-untyped-def]
    return Plan(ModelRef(g.name, tuple(g.input_shape), g.fingerprint()), list(devices), source, stages)


def _text(low) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    return {d: [" ".join(i.text().split()) for i in p] for d, p in low.programs.items()}


def test_halos_move_peer_to_peer(two) -> None:  # type: ignore[no-untyped-def]
    p = _plan(two, "ab", "a", [Stage("_1", Rows((RowPart("a", (0, 4)), RowPart("b", (4, 8))))),
                               Stage("_2", Rows((RowPart("b", (0, 3)), RowPart("a", (3, 8)))))])
    low = lower(p, two)
    check_lowered(low)
    assert _text(low) == {
        "a": ["input",
              "send input rows[3,8) cols[0,6) to b (240 B)",  # b's rows [4,8) + 1 halo row above
              "compute s0.p0 rows[0,4) cols[0,6)",
              "send s0 rows[0,4) cols[0,6) to b (288 B)",
              "recv s0 rows[4,8) cols[0,6) from b (288 B)",  # only what a does not hold
              "compute s1.p1 rows[3,8) cols[0,6)",
              "recv s1 rows[0,3) cols[0,6) from b (144 B)",
              "output"],
        "b": ["recv input rows[3,8) cols[0,6) from a (240 B)",
              "compute s0.p1 rows[4,8) cols[0,6)",
              "send s0 rows[4,8) cols[0,6) to a (288 B)",
              "recv s0 rows[0,4) cols[0,6) from a (288 B)",
              "compute s1.p0 rows[0,3) cols[0,6)",
              "send s1 rows[0,3) cols[0,6) to a (144 B)"],
    }
    assert low.bytes_moved() == 240 + 288 + 288 + 144
    info = low.parts[(0, 1)]
    assert info.device == "b" and info.in_region == (3, 8, 0, 6) and info.in_bytes == 240
    assert info.out_bytes == 4 * 3 * 4 * 6 and info.flops == two["_0"].flops // 2


def test_dynamic_stage_is_gathered_at_the_source(two) -> None:  # type: ignore[no-untyped-def]
    p = _plan(two, "abc", "a", [Stage("_1", Rows((RowPart("b", (0, 4)), RowPart("c", (4, 8))), "dynamic")),
                                Stage("_2", Whole("b"))])
    low = lower(p, two)
    check_lowered(low)
    t = _text(low)
    assert t["a"] == ["input", "dyn_master s0", "send s0 rows[0,8) cols[0,6) to b (576 B)",
                      "recv s1 rows[0,8) cols[0,6) from b (384 B)", "output"]
    assert t["c"] == ["dyn_worker s0"]
    assert low.stages[0].dynamic and low.stages[0].devices == ("b", "c")


def test_via_source_sends_each_device_its_input_once(captured) -> None:  # type: ignore[no-untyped-def]
    """Regression: with ``exchange: via_source`` a device holding two parts with the same input
    region got one send from the source but issued two recvs (a deadlock on a real runtime)."""
    g = captured("user:user_net").graph
    p = _plan(g, ["d0", "d1"], "d1", [
        Stage("stem", Whole("d0")),
        Stage("cat", Grid((0, 11), (0, 4, 8), (("d0", "d0"),)), "exact", "via_source"),
        Stage("fc", Whole("d0"), "exact", "via_source")])
    low = lower(p, g)
    check_lowered(low)
    recvs = [i for i in low.programs["d0"] if i.op == "recv" and i.tensor == 0]
    assert len(recvs) == 1 and recvs[0].peer == "d1"


def test_via_source_first_stage_matches_send_and_recv(captured) -> None:  # type: ignore[no-untyped-def]
    """Regression: a first stage with ``exchange: via_source`` on a non-source device: the source sent
    the input region as None (whole) while the device waited for the full region by coordinates."""
    g = captured("user:user_net").graph
    p = _plan(g, ["d0", "d1"], "d0", [Stage("fc", Whole("d1"), "exact", "via_source")])
    low = lower(p, g)
    check_lowered(low)
    (send,) = [i for i in low.programs["d0"] if i.op == "send"]
    (recv,) = [i for i in low.programs["d1"] if i.op == "recv" and i.tensor == -1]
    assert (send.tensor, send.region) == (recv.tensor, recv.region)


def test_single_device_plan_moves_nothing(captured) -> None:  # type: ignore[no-untyped-def]
    g = captured("resnet18_digits").graph
    split = [c for c, ok in g.splittable_cuts().items() if ok]
    p = _plan(g, ["a"], "a", [Stage(split[2], Rows((RowPart("a", (0, 1)), RowPart("a", (1, g[split[2]].height))))),
                              Stage("output", Whole("a"))])
    low = lower(p, g)
    check_lowered(low)
    assert low.bytes_moved() == 0
    assert [i.op for i in low.programs["a"]] == ["input", "compute", "compute", "compute", "output"]


def test_instr_round_trip_and_text(two) -> None:  # type: ignore[no-untyped-def]
    p = _plan(two, "ab", "b", [Stage("_2", Grid((0, 4, 8), (0, 6), (("a",), ("b",))))])
    low = lower(p, two)
    check_lowered(low)
    for prog in low.programs.values():
        for i in prog:
            assert Instr.from_dict(i.to_dict()) == i
    assert "== a (" in low.text() and "compute s0.p0" in low.text()
    assert set(low.to_dict()["programs"]) == {"a", "b"}


@pytest.mark.parametrize("name", ["resnet18_digits", "googlenet", "user:user_net", "user:se_net"])
def test_random_plans_lower_consistently(name: str, captured) -> None:  # type: ignore[no-untyped-def]
    """Every recv has one matching send, bytes add up, programs run to the end without deadlock."""
    g = captured(name).graph

    @settings(max_examples=120)
    @given(random_plan(g, model_name=name, max_stages=8, allow_zero=False, final_whole=False))
    def check(p: Plan) -> None:
        check_lowered(lower(p, g))

    check()
