"""CPU emulation (coinfer.runtime.emulation): a busy loop limited to 0.25 core uses ≈ 0.25 cpu-s
per wall-s (±15 %) in every mode this machine offers (cgroup when writable; duty-cycle forced)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from conftest import machine_oversubscribed

from coinfer.runtime import emulation as E

SHARE = 0.25


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.1)
        yield p
    finally:
        p.kill()
        p.wait()


def _modes() -> list[str]:
    avail = E.cpu_mode_available()
    return [avail, "duty-cycle"] if avail != "duty-cycle" else ["duty-cycle"]


def _share_used(pid: int, seconds: float = 1.5) -> float:
    time.sleep(0.2)  # let the limit settle
    c0, t0 = E.process_cpu_time(pid), time.monotonic()
    time.sleep(seconds)
    return (E.process_cpu_time(pid) - c0) / (time.monotonic() - t0)


@pytest.mark.parametrize("mode", _modes())
def test_busy_loop_gets_its_share(busy: subprocess.Popen[bytes], mode: str) -> None:
    if E.cpu_count() < 1:  # pragma: no cover
        pytest.skip("no cpu")
    with E.limit_cpu(busy.pid, SHARE, "busy", mode=mode) as lim:
        assert lim.mode == mode
        used = _share_used(busy.pid)
        print(f"{mode}: {used:.3f} cpu-s per wall-s for share {SHARE}")
        assert used <= SHARE * 1.15  # the limit holds whatever the load
        if not machine_oversubscribed():  # the share is only reachable when the CPU is there
            assert used == pytest.approx(SHARE, rel=0.15)
        if mode.startswith("cgroup"):
            assert lim.path is not None and lim.path.is_dir()
            assert lim.quota_us == 2500 and lim.period_us == 10000
            if mode == "cgroup-v1":
                assert (lim.path / "cpu.cfs_period_us").read_text().strip() == "10000"
                assert (lim.path / "cpu.cfs_quota_us").read_text().strip() == "2500"
            path = lim.path
    if mode.startswith("cgroup"):
        assert not path.exists()  # cleanup removed the cgroup
    # limit lifted: back in its own cgroup, not stopped, no throttle thread
    with open(f"/proc/{busy.pid}/cgroup") as f:
        assert "coinfer" not in f.read()
    with open(f"/proc/{busy.pid}/stat") as f:
        assert f.read().rsplit(")", 1)[1].split()[0] in ("R", "S")
    assert lim._thread is None or not lim._thread.is_alive()


def test_duty_cycle_close_resumes_the_process(busy: subprocess.Popen[bytes]) -> None:
    lim = E.limit_cpu(busy.pid, 0.1, "busy", mode="duty-cycle")
    time.sleep(0.1)
    lim.close()
    lim.close()  # idempotent
    time.sleep(0.05)
    with open(f"/proc/{busy.pid}/stat") as f:
        state = f.read().rsplit(")", 1)[1].split()[0]
    assert state in ("R", "S")  # not T (stopped)


def test_none_mode_when_share_covers_the_machine(busy: subprocess.Popen[bytes]) -> None:
    lim = E.limit_cpu(busy.pid, float(E.cpu_count()), "busy")
    assert lim.mode == "none" and lim.quota_us is None
    lim.close()


def test_cpu_mode_available_is_a_known_mode() -> None:
    assert E.cpu_mode_available() in ("cgroup-v1", "cgroup-v2", "duty-cycle")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="share"):
        E.limit_cpu(os.getpid(), 0, "x")
    with pytest.raises(ValueError, match="mode"):
        E.limit_cpu(os.getpid(), 0.5, "x", mode="magic")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with pytest.raises(ValueError, match="no process"):
        E.limit_cpu(dead.pid, 0.5, "x")


def test_small_shares_get_a_longer_period() -> None:
    assert E._period(0.05, 10000) == 20000  # quota would be 500 us < the kernel's 1 ms minimum
    assert E._period(0.25, 10000) == 10000


def test_duty_cycle_survives_the_process_dying() -> None:
    p = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    lim = E.limit_cpu(p.pid, 0.5, "busy", mode="duty-cycle")
    time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    time.sleep(0.05)
    lim.close()
    assert lim._thread is not None and not lim._thread.is_alive()
