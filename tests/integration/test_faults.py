"""Fault tolerance: a worker SIGKILLed mid-run, then brought back.

200 requests over 4 workers, each with its own input: every call returns
exactly one result, equal to the plain model on *its* input (so nothing is
mixed up or duplicated); the dead device is declared dead within 2 s, the
plan is re-made without it and the interrupted request re-runs; after the
device restarts it is used again.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import ClassVar

import psutil
import pytest
import torch

from coinfer.cluster import parse_cluster
from coinfer.execute.local import TOLERANCE, compare, reference_output
from coinfer.inputs import random_input
from coinfer.modelspec import capture_model
from coinfer.runtime.coordinator import Session
from coinfer.runtime.launcher import LocalCluster
from coinfer.strategies import PlanRequest, run

pytestmark = pytest.mark.integration

MODEL = "resnet18_digits"


CLUSTER = {"source": "d0", "devices": [{"name": f"d{i}", "cpu_share": 1.0} for i in range(4)],
           "network": {"bandwidth_mbps": 1000, "latency_ms": 0, "shape": False}}


@pytest.fixture()
def env():
    cl = parse_cluster(CLUSTER)
    lc = LocalCluster(cl, emulate_cpu=False).start()
    yield cl, lc
    lc.stop()


def _even(n: int, seed: int):
    """resnet18_digits planned with ``even`` over the 4 devices; ``n`` inputs and their references."""
    cm = capture_model(MODEL)
    cl = parse_cluster(CLUSTER)
    plan = run("even", PlanRequest(cm.graph, cl, MODEL)).plan
    xs = [random_input(tuple(cm.graph.input_shape), seed + i) for i in range(n)]
    return plan, xs, list(reference_output(cm, torch.cat(xs)).split(1))


def test_kill_a_worker_mid_run(env):
    cl, lc = env
    cm = capture_model(MODEL)
    plan = run("even", PlanRequest(cm.graph, cl, MODEL, params={"max_redundancy": 0.3})).plan
    assert set(plan.devices_used_names()) == {"d0", "d1", "d2", "d3"}
    xs = [random_input(tuple(cm.graph.input_shape), 1000 + i) for i in range(200)]
    refs = reference_output(cm, torch.cat(xs)).split(1)  # one batched forward
    victim = "d2"
    killed_at: list[float] = []

    def killer() -> None:
        while not started.is_set():
            time.sleep(0.001)
        time.sleep(0.05)  # inside a request
        killed_at.append(time.monotonic())
        lc.kill(victim)

    started = threading.Event()
    results = []
    done_at: list[float] = []
    with Session(plan, cl, lc.addresses) as s:
        for i, x in enumerate(xs):
            if i == 60:
                threading.Thread(target=killer, daemon=True).start()
                started.set()
            y = s(x)
            done_at.append(time.monotonic())
            results.append(y)
            if i == 140:
                lc.restart(victim)
                s.addresses[victim] = lc.workers[victim].address
        assert len(results) == 200
        for i, (y, ref) in enumerate(zip(results, refs)):
            assert compare(y, ref)[1] <= TOLERANCE, f"request {i} wrong"
        assert s.recoveries, "no re-plan happened"
        first = s.recoveries[0]
        assert victim in first.dead and victim not in first.devices
        detect_s = s.dead_at[victim] - killed_at[0]
        gaps = [b - a for a, b in itertools.pairwise(done_at) if b > killed_at[0]]
        stall_s = max(gaps[:5])
        print(f"\nrecovery: {victim} declared dead {detect_s * 1e3:.0f} ms after SIGKILL; the longest wait "
              f"between two results was {stall_s * 1e3:.0f} ms (re-plan + deploy {first.replan_ms:.0f} ms)")
        assert detect_s < 2.0
        assert stall_s < detect_s + 5.0
        # the device came back: used again after a re-plan. Its pong may arrive only after the
        # last of the 200 requests on a loaded machine, so keep asking (bounded) until it is seen
        deadline = time.monotonic() + 60
        extra = 0
        while victim not in s.recoveries[-1].devices and time.monotonic() < deadline:
            y = s(xs[extra % len(xs)])
            assert compare(y, refs[extra % len(xs)])[1] <= TOLERANCE
            extra += 1
            time.sleep(0.05)
        assert victim in s.recoveries[-1].devices, [r.devices for r in s.recoveries]
        assert victim in s.deployed_on


def test_worker_restarts_do_not_leak(env):
    """Deploy/undeploy and many requests: a worker's fds and threads stay bounded."""
    cl, lc = env
    cm = capture_model(MODEL)
    plan = run("even", PlanRequest(cm.graph, cl, MODEL)).plan
    proc = psutil.Process(lc.workers["d1"].proc.pid)
    x = random_input(tuple(cm.graph.input_shape), 0)
    counts = []
    for _ in range(6):
        with Session(plan, cl, lc.addresses) as s:
            for _ in range(10):
                s(x)
        time.sleep(0.2)
        counts.append((proc.num_fds(), proc.num_threads(), proc.memory_info().rss))
    fds, threads, rss = zip(*counts)
    assert max(fds[2:]) <= fds[1] + 4, counts
    assert max(threads[2:]) <= threads[1] + 2, counts
    assert rss[-1] < rss[1] * 1.3, counts
    assert os.getpid()


