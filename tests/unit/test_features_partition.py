"""The ``features`` partition (a linear layer split by output features, MoDNN's FC partition).

Plan format and validation, geometry, lowering (an all-gather of the pieces),
exact in-process execution on torch and onnxruntime, the cost model, the
simulator, and ``split_fc_tail`` / ``--param fc_split`` on the strategies.
"""

from __future__ import annotations

import json

import pytest
import torch
from core_helpers.plangen import check_lowered

from coinfer.cluster import builtin_cluster
from coinfer.cost.model import CostModel
from coinfer.execute.local import TOLERANCE, InProcessExecutor, compare
from coinfer.execute.part import concat_features
from coinfer.graph.geometry import feature_region, features_layer, part_geometry, region_shape
from coinfer.plan.lower import lower
from coinfer.plan.plan import FeaturePart, Features, Plan, PlanError, Stage, Whole
from coinfer.runtime.store import TensorStore
from coinfer.sim.run import simulate_lowered
from coinfer.strategies import PlanRequest, run
from coinfer.strategies.features import split_fc_tail
from coinfer.strategies.registry import StrategyError


@pytest.fixture(scope="module")
def alex(captured):  # type: ignore[no-untyped-def]
    return captured("alexnet_digits")


def _cut_before_classifier(g) -> str:  # type: ignore[no-untyped-def]
    """The last cut point before the first linear layer (the stage start of the classifier)."""
    first_lin = next(n for n in g.nodes if n.op == "linear")
    return [c for c in g.cut_points() if g.index(c) < g.index(first_lin.name)][-1]


def _linear_ends(g) -> list[str]:  # type: ignore[no-untyped-def]
    """Cut points right after each linear layer's activation (or the linear itself at the output)."""
    ends, cur = [], _cut_before_classifier(g)
    cuts = g.cut_points()
    while cur != g.output.name:
        ok = [c for c in cuts if g.index(c) > g.index(cur) and features_layer(g, cur, c)[0] is not None]
        ends.append(ok[-1])
        cur = ok[-1]
    return ends


def _plan(c, splits: dict[str, list[tuple[str, tuple[int, int]]]], devices=("a", "b", "c")) -> Plan:  # type: ignore[no-untyped-def]
    g = c.graph
    head = _cut_before_classifier(g)
    stages = [Stage(head, Whole("a"))]
    for end in _linear_ends(g):
        parts = splits.get(end)
        stages.append(Stage(end, Features(tuple(FeaturePart(d, r) for d, r in parts)) if parts else Whole("a")))
    d = {"format": "coinfer.plan/1",
         "model": {"name": c.name, "input_shape": list(g.input_shape), "fingerprint": g.fingerprint()},
         "devices": list(devices), "source": "a", "stages": [s.to_dict() for s in stages]}
    return Plan.from_dict(d)


def test_features_layer_recognises_one_linear_and_its_activations(alex) -> None:  # type: ignore[no-untyped-def]
    g = alex.graph
    head = _cut_before_classifier(g)
    ends = _linear_ends(g)
    assert len(ends) == 3  # AlexNet: three fully connected layers
    lin, why = features_layer(g, head, ends[0])
    assert lin is not None and g[lin].op == "linear" and why == ""
    lin, why = features_layer(g, head, ends[1])  # two linear layers
    assert lin is None and "2 linear layers" in why
    conv_end = [c for c, ok in g.splittable_cuts().items() if ok][-1]
    lin, why = features_layer(g, g.input.name, conv_end)
    assert lin is None and "not a flat" in why


