"""The core CLI through the ``coinfer`` console script (subprocesses): inspect, models, plan, verify.

User mistakes exit 2 with one line on stderr naming what is wrong and the fix, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import one_line_error

from coinfer import zoo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")



@pytest.fixture(scope="module")
def plan_file(tmp_path_factory, run_cli) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("cli") / "resnet18.json"
    r = run_cli("plan", "-m", "resnet18", "-c", "demo4", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return out


def _variant(plan_file: Path, tmp: Path, fn) -> Path:  # type: ignore[no-untyped-def]
    d = json.loads(plan_file.read_text())
    fn(d)
    p = tmp / "variant.json"
    p.write_text(json.dumps(d))
    return p


def test_inspect_json_contract(run_cli) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("inspect", "resnet18", "--json")
    assert r.returncode == 0, r.stderr
    s: dict[str, Any] = json.loads(r.stdout)
    assert s["model"] == "resnet18" and s["input_shape"] == [1, 3, 224, 224]
    assert s["fingerprint"].startswith("sha256:")
    assert isinstance(s["flops"], int) and s["flops"] / 2 == pytest.approx(zoo.entry("resnet18").ref_macs, rel=0.02)
    assert isinstance(s["params"], int) and s["params"] == pytest.approx(zoo.entry("resnet18").ref_params, rel=0.02)
    assert s["nodes"][0]["op"] == "input"
    for n in s["nodes"]:
        assert set(n) >= {"name", "op", "out_shape", "flops"}
    names = {n["name"] for n in s["nodes"]}
    assert s["cut_points"] and all(set(c) >= {"name", "out_shape", "splittable"} for c in s["cut_points"])
    assert all(c["name"] in names for c in s["cut_points"])
    assert s["cut_points"][0]["splittable"] is True and s["cut_points"][-1]["splittable"] is False
    assert sum(n["flops"] for n in s["nodes"]) == s["flops"]


def test_models_json_lists_the_zoo(run_cli) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {m["name"]: m for m in json.loads(r.stdout)["models"]}
    assert set(rows) == set(zoo.names())
    for name, m in rows.items():
        e = zoo.entry(name)
        assert m["input_shape"] == list(e.input_shape)
        if "error" in m:  # an optional extra is missing
            continue
        assert m["params"] > 0 and m["flops"] > 0
        if e.ref_macs:
            assert m["flops"] / 2 == pytest.approx(e.ref_macs, rel=0.02)
        if e.ref_params:
            assert m["params"] == pytest.approx(e.ref_params, rel=0.02)


def test_plan_then_verify(plan_file: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    d = json.loads(plan_file.read_text())
    assert d["format"] == "coinfer.plan/1" and d["model"]["name"] == "resnet18"
    r = run_cli("verify", plan_file)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[0]
    assert line.startswith("max_abs_diff=") and " rel=" in line
    rel = float(line.split("rel=")[1])
    assert rel <= 1e-4
    assert "approximate" not in r.stdout


def test_verify_rows_overlap_is_one_line(plan_file: Path, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    def overlap(d: dict[str, Any]) -> None:
        st = next(s for s in d["stages"] if s["partition"]["type"] == "rows")
        st["partition"]["parts"][1]["rows"][0] -= 2
    msg = one_line_error(run_cli("verify", _variant(plan_file, tmp_path, overlap)))
    assert "overlap" in msg and "parts must tile" in msg


def test_verify_malformed_json(plan_file: Path, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.json"
    bad.write_text(plan_file.read_text()[:-30])
    msg = one_line_error(run_cli("verify", bad))
    assert "not valid JSON" in msg


def test_verify_missing_file(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    msg = one_line_error(run_cli("verify", tmp_path / "nope.json"))
    assert "does not exist" in msg


def test_verify_plan_for_another_model(plan_file: Path, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    def other(d: dict[str, Any]) -> None:
        d["model"]["name"] = "vgg16"  # same input shape, other network
    msg = one_line_error(run_cli("verify", _variant(plan_file, tmp_path, other)))
    assert "different model" in msg and "re-plan" in msg


def test_verify_wrong_input_shape(plan_file: Path, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    def shape(d: dict[str, Any]) -> None:
        d["model"]["input_shape"] = [1, 3, 192, 192]
    msg = one_line_error(run_cli("verify", _variant(plan_file, tmp_path, shape)))
    assert "[1, 3, 224, 224]" in msg and "[1, 3, 192, 192]" in msg


def test_verify_zero_halo_is_approximate(plan_file: Path, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    def zero(d: dict[str, Any]) -> None:
        for s in d["stages"]:
            if s["partition"]["type"] != "whole":
                s["halo"] = "zero"
    r = run_cli("verify", _variant(plan_file, tmp_path, zero))
    assert r.returncode == 0, r.stderr
    assert "max_abs_diff=" in r.stdout and "approximate" in r.stdout
    rel = float(r.stdout.split("rel=")[1].split()[0])
    assert rel > 1e-4  # it does differ


def test_inspect_unsupported_op_exits_2(run_cli) -> None:  # type: ignore[no-untyped-def]
    msg = one_line_error(run_cli("inspect", "core_helpers.user_models:interp", "--input-shape", "1,3,8,8"))
    assert "interpolate" in msg and "node 'interpolate'" in msg and "#supported-ops" in msg


def test_inspect_import_path(run_cli) -> None:  # type: ignore[no-untyped-def]
    r = run_cli("inspect", "core_helpers.user_models:user_net", "--input-shape", "1,3,37,29", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["input_shape"] == [1, 3, 37, 29] and any(n["op"] == "cat" for n in s["nodes"])
    msg = one_line_error(run_cli("inspect", "core_helpers.user_models:user_net"))
    assert "--input-shape" in msg
    msg = one_line_error(run_cli("inspect", "core_helpers.nowhere:fn", "--input-shape", "1,3,8,8"))
    assert "cannot import" in msg
    msg = one_line_error(run_cli("inspect", "nosuchmodel"))
    assert "unknown model 'nosuchmodel'" in msg


@pytest.mark.parametrize(("args", "want"), [
    (["--cpu-emulation", "dilate"], "needs --cpu-share"),
    (["--cpu-emulation", "slow", "--cpu-share", "0.5"], "use quota or dilate"),
    (["--cpu-share", "0", "--cpu-emulation", "dilate"], "--cpu-share must be > 0"),
])
def test_worker_cpu_emulation_errors(args: list[str], want: str, run_cli) -> None:  # type: ignore[no-untyped-def]
    msg = one_line_error(run_cli("worker", "--bind", "tcp://127.0.0.1:0", "--name", "w", "--insecure", *args))
    assert want in msg


@pytest.mark.parametrize("cmd", [["demo"], ["up", "eq4"]])
def test_unknown_cpu_emulation_is_one_line(cmd: list[str], run_cli) -> None:  # type: ignore[no-untyped-def]
    msg = one_line_error(run_cli(*cmd, "--cpu-emulation", "fast"))
    assert "--cpu-emulation 'fast' is unknown; use quota, dilate, off" in msg


@pytest.mark.parametrize(("bind", "want"), [
    ("tcp://127.0.0.1:99999", "the port must be 0-65535, not 99999"),  # zmq bound port 34463 (mod 65536) before
    ("tcp://127.0.0.1", "must be tcp://HOST:PORT"),  # was a traceback
    ("127.0.0.1:7000", "must be tcp://HOST:PORT"),  # was "--insecure is allowed only for loopback binds"
])
def test_worker_bad_bind_is_one_line(bind: str, want: str, run_cli) -> None:  # type: ignore[no-untyped-def]
    msg = one_line_error(run_cli("worker", "--bind", bind, "--name", "w", "--insecure"))
    assert want in msg and f"--bind {bind!r}" in msg


def test_worker_bind_fails_or_bad_name_is_one_line(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    assert run_cli("keys", "--dir", str(tmp_path), "--devices", "w").returncode == 0
    # 192.0.2.1 (TEST-NET-1) is never this machine's address: zmq cannot bind it (was a traceback, exit 1)
    msg = one_line_error(run_cli("worker", "--bind", "tcp://192.0.2.1:7000", "--name", "w", "--keys", str(tmp_path)))
    assert "cannot bind tcp://192.0.2.1:7000" in msg and "bind an address of this machine" in msg
    msg = one_line_error(run_cli("worker", "--bind", "tcp://127.0.0.1:0", "--name", "a b", "--insecure"))
    assert "--name 'a b'" in msg


@pytest.mark.parametrize(("address", "want"), [
    ("tcp://10.0.0.7:99999", "devices[0].address: the port must be 1-65535, not 99999 (got 'tcp://10.0.0.7:99999')"),
    ("tcp://10.0.0.7:0", "the port must be 1-65535, not 0"),
    ("10.0.0.7:7070", "devices[0].address: must be 'local' or tcp://HOST:PORT (got '10.0.0.7:7070')"),
])
def test_cluster_address_errors(address: str, want: str) -> None:
    from coinfer.cluster import ClusterError, parse_cluster

    with pytest.raises(ClusterError) as ei:
        parse_cluster({"source": "a", "devices": [{"name": "a", "address": address}],
                       "security": {"auth": "curve"}}, "c.yaml")
    assert want in str(ei.value)


def test_an_unwritable_output_path_is_one_line(plan_file: Path, tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    missing = tmp_path / "no" / "such"
    (tmp_path / "no").write_text("a file, not a folder")
    for args, path in [(["plan", "-m", "resnet18", "-c", "demo4", "-o", missing / "p.json"], missing / "p.json"),
                       (["simulate", plan_file, "-c", "demo4", "--trace", missing / "t.json"], missing / "t.json"),
                       (["demo", "--out", missing], missing)]:
        msg = one_line_error(run_cli(*args))
        assert msg.startswith(f"error: {path}: ") and "check the path" in msg, msg


@pytest.mark.parametrize(("strategy", "param", "want"), [
    ("even", "max_redundancy=abc", "--param max_redundancy='abc': must be a number"),  # was a traceback
    ("auto", "budget_s=soon", "--param budget_s='soon': must be a number"),
])
def test_a_non_numeric_strategy_parameter_is_one_line(strategy: str, param: str, want: str, run_cli) -> None:  # type: ignore[no-untyped-def]
    msg = one_line_error(run_cli("plan", "-m", "resnet18", "-c", "demo4", "-s", strategy, "--param", param,
                                  "-o", "/dev/null"))
    assert want in msg


def test_number_parameters() -> None:
    from coinfer.cluster import builtin_cluster
    from coinfer.graph.ir import Graph
    from coinfer.strategies.registry import PlanRequest, StrategyError

    req = PlanRequest(Graph.__new__(Graph), builtin_cluster("demo4"), "m",
                      params={"a": "0.5", "b": 3, "c": "x", "d": "2.5"})
    assert req.number("a") == 0.5 and req.number("b", kind=int) == 3 and req.number("z", 7.0) == 7.0
    assert req.number("z") is None
    with pytest.raises(StrategyError, match=r"--param c='x': must be a number"):
        req.number("c")
    with pytest.raises(StrategyError, match=r"--param d='2.5': must be an integer"):
        req.number("d", kind=int)