def test_failover_switches_to_a_prepared_plan(env):
    """``failover=True``: the plan without each device is built at the start, so a device's death
    switches to a built plan — no planning or building after the failure."""
    cl, lc = env
    plan, xs, refs = _even(12, 2000)
    victim = "d1"
    with Session(plan, cl, lc.addresses, failover=True) as s:
        assert s.deploys == 4 and len(s.kept) == 3  # the plan + one without each of d1, d2, d3
        prepared = {d: k.dep for d, k in zip(("d1", "d2", "d3"), s.kept.values())}
        for x, ref in zip(xs[:4], refs[:4]):
            assert compare(s(x), ref)[1] <= TOLERANCE
        lc.kill(victim)
        for x, ref in zip(xs[4:], refs[4:]):
            assert compare(s(x), ref)[1] <= TOLERANCE  # the first of these finds the device dead
        assert s.recoveries and victim in s.recoveries[0].dead and s.recoveries[0].how == "prepared"
        assert s.dep == prepared[victim], "the failure built a plan instead of switching to the prepared one"
        assert victim not in s.deployed_on and set(s.deployed_on) == {"d0", "d2", "d3"}
        # the next failure's plans (without d2, without d3) are built in the background
        t_end = time.monotonic() + 120
        while len(s.kept) < 2 and time.monotonic() < t_end:
            s(xs[0])
            time.sleep(0.1)
        assert sorted(sorted(k.devices) for k in s.kept.values()) == [["d0", "d2"], ["d0", "d3"]]
        print(f"\nfailover: switched in {s.recoveries[0].replan_ms:.0f} ms (prepared in {s.prepare_s:.1f} s)")
        assert s.deploys == 6


def test_a_device_that_comes_back_is_built_in_the_background(env):
    """A device that comes back does not stall requests: the plan with it is built in the
    background while requests go on on the plan without it, then used."""
    cl, lc = env
    plan, xs, refs = _even(8, 3000)
    victim = "d3"
    with Session(plan, cl, lc.addresses) as s:
        lc.kill(victim)
        for x, ref in zip(xs[:3], refs[:3]):
            assert compare(s(x), ref)[1] <= TOLERANCE
        assert set(s.deployed_on) == {"d0", "d1", "d2"}
        sync_ms = s.recoveries[0].replan_ms  # planned and built while a request waited
        lc.restart(victim)
        s.addresses[victim] = lc.workers[victim].address
        waits = []
        t_end = time.monotonic() + 120
        i = 0
        while victim not in s.deployed_on and time.monotonic() < t_end:
            t0 = time.monotonic()
            y = s(xs[i % 8])
            waits.append(time.monotonic() - t0)
            assert compare(y, refs[i % 8])[1] <= TOLERANCE
            i += 1
        assert victim in s.deployed_on and set(s.deployed_on) == {"d0", "d1", "d2", "d3"}
        # the peers' connections to the restarted worker came back: no "blocked link" (QA stop 26)
        assert not s.cut and not any(r.cut for r in s.recoveries), [r.describe() for r in s.recoveries]
        back = s.recoveries[-1]
        assert victim in back.devices and not back.dead and back.how == "background"
        assert s.recoveries[0].how == "rebuilt"
        print(f"\nre-plan with {victim} back: {back.replan_ms:.0f} ms in the background, {len(waits)} "
              f"requests meanwhile, the longest {max(waits) * 1e3:.0f} ms (a failure's re-plan: {sync_ms:.0f} ms)")
        # requests went on while it was built; none waited for the whole build
        assert len(waits) >= 2 and max(waits) * 1e3 < back.replan_ms
        y = s(xs[0])
        assert compare(y, refs[0])[1] <= TOLERANCE


