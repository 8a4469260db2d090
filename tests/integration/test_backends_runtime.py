"""Execution backends on real worker processes (issue 10).

* three devices on three backends (torch, onnxruntime, auto) run one plan:
  exact output, the chosen backend in every compute event of the trace and
  in ``Session.backends``, build memory reported per device;
* bad requests are refused by the coordinator before anything is deployed:
  ``precision: bf16`` on onnxruntime (the supported list), a backend a worker
  does not have (the extra to install); the CLI turns them into exit 2;
* ``coinfer run`` prints the backends, ``coinfer verify`` takes ``--backend``.
"""

from __future__ import annotations

import re

import pytest

from coinfer.api import plan_result
from coinfer.cluster import parse_cluster
from coinfer.execute.backends import BackendError, available_backends
from coinfer.execute.local import TOLERANCE, compare, reference_output
from coinfer.inputs import random_input
from coinfer.modelspec import capture_model
from coinfer.runtime.coordinator import Session
from coinfer.runtime.launcher import LocalCluster

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif("onnxruntime" not in available_backends(),
                                 reason="onnxruntime not installed (pip install 'coinfer[onnx]')")]

MODEL = "resnet18_digits"


def _cluster_dict(backends: list[str], precision: str = "fp32") -> dict:  # type: ignore[type-arg]
    return {"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 1.0, "backend": b, "precision": precision}
                                        for i, b in enumerate(backends)],
            "network": {"bandwidth_mbps": 1000, "latency_ms": 0, "shape": False}}


def test_devices_on_different_backends_stay_exact() -> None:
    cl = parse_cluster(_cluster_dict(["torch", "onnxruntime", "auto"]), "mixed")
    plan = plan_result(MODEL, cl, "even").plan
    cm = capture_model(MODEL)
    x = random_input(tuple(cm.graph.input_shape), 0)
    with LocalCluster(cl, emulate_cpu=False) as lc:
        with Session(plan, cl, lc.addresses) as s:
            y = s(x)
            tr = s.last_trace
            assert s.backends["d0"] == ["torch"] and s.backends["d1"] == ["onnxruntime"]
            assert s.backends["d2"] and set(s.backends["d2"]) <= {"torch", "onnxruntime", "openvino"}
            for d in cl.names:
                assert s.memory[d]["weights_bytes"] > 0 and s.memory[d]["rss_bytes"] > 0
        # the same workers, a cluster file asking onnxruntime for bf16: refused before deploying
        bad = parse_cluster(_cluster_dict(["torch", "onnxruntime", "auto"], precision="bf16"), "bad")
        with pytest.raises(BackendError, match="device d1: backend 'onnxruntime' does not support precision "
                                               "'bf16' on this machine; supported: fp32"):
            Session(plan, bad, lc.addresses)
    assert compare(y, reference_output(cm, x))[1] <= TOLERANCE
    assert tr is not None
    comp = [e for e in tr.events if e.lane == "compute"]
    assert comp and all("backend" in e.args for e in comp)
    # the program thread's CPU time: the instruction's, and the part's within it
    assert all(0 < e.args["run_cpu_ms"] <= e.args["cpu_ms"] for e in comp)
    by_dev = {e.device: e.args["backend"] for e in comp if e.device in ("d0", "d1")}
    assert by_dev == {"d0": "torch", "d1": "onnxruntime"}


