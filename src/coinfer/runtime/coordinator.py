"""The coordinator: ``coinfer.deploy(plan, cluster) -> Session``.

It runs on the device that holds the input (the plan's source). It connects
to every worker, deploys the plan (each worker lowers it and builds only its
parts), and per request sends the input to the source's worker and a ``run``
to every other device of the plan; the source worker scatters, peers exchange
halos directly, and the output comes back. Heartbeats (default every 0.25 s)
detect a dead device within ``dead_after_s``; a request that depended on it
is cancelled everywhere, the plan is re-made over the live devices (same
strategy, the dead device removed; ``proportional`` if that strategy cannot
plan) and the request re-runs from its input — each call returns exactly one
result. A device that answers pings again is used after the next re-plan.

Switching plans between requests (:meth:`Session.switch`, used by run-time
adapters such as Edgent's) can keep earlier deployments built on the
workers (``keep_deployments``; by default only when plans are prepared):
switching to a plan still built is one assignment at the coordinator, not a
re-deploy. Plans an adapter names in ``plans_to_prepare()`` (or
``prepare=``) are built when the session starts, so no switch waits for a
build.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import math
import os
import queue
import secrets
import socket
import statistics
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..cluster import Cluster
from ..errors import RunFailed, SetupError
from ..execute.backends.base import check_backend
from ..plan.plan import Plan
from ..trace import Trace
from . import wire
from .launcher import LocalCluster, check_local_keys, cluster_keys
from .security import KeyStore
from .transport import BadMessage, Message, zmq_endpoint

log = logging.getLogger("coinfer.coordinator")


class RuntimeFailure(RuntimeError, RunFailed):
    """A request could not be completed (after re-planning attempts)."""


class DeviceUnreachable(RuntimeFailure, SetupError):
    """A device of the cluster does not answer (or went away and nothing can run without it)."""


class DeviceWentAway(DeviceUnreachable):
    """A device that answered went away during the work (a failed run, exit 1, not bad set-up)."""

    bad_input = False

    def __init__(self, message: str, device: str | None = None) -> None:
        super().__init__(message)
        self.device = device  # the device that went away, when one is known


class _BuildFailed(Exception):
    """A device's deployment failed: its worker's error, or the deploy's timeout."""

    def __init__(self, device: str, error: BaseException) -> None:
        super().__init__(device)
        self.device, self.error = device, error


@dataclass
class _Pending:
    dep: str
    req: int
    devices: set[str]
    fut: Future[torch.Tensor] = field(default_factory=Future)
    traces: dict[str, dict[str, Any]] = field(default_factory=dict)
    traced: threading.Event = field(default_factory=threading.Event)  # every device's trace is in
    t_send_ms: float = 0.0
    t_result_ms: float = 0.0


RESTARTED = "?"  # Session.instance of a device known to have restarted, whose new token is not seen yet


@dataclass
class _Deployment:
    """A plan built on its devices under deployment id ``dep``."""

    plan: Plan
    dep: str
    devices: list[str]
    backends: dict[str, list[str]]
    memory: dict[str, dict[str, Any]]
    t_sent: float = 0.0  # time.monotonic() when the deploy messages went out


@dataclass
class _Built:
    """What a background job built: the active plan for membership ``live`` (``purpose`` "replan")
    or a failover plan for it ("fallback"); ``dep`` None when nothing needed building."""

    purpose: str
    live: frozenset[str]
    t0: float
    base: str  # the plan (JSON) it replaces ("replan") or prepares the failures of ("fallback")
    dep: _Deployment | None = None
    error: BaseException | None = None


@dataclass
class RecoveryEvent:
    """A plan change after devices died or came back (``Session.recoveries``)."""

    t: float  # time.time() when the new plan took over
    dead: list[str]  # the devices dead then
    replan_ms: float  # planning + building (``how`` "prepared": finding the prepared plan)
    recovery_ms: float  # failed request: from its first attempt to its result (0 if none failed)
    devices: list[str]  # the devices the new plan uses
    how: str = "rebuilt"  # "rebuilt" (after a failure) | "prepared" (failover) | "background" (no request waited)
    restarted: list[str] = field(default_factory=list)  # devices whose worker restarted (parts lost, not dead)
    cut: list[str] = field(default_factory=list)  # alive devices left out: a link to them is blocked

    def describe(self) -> str:
        """One line: when, who was dead, the devices used now, how and how long."""
        when = time.strftime("%H:%M:%S", time.localtime(self.t))
        how = {"rebuilt": "planned and built while a request waited", "prepared": "switched to a prepared plan",
               "background": "planned and built in the background"}.get(self.how, self.how)
        waited = f"; the failed request took {self.recovery_ms:.0f} ms" if self.recovery_ms else ""
        died = [d for d in self.dead if d not in self.cut]
        gone = [f"{', '.join(died)} dead"] if died else []
        gone += [f"{', '.join(self.cut)} cut off (a blocked link)"] if self.cut else []
        gone += [f"{', '.join(self.restarted)} restarted"] if self.restarted else []
        dead = "; ".join(gone) or "all devices alive"
        return f"{when} {dead} -> over {', '.join(self.devices)} ({how}, {self.replan_ms:.0f} ms{waited})"


class Adapter(Protocol):
    """Adapts a running session between requests (Edgent's configuration map, CoEdge's re-solve).

    ``before_request`` may return a new plan: the session deploys it and the
    request runs on it. ``after_request`` sees each finished request's trace.
    """

    def before_request(self, session: Session) -> Plan | None: ...

    def after_request(self, session: Session, trace: Trace) -> None: ...

    # optional: on_replan(session, plan) — the session re-planned over other devices (a death or a
    # return); an adapter whose plans name devices (Edgent's map) takes the new plan's instead.
    # replan_for(session, cluster) -> Plan: what the session's re-plans use for the devices of
    # ``cluster`` (default: the active plan's strategy over them).
    # plans_to_prepare() -> list[Plan]: built when the session starts and after such a re-plan


@dataclass(frozen=True)
class LinkSample:
    t: float  # time.time() of arrival
    src: str
    dst: str
    nbytes: int
    ms: float  # sent -> fully arrived

    @property
    def mbps(self) -> float:
        return self.nbytes * 8 / 1e3 / max(self.ms, 1e-3)


def unreachable(addresses: dict[str, str], refused: bool = False) -> DeviceUnreachable:
    """The error for devices (name -> address) that did not answer a hello."""
    why = " (connection refused: nothing listens there)" if refused else ""
    keys = "" if refused else (" A worker started with --keys ignores a coordinator without CURVE keys or with "
                               "another `coinfer keys` directory's (security: in the cluster file, --keys); "
                               "something else listening on that port never answers either.")
    return DeviceUnreachable("no answer from " + ", ".join(f"{d} at {a}" for d, a in addresses.items()) + why
                             + "; is `coinfer worker` running there (or `coinfer up`)?" + keys)


def tcp_refuses(address: str, timeout_s: float = 1.0) -> bool:
    """True when a TCP connection to ``address`` is actively refused (no process listens on the
    port). Anything else — accepted, unreachable, timed out — is left to the hello to decide."""
    if not address.startswith("tcp://"):
        return False
    host, _, port = address[len("tcp://"):].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return False
    except ConnectionRefusedError:
        return True
    except (OSError, ValueError):
        return False


def _advertise_host(addresses: list[str]) -> str:
    """The local IP by which remote workers reach this machine (loopback if all are local)."""
    hosts = [a[len("tcp://"):].rsplit(":", 1)[0] for a in addresses]
    remote = [h for h in hosts if not (h.startswith("127.") or h in ("localhost", "::1"))]
    if not remote:
        return "127.0.0.1"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect((remote[0], 9))
        return str(s.getsockname()[0])
    finally:
        s.close()


