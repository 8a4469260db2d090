"""Time-dilation CPU emulation (coinfer.runtime.dilation): a section lasts its CPU time ÷ share,
sections of one device run one at a time, waiting costs nothing, and the cluster file selects it."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from coinfer.cluster import Cluster, ClusterError, parse_cluster
from coinfer.runtime import dilation as D


def _burn(cpu_s: float) -> None:
    end = time.thread_time() + cpu_s
    x = 0
    while time.thread_time() < end:
        x += 1


def test_a_section_lasts_its_cpu_time_divided_by_the_share() -> None:
    d = D.Dilation(0.25)
    t0, c0 = time.perf_counter(), time.thread_time()
    with d.section():
        _burn(0.02)
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    # the section ends cpu / share after it began: never sooner, and only scheduling late after
    assert wall >= cpu / 0.25 * 0.99
    assert wall <= cpu / 0.25 + 0.05  # (sleep wake-up on a loaded machine)
    assert d.cpu_s == pytest.approx(cpu, rel=0.05)
    assert d.busy_s == pytest.approx(wall, rel=0.05)


def test_waiting_inside_a_section_is_not_dilated() -> None:
    d = D.Dilation(0.1)
    t0 = time.perf_counter()
    with d.section():
        time.sleep(0.05)  # no CPU: a slow device waits no longer than a fast one
    wall = time.perf_counter() - t0
    assert 0.045 <= wall < 0.15  # ≈ 50 ms, not 50 ms ÷ 0.1 = 500 (only the sleep call's µs of CPU are dilated)
    assert d.cpu_s < 0.005


def test_sections_of_one_device_run_one_at_a_time() -> None:
    d = D.Dilation(0.5)
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def work() -> None:
        with d.section():
            t = time.perf_counter()
            _burn(0.01)
        with lock:
            spans.append((t, time.perf_counter()))

    t0 = time.perf_counter()
    ths = [threading.Thread(target=work) for _ in range(3)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    total = time.perf_counter() - t0
    assert total >= 3 * 0.01 / 0.5 * 0.99  # three 20-ms sections back to back, not side by side
    spans.sort()
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - 0.002  # no overlap (the end is stamped just after the section's release)


def test_nested_sections_count_once() -> None:
    d = D.Dilation(0.5)
    t0 = time.perf_counter()
    with d.section():
        _burn(0.01)
        with d.section():  # e.g. a send inside a handler: not a second dilation, no deadlock
            _burn(0.01)
    wall = time.perf_counter() - t0
    assert 0.04 * 0.99 <= wall <= 0.04 + 0.05  # 20 ms of CPU ÷ 0.5
    assert d.cpu_s == pytest.approx(0.02, rel=0.2)  # counted once (the inner section is part of the outer)


def test_section_is_a_no_op_unless_installed() -> None:
    assert D.active() is None
    t0 = time.perf_counter()
    with D.section():
        _burn(0.01)
    assert time.perf_counter() - t0 < 0.01 / 0.5  # not dilated
    try:
        d = D.install(0.5)
        assert D.active() is d
        with D.section():
            _burn(0.005)
        assert d.cpu_s > 0.004
    finally:
        D.install(None)
    assert D.active() is None


@pytest.mark.parametrize("share", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_share(share: float) -> None:
    with pytest.raises(ValueError, match="cpu_share"):
        D.Dilation(share)


def test_cluster_file_selects_the_cpu_emulation() -> None:
    base = {"source": "a", "devices": [{"name": "a", "cpu_share": 0.35}]}
    assert Cluster.model_validate(base).emulation.cpu == "quota"
    assert Cluster.model_validate({**base, "emulation": {"cpu": "dilate"}}).emulation.cpu == "dilate"
    import yaml

    assert parse_cluster(yaml.safe_load("source: a\ndevices: [{name: a}]\nemulation: {cpu: off}\n")).emulation.cpu \
        == "off"  # YAML's bare `off` is false
    with pytest.raises(ClusterError) as e:
        parse_cluster({**base, "emulation": {"cpu": "slow"}}, "c.yaml")
    msg = str(e.value)
    assert msg.startswith("c.yaml: emulation.cpu:") and "'dilate'" in msg and "\n" not in msg


def test_a_worker_without_a_writable_cgroup_falls_back_to_dilation(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from coinfer.runtime import emulation, worker_main

    monkeypatch.setattr(emulation, "cpu_mode_available", lambda: "duty-cycle")
    try:
        assert worker_main.self_limit("w", None, None) == "none"
        assert D.active() is None
        assert worker_main.self_limit("w", 0.5, None) == "dilate"
        d = D.active()
        assert d is not None and d.share == 0.5
        assert "time dilation" in capsys.readouterr().err
        assert worker_main.self_limit("w", None, 0.3) == "dilate"  # asked for directly
        assert D.active() is not None and D.active().share == 0.3  # type: ignore[union-attr]
    finally:
        D.install(None)


def test_message_handling_runs_beside_a_long_compute() -> None:
    """A non-exclusive section (a worker's message handler) does not wait for the device's CPU:
    a ping answered while a dilated compute lasts 200 ms comes back in a few ms."""
    d = D.Dilation(0.1)
    started = threading.Event()
    done: list[float] = []

    def compute() -> None:
        with d.section():
            started.set()
            _burn(0.02)  # ÷ 0.1: 200 ms

    t = threading.Thread(target=compute)
    t.start()
    started.wait(5)
    t0 = time.perf_counter()
    with d.section(exclusive=False):
        _burn(0.001)  # ÷ 0.1: 10 ms
    done.append(time.perf_counter() - t0)
    t.join()
    assert done[0] < 0.1, done  # not behind the 200-ms compute
    assert done[0] >= 0.001 / 0.1 * 0.9  # but dilated itself