def test_backend_missing_on_a_worker_names_the_extra(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("COINFER_HIDE_BACKENDS", "onnxruntime")  # the workers start without it
    cl = parse_cluster(_cluster_dict(["onnxruntime"]), "one")
    plan = plan_result(MODEL, cl, "local").plan
    with LocalCluster(cl, emulate_cpu=False) as lc:
        monkeypatch.delenv("COINFER_HIDE_BACKENDS")  # this process has it: the worker's report decides
        with pytest.raises(BackendError, match=r"device d0: backend 'onnxruntime' is not installed; "
                                               r"install it with pip install 'coinfer\[onnx\]'"):
            Session(plan, cl, lc.addresses)


def _write(tmp_path, backends: list[str], precision: str = "fp32"):  # type: ignore[no-untyped-def]
    import yaml

    cl = _cluster_dict(backends, precision)
    cpath = tmp_path / f"cluster-{precision}.yaml"
    cpath.write_text(yaml.safe_dump(cl))
    ppath = tmp_path / "plan.json"
    plan_result(MODEL, parse_cluster(cl, "c"), "even").plan.save(ppath)
    return ppath, cpath


def test_cli_run_shows_backends_verify_takes_them_bad_precision_exits_2(tmp_path, run_cli) -> None:  # type: ignore[no-untyped-def]
    ppath, cpath = _write(tmp_path, ["onnxruntime", "torch"])
    r = run_cli("run", ppath, "--cluster", cpath, "--verify", "--warmup", "0", "--stages")
    assert r.returncode == 0, r.stderr
    assert "lost ms" in r.stdout and "(to the result)" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("backends:"))
    # (on a badly overloaded machine a missed heartbeat may re-plan onto d0 alone: d1 then is absent)
    assert line.strip() in ("backends: d0 onnxruntime, d1 torch", "backends: d0 onnxruntime"), line
    crit = re.search(r"median run: ([\d.]+) ms, of which ([\d.]+) ms the busiest device's compute per stage; "
                     r"([\d.]+) ms \((\d+)%\) messages and waiting", r.stdout)
    assert crit, r.stdout
    span, comp, rest = (float(crit.group(i)) for i in (1, 2, 3))
    assert 0 < comp <= span and rest == pytest.approx(span - comp, abs=0.11)

    r = run_cli("verify", ppath, "--backend", "onnxruntime")
    assert r.returncode == 0, r.stderr
    assert "backends: d0 onnxruntime, d1 onnxruntime" in r.stdout

    _, bad = _write(tmp_path, ["onnxruntime", "torch"], precision="bf16")
    r = run_cli("verify", ppath, "--cluster", bad)
    assert r.returncode == 2
    assert r.stderr.strip() == ("error: device d0: backend 'onnxruntime' does not support precision 'bf16' "
                                "on this machine; supported: fp32")

    # devices at bf16 make `run --verify` approximate, as they make `verify` (it exited 1 before 6 Dec)
    _, bf16 = _write(tmp_path, ["torch", "torch"], precision="bf16")
    r = run_cli("run", ppath, "--cluster", bf16, "--verify", "--warmup", "0")
    assert r.returncode == 0, r.stderr
    assert "approximate plan (halo zero, quantised wire or reduced precision): no tolerance applied" in r.stdout
    assert "backends: d0 torch/bf16" in r.stdout
    rel = float(re.search(r"rel=([\d.e+-]+)", r.stdout).group(1))  # type: ignore[union-attr]
    assert 1e-4 < rel < 0.1  # really reduced precision, and still close


def test_cli_backend_not_installed_exits_2_naming_the_extra(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "coinfer"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "coinfer.cli.main"]
    ppath, cpath = _write(tmp_path, ["openvino", "torch"])
    env = {**os.environ, "COINFER_HIDE_BACKENDS": "openvino", "NO_COLOR": "1", "COLUMNS": "200"}
    hint = "backend 'openvino' is not installed; install it with pip install 'coinfer[openvino]' (or set backend: auto)"
    r = subprocess.run([*cmd, "verify", str(ppath), "--backend", "openvino"], capture_output=True,
                       text=True, env=env, timeout=300, check=False)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {hint}", r.stderr
    r = subprocess.run([*cmd, "verify", str(ppath), "--cluster", str(cpath)], capture_output=True,
                       text=True, env=env, timeout=300, check=False)
    assert r.returncode == 2 and r.stderr.strip() == f"error: device d0: {hint}", r.stderr
