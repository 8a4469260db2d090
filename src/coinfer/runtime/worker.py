"""The worker daemon: ``coinfer worker --bind tcp://HOST:PORT --name NAME``.

One I/O loop owns the endpoint's inbound side and dispatches messages:
deployments are built in a background thread (heartbeats keep flowing), each
request's program runs in a thread pool (requests are keyed by deployment and
request id, so many deployments and concurrent requests never mix), and data
from peers lands in the request's mailbox. Anything malformed is answered
with an ``error`` and the worker keeps serving.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..execute.backends import available_backends
from . import dilation, wire
from .deployment import DeployError, Deployment, build, trim_heap
from .engine import run_program
from .shaping import LinkShaper
from .store import RequestAborted, RequestState
from .transport import BadMessage, Endpoint, Message

log = logging.getLogger("coinfer.worker")
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
warnings.filterwarnings("ignore", message="The given buffer is not writable")


#: what only the coordinator (with CURVE: the ``coordinator`` key) may send a worker; peers send it
#: data, tiles, probes and errors
CONTROL_KINDS = frozenset({"hello", "deploy", "undeploy", "cancel", "run", "shutdown", "profile"})

#: a deployment whose coordinator has sent nothing for this long is dropped (its session died without
#: undeploying — SIGKILL, SIGTERM, a crash: each left ≈ 47 MB and 3 sockets on every worker for good);
#: a live session pings every device each second (coordinator heartbeat)
LEASE_S = 60.0


class Worker:
    def __init__(self, name: str, ep: Endpoint, *, threads: int = 1, cpu_mode: str = "none",
                 request_timeout_s: float = 300.0, max_requests: int = 8, lease_s: float = LEASE_S) -> None:
        self.name = name
        self.lease_s = float(lease_s)
        self.heard: dict[str, float] = {}  # sender -> when its last message arrived (monotonic)
        self._reaped_at = time.monotonic()
        self.ep = ep
        self.cpu_mode = cpu_mode
        self.timeout_s = request_timeout_s
        torch.set_num_threads(max(1, threads))
        self.deployments: dict[str, Deployment] = {}
        self.requests: dict[tuple[str, int], RequestState] = {}
        self.finished: OrderedDict[tuple[str, int], float] = OrderedDict()
        self.peers: dict[str, tuple[str, Any]] = {}  # name -> (address, shaping key)
        self.pool = ThreadPoolExecutor(max_requests, thread_name_prefix=f"{name}-req")
        self.tile_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-tile")
        self.build_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-deploy")
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.errors = 0
        self.served = 0
        self._untrimmed = False  # a request finished since the heap was last trimmed
        self.instance = secrets.token_hex(8)  # this process (hello_ok, pong): a restart draws a new one
        self.queued: set[str] = set()  # deployment ids waiting for or in the build thread
        self.dropped: set[str] = set()  # ... of which undeployed before they were built: not kept

    @property
    def building(self) -> int:
        """Deployments being built or waiting to be (told in every pong)."""
        return len(self.queued)

    # -- sending (WorkerIO) -----------------------------------------------------
    def send_tensor(self, peer: str, header: dict[str, Any], value: torch.Tensor, *, shaped: bool) -> None:
        d = self.deployments.get(str(header.get("dep")))
        kind = header["kind"]
        codec, quant = "raw", None
        if d is not None and kind != "result":
            codec, quant = d.plan.wire_for(int(header["tensor"]))
        arr = value.detach().contiguous().numpy()
        meta, frames = wire.encode_tensor(arr, codec, quant)
        if header["kind"] == "data":
            header = {**header, "ts": time.time() * 1e3}
        # built here from validated fields: the schema check would be a third of the send's CPU
        self.ep.send(peer, {**header, **meta}, frames, shaped=shaped, check=False)

    def send_control(self, peer: str, header: dict[str, Any]) -> None:
        self.ep.send(peer, header)

    def _error(self, peer: str, msg: str, code: str, dep: str | None = None, req: int | None = None) -> None:
        self.errors += 1
        log.warning("%s: %s (%s)", self.name, msg, code)
        try:
            self.ep.send(peer, {"kind": "error", "msg": msg[:250], "code": code, "dep": dep, "req": req})
        except Exception:  # an unknown sender cannot be answered
            log.debug("%s: error reply to %r not sent", self.name, peer, exc_info=True)

    # -- loop -------------------------------------------------------------------
    def serve_forever(self) -> None:
        while not self.stop.is_set():
            m = self.ep.recv(100)
            if time.monotonic() - self._reaped_at >= 1.0:
                self._reap()
            if m is None:
                self._expire()
                continue
            try:
                self.handle(m)
            except Exception as e:
                log.exception("%s: handling a message failed", self.name)
                sender = m.sender if isinstance(m, (Message, BadMessage)) else ""
                self._error(sender, f"internal error: {type(e).__name__}: {e}", "internal")
        self.close()

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            for st in self.requests.values():
                st.abort("worker shutting down")
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.tile_pool.shutdown(wait=False, cancel_futures=True)
        self.build_pool.shutdown(wait=False, cancel_futures=True)
        self.ep.close()

    def _reap(self) -> None:
        """Undeploy the deployments of coordinators silent for ``lease_s`` (their sessions died)."""
        now = self._reaped_at = time.monotonic()
        with self.lock:
            gone = [dep for dep, d in self.deployments.items()
                    if now - self.heard.get(d.coord, now) > self.lease_s]
        for dep in gone:
            log.warning("%s: dropping deployment %s: its coordinator has been silent for %.0f s", self.name, dep,
                        self.lease_s)
            self._undeploy(dep)

    def _expire(self) -> None:
        """Idle housekeeping (no message for 100 ms): drop requests that never started; trim the heap."""
        now = time.monotonic()
        with self.lock:
            for key, st in list(self.requests.items()):
                if not st.started and now - st.created > self.timeout_s:
                    st.abort("never started")
                    self.requests.pop(key, None)
                    self._finish(key)
            idle = self._untrimmed and not self.requests
            if idle:
                self._untrimmed = False
        if idle:
            # a request's activations and messages leave freed heap that glibc keeps (≈ 12-15 MB):
            # hand it back while idle, never between the messages of a request
            trim_heap()

    def _finish(self, key: tuple[str, int]) -> None:
        self._untrimmed = True
        self.finished[key] = time.monotonic()
        while len(self.finished) > 4096:
            self.finished.popitem(last=False)

    def _state(self, dep: str, req: int) -> RequestState | None:
        key = (dep, req)
        with self.lock:
            if key in self.finished or dep not in self.deployments:
                return None  # late message for a finished / cancelled request, or no such deployment
            st = self.requests.get(key)
            if st is None:
                st = RequestState(dep, req)
                self.requests[key] = st
            return st

    def handle(self, m: Message | BadMessage) -> None:
        if isinstance(m, BadMessage):
            self._error(m.sender, f"malformed message: {m.error}", "bad_message")
            return
        h = m.header
        kind = h["kind"]
        self.heard.pop(m.sender, None)
        self.heard[m.sender] = time.monotonic()  # at the end: the oldest sender first
        if len(self.heard) > 4096:  # bounded: the oldest senders go first
            self.heard.pop(next(iter(self.heard)))
        fn = getattr(self, f"on_{kind}", None)
        if fn is None:
            self._error(m.sender, f"a worker does not accept {kind!r} messages", "bad_kind")
            return
        if kind in CONTROL_KINDS and not getattr(self.ep, "controller", lambda s: True)(m.sender):
            # a device key speaks for its device only: data and tiles to its peers (QA: a device's key
            # could shut down or re-deploy every other worker)
            self._error(m.sender, f"{kind!r} is accepted only from the coordinator's key, not from device "
                                  f"{m.sender!r}", "forbidden")
            return
        with dilation.section(exclusive=False):  # beside a running compute, never behind it
            fn(m)

    # -- handlers -----------------------------------------------------------------
    def on_hello(self, m: Message) -> None:
        coord = m.header.get("coord")
        if coord:
            self._connect(m.sender, coord, None)
        asked = {"asked": m.header["device"]} if m.header.get("device") else {}
        self.ep.send(m.sender, {"kind": "hello_ok", "name": self.name, "pid": os.getpid(),
                                "version": __version__, "cpu_mode": self.cpu_mode,
                                "backends": available_backends(), "instance": self.instance, **asked})

    def on_ping(self, m: Message) -> None:
        self.ep.send(m.sender, {"kind": "pong", "seq": m.header["seq"], "t": m.header["t"], "name": self.name,
                                "building": self.building, "instance": self.instance, "down": self.links_down()})

    def links_down(self) -> dict[str, float]:
        """peer -> seconds its connection has been down (or never came up): a coordinator that still
        hears from that peer knows the link between the two is blocked (pong ``down``)."""
        now = time.monotonic()
        out = {}
        for peer in list(self.peers):
            t = self.ep.unreachable_since(peer)
            if t is not None:
                out[peer] = round(now - t, 2)
        return out

    def on_shutdown(self, m: Message) -> None:
        self.stop.set()

    def on_error(self, m: Message) -> None:
        # never answer an error with an error: two workers would bounce them forever
        log.info("%s: error from %s: %s (%s)", self.name, m.sender, m.header["msg"], m.header["code"])

    def _connect(self, peer: str, address: str, link: tuple[float, float] | None,
                 trace: dict[str, Any] | None = None) -> None:
        # trace: the coordinator's link_trace (issue 6), replayed from its wall-clock t0
        tkey = None if (link is None or not trace) else (float(trace["t0"]), len(trace["rows"]))
        key = (address, None if link is None else (tuple(link), tkey))
        if self.peers.get(peer) == key:
            return
        if peer in self.peers:
            self.ep.disconnect(peer)
        if link is None:
            shaper = None
        elif trace:
            rows = [(float(t), float(r)) for t, r in trace["rows"]]
            t0 = time.monotonic() - (time.time() - float(trace["t0"]))
            shaper = LinkShaper(link[0], link[1], trace=rows, t0=t0)
        else:
            shaper = LinkShaper(link[0], link[1])
        self.ep.connect(peer, address, shaper=shaper)
        self.peers[peer] = key

    def on_deploy(self, m: Message) -> None:
        h = m.header
        dep, device = h["dep"], h["device"]
        if device != self.name:
            self._error(m.sender, f"deployment for {device!r} sent to worker {self.name!r}", "wrong_device", dep)
            return
        self._connect(m.sender, h["coord"], None)
        links = h.get("links") or {}
        for peer, addr in h["peers"].items():
            if peer != self.name:
                link = links.get(peer)
                self._connect(peer, addr, None if link is None else (float(link[0]), float(link[1])),
                              h.get("link_trace"))
        sender = m.sender

        def _build() -> None:
            with self.lock:
                if dep in self.dropped:  # undeployed while it waited: nothing to build
                    return
            try:
                d = build(dep, h["plan"], device, sender, int(h.get("seed", 0)),
                          backend=str(h.get("backend") or "auto"), precision=str(h.get("precision") or "fp32"),
                          threads=torch.get_num_threads())
            except DeployError as e:
                self._error(sender, str(e), "deploy_failed", dep)
                return
            except Exception as e:
                log.exception("deploy failed")
                self._error(sender, f"deploy failed: {type(e).__name__}: {e}", "deploy_failed", dep)
                return
            with self.lock:
                if dep in self.dropped:  # undeployed while it was built: freed, not kept
                    log.info("deployment %s undeployed while it was built; dropped", dep)
                    return
                self.deployments[dep] = d
            self.ep.send(sender, {"kind": "deploy_ok", "dep": dep, "device": self.name, "build_ms": d.build_ms,
                                  "backends": d.backends_used(), "memory": d.memory})

        def work() -> None:
            try:
                _build()
            finally:
                with self.lock:
                    self.queued.discard(dep)
                    self.dropped.discard(dep)

        with self.lock:
            self.queued.add(dep)
        self.build_pool.submit(work)

    def on_undeploy(self, m: Message) -> None:
        self._undeploy(m.header["dep"])

    def _undeploy(self, dep: str) -> None:
        with self.lock:
            d = self.deployments.pop(dep, None)
            if dep in self.queued:
                self.dropped.add(dep)
            for key, st in list(self.requests.items()):
                if key[0] == dep:
                    st.abort("undeployed")
            coord = d.coord if d is not None else None
            done = coord is not None and all(x.coord != coord for x in self.deployments.values())
        if done and coord in self.peers:
            # the coordinator's last deployment here is gone (its session closed or moved on): drop
            # the connection to it, which would otherwise retry a closed address for ever (one
            # socket per session a long-running worker served); its next deploy connects again
            self.peers.pop(coord, None)
            self.ep.disconnect(coord)

    def on_cancel(self, m: Message) -> None:
        key = (m.header["dep"], int(m.header["req"]))
        with self.lock:
            st = self.requests.pop(key, None)
            self._finish(key)
        if st is not None:
            st.abort("cancelled by the coordinator")

    def _tensor(self, m: Message) -> torch.Tensor:
        arr = wire.decode_tensor(m.header, m.frames)
        return torch.from_numpy(np.asarray(arr))

    def on_run(self, m: Message) -> None:
        h = m.header
        dep, req = h["dep"], int(h["req"])
        d = self.deployments.get(dep)
        if d is None:
            self._error(m.sender, f"unknown deployment {dep!r} on {self.name}; deploy first", "no_deployment",
                        dep, req)
            return
        st = self._state(dep, req)
        if st is None:
            return
        if m.frames:
            x = self._tensor(m)
            if tuple(x.shape) != tuple(d.plan.model.input_shape):
                self._error(m.sender, f"input shape {list(x.shape)} != model input "
                                      f"{list(d.plan.model.input_shape)}", "bad_input", dep, req)
                return
            with st.cv:
                st.input = x
                st.cv.notify_all()
        with self.lock:
            if st.started:
                return
            st.started = True
        self.pool.submit(self._run, d, st, m.sender)

    def _run(self, d: Deployment, st: RequestState, coord: str) -> None:
        key = (d.dep, st.req)
        t0 = time.time() * 1e3
        ok = True
        try:
            run_program(d, st, self, self.timeout_s, self.tile_pool)
            self.served += 1
        except RequestAborted as e:
            ok = False
            if "cancelled" not in str(e):
                self._error(d.coord, f"request {st.req} aborted on {self.name}: {e}", "aborted", d.dep, st.req)
        except Exception as e:
            ok = False
            log.exception("request failed")
            self._error(d.coord, f"request {st.req} failed on {self.name}: {type(e).__name__}: {e}",
                        "request_failed", d.dep, st.req)
        finally:
            with self.lock:
                self.requests.pop(key, None)
                self._finish(key)
        if ok:
            events = [[e[0], e[1], round(e[2], 3), round(e[3], 3), e[4] if len(e) > 4 else {}]
                      for e in st.events]
            self.ep.send(d.coord, {"kind": "trace", "dep": d.dep, "req": st.req, "device": self.name,
                                   "events": [[x[0], x[1], x[2], x[3], _args(x[4])] for x in events],
                                   "t0": t0})

    def on_data(self, m: Message) -> None:
        h = m.header
        st = self._state(h["dep"], int(h["req"]))
        if st is None:
            return
        r = h["region"]  # wire.validate: None or [r0, r1, c0, c1]
        region = None if r is None else (int(r[0]), int(r[1]), int(r[2]), int(r[3]))
        st.put((int(h["tensor"]), region, h["src"]), self._tensor(m), h.get("ts"))

    def on_tile(self, m: Message) -> None:
        h = m.header
        if not self._tile_tensor_ok(m, int(h["stage"]) - 1):
            return
        st = self._state(h["dep"], int(h["req"]))
        if st is None:
            return
        x = self._tensor(m)
        with st.cv:  # a dyn_worker may get tiles before its own run message: they wait in st.tiles
            st.tiles.append((int(h["stage"]), int(h["part"]), x, m.sender))
            st.cv.notify_all()

    def _tile_tensor_ok(self, m: Message, expected: int) -> bool:
        """A tile carries its stage's input tensor (stage - 1), a tile_out its output (stage)."""
        h = m.header
        if int(h["tensor"]) == expected:
            return True
        self._error(m.sender, f"{h['kind']} of stage {h['stage']} must carry tensor {expected}, not {h['tensor']}",
                    "bad_header", h["dep"], int(h["req"]))
        return False

    def on_tile_out(self, m: Message) -> None:
        h = m.header
        if not self._tile_tensor_ok(m, int(h["stage"])):
            return
        st = self._state(h["dep"], int(h["req"]))
        if st is None:
            return
        y = self._tensor(m)
        with st.cv:
            st.tile_outs.append((int(h["stage"]), int(h["part"]), h["device"], float(h["ms"]), y))
            st.cv.notify_all()

    def on_tiles_done(self, m: Message) -> None:
        h = m.header
        st = self._state(h["dep"], int(h["req"]))
        if st is None:
            return
        with st.cv:
            st.tiles_done.add(int(h["stage"]))
            st.cv.notify_all()

    # -- profiling: coinfer profile (coinfer.cost.remote drives these; heavy work in build_pool) ----
    def on_profile(self, m: Message) -> None:
        """A profiling job: ``links`` (connect to the peers, shaped), ``probe`` a peer, or ``model``."""
        from ..cost.remote import worker_profile

        worker_profile(self, m)

    def on_probe(self, m: Message) -> None:
        """A link probe from a peer: decoded like data, acknowledged when asked."""
        from ..cost.remote import worker_probe

        worker_probe(self, m)

    def on_probe_ack(self, m: Message) -> None:
        from ..cost.remote import worker_probe_ack

        worker_probe_ack(self, m)


def _args(a: Any) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dict(a).items()
            if isinstance(v, (int, float, str, bool))}
