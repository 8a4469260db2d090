"""``coinfer up`` from a user's shell: it stops its workers on SIGTERM, SIGHUP and SIGINT — also
when started with SIGINT ignored, as a shell script's ``coinfer up &`` is (the workers run in
sessions of their own, so before this a ``kill`` of ``coinfer up`` left them running) — and
``coinfer run`` on its workers reports how they are emulated."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.integration

CLUSTER = """source: a
devices: [{name: a}, {name: b}]
network: {shape: false}
emulation: {cpu: off}
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie of ours would still answer; the workers are the launcher's children, not ours
    return False


@pytest.mark.parametrize(("sig", "ignore_int"), [(signal.SIGTERM, False), (signal.SIGHUP, False),
                                                 (signal.SIGINT, True)])
def test_up_stops_its_workers_on_a_signal(tmp_path: Path, sig: signal.Signals, ignore_int: bool) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(CLUSTER)
    exe = Path(sys.executable).parent / "coinfer"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}

    def pre() -> None:
        if ignore_int:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    p = subprocess.Popen([str(exe), "up", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=env, preexec_fn=pre, text=True)  # noqa: PLW1509
    pids: list[int] = []
    try:
        assert p.stdout is not None
        t_end = time.monotonic() + 120
        for line in p.stdout:
            m = re.search(r"pid (\d+)", line)
            if m:
                pids.append(int(m.group(1)))
            if line.startswith("up:") or time.monotonic() > t_end:
                break
        assert len(pids) == 2, pids
        p.send_signal(sig)
        assert p.wait(30) is not None
        t_end = time.monotonic() + 15
        while not all(_gone(pid) for pid in pids) and time.monotonic() < t_end:
            time.sleep(0.1)
        assert all(_gone(pid) for pid in pids), f"workers {pids} outlived coinfer up ({sig.name})"
    finally:
        if p.poll() is None:
            p.kill()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_run_reports_the_cpu_modes_of_up_s_workers(tmp_path: Path) -> None:
    """``coinfer run`` on the workers of a running ``coinfer up`` reports how they are emulated
    (it reported ``{}``: the modes were only known for workers it started itself)."""
    spec = tmp_path / "dil.yaml"
    spec.write_text("source: a\ndevices: [{name: a, cpu_share: 0.5}, {name: b, cpu_share: 0.5}]\n"
                    "network: {shape: false}\nemulation: {cpu: dilate}\n")
    exe = Path(sys.executable).parent / "coinfer"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    plan = tmp_path / "p.json"
    r = subprocess.run([str(exe), "plan", "-m", "resnet18_digits", "-c", str(spec), "-s", "proportional", "-o",
                        str(plan)], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    p = subprocess.Popen([str(exe), "up", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=env, text=True)
    try:
        assert p.stdout is not None
        for line in p.stdout:
            if line.startswith("up:"):
                break
        r = subprocess.run([str(exe), "run", str(plan), "-c", str(spec), "--verify", "--json", "-n", "4"],
                           capture_output=True, text=True, env=env, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(r.stdout)
        assert res["cpu_modes"] == {"a": "dilate", "b": "dilate"}, res
        # the headline is the latency of the request that stands for the run (the lower middle one)
        assert res["latency_ms"] == sorted(res["latencies_ms"])[1], res["latencies_ms"]
        assert res["verified_requests"] == 4 and res["max_abs_diff"] < 1e-4  # every answer checked
        # the Python API uses up's workers too (QA stop 26: it started a second set beside them)
        import coinfer
        from coinfer.runtime import upstate

        up = upstate.read(str(spec))
        assert up is not None
        with coinfer.deploy(str(plan), str(spec)) as s:
            assert s.local is None and s.addresses == up["addresses"]
            assert s.cpu_modes == {"a": "dilate", "b": "dilate"}
            s(torch.zeros(*s.plan.model.input_shape))
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


def _start_up(spec: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, int]]:
    exe = Path(sys.executable).parent / "coinfer"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    p = subprocess.Popen([str(exe), "up", str(spec), *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, env=env, text=True)
    pids: dict[str, int] = {}
    assert p.stdout is not None
    for line in p.stdout:
        m = re.match(r"\s+(\w+)\s+tcp://\S+\s+pid (\d+)", line)
        if m:
            pids[m.group(1)] = int(m.group(2))
        if line.startswith("up:"):
            break
    assert set(pids) == {"a", "b"}, pids
    return p, pids


def test_up_starts_a_worker_that_died_again_and_run_keeps_using_them(tmp_path: Path) -> None:
    """A device that comes back: `coinfer up` restarts a killed worker on its address (it stopped
    every worker when one exited), and `coinfer run` still finds up's workers."""
    from coinfer.runtime import upstate

    spec = tmp_path / "two.yaml"
    spec.write_text(CLUSTER)
    p, pids = _start_up(spec)
    new_b = None
    try:
        assert p.stdout is not None
        os.kill(pids["b"], signal.SIGKILL)
        line = next(ln for ln in p.stdout if ln.strip())
        assert re.match(r"b exited \(killed by SIGKILL\); starting it again on tcp://127\.0\.0\.1:\d+$", line.strip())
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end:
            st = upstate.read(str(spec))
            if st is not None and st["pids"]["b"] != pids["b"]:
                new_b = int(st["pids"]["b"])
                break
            time.sleep(0.2)
        assert new_b is not None and not _gone(new_b) and st["pids"]["a"] == pids["a"]
        assert p.poll() is None  # still up
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    t_end = time.monotonic() + 15
    while not all(_gone(pid) for pid in [pids["a"], new_b or pids["b"]]) and time.monotonic() < t_end:
        time.sleep(0.1)
    assert _gone(pids["a"]) and (new_b is None or _gone(new_b)), "the restarted worker outlived coinfer up"


def test_up_no_restart_stops_all_when_one_exits(tmp_path: Path) -> None:
    spec = tmp_path / "two.yaml"
    spec.write_text(CLUSTER)
    p, pids = _start_up(spec, "--no-restart")
    try:
        os.kill(pids["b"], signal.SIGKILL)
        out, _ = p.communicate(timeout=30)
        assert "worker(s) ['b'] exited; stopping" in out
        t_end = time.monotonic() + 15
        while not _gone(pids["a"]) and time.monotonic() < t_end:
            time.sleep(0.1)
        assert _gone(pids["a"])
    finally:
        if p.poll() is None:
            p.kill()


def test_up_uses_the_cluster_s_keys_and_a_second_up_is_refused(tmp_path: Path) -> None:
    """`coinfer up` of a cluster file with ``security: {auth: curve, keys: DIR}`` starts its workers
    with those keys, as `coinfer run` uses them (it started them --insecure, and run then waited 30 s
    for answers that never came); a second `coinfer up` of the same cluster is refused and leaves
    the first one's record (it took the record over, and stopping it orphaned the first)."""
    from coinfer.runtime import upstate

    exe = Path(sys.executable).parent / "coinfer"
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
    r = subprocess.run([str(exe), "keys", "--dir", str(tmp_path / "keys"), "--devices", "a,b"],
                       capture_output=True, text=True, env=env, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    spec = tmp_path / "sec.yaml"
    spec.write_text(CLUSTER + "security: {auth: curve, keys: keys}\n")
    plan = tmp_path / "p.json"
    r = subprocess.run([str(exe), "plan", "-m", "resnet18_digits", "-c", str(spec), "-s", "even", "-o", str(plan)],
                       capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    p, pids = _start_up(spec)
    try:
        for pid in pids.values():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--keys" in cmdline and b"--insecure" not in cmdline, cmdline
        first = upstate.read(str(spec))
        assert first is not None and first["owner"] == p.pid
        r2 = subprocess.run([str(exe), "up", str(spec)], capture_output=True, text=True, env=env, timeout=60,
                            check=False)
        assert r2.returncode == 2, r2.stdout + r2.stderr
        err = r2.stderr.strip().splitlines()
        assert len(err) == 1 and "already running" in err[0] and str(p.pid) in err[0], err
        again = upstate.read(str(spec))
        assert again is not None and again["owner"] == p.pid, again
        r = subprocess.run([str(exe), "run", str(plan), "-c", str(spec), "--verify", "--json",
                            "--connect-timeout-s", "20"],
                           capture_output=True, text=True, env=env, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-2000:]  # on up's workers (the record), over CURVE
        assert json.loads(r.stdout)["max_abs_diff"] < 1e-4
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
    assert upstate.read(str(spec)) is None


def test_workers_stop_when_their_launcher_is_killed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """QA: a benchmark (or coinfer up) killed with SIGKILL or by ``timeout`` left its workers running as
    orphans (their own sessions); a launched worker now stops when its launcher is gone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = ("from coinfer.cluster import parse_cluster\n"
            "from coinfer.runtime.launcher import LocalCluster\n"
            "import time\n"
            "lc = LocalCluster(parse_cluster({'source': 'a', 'devices': [{'name': 'a'}]}, 'c'), emulate_cpu=False).start()\n"
            "print(lc.workers['a'].proc.pid, flush=True)\n"
            "time.sleep(600)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        pid = int(p.stdout.readline())
        os.kill(pid, 0)  # running
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        t_end = time.monotonic() + 30
        while time.monotonic() < t_end:
            try:  # gone, or a zombie (its new parent, this container's init, may never reap it)
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                        break
            except FileNotFoundError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
            raise AssertionError("the worker outlived its launcher by 30 s")
    finally:
        if p.poll() is None:
            p.kill()


def test_a_crash_looping_worker_is_given_up_and_the_others_keep_serving(tmp_path: Path) -> None:
    """QA (stop 26): a device killed 4 times in a minute made `coinfer up` stop every worker — and the
    sessions running on them. Now only that device is given up; the others keep serving and `run`
    still finds them (and is told that device does not answer)."""
    from coinfer.runtime import upstate

    spec = tmp_path / "two.yaml"
    spec.write_text(CLUSTER)
    p, pids = _start_up(spec)
    try:
        assert p.stdout is not None
        b = pids["b"]
        lines = []
        for _ in range(4):
            os.kill(b, signal.SIGKILL)
            line = next(ln for ln in p.stdout if ln.strip()).strip()
            lines.append(line)
            if "not starting it again" in line:
                break
            t_end = time.monotonic() + 60
            while time.monotonic() < t_end:  # the restarted worker's pid
                st = upstate.read(str(spec))
                if st is not None and st["pids"].get("b", b) != b:
                    b = int(st["pids"]["b"])
                    break
                time.sleep(0.1)
        assert "b exited 4 times in a minute; not starting it again" in lines[-1], lines
        time.sleep(1.0)
        assert p.poll() is None, "coinfer up stopped"
        assert not _gone(pids["a"]), "the healthy worker was stopped"
        st = upstate.read(str(spec))
        assert st is not None and st["pids"] == {"a": pids["a"]}, st
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
