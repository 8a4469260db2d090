"""The plan file coinfer.plan/1 (coinfer.plan.plan): parsing, validation messages, JSON round trip."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from core_helpers.plangen import random_plan
from hypothesis import given, settings

from coinfer.plan.plan import (
    FORMAT,
    Grid,
    ModelRef,
    Plan,
    PlanError,
    RowPart,
    Rows,
    Stage,
    StrategyRef,
    Whole,
    Wire,
)


@pytest.fixture(scope="module")
def vgg(captured):  # type: ignore[no-untyped-def]
    return captured("vgg16").graph


def _vgg_plan(g) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A valid plan in the DESIGN.md layout: rows, grid (zero halo), whole."""
    return {
        "format": FORMAT,
        "model": {"name": "vgg16", "input_shape": [1, 3, 224, 224], "fingerprint": g.fingerprint()},
        "devices": ["pi1", "pi2", "jetson"], "source": "pi1",
        "strategy": {"name": "coedge", "params": {"objective": "energy", "deadline_ms": 300}},
        "stages": [
            {"until": "features_1", "halo": "exact",
             "partition": {"type": "rows", "parts": [{"device": "pi1", "rows": [0, 40]},
                                                     {"device": "jetson", "rows": [40, 224]}]}},
            {"until": "features_22", "halo": "zero",
             "partition": {"type": "grid", "rows": [0, 14, 28], "cols": [0, 14, 28],
                           "devices": [["pi1", "pi2"], ["jetson", "pi2"]], "schedule": "static"}},
            {"until": "output", "partition": {"type": "whole", "device": "pi1"}}],
        "exit": None,
        "wire": {"codec": "raw", "quant": None},
        "predicted": {"latency_ms": 0, "energy_j": 0},
    }


