"""Set-up problems found while running are one line and an exit code, not a traceback."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import typer
import yaml

from coinfer.api import plan_result
from coinfer.cli.common import user_errors
from coinfer.cluster import parse_cluster
from coinfer.runtime.coordinator import DeviceUnreachable, RuntimeFailure
from coinfer.runtime.emulation import EmulationError
from coinfer.runtime.launcher import LaunchError

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _plan_for(tmp_path: Path, address: str) -> tuple[Path, Path]:
    cl = {"source": "a", "devices": [{"name": "a"}, {"name": "b", "address": address}],
          "network": {"shape": False}}
    cpath = tmp_path / "c.yaml"
    cpath.write_text(yaml.safe_dump(cl))
    ppath = tmp_path / "p.json"
    plan_result("alexnet_digits", parse_cluster(cl, "c"), "even").plan.save(ppath)
    return ppath, cpath


def _error_lines(r) -> list[str]:  # type: ignore[no-untyped-def]
    assert "Traceback" not in r.stderr
    return [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]


def test_run_with_a_device_nobody_serves_is_one_line_exit_2(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    addr = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there: the connection is refused
    ppath, cpath = _plan_for(tmp_path, addr)
    t0 = time.monotonic()
    r = run_cli("run", ppath, "--cluster", cpath)  # the default 30 s timeout is not waited for
    took = time.monotonic() - t0
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert _error_lines(r) == [(f"error: no answer from b at {addr} (connection refused: nothing listens there); "
                               f"is `coinfer worker` running there (or `coinfer up`)?")]
    assert took < 25, took
    # coinfer profile meets the same device the same way (it waited 30 s and said "check failed", exit 1)
    r = run_cli("profile", cpath, "-m", "alexnet_digits", "-o", tmp_path / "prof")
    assert r.returncode == 2 and _error_lines(r)[-1].startswith(f"error: no answer from b at {addr} (connection refused")


def test_run_with_a_device_that_never_answers_waits_connect_timeout(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:  # accepts TCP (the kernel does), never speaks ZeroMQ
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        addr = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        ppath, cpath = _plan_for(tmp_path, addr)
        r = run_cli("run", ppath, "--cluster", cpath, "--connect-timeout-s", "1.5")
    assert r.returncode == 2, (r.stdout, r.stderr)
    (line,) = _error_lines(r)
    assert line.startswith(f"error: no answer from b at {addr}; is `coinfer worker` running there (or `coinfer up`)?")
    # the likely causes when a process does listen there (QA: only the troubleshooting table named them)
    assert "ignores a coordinator without CURVE keys" in line and "something else listening" in line


def test_a_worker_at_another_device_s_address_is_named(tmp_path: Path) -> None:
    """QA: two devices' addresses swapped in a cluster file read 'deploying on b failed: b: deployment for
    'c' sent to worker 'b'' (exit 1): now the hello names the worker found at the address."""
    from coinfer.runtime.coordinator import Session
    from coinfer.runtime.launcher import LocalCluster

    cl = parse_cluster({"source": "a", "devices": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                        "network": {"shape": False}}, "c")
    lc = LocalCluster(cl, emulate_cpu=False).start()
    try:
        addr = dict(lc.addresses)
        addr["b"], addr["c"] = addr["c"], addr["b"]
        plan = plan_result("alexnet_digits", cl, "even").plan
        with pytest.raises(DeviceUnreachable, match=rf"the worker at {addr['b']} \(cluster device b\) is named 'c'; "
                                                    r"fix the address of b in the cluster file"):
            Session(plan, cl, addr, hello_timeout_s=20)
    finally:
        lc.stop()