def test_a_worker_restarted_before_it_is_missed(env):
    """``coinfer up`` starts a worker that died again at once, often before the heartbeat misses
    it: the new process answers pings but holds no deployment. Its new instance token tells the
    session, which rebuilds the plan (the requests meanwhile fail over, none is lost)."""
    cl, lc = env
    plan, xs, refs = _even(6, 4000)
    victim = "d2"
    # the heartbeat would take a minute to miss a device: only the restart can tell
    with Session(plan, cl, lc.addresses, dead_after_s=60.0) as s:
        assert compare(s(xs[0]), refs[0])[1] <= TOLERANCE
        first = s.dep
        lc.restart(victim)  # kills it, starts it again on the same address
        t_end = time.monotonic() + 30
        while not s.restarted_at and time.monotonic() < t_end:  # its first pong
            time.sleep(0.05)
        assert victim in s.restarted_at
        for x, ref in zip(xs[1:], refs[1:]):
            assert compare(s(x), ref)[1] <= TOLERANCE
        assert s.dep != first and set(s.deployed_on) == {"d0", "d1", "d2", "d3"}
        assert victim not in s.dead_at  # never missed: the instance token told
        assert [r.how for r in s.recoveries] == ["rebuilt"] and victim in s.recoveries[0].devices


def test_a_restarted_worker_with_failover_switches_then_comes_back(env):
    """With ``failover=True`` a worker that restarts is met like a death (the prepared plan without
    it serves at once) and like a return (the plan with it is built in the background)."""
    cl, lc = env
    plan, xs, refs = _even(6, 5000)
    victim = "d3"
    with Session(plan, cl, lc.addresses, failover=True, dead_after_s=60.0) as s:
        prepared = dict(zip(("d1", "d2", "d3"), (k.dep for k in s.kept.values())))
        assert compare(s(xs[0]), refs[0])[1] <= TOLERANCE
        lc.restart(victim)
        t_end = time.monotonic() + 30
        while not s.restarted_at and time.monotonic() < t_end:
            time.sleep(0.05)
        assert compare(s(xs[1]), refs[1])[1] <= TOLERANCE
        assert s.recoveries[0].how == "prepared" and s.dep == prepared[victim]
        t_end = time.monotonic() + 120
        i = 2
        while victim not in s.deployed_on and time.monotonic() < t_end:
            assert compare(s(xs[i % 6]), refs[i % 6])[1] <= TOLERANCE
            i += 1
        assert set(s.deployed_on) == {"d0", "d1", "d2", "d3"} and s.recoveries[-1].how == "background"
        assert victim not in s.dead_at


def test_a_background_build_does_not_undo_a_switch(env):
    """A plan switched to while a device's return is built in the background (an adapter's
    choice) stays: the background build was for the plan switched away from and is dropped."""
    cl, lc = env
    plan, xs, refs = _even(4, 6000)
    victim = "d3"
    cm = capture_model(MODEL)
    chosen = run("even", PlanRequest(cm.graph, cl, MODEL, params={"max_redundancy": 0.3})).plan
    assert chosen.to_json() != plan.to_json()
    with Session(plan, cl, lc.addresses) as s:
        lc.kill(victim)
        assert compare(s(xs[0]), refs[0])[1] <= TOLERANCE  # re-planned without it
        lc.restart(victim)
        s.addresses[victim] = lc.workers[victim].address
        t_end = time.monotonic() + 60
        while not s._inflight and time.monotonic() < t_end:  # the return noticed, its build started
            assert compare(s(xs[1]), refs[1])[1] <= TOLERANCE
        assert s._inflight
        s.switch(chosen)
        while (s._inflight or not s._bg_done.empty()) and time.monotonic() < t_end:
            assert compare(s(xs[2]), refs[2])[1] <= TOLERANCE
        assert compare(s(xs[3]), refs[3])[1] <= TOLERANCE
        assert s.plan.to_json() == chosen.to_json()
        assert [r.how for r in s.recoveries] == ["rebuilt"]


def test_an_adaptive_session_takes_a_returning_device_in_the_background(env):
    """The re-solve adapter (CoEdge's adaptive mode) handled membership changes by itself: when a
    device came back it re-planned and built synchronously before the next request (and the
    session's own background build was then dropped). Now the session re-plans through the
    adapter's ``replan_for`` — in the background for a return — and tells it (``on_replan``)."""
    from coinfer.runtime.adaptive import ReplanAdapter

    class Spy(ReplanAdapter):
        calls: ClassVar[list[list[str]]] = []

        def replan_for(self, session, cluster):  # type: ignore[no-untyped-def]
            self.calls.append(list(cluster.names))
            return super().replan_for(session, cluster)

    cl, lc = env
    plan, xs, refs = _even(8, 6000)
    victim = "d3"
    adapter = Spy(threshold=1e9)  # membership only: no bandwidth-triggered re-solves
    with Session(plan, cl, lc.addresses, adapter=adapter) as s:
        assert compare(s(xs[0]), refs[0])[1] <= TOLERANCE
        lc.kill(victim)
        for x, ref in zip(xs[1:4], refs[1:4]):
            assert compare(s(x), ref)[1] <= TOLERANCE
        assert victim not in s.deployed_on
        lc.restart(victim)
        s.addresses[victim] = lc.workers[victim].address
        t_end = time.monotonic() + 120
        i = 0
        while victim not in s.deployed_on and time.monotonic() < t_end:
            assert compare(s(xs[i % 8]), refs[i % 8])[1] <= TOLERANCE
            i += 1
        assert victim in s.deployed_on and s.plan.strategy.name == "even"
        assert [r.how for r in s.recoveries] == ["rebuilt", "background"], s.recoveries
        assert s.switches == []  # the adapter never switched (re-planned) by itself
        assert adapter.calls == [["d0", "d1", "d2"], ["d0", "d1", "d2", "d3"]], adapter.calls
        reasons = [e.reason for e in adapter.events]
        assert len(reasons) == 2 and f"left ['{victim}']" in reasons[0] and f"joined ['{victim}']" in reasons[1], \
            reasons
        assert "background" in reasons[1]


