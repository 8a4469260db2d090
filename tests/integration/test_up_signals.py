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
        r = subprocess.run([str(exe), "run", str(plan), "-c", str(spec), "--verify", "--json"],
                           capture_output=True, text=True, env=env, timeout=300, check=False)
        assert r.returncode == 0, r.stderr[-2000:]
        res = json.loads(r.stdout)
        assert res["cpu_modes"] == {"a": "dilate", "b": "dilate"}, res
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)