@pytest.mark.parametrize(("error", "code"), [
    (DeviceUnreachable("no answer from b"), 2),
    (LaunchError("worker 'a' did not start"), 2),
    (EmulationError("cgroup-v1 is not available here"), 2),
    (RuntimeFailure("request failed after 3 attempts: boom"), 1),
])
def test_runtime_errors_are_one_line_with_their_exit_code(error: Exception, code: int,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    # set-up problems exit 2 like bad input; a request that failed while running exits 1
    @user_errors
    def cmd() -> None:
        raise error

    with pytest.raises(typer.Exit) as ei:
        cmd()
    assert ei.value.exit_code == code
    assert capsys.readouterr().err == f"error: {error}\n"
    assert isinstance(error, RuntimeError)  # what the runtime's own handlers catch, unchanged


def test_missing_keys_are_named_before_anything_starts(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    assert run_cli("keys", "--dir", keys, "--devices", "b").returncode == 0
    # a worker serves with its own key pair: without it, it used to fall back to the coordinator's and
    # start, and then no peer could connect to it
    r = run_cli("worker", "--bind", "tcp://127.0.0.1:0", "--name", "zz", "--keys", keys, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: no CURVE secret key for 'zz' in {keys}; copy zz.key_secret there or run "
        f"coinfer keys --dir {keys} --devices zz")
    # coinfer run names the local device without a key instead of "worker 'a' did not start (File …)"
    cl = {"source": "a", "devices": [{"name": "a"}, {"name": "b", "address": f"tcp://127.0.0.1:{_free_port()}"}],
          "security": {"auth": "curve", "keys": str(keys)}}
    cpath = tmp_path / "c.yaml"
    cpath.write_text(yaml.safe_dump(cl))
    ppath = tmp_path / "p.json"
    plan_result("alexnet_digits", parse_cluster(cl, "c"), "even").plan.save(ppath)
    r = run_cli("run", ppath, "--cluster", cpath, "--connect-timeout-s", "1")
    assert r.returncode == 2 and r.stderr.strip() == (
        f"error: no CURVE secret key for 'a' in {keys}; copy a.key_secret there or run "
        f"coinfer keys --dir {keys} --devices a")
    cpath.write_text(yaml.safe_dump({**cl, "security": {"auth": "curve", "keys": str(tmp_path / "none")}}))
    r = run_cli("run", ppath, "--cluster", cpath, "--connect-timeout-s", "1")
    assert r.returncode == 2 and "has no public/ key folder; create keys with coinfer keys" in r.stderr


def test_a_worker_that_dies_at_start_is_reported_by_its_exception_message() -> None:
    from coinfer.runtime.launcher import _last_words

    tb = ["Traceback (most recent call last):", '  File "worker_main.py", line 47, in run',
          "coinfer.runtime.security.SecurityError: no CURVE secret key for 'a' in /k; copy a.key_secret there"]
    assert _last_words(tb) == "no CURVE secret key for 'a' in /k; copy a.key_secret there (SecurityError)"
    assert _last_words(["OSError: [Errno 98] Address already in use"]) == "[Errno 98] Address already in use (OSError)"
    assert _last_words(["killed", "", "by the OOM killer"]) == "killed | by the OOM killer"
    assert _last_words([]) == "no output"


def test_run_names_a_device_that_is_not_there_before_it_captures_the_model(tmp_path: Path) -> None:
    """QA (stop 25): `coinfer run` captured the model (≈ 9 s of ResNet-18) before it looked at the
    devices and keys. The model here is an import path that leaves a mark when it is built: a device
    that refuses connections is named with no mark left, i.e. before any capture."""
    import os
    import subprocess
    import sys
    import textwrap

    from conftest import coinfer_cmd

    mark = tmp_path / "built"
    (tmp_path / "marknet.py").write_text(textwrap.dedent(f"""
        import torch
        from torch import nn

        def make():
            open({str(mark)!r}, "w").close()
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).eval()
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        port = _free_port()
        cl = {"source": "a", "devices": [{"name": "a"}, {"name": "b", "address": f"tcp://127.0.0.1:{port}"}],
              "network": {"shape": False}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cl))
        plan_result("marknet:make", parse_cluster(cl, "c"), "even", input_shape=(1, 3, 16, 16)).plan.save(
            tmp_path / "p.json")
    finally:
        sys.path.remove(str(tmp_path))
    mark.unlink()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([*coinfer_cmd(), "run", str(tmp_path / "p.json"), "-c", str(tmp_path / "c.yaml")],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
    assert r.returncode == 2 and f"127.0.0.1:{port}" in r.stderr and "b" in r.stderr, r.stderr
    assert not mark.exists(), "the model was captured before the missing device was named"


def test_a_worker_that_refuses_our_keys_is_not_called_dead(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    """QA (stop 26): with CURVE, keys from another `coinfer keys` run (or a cluster file without
    `security:`) read "its connection closed (the worker stopped or died); start it again" while the
    worker ran. Now the message says a worker listens there and names the keys (or swapped addresses)."""
    import subprocess
    import sys

    from coinfer.runtime.security import generate_keys

    mine, other = tmp_path / "keys", tmp_path / "other"
    generate_keys(mine, ["b"])
    generate_keys(other, ["b"])
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    w = subprocess.Popen([sys.executable, "-m", "coinfer.runtime.worker_main", "--bind", addr, "--name", "b",
                          "--keys", str(mine)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert w.stdout is not None and w.stdout.readline().startswith(b"READY")
        # the only device is b (no local worker to start): a plan on it alone
        base = {"source": "b", "devices": [{"name": "b", "address": addr}], "network": {"shape": False}}
        ppath, cpath = tmp_path / "p.json", tmp_path / "c.yaml"
        plan_result("alexnet_digits", parse_cluster(base, "c"), "local").plan.save(ppath)
        for security, words in [({"auth": "curve", "keys": str(other)}, "CURVE keys do not match"),
                                (None, "a worker started with --keys")]:
            cl = dict(base)
            if security:
                cl["security"] = security
            cpath.write_text(yaml.safe_dump(cl))
            r = run_cli("run", ppath, "--cluster", cpath, "--connect-timeout-s", "10")
            assert r.returncode == 2, (r.stdout, r.stderr)
            lines = _error_lines(r)
            assert len(lines) == 1, r.stderr
            assert words in lines[0] and "stopped or died" not in lines[0], lines
        assert w.poll() is None  # the worker was alive all along
    finally:
        w.terminate()
        w.wait(10)