def test_geometry_slices_the_linear_layer(alex) -> None:  # type: ignore[no-untyped-def]
    g = alex.graph
    head, end = _cut_before_classifier(g), _linear_ends(g)[0]
    F = g[end].shape[1]
    whole = part_geometry(g, head, end, None)
    geo = part_geometry(g, head, end, feature_region(10, F // 2))
    assert geo.in_region is None and geo.out_region == (0, 1, 10, F // 2)
    assert region_shape(g[end], geo.out_region) == (1, F // 2 - 10)
    lin = next(n for n in geo.nodes if g[n.name].op == "linear")
    assert lin.flops == round(g[lin.name].flops * (F // 2 - 10) / F)
    assert geo.flops < whole.flops
    # all the features is the whole stage
    assert part_geometry(g, head, end, feature_region(0, F)).out_region is None


def test_plan_round_trips_and_runs_exactly(alex) -> None:  # type: ignore[no-untyped-def]
    g = alex.graph
    ends = _linear_ends(g)
    F0, F1, F2 = (g[e].shape[1] for e in ends)
    plan = _plan(alex, {ends[0]: [("b", (0, 100)), ("c", (100, F0 - 7)), ("a", (F0 - 7, F0))],
                        ends[1]: [("c", (0, 1)), ("b", (1, F1))],
                        ends[2]: [("a", (0, 3)), ("b", (3, F2))]})
    plan.validate(g)
    assert Plan.from_json(plan.to_json()).to_dict() == plan.to_dict()
    assert json.loads(plan.to_json())["stages"][1]["partition"]["parts"][0] == {"device": "b", "features": [0, 100]}
    low = lower(plan, g)
    check_lowered(low)
    # an all-gather: every piece of the first split goes to each other device of the next stage (c, b)
    sends_b = [i for i in low.programs["b"] if i.op == "send" and i.tensor == 1]
    assert [(i.peer, i.region, i.nbytes) for i in sends_b] == [("c", (0, 1, 0, 100), 400)]
    sends_a = [i for i in low.programs["a"] if i.op == "send" and i.tensor == 1]
    assert sorted(i.peer for i in sends_a) == ["b", "c"]
    for backend in ("torch", "onnxruntime"):
        y = InProcessExecutor(alex.cm, plan, backend=backend)(alex.x)
        diff, rel = compare(y, alex.ref)
        assert rel <= TOLERANCE, (backend, diff)


@pytest.mark.parametrize("parts,msg", [
    ([("a", (0, 100))], "cover [0,100)"),
    ([("a", (0, 100)), ("b", (90, 4096))], "overlap"),
    ([("a", (0, 100)), ("zz", (100, 4096))], "unknown device 'zz'"),
])
def test_bad_feature_tilings_explain_the_fix(alex, parts, msg) -> None:  # type: ignore[no-untyped-def]
    g = alex.graph
    end = _linear_ends(g)[0]
    parts = [(d, (a, min(b, g[end].shape[1]))) for d, (a, b) in parts]
    with pytest.raises(PlanError) as e:
        _plan(alex, {end: parts}).validate(g)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_features_partition_on_a_conv_stage_is_refused(alex) -> None:  # type: ignore[no-untyped-def]
    g = alex.graph
    conv_end = next(c for c, ok in g.splittable_cuts().items() if ok)
    d = {"format": "coinfer.plan/1",
         "model": {"name": alex.name, "input_shape": list(g.input_shape), "fingerprint": g.fingerprint()},
         "devices": ["a", "b"], "source": "a",
         "stages": [{"until": conv_end, "partition": {"type": "features", "parts": [
             {"device": "a", "features": [0, 1]}, {"device": "b", "features": [1, 2]}]}},
             {"until": "output", "partition": {"type": "whole", "device": "a"}}]}
    with pytest.raises(PlanError) as e:
        Plan.from_dict(d).validate(g)
    assert "features partition needs a stage of one linear layer" in str(e.value)
    d["stages"][0]["partition"] = {"type": "features", "parts": [{"device": "a", "rows": [0, 1]}]}
    with pytest.raises(PlanError) as e:
        Plan.from_dict(d)
    assert "unknown field(s) ['rows']" in str(e.value)


def test_store_assembles_feature_pieces() -> None:
    st = TensorStore()
    a, b = torch.arange(3.0).reshape(1, 3), torch.arange(3.0, 7.0).reshape(1, 4)
    st.add(2, (0, 1, 3, 7), b)
    st.add(2, (0, 1, 0, 3), a)
    assert torch.equal(st.assemble(2, None), torch.arange(7.0).reshape(1, 7))
    assert torch.equal(st.assemble(2, (0, 1, 4, 6)), torch.tensor([[4.0, 5.0]]))
    with pytest.raises(RuntimeError, match=r"features \[3,5\) of s9 are missing"):
        concat_features([((0, 1, 0, 3), a), ((0, 1, 5, 9), b)], 9)


def test_cost_and_simulator_price_a_share_of_the_layer(alex) -> None:  # type: ignore[no-untyped-def]
    g = alex.graph
    cl = builtin_cluster("eq4")
    costs = CostModel(g, cl)
    head, end = _cut_before_classifier(g), _linear_ends(g)[0]
    F = g[end].shape[1]
    whole = costs.part_ms("d1", part_geometry(g, head, end, None))
    quarter = costs.part_ms("d1", part_geometry(g, head, end, feature_region(0, F // 4)))
    assert quarter == pytest.approx(whole * (F // 4) / F)
    base = run("even", PlanRequest(g, cl, alex.name, params={"fc_split": "false"}))
    split = run("even", PlanRequest(g, cl, alex.name, params={"fc_split": "true"}))
    assert [s.partition.type for s in base.plan.stages][-1] == "whole"
    assert "features" in [s.partition.type for s in split.plan.stages]
    assert split.plan.strategy.params["fc_split"] is True
    s0 = simulate_lowered(base.plan, g, costs)
    s1 = simulate_lowered(split.plan, g, costs)
    # the classifier's compute is spread over the four devices, at the price of an all-gather
    assert s1.bytes_moved > s0.bytes_moved
    assert s1.latency_ms < s0.latency_ms


def test_split_fc_tail_follows_speed_and_size(captured) -> None:  # type: ignore[no-untyped-def]
    c = captured("vgg16")
    g = c.graph
    cl = builtin_cluster("het4")  # shares 0.15 / 0.25 / 0.4 / 0.7
    costs = CostModel(g, cl)
    local = run("local", PlanRequest(g, cl, "vgg16")).plan
    plan = split_fc_tail(local, g, costs, cl.names)
    kinds = [(s.until, s.partition.type) for s in plan.stages]
    assert kinds[-3:] == [("classifier_1", "features"), ("classifier_4", "features"), ("output", "features")]
    fc6 = plan.stages[-3].partition
    assert isinstance(fc6, Features)
    share = {p.device: p.features[1] - p.features[0] for p in fc6.parts}
    assert share["d3"] > share["d2"] > share["d1"] > share["d0"]  # in proportion to speed
    assert sum(share.values()) == 4096
    plan.validate(g)
    # a threshold above the biggest layer keeps the tail whole (the plan comes back unchanged)
    assert split_fc_tail(local, g, costs, cl.names, min_mb=1e4) is local
    # only fc6 (411 MB) and fc7 (67 MB) above 50 MB: fc8 joins the source's whole stage
    p2 = split_fc_tail(local, g, costs, cl.names, min_mb=50)
    assert [s.partition.type for s in p2.stages][-3:] == ["features", "features", "whole"]


def test_modnn_splits_fc_layers_by_default(captured) -> None:  # type: ignore[no-untyped-def]
    c = captured("alexnet_digits")
    cl = builtin_cluster("eq4")
    on = run("modnn", PlanRequest(c.graph, cl, c.name))
    off = run("modnn", PlanRequest(c.graph, cl, c.name, params={"fc_split": "no"}))
    assert on.plan.strategy.params["fc_split"] is True and on.info["fc"].startswith("split")
    assert "features" in [s.partition.type for s in on.plan.stages]
    assert off.plan.strategy.params["fc_split"] is False
    assert "features" not in [s.partition.type for s in off.plan.stages]
    y = InProcessExecutor(c.cm, on.plan)(c.x)
    assert compare(y, c.ref)[1] <= TOLERANCE
    with pytest.raises(StrategyError, match="fc_split='maybe': use true or false"):
        run("even", PlanRequest(c.graph, cl, c.name, params={"fc_split": "maybe"}))


def test_auto_refinement_offers_the_fc_split_and_it_predicts_faster(captured) -> None:  # type: ignore[no-untyped-def]
    from coinfer.strategies.auto import _fc_variants, _score

    c = captured("vgg16")
    req = PlanRequest(c.graph, builtin_cluster("eq4"), "vgg16")
    base = run("aofl", req).plan
    (split,) = _fc_variants(req, base)
    assert [s.partition.type for s in split.stages][-3:] == ["features"] * 3
    assert _fc_variants(req, split) == []  # nothing left to split
    cache: dict = {}  # type: ignore[type-arg]
    assert _score(req, split, cache)[1] < _score(req, base, cache)[1]


def test_a_features_part_holds_only_its_rows_of_the_weights(alex) -> None:  # type: ignore[no-untyped-def]
    """Regression: the slice was a view, which kept the whole weight matrix alive in every worker."""
    from coinfer.execute.backends.optimize import part_program

    g = alex.graph
    head, end = _cut_before_classifier(g), _linear_ends(g)[0]
    prog = part_program(alex.cm, part_geometry(g, head, end, feature_region(100, 300)))
    (lin,) = [st for st in prog.steps if st.op == "linear"]
    w = lin.params["weight"]
    assert w.shape[0] == 200
    assert w.untyped_storage().nbytes() == w.numel() * 4  # its own storage, not the full matrix's
    assert lin.params["bias"].untyped_storage().nbytes() == 200 * 4
