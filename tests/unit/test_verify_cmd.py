"""``coinfer verify``: refuses a cluster lacking one of the plan's devices (as simulate does; it used to run
the missing device on torch), says in --json that an approximate plan has no tolerance (it printed
``"tolerance": 0.0001, "ok": true`` next to a difference of 0.7), and reports a quantised plan's
difference with the wire codecs applied (it reported the unquantised plan's)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coinfer.api import plan as make_plan
from coinfer.cli.main import build_app
from coinfer.plan.plan import Wire

MODEL, CLUSTER = "resnet18_digits", "het4"
runner = CliRunner()


def invoke(*args: object):  # type: ignore[no-untyped-def]
    return runner.invoke(build_app(), [str(a) for a in args])


def _json(r) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return json.loads(next(line for line in r.output.splitlines() if line.startswith("{")))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("plans")
    even = make_plan(MODEL, CLUSTER, "even")
    even.save(d / "even.json")
    replace(even, wire=Wire("raw", "int4")).save(d / "even_int4.json")
    (d / "two.yaml").write_text("source: d0\ndevices: [{name: d0}, {name: d1}]\n")
    return {"even": d / "even.json", "int4": d / "even_int4.json", "two": d / "two.yaml"}


def test_verify_refuses_a_cluster_lacking_a_plan_device(plans: dict[str, Path]) -> None:
    r = invoke("verify", plans["even"], "-c", plans["two"])
    assert r.exit_code == 2, r.output
    assert "the cluster does not have" in r.output and "verify with the cluster the plan was made for" in r.output
    assert len(r.output.strip().splitlines()) == 1
    s = invoke("simulate", plans["even"], "-c", plans["two"])  # the same check as simulate's
    assert s.exit_code == 2 and "the cluster does not have" in s.output
    assert invoke("verify", plans["even"], "-c", CLUSTER).exit_code == 0


def test_verify_json_exact_plan_has_a_tolerance(plans: dict[str, Path]) -> None:
    js = _json(invoke("verify", plans["even"], "--json"))
    assert js["exact"] is True and js["tolerance"] == 1e-4 and js["ok"] is True and js["wire_quant"] is None


def test_verify_json_approximate_plan_has_no_tolerance_and_applies_the_wire_quantisation(
        plans: dict[str, Path]) -> None:
    from coinfer.execute.local import compare, reference_output
    from coinfer.inputs import random_input
    from coinfer.modelspec import capture_model
    from coinfer.plan.plan import Plan
    from coinfer.train.fdsp import WireExecutor

    r = invoke("verify", plans["int4"], "--json")
    assert r.exit_code == 0, r.output
    js = _json(r)
    assert js["exact"] is False and js["tolerance"] is None and js["note"].startswith("approximate plan")
    assert js["wire_quant"] == "int4" and js["wire_quant_applied"] is True
    # the unquantised difference stays as it was; the wire's is what the codecs do to this input
    assert js["max_abs_diff"] < 1e-4 < js["max_abs_diff_wire"]
    plan = Plan.load(plans["int4"])
    cm = capture_model(plan.model.name, plan.model.input_shape)
    x = random_input(tuple(plan.model.input_shape), 0)
    want = compare(WireExecutor(cm, plan)(x), reference_output(cm, x))[0]
    assert js["max_abs_diff_wire"] == pytest.approx(want, rel=1e-6)
    text = invoke("verify", plans["int4"])
    assert "(without the wire quantisation)" in text.output
    assert f"with wire quantisation int4 applied in-process: max_abs_diff={want:.3g}" in text.output
    assert "approximate plan" in text.output and "no tolerance applied" in text.output