# a device building a deployment may miss heartbeats this many times longer (16: at 8 devices × 0.2 of a
# core, building workers were silent for 9.8 s — probably a part's onnxruntime session built holding the GIL —
# and the first deploy gave up on one; 8 before 7 Dec)
BUILD_GRACE = 16.0
#: a link reported down this long (and at least 2 × dead_after_s) while both ends answer is blocked
LINK_BLOCKED_S = 6.0


class Session:
    """A deployed plan. ``session(x)`` runs one inference; ``last_trace`` has its timeline."""

    def __init__(self, plan: Plan, cluster: Cluster, addresses: dict[str, str], *,
                 keys: str | None = None, seed: int = 0, timeout_s: float = 300.0,
                 heartbeat_s: float = 0.25, dead_after_s: float = 1.2, replan: bool = True,
                 local: LocalCluster | None = None, replan_fn: Callable[[Cluster], Plan] | None = None,
                 cpu_modes: dict[str, str] | None = None, adapter: Adapter | None = None,
                 hello_timeout_s: float = 30.0, keep_deployments: int | None = None,
                 prepare: list[Plan] | None = None, failover: bool = False) -> None:
        self._plan = plan  # the plan to deploy first; after that, the active deployment's
        self.current: _Deployment | None = None  # the deployment requests run on
        # switch(): earlier deployments stay built (plan JSON -> deployment), oldest evicted first.
        # Default: none, unless plans are prepared (then all of them and the first plan): a kept
        # deployment holds its parts' memory on the workers
        self.keep_deployments = 0 if keep_deployments is None else max(0, int(keep_deployments))
        self.kept: OrderedDict[str, _Deployment] = OrderedDict()
        self.prepare_s = 0.0  # time spent building the prepared plans when the session started
        self.deploys = 0  # plans built on the workers so far (a switch to a kept plan builds none)
        self.hello_timeout_s = hello_timeout_s  # a device that does not answer hello by then is unreachable
        self.cluster = cluster
        self.addresses = dict(addresses)
        self.seed = seed
        self.timeout_s = timeout_s
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.replan_enabled = replan
        self.local = local
        self.replan_fn = replan_fn
        self.cpu_modes = dict(cpu_modes or {})
        self.adapter = adapter
        self.link_trace = self._load_link_trace()  # network.trace, replayed by the workers' link shapers
        self.link_samples: deque[LinkSample] = deque(maxlen=2000)
        self.switches: list[tuple[float, str]] = []  # (time, strategy/config) each time the plan changed
        self.keys = KeyStore(keys) if keys else None
        host = _advertise_host(list(self.addresses.values()))
        self.name = f"coord-{os.getpid()}-{secrets.token_hex(3)}"
        bind = f"tcp://{host}:0"
        self.ep = zmq_endpoint(self.name, bind, keys=self.keys, insecure=self.keys is None)
        self.lock = threading.RLock()
        self._replan_lock = threading.RLock()  # the requests' re-planning and plan switches, one at a time
        self.pending: dict[tuple[str, int], _Pending] = {}
        self.waiters: dict[tuple[str, str], Future[dict[str, Any]]] = {}
        self.last_seen: dict[str, float] = {}
        self.alive: set[str] = set()
        self.dead: set[str] = set()
        self.dead_at: dict[str, float] = {}  # device -> time.monotonic() it was declared dead
        self.peer_building: dict[str, bool] = {}  # device -> its last pong said it builds a deployment
        # device -> {peer: seconds its connection to the peer has been down} (its last pong), and the
        # devices left out because a link to them is blocked: device -> (reporter, peer) of that link;
        # it counts as dead (its pongs do not revive it) until the reporter reaches the peer again
        self.links_down: dict[str, dict[str, float]] = {}
        self.cut: dict[str, tuple[str, str]] = {}
        self.info: dict[str, dict[str, Any]] = {}
        # device -> its worker process's instance token (hello_ok, pong), and when a new one was seen:
        # a worker restarted in less than dead_after_s is never silent, yet its deployments are gone
        self.instance: dict[str, str] = {}
        self.restarted_at: dict[str, float] = {}
        self.req_ids = itertools.count(1)
        self._last_trace: Trace | None = None  # the latest request's, whichever thread made it
        self._tl = threading.local()  # .trace: the calling thread's latest request's (last_trace)
        self.recoveries: list[RecoveryEvent] = []
        # a membership change that leaves the active deployment whole (a device came back, or one
        # it does not use died) is re-planned and built in the background while requests go on
        # on the active plan; so are the failover plans for a new membership (failover=True)
        self.failover = bool(failover and replan)
        self._inflight: set[str] = set()  # deployments being built (undeployed if the session closes)
        self._bg_done: queue.SimpleQueue[_Built] = queue.SimpleQueue()
        self._bg_target: frozenset[str] | None = None  # the membership the latest background job plans for
        self._bg_plans: set[str] = set()  # plans (JSON) a background job is building now
        self.stop = threading.Event()
        self._closing = False
        self._membership_changed = threading.Event()
        self._loop_beat = time.monotonic()
        self.io = threading.Thread(target=self._loop, daemon=True, name="coord-io")
        self.io.start()
        if prepare is None and adapter is not None and hasattr(adapter, "plans_to_prepare"):
            prepare = list(adapter.plans_to_prepare())
        if self.failover:
            # the plan without each device but the source, built now: a death then switches to it
            # instead of planning and building after the failure
            prepare = [*(prepare or []), *(self._replanned(cluster.without(d))
                                          for d in plan.devices_used_names() if d != plan.source)]
        main_key = plan.to_json()
        prepared = list({p.to_json(): p for p in (prepare or []) if p.to_json() != main_key}.values())
        if keep_deployments is None:
            self.keep_deployments = len(prepared) + 1 if prepared else 0
        prepared = prepared[-self.keep_deployments:] if self.keep_deployments else []
        try:
            devices = list(dict.fromkeys([*self.plan.devices_used_names(),
                                          *(d for p in prepared for d in p.devices_used_names())]))
            for dev in devices:
                self._connect(dev)
            self._hello(devices)
            if prepared:
                t0 = time.monotonic()
                for p in prepared:
                    if set(p.devices_used_names()) & self.dead:
                        continue  # without a device that went away while an earlier one was built
                    try:
                        self._deploy(p, activate=False)
                    except DeviceWentAway as e:  # as in the first deploy: left out, not the end of the run
                        self._went_away(e)
                self.prepare_s = time.monotonic() - t0
                log.info("prepared %d plans in %.1f s", len(prepared), self.prepare_s)
                # the bandwidth trace starts when the session is ready, not before the builds
                # (the main deploy below re-shapes every worker's links with the new t0)
                self.link_trace = self._load_link_trace()
            self._deploy_first()
        except BaseException:
            self.close()
            raise
        # nothing was pinged while the plan deployed: a device that finished its build early
        # has been silent since its deploy_ok, which says nothing about its health
        now = time.monotonic()
        for dev in self.alive:
            self.last_seen[dev] = max(self.last_seen.get(dev, now), now)
        self.hb = threading.Thread(target=self._heartbeat, daemon=True, name="coord-hb")
        self.hb.start()
        # a session never closed (dropped in a notebook, a script that forgot) is closed at exit, before
        # the local workers stop (atexit runs last-registered first): no "declared dead" lines then
        atexit.register(self._close_at_exit)

    def _close_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- plumbing -----------------------------------------------------------------
    def _connect(self, dev: str) -> None:
        if dev not in self.addresses:
            raise DeviceUnreachable(f"device {dev!r} has no address; is it in the cluster file?")
        self.ep.connect(dev, self.addresses[dev])

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._loop_beat = time.monotonic()  # the heartbeat checks that pongs are being read
            m = self.ep.recv(50)
            if m is None:
                continue
            if isinstance(m, BadMessage):
                log.warning("malformed message from %s: %s", m.sender, m.error)
                continue
            try:
                self._dispatch(m)
            except Exception:
                log.exception("coordinator failed to handle %s", m.header.get("kind"))

    def _dispatch(self, m: Message) -> None:
        h = m.header
        kind = h["kind"]
        self.last_seen[m.sender] = time.monotonic()
        if kind == "pong":
            self.peer_building[m.sender] = int(h.get("building", 0)) > 0
            self._note_instance(m.sender, h.get("instance"))
            down = {str(p): float(a) for p, a in (h.get("down") or {}).items()
                    if p in self.addresses and isinstance(a, (int, float)) and not isinstance(a, bool)}
            with self.lock:
                self.links_down[m.sender] = down
                for c, (rep, peer) in list(self.cut.items()):  # the reporter reaches the peer again
                    if rep == m.sender and peer not in down:
                        del self.cut[c]
                        log.warning("%s reaches %s again: %s can be used again", rep, peer, c)
                if m.sender in self.cut:
                    return
                if m.sender in self.dead:
                    self.dead.discard(m.sender)
                    self._membership_changed.set()
                self.alive.add(m.sender)
            return
        if kind in ("hello_ok", "deploy_ok"):
            key = (kind, m.sender if kind == "hello_ok" else f"{h['dep']}/{m.sender}")
            asked = h.get("asked") if kind == "hello_ok" else None
            if asked and asked != m.sender and asked in self.addresses:  # two addresses swapped
                f = self.waiters.pop(("hello_ok", asked), None)
                if f is not None:
                    f.set_exception(DeviceUnreachable(
                        f"the worker at {self.addresses[asked]} (cluster device {asked}) is named {m.sender!r}; fix "
                        f"the address of {asked} in the cluster file, or start that worker with --name {asked}"))
                return
            if kind == "hello_ok":
                self.info[m.sender] = dict(h)
                self._note_instance(m.sender, h.get("instance"))
            f = self.waiters.pop(key, None)
            if f is not None:
                f.set_result(dict(h))
            return
        if kind == "result":
            with self.lock:
                p = self.pending.get((h["dep"], int(h["req"])))
            if p is None:
                return  # a late result of a cancelled attempt
            arr = np.array(wire.decode_tensor(h, m.frames))  # copy out of the zmq frame
            p.t_result_ms = time.time() * 1e3
            if not p.fut.done():
                p.fut.set_result(torch.from_numpy(arr))
            return
        if kind == "trace":
            with self.lock:
                p = self.pending.get((h["dep"], int(h["req"])))
            if p is not None:
                p.traces[h["device"]] = dict(h)
                if len(p.traces) >= len(p.devices):
                    p.traced.set()
            return
        if kind == "error":
            dep, req = h.get("dep"), h.get("req")
            if req is not None and dep is not None:
                with self.lock:
                    p = self.pending.get((dep, int(req)))
                if p is not None and h.get("code") == "no_deployment" and not p.fut.done():
                    # it had the deployment (deploy_ok) and has it no more: a new process on its
                    # address, whose pong with a new instance token may come only later
                    self._restarted(m.sender, None)
                    return
                if p is not None and not p.fut.done():
                    p.fut.set_exception(RuntimeFailure(f"{m.sender}: {h['msg']}"))
                    return
            for key in list(self.waiters):
                if key[1] in (m.sender, f"{dep}/{m.sender}"):
                    f = self.waiters.pop(key)
                    f.set_exception(RuntimeFailure(f"{m.sender}: {h['msg']}"))
                    return
            if (self._closing or h.get("code") in ("aborted", "no_deployment")) and (
                    "undeployed" in str(h["msg"]) or "unknown deployment" in str(h["msg"])):
                # a request of a deployment the session dropped (closing, or a re-plan replaced it):
                # expected, not worth a line (QA: "error from dX … undeployed" during every recovery)
                log.debug("error from %s about a dropped deployment: %s", m.sender, h["msg"])
                return
            log.warning("error from %s: %s", m.sender, h["msg"])

    def _note_instance(self, dev: str, inst: Any) -> None:
        """A device answering with a new instance token restarted (``coinfer up`` starts a worker that
        died again at once): the requests and builds it was part of fail over, and the deployments
        built on it before are lost (``_lost``)."""
        if not inst:
            return
        with self.lock:
            prev = self.instance.get(dev)
            self.instance[dev] = str(inst)
            if prev is None or prev == inst:
                return
            if prev == RESTARTED:  # already told by a lost deployment; this is the new process
                return
            self._restarted(dev, str(inst))

    def _restarted(self, dev: str, inst: str | None) -> None:
        """``dev`` is a new process (``inst``; None: not known yet — the next token is its)."""
        with self.lock:
            self.instance[dev] = inst or RESTARTED
            self.restarted_at[dev] = time.monotonic()
            log.warning("device %s restarted: the deployments it held are gone", dev)
            self._fail_over(dev, "restarted")

    def _fail_over(self, dev: str, what: str) -> None:
        """The requests and builds ``dev`` takes part in fail (DeviceUnreachable: they are retried
        after a re-plan); the membership changed. Under ``self.lock``."""
        for p in self.pending.values():
            if dev in p.devices and not p.fut.done():
                p.fut.set_exception(DeviceUnreachable(f"device {dev} {what}"))
        for (kind, key), f in list(self.waiters.items()):
            if kind == "deploy_ok" and key.endswith(f"/{dev}") and not f.done():
                f.set_exception(DeviceUnreachable(f"device {dev} {what} while deploying"))
        self._membership_changed.set()

    def _restarted_in(self, d: _Deployment) -> list[str]:
        """The devices of ``d`` that restarted since it was built (its parts there are gone)."""
        return [x for x in d.devices if self.restarted_at.get(x, -1.0) >= d.t_sent]

    def _lost(self, d: _Deployment | None) -> bool:
        """``d`` was built on a device that restarted since."""
        return d is not None and bool(self._restarted_in(d))

    def _usable(self, d: _Deployment) -> bool:
        """``d`` can serve now: every device of it alive and none restarted since it was built."""
        return set(d.devices) <= self.alive and not self._lost(d)

    def _wait(self, kind: str, key: str, send: Callable[[], None], timeout_s: float) -> dict[str, Any]:
        f: Future[dict[str, Any]] = Future()
        self.waiters[(kind, key)] = f
        send()
        try:
            return f.result(timeout=timeout_s)
        finally:
            self.waiters.pop((kind, key), None)

    def _hello(self, devices: list[str], timeout_s: float | None = None) -> None:
        timeout_s = self.hello_timeout_s if timeout_s is None else timeout_s
        # nothing listening at a device's address: say so now instead of after the whole timeout
        refused = [d for d in devices if tcp_refuses(self.addresses[d])]
        if refused:
            raise unreachable({d: self.addresses[d] for d in refused}, refused=True)
        futs = {}
        for dev in devices:
            f: Future[dict[str, Any]] = Future()
            self.waiters[("hello_ok", dev)] = f
            futs[dev] = f
            self.ep.send(dev, {"kind": "hello", "coord": self.ep.address, "device": dev})
        missing: list[str] = []
        gone: list[str] = []
        t_end = time.monotonic() + timeout_s  # for all of them together, not each in turn
        for dev, f in futs.items():
            try:
                while True:  # a device whose process dies meanwhile is given up at once, not at t_end
                    try:
                        f.result(timeout=max(0.0, min(0.25, t_end - time.monotonic())))
                        break
                    except FutureTimeout:
                        since = self.ep.link_down_since(dev)
                        if time.monotonic() >= t_end or (since is not None
                                                         and time.monotonic() - since > self.dead_after_s):
                            raise
                self.alive.add(dev)
                self.last_seen[dev] = time.monotonic()
            except DeviceUnreachable:
                raise
            except Exception:  # noqa: BLE001
                (gone if self.ep.link_down_since(dev) is not None else missing).append(dev)
            finally:
                if self.waiters.get(("hello_ok", dev)) is f:  # unanswered: forget it
                    self.waiters.pop(("hello_ok", dev), None)
        if gone:
            # something still listens where the connection closed: not a worker that died, but one that
            # hung up on us — a CURVE handshake it refused (keys), or another device's worker (QA: wrong
            # keys and swapped addresses were told "the worker stopped or died; start it again")
            listening = [d for d in gone if not tcp_refuses(self.addresses[d])]
            if listening:
                where = ", ".join(f"{d} at {self.addresses[d]}" for d in listening)
                if self.keys is not None:
                    raise DeviceUnreachable(
                        f"no answer from {where}: a worker listens there but closed the connection — the CURVE keys "
                        f"do not match (the worker's public/ lacks this coordinator.key, or its keys come from another "
                        f"coinfer keys run), or the address is another device's (swapped in the cluster file)")
                raise DeviceUnreachable(
                    f"no answer from {where}: something listens there but closed the connection — a worker started "
                    f"with --keys (give the cluster file security: {{auth: curve, keys: DIR}}), or another program")
            raise DeviceUnreachable("no answer from " + ", ".join(f"{d} at {self.addresses[d]}" for d in gone)
                                    + (": its connection closed" if len(gone) == 1 else ": their connections closed")
                                    + " (the worker stopped or died); start it again")
        if missing:
            raise unreachable({d: self.addresses[d] for d in missing})

    def _greet(self, devices: list[str]) -> None:
        """Connect to and hello the devices not yet alive; one that does not answer is dead."""
        for d in devices:
            if d in self.alive:
                continue
            self._connect(d)
            try:
                self._hello([d])
            except DeviceUnreachable:
                with self.lock:
                    self._declare_dead(d, time.monotonic())
                    self._membership_changed.set()
                raise

    def _load_link_trace(self) -> dict[str, Any] | None:
        """The cluster's bandwidth trace for the workers' shapers; trace time 0 is now (issue 6)."""
        net = self.cluster.network
        if not (net.shape and net.trace):
            return None
        from .shaping import load_trace_csv

        return {"t0": time.time(), "rows": [[t, r] for t, r in load_trace_csv(net.trace)]}

    def _links(self, dev: str, peers: list[str]) -> dict[str, list[float]]:
        if not self.cluster.network.shape:
            return {}
        out = {}
        local = {d.name for d in self.cluster.devices if d.is_local}
        for p in peers:
            if p != dev and {dev, p} <= local:  # real links (tcp:// addresses) are never slowed down
                bw, lat = self.cluster.link(dev, p)
                out[p] = [bw, lat]
        return out

    def _deploy(self, plan: Plan, timeout_s: float = 180.0, *, activate: bool = True,
                keep_old: bool = False) -> None:
        """Build ``plan`` on its devices; ``activate``: requests run on it from now on (the previous
        deployment is kept built when ``keep_old``, else undeployed); else it is only kept built."""
        new = self._build(plan, timeout_s)
        if not activate:
            self._keep(new)
            return
        self._activate(new, keep_old=keep_old)

    def _build(self, plan: Plan, timeout_s: float = 180.0) -> _Deployment:
        """Build ``plan`` on its devices and return it, not yet used. Safe from a background thread:
        it touches only the endpoint (thread-safe) and its own waiters."""
        dep = secrets.token_hex(6)
        with self.lock:
            self.deploys += 1
            self._inflight.add(dep)
        try:
            return self._build_as(dep, plan, timeout_s)
        finally:
            with self.lock:
                self._inflight.discard(dep)

    def _build_as(self, dep: str, plan: Plan, timeout_s: float) -> _Deployment:
        devs = plan.devices_used_names()
        text = plan.to_json()
        peers = {d: self.addresses[d] for d in devs}
        # each device's execution backend / precision (cluster file), checked against what it has installed
        choice = {}
        for dev in devs:
            spec = self.cluster.device(dev) if dev in self.cluster.names else None
            be, prec = (spec.backend, spec.precision) if spec is not None else ("auto", "fp32")
            check_backend(be, prec, installed=self.info.get(dev, {}).get("backends"), where=f"device {dev}")
            choice[dev] = (be, prec)
        futs = {}
        t_sent = time.monotonic()
        for dev in devs:
            f: Future[dict[str, Any]] = Future()
            self.waiters[("deploy_ok", f"{dep}/{dev}")] = f
            futs[dev] = f
            self.ep.send(dev, {"kind": "deploy", "dep": dep, "plan": text, "device": dev, "peers": peers,
                               "coord": self.ep.address, "seed": self.seed, "links": self._links(dev, devs), "link_trace": self.link_trace,
                               "backend": choice[dev][0], "precision": choice[dev][1]})
        t_end = time.monotonic() + timeout_s
        try:
            built = self._await_builds(futs, t_end)
        except DeviceUnreachable:
            self._abandon(dep)
            raise
        except _BuildFailed as e:
            self._abandon(dep)
            if isinstance(e.error, RuntimeFailure):
                raise RuntimeFailure(f"deploying on {e.device} failed: {e.error}") from None
            raise DeviceUnreachable(f"deploying on {e.device} timed out after {timeout_s:.0f} s") from None
        # device -> backends computing its parts, and its memory after the build (deploy_ok)
        return _Deployment(plan, dep, devs, {d: list(built[d].get("backends") or []) for d in devs},
                           {d: dict(built[d].get("memory") or {}) for d in devs}, t_sent)

    def _deploy_first(self) -> None:
        """Build the first plan. A device other than the source that dies or stops answering while it
        builds is declared dead and the plan re-planned without it (as after a death during a request;
        it ended the run before), unless re-planning is off."""
        t_fail: float | None = time.monotonic() if self.dead else None  # one went away in the prepared builds
        while True:
            try:
                if set(self.plan.devices_used_names()) & self.dead:
                    self._plan = self._replanned(self._sub(self._live()))
                    self._greet(self.plan.devices_used_names())
                    continue
                kept = self._take_kept(self.plan) if t_fail is not None else None  # failover: prepared
                if kept is not None:
                    self._activate(kept)
                else:
                    self._deploy(self.plan)
            except DeviceWentAway as e:
                self._went_away(e)
                t_fail = time.monotonic() if t_fail is None else t_fail
                continue
            if t_fail is not None:
                self._membership_changed.clear()
                self.recoveries.append(RecoveryEvent(time.time(), sorted(self.dead),
                                                     (time.monotonic() - t_fail) * 1e3, 0.0,
                                                     self.plan.devices_used_names(), "rebuilt"))
            return

    def _went_away(self, e: DeviceWentAway) -> None:
        """A device went away while the session started: declared dead (the plans are made without it),
        unless re-planning is off or it is the source (then ``e`` is raised)."""
        dev = e.device
        if not self.replan_enabled or dev is None or dev == self.plan.source:
            raise e
        with self.lock:
            self._declare_dead(dev, time.monotonic())
        log.warning("%s; re-planning without it", e)

    def _declare_dead(self, dev: str, now: float) -> None:
        """``dev`` is dead from ``now`` on (alive again when it answers a ping). Under ``self.lock``."""
        self.alive.discard(dev)
        self.dead.add(dev)
        self.dead_at[dev] = now

    def _activate(self, d: _Deployment, *, keep_old: bool = False) -> None:
        """Make ``d`` the deployment requests run on; the one it replaces is kept built
        (``keep_old``: ``keep_deployments`` allowing) or undeployed."""
        old, self.current, self._plan = self.current, d, d.plan
        if old is not None:
            if keep_old:
                self._keep(old)
            else:
                self._undeploy(old.dep)

    # the active deployment, read-only (``_activate`` replaces it as a whole)
    @property
    def plan(self) -> Plan:
        """The plan requests run on (before the first deployment: the plan given)."""
        return self._plan

    @property
    def dep(self) -> str | None:
        return None if self.current is None else self.current.dep

    @property
    def deployed_on(self) -> list[str]:
        return [] if self.current is None else self.current.devices

    @property
    def backends(self) -> dict[str, list[str]]:
        """device -> the backends computing its parts (from its deploy_ok)."""
        return {} if self.current is None else self.current.backends

    @property
    def memory(self) -> dict[str, dict[str, Any]]:
        """device -> {weights_bytes, rss_bytes} after the build."""
        return {} if self.current is None else self.current.memory

    def _keep(self, d: _Deployment) -> None:
        if self.keep_deployments <= 0:
            self._undeploy(d.dep)
            return
        key = d.plan.to_json()
        prev = self.kept.pop(key, None)
        if prev is not None and prev.dep != d.dep:
            self._undeploy(prev.dep)
        self.kept[key] = d
        self._drop_kept(self.keep_deployments)

    def _drop_kept(self, keep: int = 0) -> None:
        """Undeploy the oldest kept deployments until ``keep`` remain."""
        while len(self.kept) > keep:
            _, gone = self.kept.popitem(last=False)
            self._undeploy(gone.dep)

    def _undeploy(self, dep: str) -> None:
        for d in list(self.alive):
            try:
                self.ep.send(d, {"kind": "undeploy", "dep": dep})
            except Exception:  # best effort: the device may be gone
                log.debug("undeploy %s on %s not sent", dep, d, exc_info=True)

    def _abandon(self, dep: str) -> None:
        """A deployment that failed on some device: forget its waiters, free it on the others."""
        for key in [k for k in list(self.waiters) if k[0] == "deploy_ok" and k[1].startswith(f"{dep}/")]:
            self.waiters.pop(key, None)
        self._undeploy(dep)

    def _await_builds(self, futs: dict[str, Future[dict[str, Any]]], t_end: float) -> dict[str, dict[str, Any]]:
        """Every device's deploy_ok, waiting until ``t_end`` — or less for a device whose connection has
        been down for ``dead_after_s`` (its process died: before the heartbeat runs, nothing else would
        tell), or that has not answered a ping for ``BUILD_GRACE`` × ``dead_after_s`` (stopped or hung:
        the first deploy waited the whole 180 s for a SIGSTOPped device; a building worker answers
        pings). All devices are watched at once (one waited for in turn hid another's death behind its
        build). A failed device raises DeviceWentAway, a worker's error or the timeout ``_BuildFailed``."""
        pinging = getattr(self, "hb", None) is None  # before the heartbeat runs, ping from here
        last_ping = 0.0
        seq = itertools.count()
        built: dict[str, dict[str, Any]] = {}
        while len(built) < len(futs):
            left = t_end - time.monotonic()
            for dev, f in futs.items():
                if dev not in built and f.done():
                    try:
                        built[dev] = f.result()
                    except DeviceUnreachable:
                        raise
                    except Exception as e:  # noqa: BLE001 - the worker's error
                        raise _BuildFailed(dev, e) from None
            waiting = [d for d in futs if d not in built]
            if not waiting:
                break
            if left <= 0:
                raise _BuildFailed(waiting[0], TimeoutError())
            wait_futures([futs[d] for d in waiting], timeout=max(0.0, min(left, 0.25)), return_when=FIRST_COMPLETED)
            now = time.monotonic()
            if pinging and now - last_ping >= self.heartbeat_s:
                last_ping = now
                # every device, not only those still building: one that finished early heard nothing
                # until the last one was built, and its worker's lease (60 s) then dropped the fresh
                # deployment on a slow 8-device start (QA stop 26: a healthy device "restarted")
                for dev in sorted(set(futs) | self.alive):
                    self._ping(dev, next(seq))
            starved = now - self._loop_beat > self.dead_after_s / 2  # our pongs unread: judge nobody
            for dev in waiting:
                since = self.ep.link_down_since(dev)
                if since is not None and now - since > self.dead_after_s:
                    raise DeviceWentAway(f"device {dev} went away while deploying (its connection closed "
                                         f"{now - since:.1f} s ago); run again once it is back (coinfer up "
                                         f"restarts local devices) or leave it out of the cluster", dev)
                silent = now - self.last_seen.get(dev, now)
                if pinging and silent > self.dead_after_s * BUILD_GRACE and not starved:
                    raise DeviceWentAway(f"device {dev} stopped answering while deploying (nothing for "
                                         f"{silent:.1f} s): is it stopped, hung or overloaded? (--dead-after-s / "
                                         f"Session(dead_after_s=…) {self.dead_after_s:g} × {BUILD_GRACE:g} while "
                                         f"building)", dev)
        return built

    def _ping(self, dev: str, seq: int) -> None:
        try:
            self.ep.send(dev, {"kind": "ping", "seq": seq, "t": time.time()})
        except Exception:  # a missed ping is what the heartbeat (and a first deploy's wait) detects
            log.debug("ping to %s not sent", dev, exc_info=True)

    def _heartbeat(self) -> None:
        seq = itertools.count()
        last = time.monotonic()
        while not self.stop.wait(self.heartbeat_s):
            now = time.monotonic()
            # this process starved (a loaded machine): its view of the devices is stale, judge nobody
            starved = now - last > 2 * self.heartbeat_s or now - self._loop_beat > self.dead_after_s / 2
            last = now
            known = set(self.addresses) & ({d for d in self.plan.devices} | self.alive | self.dead)
            for dev in known:
                self._ping(dev, next(seq))
            if starved:
                continue
            # a device building a deployment may answer pings late (capture and backend builds
            # are CPU work in a small quota): it gets BUILD_GRACE x longer, not forever, so that a
            # device dying while it builds is still declared dead (and its deploy fails over)
            # — its own deployment, or (its last pong says) another coordinator's
            building = {k[1].split("/", 1)[1] for k in list(self.waiters) if k[0] == "deploy_ok"}
            building |= {d for d, b in list(self.peer_building.items()) if b}
            # ... unless its connection has dropped: a process that died closes it at once, and
            # then "building" in its last pong is stale (the grace would only delay its death)
            building = {d for d in building if self.ep.link_down_since(d) is None}
            with self.lock:
                for dev in list(self.alive):
                    limit = self.dead_after_s * (BUILD_GRACE if dev in building else 1.0)
                    if now - self.last_seen.get(dev, now) > limit:
                        self._declare_dead(dev, now)
                        log.warning("device %s declared dead (no heartbeat for %.1f s)", dev,
                                    now - self.last_seen.get(dev, now))
                        self._fail_over(dev, "died")
                self._check_links(now)

    def _check_links(self, now: float) -> None:
        """A link of the active deployment that one device reports down for ``LINK_BLOCKED_S`` (at least
        2 × ``dead_after_s``) while both ends answer heartbeats — and neither died or restarted since — is
        blocked (a firewall or a route between the devices, not a death):
        its requests would wait for the request timeout. One end — not the source — is left out as if
        dead and the session re-plans without it; it is used again when the link is back. Under
        ``self.lock``."""
        if self.current is None:
            return
        used = set(self.current.devices)
        limit = max(2 * self.dead_after_s, LINK_BLOCKED_S)
        for w, down in list(self.links_down.items()):
            for p, age in down.items():
                if w not in self.alive or p not in self.alive or not {w, p} <= used or age < limit:
                    continue
                if now - self.last_seen.get(p, 0.0) > self.dead_after_s:
                    continue  # the peer is silent too: a death, judged by the heartbeat
                since = now - age
                if any(t >= since - self.dead_after_s for t in (self.dead_at.get(p, -math.inf),
                                                                self.restarted_at.get(p, -math.inf),
                                                                self.dead_at.get(w, -math.inf),
                                                                self.restarted_at.get(w, -math.inf))):
                    # an end died or restarted since (coinfer up restarts a killed worker on its address):
                    # the connection is coming back, not blocked (QA: restarts were called blocked links)
                    continue
                drop = p if p != self.plan.source else w
                other = w if drop == p else p
                self.cut[drop] = (w, p)
                self._declare_dead(drop, now)
                log.warning("the link between %s and %s is blocked (%s has not reached %s for %.1f s while "
                            "both answer): leaving %s out (each device must reach the others' worker ports)",
                            w, p, w, p, age, drop)
                self._fail_over(drop, f"cannot reach {other} (a blocked link)")

    # -- requests ---------------------------------------------------------------------
    @property
    def last_trace(self) -> Trace | None:
        """The timeline of the calling thread's latest request (of any thread's, in a thread that
        made none): threads calling one session at once each get their own request's."""
        mine: Trace | None = getattr(self._tl, "trace", None)
        return mine if mine is not None else self._last_trace

    @last_trace.setter
    def last_trace(self, tr: Trace | None) -> None:
        self._tl.trace = tr
        self._last_trace = tr

    @property
    def closed(self) -> bool:
        """close() was called (requests are refused)."""
        return self.stop.is_set() or self._closing

    def __call__(self, x: torch.Tensor, *, attempts: int = 4) -> torch.Tensor:
        """One inference of ``x`` (a tensor or array of the plan's input shape; cast to float32)
        over the workers; re-planned and retried up to ``attempts`` times when devices fail."""
        if self.closed:
            raise RuntimeFailure("this session is closed; deploy the plan again (coinfer.deploy)")
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1 (got {attempts})")
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(np.asarray(x))
            except Exception as e:  # noqa: BLE001 - say what was given
                raise TypeError(f"input must be a tensor or an array of shape {list(self.plan.model.input_shape)} "
                                f"(got {type(x).__name__}: {e})") from None
        x = x.detach().to(torch.float32).contiguous()
        if tuple(x.shape) != tuple(self.plan.model.input_shape):
            raise ValueError(f"input shape {list(x.shape)} != plan input {list(self.plan.model.input_shape)}")
        t_first = time.monotonic()
        failure: BaseException | None = None
        for attempt in range(attempts):
            try:
                # one thread re-plans at a time, and the others wait for it here instead of spending
                # their attempts on the plan being replaced (QA: with 8 devices a re-plan takes 5-8 s,
                # and concurrent callers failed "after 4 attempts: devices ['d3'] are dead")
                with self._replan_lock:
                    self._collect_background()
                    if self._membership_changed.is_set() and self.replan_enabled:
                        if failure is None and self._active_whole():
                            self._replan_in_background()
                        else:
                            self._replan(t_first if failure else None)
                    if self.adapter is not None and failure is None:
                        new = self.adapter.before_request(self)
                        gone = set(new.devices_used_names()) & self.dead if new is not None else set()
                        if gone:  # an adapter that did not follow a re-plan: keep the running plan
                            log.warning("the adapter's plan uses dead devices %s; not switched", sorted(gone))
                        elif new is not None and new.to_dict() != self.plan.to_dict():
                            self.switch(new)
                y = self._attempt(x)
                if self.adapter is not None and self.last_trace is not None:
                    self.adapter.after_request(self, self.last_trace)
                if failure is not None and self.recoveries:
                    self.recoveries[-1].recovery_ms = (time.monotonic() - t_first) * 1e3
                return y
            except DeviceUnreachable as e:
                failure = e
                if not self.replan_enabled:
                    raise
                self._wait_dead_detected()
                continue
        raise RuntimeFailure(f"request failed after {attempts} attempts: {failure}")

    def _wait_dead_detected(self) -> None:
        deadline = time.monotonic() + self.dead_after_s + 2 * self.heartbeat_s
        while time.monotonic() < deadline and not self._membership_changed.is_set():
            time.sleep(0.02)

    def _attempt(self, x: torch.Tensor) -> torch.Tensor:
        assert self.dep is not None
        req = next(self.req_ids)
        devs = set(self.deployed_on)
        dead = devs & self.dead
        if dead:
            raise DeviceUnreachable(f"devices {sorted(dead)} are dead")
        if self._lost(self.current):
            raise DeviceUnreachable("a device restarted since the plan was built")
        p = _Pending(self.dep, req, devs)
        with self.lock:
            self.pending[(self.dep, req)] = p
        try:
            meta, frames = wire.encode_tensor(x.numpy(), "raw", None)
            p.t_send_ms = time.time() * 1e3
            src = self.plan.source
            self.ep.send(src, {"kind": "run", "dep": self.dep, "req": req, **meta}, frames)
            for d in devs - {src}:
                self.ep.send(d, {"kind": "run", "dep": self.dep, "req": req})
            try:
                y = p.fut.result(timeout=self.timeout_s)
            except DeviceUnreachable:
                self._cancel(p)
                raise
            except TimeoutError:
                self._cancel(p)
                stuck = sorted(devs - set(p.traces))
                raise RuntimeFailure(
                    f"request {req} timed out after {self.timeout_s:g} s"
                    + (f": {', '.join(stuck)} did not finish while every device answered heartbeats — a link "
                       f"between devices may be blocked (each device must reach the others' worker ports, not "
                       f"only the coordinator); coinfer run --request-timeout-s (Session(timeout_s=…)) bounds the wait" if stuck else "")) from None
            except RuntimeFailure:
                self._cancel(p)
                if self._membership_changed.is_set() or (devs & self.dead) or self._lost(self.current):
                    raise DeviceUnreachable("a device failed during the request") from None
                raise
            # traces follow the result closely; wait a moment for all of them
            p.traced.wait(2.0)
            self.last_trace = self._trace(p)
            self._observe(self.last_trace)
            return y
        finally:
            with self.lock:
                self.pending.pop((p.dep, req), None)

    def _cancel(self, p: _Pending) -> None:
        for d in p.devices & self.alive:
            try:
                self.ep.send(d, {"kind": "cancel", "dep": p.dep, "req": p.req})
            except Exception:  # best effort: the device may be gone
                log.debug("cancel of %s/%s on %s not sent", p.dep, p.req, d, exc_info=True)

    def _trace(self, p: _Pending) -> Trace:
        t = Trace(meta={"kind": "measured", "strategy": self.plan.strategy.name, "req": p.req,
                        "latency_ms": p.t_result_ms - p.t_send_ms, "devices": sorted(p.devices),
                        "cpu_modes": self.cpu_modes})
        for dev, tr in p.traces.items():
            for lane, name, s, e, args in tr["events"]:
                t.add(dev, lane, name, s - p.t_send_ms, e - p.t_send_ms, **args)
        return t

    def _observe(self, tr: Trace, min_bytes: int = 8192) -> None:
        """Record the transfer rate of every sizeable piece that crossed a link."""
        now = time.time()
        for e in tr.events:
            peer = e.args.get("peer")
            nb = int(e.args.get("bytes", 0))
            if e.lane == "recv" and peer and nb >= min_bytes and e.dur_ms > 0:
                self.link_samples.append(LinkSample(now, str(peer), e.device, nb, e.dur_ms))

    def observed_mbps(self, a: str | None = None, b: str | None = None, last: int = 8) -> float | None:
        """Median transfer rate (Mbit/s) of the ``last`` samples on link a–b (any link if None).

        The rate includes the link latency and any queueing, as a planner sees it.
        """
        xs = [s.mbps for s in self.link_samples
              if a is None or {s.src, s.dst} == {a, b} or (b is None and a in (s.src, s.dst))]
        return statistics.median(xs[-last:]) if xs else None

    def switch(self, plan: Plan) -> None:
        """Run the next request on ``plan`` (between requests only). A plan deployed earlier in
        this session and still kept is reused at once; otherwise it is deployed now. The plan
        switched away from stays built (``keep_deployments``)."""
        with self.lock:
            busy = bool(self.pending)
        if busy:
            raise RuntimeFailure("switch() between requests only")
        key = plan.to_json()
        t_end = time.monotonic() + 180.0
        while key in self._bg_plans and time.monotonic() < t_end:  # being built: wait for that build
            time.sleep(0.01)
        self._collect_background()
        kept = self._take_kept(plan)
        if kept is not None:
            self._activate(kept, keep_old=True)
        else:
            self._greet(plan.devices_used_names())
            self._deploy(plan, keep_old=True)
        label = str(plan.strategy.params.get("config", plan.strategy.name))
        self.switches.append((time.time(), label))
        if self.failover:  # the plans prepared for the next death were the old plan's (stop 23)
            self._start_background(self._live(), replan=False)

    # -- re-planning ---------------------------------------------------------------------
    def _replanned(self, sub: Cluster) -> Plan:
        """The plan for the devices of ``sub``: ``replan_fn`` if given, else the adapter's
        ``replan_for`` if it has one (CoEdge's re-solve with the observed link rates), else the
        same strategy over them."""
        if self.replan_fn:
            return self.replan_fn(sub)
        hook = getattr(self.adapter, "replan_for", None)
        return hook(self, sub) if hook is not None else default_replan(self.plan, sub)

    def _replan(self, t_fail: float | None) -> None:
        self._membership_changed.clear()
        t0 = time.monotonic()
        live = self._live()
        # who was dead when the re-plan began: the record is written after the build (5-15 s at 8
        # devices), when coinfer up may have started the device again (QA: "all devices alive")
        dead_then = sorted(set(self.dead) | (set(self.cluster.names) - live))
        wait_s = max(5.0, 4 * self.dead_after_s)
        if self.plan.source not in live:
            # nothing runs without the source; coinfer up starts a killed worker again within seconds
            # (QA: the run failed although the source was back 0.2 s later) — wait a little for it
            t_end = time.monotonic() + wait_s
            while self.plan.source not in self._live() and time.monotonic() < t_end and not self.stop.is_set():
                time.sleep(0.05)
            live = self._live()
        if self.plan.source not in live:
            raise RuntimeFailure(f"the source device {self.plan.source} stopped answering for "
                                 f"{self.dead_after_s:g} s and did not come back within {wait_s:g} s (dead or "
                                 f"stalled); nothing can run without it — if it stalls, raise --dead-after-s "
                                 f"(Session(dead_after_s=…))")
        sub = self._sub(live)
        new = self._replanned(sub)
        ready = self._take_kept(new)  # prepared for this failure (failover=True)
        # a device that restarted lost its parts of every plan built before: the plan without it,
        # if prepared, serves now while the plan with it is built in the background
        later = False
        restarted = [d for d in self._restarted_in(self.current) if d != self.plan.source] if self.current else []
        if ready is None and self.failover and len(restarted) == 1:
            alt = self._replanned(sub.without(restarted[0]))
            ready = self._take_kept(alt)
            if ready is not None:
                new, later = alt, True
        self._drop_kept()  # the others were built for the old membership
        how = "rebuilt"
        if ready is not None:
            how = "prepared"
            self._activate(ready)
        else:
            self._greet(new.devices_used_names())
            self._deploy(new)
        self.recoveries.append(RecoveryEvent(time.time(), dead_then, (time.monotonic() - t0) * 1e3,
                                             0.0, new.devices_used_names(), how, sorted(restarted),
                                             sorted(self.cut)))
        prep = self._adopt(new)
        log.warning("re-planned over %s in %.0f ms", new.devices_used_names(), (time.monotonic() - t0) * 1e3)
        if later:  # with the restarted device again, built in the background
            self._start_background(live, replan=True)
        elif self.failover or prep:  # the adapter's plans and the next failure's, for the devices left
            self._start_background(self._live(), replan=False, prepare=prep)

    def _take_kept(self, plan: Plan) -> _Deployment | None:
        """The kept deployment of ``plan`` if it can serve now (its devices alive, none restarted
        since it was built); a stale one is undeployed."""
        d = self.kept.pop(plan.to_json(), None)
        if d is not None and not self._usable(d):
            self._undeploy(d.dep)
            return None
        return d

    def _adopt(self, plan: Plan) -> list[Plan]:
        """Tell the adapter the session re-planned to ``plan`` (its ``on_replan``, if it has one);
        the adapter's plans for the new membership that are worth building now (``plans_to_prepare``,
        when deployments are kept)."""
        hook = getattr(self.adapter, "on_replan", None)
        if hook is None:
            return []
        hook(self, plan)
        wanted = getattr(self.adapter, "plans_to_prepare", None)
        if wanted is None or self.keep_deployments <= 0:
            return []
        have = {plan.to_json(), *self.kept}
        return [p for p in wanted() if p.to_json() not in have and not set(p.devices_used_names()) & self.dead]

    def _live(self) -> frozenset[str]:
        """The cluster's devices not declared dead."""
        with self.lock:
            return frozenset(d for d in self.cluster.names if d not in self.dead)

    def _sub(self, live: frozenset[str]) -> Cluster:
        """The cluster of the devices ``live``."""
        return self.cluster.without(*[d for d in self.cluster.names if d not in live])

    def _active_whole(self) -> bool:
        """Every device of the active deployment is alive (a membership change did not touch it)."""
        with self.lock:
            return self.current is not None and self._usable(self.current)

    def _replan_in_background(self) -> None:
        """A device came back (or one the active plan does not use died): plan and build for the new
        membership in a background thread; requests go on on the active plan meanwhile and move to
        the new one at the first request after it is built (``_collect_background``)."""
        self._membership_changed.clear()
        live = self._live()
        if live != self._bg_target:
            self._start_background(live, replan=True)

    def _start_background(self, live: frozenset[str], *, replan: bool, prepare: list[Plan] | None = None,
                          fallbacks: bool | None = None) -> None:
        """Build in a thread: the plan for membership ``live`` (``replan``), then ``prepare`` (an
        adapter's plans for the new membership), then the failover plans (``fallbacks``, default:
        ``failover``); each is handed to the request thread through ``_bg_done``."""
        fallbacks = self.failover if fallbacks is None else fallbacks
        self._bg_target = live
        sub = self._sub(live)
        source = self.plan.source
        active = self.plan.to_json()
        t0 = time.monotonic()

        def job() -> None:
            try:
                if replan:
                    new = self._replanned(sub)
                    dep = None
                    if new.to_json() != active and not self.stop.is_set():
                        self._greet(new.devices_used_names())
                        dep = self._build(new)
                    self._bg_done.put(_Built("replan", live, t0, active, dep))
                    used, base = new.devices_used_names(), new.to_json()
                else:
                    used, base = self.plan.devices_used_names(), active
                for p in prepare or []:
                    if self.stop.is_set() or self._bg_target != live:
                        break
                    key = p.to_json()
                    self._bg_plans.add(key)
                    try:
                        self._greet(p.devices_used_names())
                        self._bg_done.put(_Built("prepare", live, t0, base, self._build(p)))
                    finally:
                        self._bg_plans.discard(key)
                if fallbacks:
                    for d in used:
                        if d == source or self.stop.is_set() or self._bg_target != live:
                            continue
                        fb = self._replanned(sub.without(d))
                        if fb.to_json() in self.kept:  # built already (an adapter switched back)
                            continue
                        self._greet(fb.devices_used_names())
                        self._bg_done.put(_Built("fallback", live, t0, base, self._build(fb)))
            except BaseException as e:  # noqa: BLE001 - reported to the request thread
                self._bg_done.put(_Built("replan" if replan else "fallback", live, t0, active, error=e))

        threading.Thread(target=job, daemon=True, name="coord-background").start()

    def _bg_results(self) -> list[_Built]:
        """What background jobs handed over since the last call."""
        out = []
        while True:
            try:
                out.append(self._bg_done.get_nowait())
            except queue.Empty:
                return out

    def _collect_background(self) -> None:
        """Use what background jobs built for the current membership; free what is stale."""
        for b in self._bg_results():
            if b.error is not None:
                log.warning("background %s for %s failed: %s", b.purpose, sorted(b.live), b.error)
                if b.purpose == "replan" and b.live == self._bg_target and isinstance(b.error, DeviceUnreachable):
                    self._bg_target = None  # membership moved on meanwhile: plan again for the new one
                    self._membership_changed.set()
                continue
            d = b.dep
            # stale: built for another membership, on a device that restarted since, or for a plan
            # that is not the active one any more (an adapter switched meanwhile)
            # (an adapter's plans are prepared for whichever of them is active)
            fresh = (b.live == self._live() and (b.purpose == "prepare" or b.base == self.plan.to_json())
                     and (d is None or self._usable(d)))
            if not fresh or self.stop.is_set():
                if d is not None:
                    self._undeploy(d.dep)
                continue
            if b.purpose in ("fallback", "prepare"):
                assert d is not None
                self._keep(d)
                continue
            self._drop_kept()  # plans built for the old membership
            if d is not None:
                self._activate(d)
            ms = (time.monotonic() - b.t0) * 1e3
            self.recoveries.append(RecoveryEvent(time.time(), sorted(self.dead), ms, 0.0,
                                                 self.plan.devices_used_names(), "background",
                                                 cut=sorted(self.cut)))
            prep = self._adopt(self.plan)
            if prep:  # the failover plans come from the job that built this one
                self._start_background(self._live(), replan=False, prepare=prep, fallbacks=False)
            log.warning("re-planned over %s in the background (%.0f ms)", self.plan.devices_used_names(), ms)

    def close(self) -> None:
        """Undeploy everywhere and stop the local workers this session started; calls refuse after."""
        if self.stop.is_set():
            return
        atexit.unregister(self._close_at_exit)
        self._closing = True  # the workers' "aborted: undeployed" replies are the close's own doing
        try:
            for b in self._bg_results():  # built in the background and not taken yet
                if b.dep is not None:
                    self._undeploy(b.dep.dep)
            with self.lock:
                inflight = list(self._inflight)
            for dep in inflight:  # still building: the workers drop it when done
                self._undeploy(dep)
            if self.dep or self.kept or inflight:
                if self.dep:
                    self._undeploy(self.dep)
                self._drop_kept()
                time.sleep(0.02)
        finally:
            self.stop.set()
            self.io.join(timeout=2)
            self.ep.close()
            if self.local is not None:
                self.local.stop()

    def __enter__(self) -> Session:
        if self.closed:
            raise RuntimeFailure("this session is closed; deploy the plan again (coinfer.deploy)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def default_replan(plan: Plan, cluster: Cluster) -> Plan:
    """The same strategy over ``cluster``; ``proportional`` when it cannot plan there."""
    from ..modelspec import capture_model
    from ..strategies import PlanRequest, run

    cm = capture_model(plan.model.name, plan.model.input_shape)
    params = dict(plan.strategy.params)
    objective = params.pop("objective", "latency")
    deadline = params.pop("deadline_ms", None)
    try:
        req = PlanRequest(cm.graph, cluster, plan.model.name, None, objective, deadline, params)
        return run(plan.strategy.name, req).plan
    except Exception as e:  # noqa: BLE001 - any failure falls back to the simple planner
        log.warning("re-planning with %s failed (%s); using proportional", plan.strategy.name, e)
        return run("proportional", PlanRequest(cm.graph, cluster, plan.model.name)).plan


def check_plan_cluster(plan: Plan, cluster: Cluster) -> None:
    """PlanError unless every device of ``plan`` is in ``cluster`` and both have the same source."""
    from ..plan.plan import PlanError

    missing = [d for d in plan.devices if d not in cluster.names]
    if missing:
        raise PlanError(f"plan devices {missing} are not in the cluster {cluster.names}; re-plan for this cluster")
    if plan.source != cluster.source:
        raise PlanError(f"plan source {plan.source!r} differs from the cluster source {cluster.source!r}; "
                        f"re-plan for this cluster")


def _check_deploy(plan: Plan, cluster: Cluster, kw: dict[str, Any]) -> None:
    """What can be told before any worker starts (QA: each mistake cost ~5 s of starting workers, then
    a misleading hint): Session's options, the plan against the cluster, a model no worker can import."""
    import inspect

    options = set(inspect.signature(Session.__init__).parameters)
    bad = sorted(set(kw) - options - {"cpu_modes"})
    if bad:
        raise TypeError(f"deploy() got unknown option(s) {bad}; Session takes "
                        f"{sorted(options - {'self', 'plan', 'cluster'})}")
    check_plan_cluster(plan, cluster)
    if plan.model.name.startswith("__main__:"):
        from ..modelspec import ModelError

        raise ModelError(f"model {plan.model.name!r} is defined in the calling script: no worker can import it; "
                         f"move it to a module and plan 'module:{plan.model.name.split(':', 1)[1]}'")


def preflight(plan: Plan, cluster: Cluster, *, addresses: dict[str, str] | None = None, keys: str | None = None,
              start_local: bool = True, **kw: Any) -> tuple[str | None, Cluster | None]:
    """What :func:`deploy` can check before it starts a worker (``coinfer run`` calls it before it
    captures the model): the options, the plan against the cluster, the CURVE keys (the coordinator's
    and those of the local devices to start), and that something listens at each remote device's
    address. Returns the key directory and the local devices to start (None: none)."""
    _check_deploy(plan, cluster, kw)
    keys = cluster_keys(cluster, keys)
    if keys is not None:
        KeyStore(keys).secret("coordinator")
    sub = None
    if addresses is None and any(d.is_local for d in cluster.devices):
        if not start_local:
            raise DeviceUnreachable("the cluster has local devices; start them with coinfer up")
        used = set(plan.devices)
        sub = cluster.without(*[d.name for d in cluster.devices if d.name not in used and d.name != cluster.source])
        check_local_keys(sub, keys)
    remote = addresses if addresses is not None else {d.name: d.address for d in cluster.devices if not d.is_local}
    refused = {d: a for d, a in remote.items() if d in plan.devices_used_names() and tcp_refuses(a)}
    if refused:
        raise unreachable(refused, refused=True)
    return keys, sub


def deploy(plan: Plan, cluster: Cluster, *, addresses: dict[str, str] | None = None,
           keys: str | None = None, start_local: bool = True,
           checked: tuple[str | None, Cluster | None] | None = None, **kw: Any) -> Session:
    """Deploy ``plan`` on ``cluster``. Local devices are started as worker processes unless
    ``addresses`` gives where they already run (``coinfer up``). ``keys``: the CURVE key
    directory; by default the cluster's ``security.keys`` when ``security.auth`` is ``curve``.
    ``checked``: what :func:`preflight` returned for these arguments, when the caller ran it already
    (``coinfer run`` does, before it captures the model); else it runs here."""
    keys, sub = checked if checked is not None else preflight(plan, cluster, addresses=addresses, keys=keys,
                                                             start_local=start_local, **kw)
    local = None
    if addresses is None:
        addresses = {d.name: d.address for d in cluster.devices if not d.is_local}
        if sub is not None:
            local = LocalCluster(sub, keys=keys).start()
            addresses.update(local.addresses)
    try:
        modes = kw.pop("cpu_modes", None)  # the caller's (coinfer up's workers), unless started here
        return Session(plan, cluster, addresses, keys=keys, local=local,
                       cpu_modes=local.cpu_modes() if local else modes, **kw)
    except BaseException:
        if local is not None:
            local.stop()
        raise