def _err(g, d: dict[str, Any] | str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(PlanError) as info:
        p = Plan.from_json(d if isinstance(d, str) else json.dumps(d))
        p.validate(g)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_design_example_is_valid_and_round_trips(vgg) -> None:  # type: ignore[no-untyped-def]
    d = _vgg_plan(vgg)
    p = Plan.from_dict(d)
    assert p.validate(vgg) is vgg
    assert p.to_dict() == {**d, "stages": [d["stages"][0], d["stages"][1],
                                           {"until": "output", "partition": {"type": "whole", "device": "pi1"}}]}
    assert Plan.from_json(p.to_json()).to_dict() == p.to_dict()
    assert [(x.device, x.region) for x in p.parts(vgg, 0)] == [("pi1", (0, 40, 0, 224)), ("jetson", (40, 224, 0, 224))]
    assert [x.device for x in p.parts(vgg, 1)] == ["pi1", "pi2", "jetson", "pi2"]
    assert p.parts(vgg, 1)[3].region == (14, 28, 14, 28)
    assert p.devices_used(vgg) == ["pi1", "pi2", "jetson"]
    assert p.stage_bounds(vgg) == [("x", "features_1"), ("features_1", "features_22"),
                                   ("features_22", "classifier_6")]


def test_save_load(tmp_path, vgg) -> None:  # type: ignore[no-untyped-def]
    p = Plan.from_dict(_vgg_plan(vgg))
    p.save(tmp_path / "p.json")
    assert Plan.load(tmp_path / "p.json").to_dict() == p.to_dict()
    with pytest.raises(PlanError, match="does not exist; create one with coinfer plan"):
        Plan.load(tmp_path / "missing.json")


def _mut(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(d: dict[str, Any]) -> dict[str, Any]:
        d = copy.deepcopy(d)
        fn(d)
        return d
    return apply


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fn(d: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return _mut(fn)


def _rows0(*ranges: tuple[int, int]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return _set("stages.0.partition.parts", [{"device": "pi1" if i % 2 == 0 else "jetson", "rows": list(r)}
                                              for i, r in enumerate(ranges)])


BROKEN = {
    # name: (mutation, words the one-line message must contain)
    "overlap": (_rows0((0, 40), (38, 224)),
                ["stage 0", "rows [0,40) and [38,224) overlap", "parts must tile 0..224"]),
    "gap": (_rows0((0, 40), (50, 224)), ["rows [40,50) are not covered", "parts must tile 0..224"]),
    "short": (_rows0((0, 40), (40, 200)), ["cover [0,200) but the output has 224", "parts must tile"]),
    "outside": (_rows0((0, 40), (40, 230)), ["[40,230) is empty or outside 0..224"]),
    "empty_range": (_rows0((0, 0), (0, 224)), ["[0,0) is empty"]),
    "rows_not_pair": (_set("stages.0.partition.parts.0.rows", [0, 40, 50]), ["pair of integers [start, end)"]),
    "grid_matrix": (_set("stages.1.partition.devices", [["pi1", "pi2", "pi1"], ["jetson", "pi2"]]),
                    ["grid devices must be a 2x2 matrix", "one device per tile", "got 2 rows of lengths [3, 2]"]),
    # QA: a 3x2 matrix said "got [2, 2, 2]" (row lengths), read as a 2x2x2 shape; now it says rows and lengths
    "grid_matrix_rows": (_set("stages.1.partition.devices", [["pi1", "pi2"], ["jetson", "pi2"], ["pi1", "pi2"]]),
                         ["grid devices must be a 2x2 matrix", "got 3 rows of lengths [2, 2, 2]"]),
    "grid_bounds": (_set("stages.1.partition.rows", [0, 14, 27]), ["grid rows [0, 14, 27] must increase strictly from 0 to 28"]),
    "grid_not_increasing": (_set("stages.1.partition.cols", [0, 20, 14, 28]), ["must increase strictly"]),
    "unknown_device": (_set("stages.0.partition.parts.1.device", "phone"),
                       ["unknown device 'phone'", "plan devices are ['pi1', 'pi2', 'jetson']"]),
    "unknown_device_whole": (_set("stages.2.partition.device", "tv"), ["unknown device 'tv'"]),
    "unknown_device_grid": (_set("stages.1.partition.devices", [["pi1", "x"], ["jetson", "pi2"]]), ["unknown device 'x'"]),
    "split_unsplittable": (_set("stages.2.partition", {"type": "rows", "parts": [{"device": "pi1", "rows": [0, 1]}]}),
                           ["cannot be split", "use partition type whole"]),
    "not_a_cut_point_missing": (_set("stages.1.until", "features_99"), ["no node 'features_99'", "coinfer inspect vgg16"]),
    "backwards": (_set("stages.1.until", "features_0"), ["stages must go forward"]),
    "last_not_output": (_mut(lambda d: d["stages"].pop()), ["not at the model output", 'until "output"']),
    "fingerprint": (_set("model.fingerprint", "sha256:" + "0" * 64), ["plan is for a different model", "re-plan"]),
    "input_shape": (_set("model.input_shape", [1, 3, 256, 256]),
                    ["plan is for input shape [1, 3, 256, 256] but the model takes [1, 3, 224, 224]"]),
    "bad_input_shape": (_set("model.input_shape", [1, 3, 224]), ["model.input_shape must be [N, C, H, W]"]),
    "unknown_field": (_set("stages.0.color", "red"), ["unknown field(s) ['color'] in stages[0]", "allowed:"]),
    "unknown_top_field": (_set("comment", "x"), ["unknown field(s) ['comment'] in plan"]),
    "unknown_partition_field": (_set("stages.2.partition.rows", [0, 1]), ["unknown field(s) ['rows'] in stages[2].partition"]),
    "missing_field": (_mut(lambda d: d.pop("source")), ["missing field(s) ['source'] in plan"]),
    "format": (_set("format", "coinfer.plan/0"), ["is not 'coinfer.plan/1'"]),
    "partition_type": (_set("stages.0.partition.type", "cols"), ["type 'cols' is unknown; use whole, rows, grid or features"]),
    "halo": (_set("stages.0.halo", "approx"), ["halo 'approx' is unknown; use exact or zero"]),
    "schedule": (_set("stages.1.partition.schedule", "greedy"), ["schedule 'greedy' is unknown; use static or dynamic"]),
    "exchange": (_set("stages.1.exchange", "broadcast"), ["exchange 'broadcast' is unknown"]),
    "source": (_set("source", "phone"), ["source 'phone' is not one of the plan devices"]),
    "dup_devices": (_set("devices", ["pi1", "pi2", "jetson", "pi2"]), ["lists a device twice"]),
    "no_devices": (_set("devices", []), ["non-empty list of device names"]),
    "no_stages": (_set("stages", []), ["plan.stages must be a non-empty list"]),
    "codec": (_set("wire.codec", "gzip"), ["wire.codec 'gzip' is unknown"]),
    "quant": (_set("wire.quant", "int3"), ["wire.quant 'int3' is unknown"]),
    "exit": (_set("exit", "exit9"), ["has no exit 'exit9'"]),
    "exit_type": (_set("exit", ["exit1"]), ["plan.exit must be null"]),
    "params_type": (_set("strategy.params", [1, 2]), ["strategy.params must be an object"]),
    "predicted_type": (_set("predicted", 3), ["plan.predicted must be an object or null"]),
    "not_object": (lambda d: [d], ["plan must be a JSON object"]),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_invalid_plans_explain_the_fix(case: str, vgg) -> None:  # type: ignore[no-untyped-def]
    mutate, words = BROKEN[case]
    msg = _err(vgg, mutate(_vgg_plan(vgg)))
    for w in words:
        assert w in msg, f"{case}: {w!r} not in {msg!r}"


def test_stage_ending_at_a_non_cut_point(captured) -> None:  # type: ignore[no-untyped-def]
    g = captured("resnet18").graph
    p = Plan(ModelRef("resnet18", tuple(g.input_shape), g.fingerprint()), ["a"], "a",
             [Stage("layer1_0_conv1", Whole("a")), Stage("output", Whole("a"))])
    with pytest.raises(PlanError, match="'layer1_0_conv1' is not a cut point; stages must end at one of: conv1"):
        p.validate(g)


def test_malformed_json(vgg) -> None:  # type: ignore[no-untyped-def]
    text = json.dumps(_vgg_plan(vgg))[:-20]
    assert "plan is not valid JSON" in _err(vgg, text)
    assert "line 1 column" in _err(vgg, "{'format': 1}")


def test_fingerprint_check_can_be_skipped(vgg) -> None:  # type: ignore[no-untyped-def]
    p = Plan.from_dict(_set("model.fingerprint", "sha256:x")(_vgg_plan(vgg)))
    p.validate(vgg, check_fingerprint=False)


def test_dataclass_plan_round_trip_with_all_features(vgg) -> None:  # type: ignore[no-untyped-def]
    p = Plan(ModelRef("vgg16", (1, 3, 224, 224), vgg.fingerprint()), ["a", "b"], "b",
             [Stage("features_3", Rows((RowPart("a", (0, 1)), RowPart("b", (1, 224))), "dynamic"), "exact", "via_source"),
              Stage("features_30", Grid((0, 7), (0, 3, 7), (("b", "a"),), "dynamic"), "zero"),
              Stage("output", Whole("a"))],
             StrategyRef("x", {"k": [1, 2]}), None, Wire("lz4", "int8"), {"latency_ms": 3.5})
    p.validate(vgg)
    q = Plan.from_json(p.to_json())
    assert q == p and q.to_dict() == p.to_dict()


@pytest.mark.parametrize("name", ["resnet18_digits", "user:user_net"])
def test_random_plans_round_trip(name: str, captured) -> None:  # type: ignore[no-untyped-def]
    g = captured(name).graph

    @settings(max_examples=150)
    @given(random_plan(g, model_name=name, allow_zero=True, final_whole=False))
    def check(p: Plan) -> None:
        p.validate(g)
        q = Plan.from_json(p.to_json())
        assert q.to_dict() == p.to_dict()
        assert q == p

    check()


def test_docs_concepts_examples_are_valid(vgg) -> None:  # type: ignore[no-untyped-def]
    """docs/concepts.md: its full plan example validates and lowers, its cluster example parses, and the
    anchors that error messages point at exist."""
    import re
    from pathlib import Path

    import yaml

    from coinfer.cluster import parse_cluster
    from coinfer.plan.lower import lower

    text = (Path(__file__).resolve().parents[2] / "docs" / "concepts.md").read_text()
    plan = Plan.from_json(re.search(r"```json\n(.*?)```", text, re.DOTALL).group(1))  # type: ignore[union-attr]
    plan.validate(vgg)
    assert lower(plan, vgg).bytes_moved() > 0
    cluster = parse_cluster(yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.DOTALL).group(1)))  # type: ignore[union-attr]
    assert cluster.source == "pi1"
    for heading in ("## Supported ops", "## Cluster file", "## Plan file", "## Halo: exact vs zero",
                    "## Graph IR and cut points", "## Measured"):
        assert heading in text


def test_wire_for_quantises_activations_only(vgg) -> None:  # type: ignore[no-untyped-def]
    d = _vgg_plan(vgg)
    d["wire"] = {"codec": "zstd", "quant": "int8c"}
    p = Plan.from_json(json.dumps(d))
    p.validate(vgg)
    # tensors: -1 the model input, 0 and 1 the outputs of the first two stages, 2 the model output
    assert [p.wire_for(t) for t in (-1, 0, 1, 2)] == [("zstd", None), ("zstd", "int8c"), ("zstd", "int8c"),
                                                      ("zstd", None)]
    d["wire"] = {"codec": "lz4", "quant": None}
    assert {Plan.from_json(json.dumps(d)).wire_for(t) for t in (-1, 0, 2)} == {("lz4", None)}
    # int4 (ADCNN: FDSP fine-tunes with quantised image tiles) quantises the input too, not the output
    d["wire"] = {"codec": "raw", "quant": "int4"}
    assert [Plan.from_json(json.dumps(d)).wire_for(t) for t in (-1, 0, 2)] == [("raw", "int4"), ("raw", "int4"),
                                                                                ("raw", None)]
