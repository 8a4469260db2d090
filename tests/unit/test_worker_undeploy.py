"""A deployment undeployed while the worker still builds it is not kept (a closed session's or an
abandoned build's parts would otherwise stay in a long-running worker's memory for ever)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from coinfer.runtime import worker as worker_mod
from coinfer.runtime.transport import InProcHub, Message
from coinfer.runtime.worker import Worker


@pytest.fixture
def wk(monkeypatch: pytest.MonkeyPatch):
    gate = threading.Event()
    built: list[str] = []

    def fake_build(dep, *_a, **_k):
        gate.wait(10)
        built.append(dep)
        return SimpleNamespace(build_ms=1.0, memory={}, backends_used=lambda: ["torch"], coord="coord")

    monkeypatch.setattr(worker_mod, "build", fake_build)
    with InProcHub() as hub:
        hub.endpoint("coord")
        w = Worker("w0", hub.endpoint("w0"))
        yield w, gate, built
        gate.set()
        w.close()


def _deploy(dep: str) -> Message:
    return Message("coord", {"kind": "deploy", "dep": dep, "device": "w0", "plan": "{}", "peers": {},
                             "coord": "hub://coord"}, [])


def _wait_idle(w: Worker) -> None:
    t_end = time.monotonic() + 10
    while w.building and time.monotonic() < t_end:
        time.sleep(0.01)
    assert w.building == 0


def test_undeployed_while_building_is_dropped(wk) -> None:
    w, gate, built = wk
    w.on_deploy(_deploy("a"))  # in the build thread, blocked
    w.on_deploy(_deploy("b"))  # waiting behind it
    w.on_deploy(_deploy("c"))
    time.sleep(0.05)
    w.on_undeploy(Message("coord", {"kind": "undeploy", "dep": "a"}, []))
    w.on_undeploy(Message("coord", {"kind": "undeploy", "dep": "b"}, []))
    gate.set()
    _wait_idle(w)
    assert built == ["a", "c"]  # b was dropped before its build started
    assert set(w.deployments) == {"c"}  # a was built, then freed
    assert not w.queued and not w.dropped  # the bookkeeping does not grow


def test_undeploy_of_an_unknown_deployment_is_not_remembered(wk) -> None:
    w, gate, _ = wk
    w.on_undeploy(Message("coord", {"kind": "undeploy", "dep": "never"}, []))
    assert not w.dropped
    gate.set()
    w.on_deploy(_deploy("never"))  # the same id deployed later is kept
    _wait_idle(w)
    assert set(w.deployments) == {"never"}


def test_deployments_of_a_silent_coordinator_are_dropped(wk, monkeypatch: pytest.MonkeyPatch) -> None:
    """QA: a coordinator killed without undeploying (SIGKILL, SIGTERM) left its deployments on every
    worker for good (≈ 47 MB and 3 sockets each). A worker now drops the deployments of a coordinator
    that has sent nothing for ``lease_s`` (a live session pings every second); other coordinators' stay."""
    w, gate, _ = wk
    gate.set()
    w.handle(_deploy("old"))  # through handle(): it notes when coord was last heard
    _wait_idle(w)
    w.deployments["other"] = SimpleNamespace(coord="coord2")  # type: ignore[assignment]
    w.heard["coord2"] = time.monotonic()
    w._reap()
    assert set(w.deployments) == {"old", "other"}  # within the lease
    clock = time.monotonic() + worker_mod.LEASE_S + 1
    monkeypatch.setattr(worker_mod.time, "monotonic", lambda: clock)
    w.heard["coord2"] = clock  # coord2 still pings
    w._reap()
    assert set(w.deployments) == {"other"}


def test_run_and_demo_end_on_sigterm_as_on_ctrl_c() -> None:
    """QA: SIGTERM of ``coinfer run`` (a script's kill) skipped the session's undeploy; run, demo, up
    and profile now turn SIGTERM/SIGHUP into the KeyboardInterrupt Ctrl-C raises (their finally blocks
    run, exit 130 'interrupted')."""
    import inspect
    import os
    import signal

    from coinfer.cli import common, demo_cmd, run_cmd

    assert "stop_on_signals()" in inspect.getsource(run_cmd.cmd) and "stop_on_signals()" in inspect.getsource(demo_cmd.cmd)
    old = {s: signal.getsignal(s) for s in common.STOP_SIGNALS}
    try:
        common.stop_on_signals()
        with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
