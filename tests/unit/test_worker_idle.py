"""The worker's idle housekeeping: the heap is trimmed once after requests finish, never mid-request."""

from __future__ import annotations

import pytest

from coinfer.runtime import worker as worker_mod
from coinfer.runtime.transport import InProcHub
from coinfer.runtime.worker import RequestState, Worker


@pytest.fixture
def w(monkeypatch: pytest.MonkeyPatch):
    calls: list[int] = []
    monkeypatch.setattr(worker_mod, "trim_heap", lambda: calls.append(1))
    with InProcHub() as hub:
        wk = Worker("w0", hub.endpoint("w0"))
        yield wk, calls
        wk.close()


def test_idle_worker_trims_once_after_a_request(w) -> None:
    wk, calls = w
    wk._expire()
    assert calls == []  # nothing served yet: nothing to hand back
    wk._finish(("dep", 1))
    wk._expire()
    assert calls == [1]
    wk._expire()
    assert calls == [1]  # once per idle period, not on every idle tick


def test_no_trim_while_a_request_is_in_flight(w) -> None:
    wk, calls = w
    wk._finish(("dep", 1))
    wk.requests[("dep", 2)] = RequestState("dep", 2)
    wk._expire()
    assert calls == []
    wk.requests.clear()
    wk._expire()
    assert calls == [1]