def test_failover_plans_follow_a_switch(env):
    """The plans prepared for the next death were made for the plan the session started with; after
    ``switch()`` (an adapter's, or the caller's) a death then planned and built while a request waited.
    Now a switch prepares the new plan's failover plans in the background."""
    from coinfer.runtime.coordinator import default_replan

    cl, lc = env
    plan, xs, refs = _even(5, 5000)
    cm = capture_model(MODEL)
    other = run("proportional", PlanRequest(cm.graph, cl, MODEL)).plan
    assert other.to_json() != plan.to_json() and set(other.devices_used_names()) == set(cl.names)
    with Session(plan, cl, lc.addresses, failover=True, keep_deployments=8) as s:
        s.switch(other)
        want = {default_replan(other, cl.without(d)).to_json() for d in ("d1", "d2", "d3")}
        t_end = time.monotonic() + 120
        while not want <= set(s.kept) and time.monotonic() < t_end:
            assert compare(s(xs[0]), refs[0])[1] <= TOLERANCE
            time.sleep(0.1)
        assert want <= set(s.kept), "the switched-to plan's failover plans were not prepared"
        lc.kill("d2")
        for x, ref in zip(xs[1:], refs[1:]):
            assert compare(s(x), ref)[1] <= TOLERANCE
        assert s.recoveries and s.recoveries[-1].how == "prepared", [r.describe() for r in s.recoveries]
        assert s.plan.strategy.name == "proportional" and "d2" not in s.deployed_on


def test_threads_calling_one_session_all_get_results_while_it_re_plans_slowly(env):
    """QA (stop 26): with 8 devices a re-plan takes 5-8 s; callers in other threads spent their 4 attempts
    on the plan being replaced ("devices ['d3'] are dead") and failed. Now they wait for the re-plan.
    A re-planner that takes 8 s stands for the slow re-plan here."""
    from coinfer.runtime.coordinator import default_replan

    cl, lc = env
    plan, xs, refs = _even(12, 6000)

    def slow(sub):  # type: ignore[no-untyped-def]
        time.sleep(8.0)
        return default_replan(plan, sub)

    errors: list[BaseException] = []
    wrong: list[int] = []
    with Session(plan, cl, lc.addresses, replan_fn=slow) as s:
        stop = threading.Event()

        def caller(k: int) -> None:
            i = k
            while not stop.is_set():
                try:
                    if compare(s(xs[i % len(xs)]), refs[i % len(xs)])[1] > TOLERANCE:
                        wrong.append(i)
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
                i += 3

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        lc.kill("d2")
        t_end = time.monotonic() + 60
        while not s.recoveries and time.monotonic() < t_end:
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(60)
    assert s.recoveries and "d2" in s.recoveries[0].dead
    assert not errors, errors[:3]
    assert not wrong


def test_a_source_that_comes_back_at_once_is_waited_for(env):
    """QA (stop 26): `coinfer up` started a killed source again within a second, yet the run failed
    ("the source device d0 stopped answering"): nothing runs without the source, and the session gave
    up at once. It now waits a few seconds for the source to answer again, then re-plans."""
    cl, lc = env
    plan, xs, refs = _even(3, 7000)
    with Session(plan, cl, lc.addresses, dead_after_s=1.0) as s:
        assert compare(s(xs[0]), refs[0])[1] <= TOLERANCE
        lc.kill("d0")
        t_end = time.monotonic() + 20
        while "d0" not in s.dead and time.monotonic() < t_end:
            time.sleep(0.05)
        assert "d0" in s.dead
        lc.restart("d0")
        for x, ref in zip(xs[1:], refs[1:]):
            assert compare(s(x), ref)[1] <= TOLERANCE
        assert "d0" in s.deployed_on
