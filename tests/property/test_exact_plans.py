"""Property: every exact plan equals the unpartitioned model (issue 3, Acceptance).

For every zoo model and for user-defined models with awkward geometry, random
plans (stage boundaries among cut points, whole / rows / grid stages over 1..6
devices, 1-row slivers, parts on the image borders, random device
assignment, dynamic schedules, via-source exchanges, early exits) are built as
:class:`~coinfer.plan.Plan` objects, validated, lowered (program invariants
checked) and run in-process; the output must match the plain model within
:data:`~coinfer.execute.local.TOLERANCE`. Example counts are set per model by
its cost so the whole module stays around a minute on 2 cores.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch
from core_helpers.plangen import boundaries, check_lowered, random_plan, stage_is_splittable
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from coinfer import zoo
from coinfer.execute.local import TOLERANCE, InProcessExecutor, compare
from coinfer.execute.part import run_part
from coinfer.graph.geometry import part_geometry
from coinfer.plan.lower import lower
from coinfer.plan.plan import Plan

# examples per model, by the cost of one forward (vgg16 and yolov2_tiny are the heavy ones)
EXAMPLES = {"vgg16": 6, "yolov2_tiny": 6, "alexnet": 10, "resnet50": 10, "googlenet": 10,
            "efficientnet_lite0": 8, "resnet18": 12, "mobilenet_v2": 12,
            "alexnet_digits": 30, "resnet18_digits": 30}


def _check_plan(c, plan: Plan) -> None:  # c: conftest.Captured
    g = c.graph
    plan.validate(g)
    check_lowered(lower(plan, g))
    assert Plan.from_json(plan.to_json()).to_dict() == plan.to_dict()
    y = InProcessExecutor(c.cm, plan)(c.x)
    ref = c.ref_exit(plan.exit)
    assert y.shape == ref.shape
    diff, rel = compare(y, ref)
    assert rel <= TOLERANCE, f"max_abs_diff={diff:.3g} rel={rel:.3g} for plan\n{plan.to_json()}"


@st.composite
def plan_with_exit(draw, g, name: str, exits: tuple[str, ...], **kw) -> Plan:  # type: ignore[no-untyped-def]
    ex = draw(st.sampled_from([None, None, *exits])) if exits else None
    plan = draw(random_plan(g.for_exit(ex), model_name=name, **kw))
    # the plan names the full model (fingerprint of the whole graph) and the exit
    return dataclasses.replace(plan, exit=ex, model=dataclasses.replace(plan.model, fingerprint=g.fingerprint()))


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_random_plans_are_exact(name: str, captured) -> None:  # type: ignore[no-untyped-def]
    c = captured(name)
    final_whole = not c.graph.splittable_cuts()[c.graph.cut_points()[-1]]

    @settings(max_examples=EXAMPLES.get(name, 8))
    @given(plan_with_exit(c.graph, name, zoo.entry(name).exits, final_whole=final_whole))
    def check(plan: Plan) -> None:
        _check_plan(c, plan)

    check()


USER = ["user:user_net", "user:user_net_alt", "user:se_net"]


@pytest.mark.parametrize("name", USER)
def test_user_models_random_plans_are_exact(name: str, captured) -> None:  # type: ignore[no-untyped-def]
    c = captured(name)

    @settings(max_examples=80)
    @given(random_plan(c.graph, model_name=name, max_stages=8, max_tiles=16, final_whole=False))
    def check(plan: Plan) -> None:
        _check_plan(c, plan)

    check()


@pytest.mark.parametrize("name", ["user:user_net", "user:user_net_alt"])
def test_user_model_single_stage_rows_and_grids(name: str, captured) -> None:  # type: ignore[no-untyped-def]
    """The whole splittable part as ONE fused stage, split by random rows or grids (largest halos)."""
    from coinfer.plan.plan import Grid, ModelRef, RowPart, Rows, Stage, Whole

    c = captured(name)
    g = c.graph
    last = [k for k, ok in g.splittable_cuts().items() if ok][-1]
    H, W = g[last].height, g[last].width
    devs = ["a", "b", "c", "d", "e", "f"]

    @settings(max_examples=40)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        if data.draw(st.booleans()):
            b = boundaries(data.draw, H, 6)
            part = Rows(tuple(RowPart(data.draw(st.sampled_from(devs)), (x, y)) for x, y in itertools.pairwise(b)))
        else:
            rb, cb = boundaries(data.draw, H, H), boundaries(data.draw, W, W)
            part = Grid(tuple(rb), tuple(cb), tuple(tuple(data.draw(st.sampled_from(devs)) for _ in cb[1:])
                                                    for _ in rb[1:]))
        plan = Plan(ModelRef(name, tuple(g.input_shape), g.fingerprint()), devs, "a",
                    [Stage(last, part), Stage("output", Whole("a"))])
        _check_plan(c, plan)

    check()


@pytest.mark.parametrize("name", ["user:user_net", "resnet18_digits", "mobilenet_v2"])
def test_part_flops_match_torch_flop_counter(name: str, captured) -> None:  # type: ignore[no-untyped-def]
    """The geometry's FLOPs of a part (halo included) equal what torch counts when running it."""
    c = captured(name)
    g = c.graph
    cuts = g.cut_points()

    @settings(max_examples=25)
    @given(st.data())
    def check(data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(cuts) - 1))
        j = data.draw(st.integers(i, min(len(cuts) - 1, i + 8)))
        start = g.input.name if i == 0 else cuts[i - 1]
        end = cuts[j]
        region = None
        if stage_is_splittable(g, start, end):
            rb = boundaries(data.draw, g[end].height, 4)
            cb = boundaries(data.draw, g[end].width, 3)
            k, m = data.draw(st.integers(0, len(rb) - 2)), data.draw(st.integers(0, len(cb) - 2))
            region = (rb[k], rb[k + 1], cb[m], cb[m + 1])
        pg = part_geometry(g, start, end, region)
        x = torch.randn(pg.in_shape(g))
        with FlopCounterMode(display=False) as fc:
            y = run_part(c.cm, pg, x)
        assert tuple(y.shape) == pg.out_shape(g)
        counted = sum(ng.flops for ng in pg.nodes if g[ng.name].op in ("conv", "linear"))
        assert counted == fc.get_total_flops()

    check()
