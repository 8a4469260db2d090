"""Profiling through the runtime: ``coinfer profile`` on real workers (coordinator and worker sides).

The measurement core (:mod:`coinfer.cost.measure`) runs *inside* each
worker process, so it measures that device: its cgroup quota, threads and
backend. Link probes travel over the real transport between workers, through
the same link shapers a deployment uses, so they see the emulated bandwidth
and latency. This module holds both sides:

**Worker side** (the worker's ``on_profile`` / ``on_probe`` / ``on_probe_ack``
handlers delegate here; heavy work runs in the worker's ``build_pool``, never
in its I/O loop). A ``profile`` message carries ``spec.op``:

* ``links`` — connect to the peers (``spec.peers``: name → address) with
  the link shaping ``spec.links`` (peer → [Mbit/s, ms]), as a deployment
  does; answered at once;
* ``probe`` — probe ``spec.peer``: round-trip pings, transfers of a few
  sizes (bandwidth = slope of time over bytes, :meth:`LinkProbe.fit`), and
  bursts of one-way messages that measure the runtime's CPU cost per message
  on both ends (process CPU time: the peer reports its own in ``probe_ack``);
* ``model`` — :func:`~coinfer.cost.measure.profile_device` of
  ``spec.model`` on this worker, one ``profile_progress`` message per
  measured segment (its table and regression samples: the coordinator saves
  them, so an interrupted profile resumes), then a ``profile_result``.

**Coordinator side**: :class:`RemoteProfiler` connects to every worker,
sets up the links, probes them round by round (disjoint pairs, so a
device's CPU figures are its own), then profiles the model on every device
in parallel, and :func:`assemble` turns what came back into
:class:`~coinfer.cost.profile.DeviceProfile` s (regressions fitted here).
Importing this module is light: sockets and torch are imported where used.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import logging
import os
import secrets
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cluster import Cluster
from ..errors import UserError
from .measure import EVICT_MB
from .profile import DeviceProfile, LinkProbe, ProfileError
from .regression import LayerSample, fit
from .runtime import BUILTIN_RUNTIME, RuntimeCosts

MAX_EVICT_MB = 4096  # a profiling request may not make a worker allocate more than this for cache eviction

if TYPE_CHECKING:  # pragma: no cover
    from ..runtime.transport import Message

log = logging.getLogger("coinfer.profile")

OPS = ("links", "probe", "model")
#: Defaults of the link probes: pings, transfer repetitions, messages per CPU burst.
PINGS, TRANSFER_REPS, BURST = 5, 3, 24


class ProfileFailed(RuntimeError):
    """A device could not be profiled (its worker reported an error, or stopped answering)."""


# ======================================================================================
# worker side
# ======================================================================================
def _probe_state(w: Any) -> dict[str, Any]:
    st = w.__dict__.get("_coinfer_probe")
    if st is None:
        st = {"lock": threading.Lock(), "waiters": {}, "count": {}}
        w.__dict__["_coinfer_probe"] = st
    return st


def _reply(w: Any, coord: str, dep: str, result: dict[str, Any]) -> None:
    w.ep.send(coord, {"kind": "profile_result", "dep": dep, "result": result})


def worker_profile(w: Any, m: Message) -> None:
    """The worker's ``on_profile``: dispatch ``spec.op`` (heavy ops go to ``w.build_pool``)."""
    h = m.header
    dep, spec, coord = h["dep"], h["spec"], m.sender
    op = spec.get("op")
    if op not in OPS:
        w._error(coord, f"profile op {op!r} is unknown; one of {', '.join(OPS)}", "bad_profile", dep)
        return
    if op == "links":
        peers, links = spec.get("peers") or {}, spec.get("links") or {}
        if not isinstance(peers, dict) or not isinstance(links, dict):
            w._error(coord, "profile links: peers and links must be maps", "bad_profile", dep)
            return
        try:
            for peer, addr in peers.items():
                if peer == w.name:
                    continue
                link = links.get(peer)
                w._connect(peer, str(addr), None if link is None else (float(link[0]), float(link[1])))
        except (TypeError, ValueError, IndexError) as e:
            w._error(coord, f"profile links: {e}", "bad_profile", dep)
            return
        _reply(w, coord, dep, {"ok": True, "op": "links", "device": w.name})
        return
    job = _probe_job if op == "probe" else _model_job
    w.build_pool.submit(_guarded, job, w, dep, coord, spec)


def _guarded(job: Callable[..., None], w: Any, dep: str, coord: str, spec: dict[str, Any]) -> None:
    try:
        job(w, dep, coord, spec)
    except Exception as e:
        log.exception("profile job failed")
        w._error(coord, f"profiling {spec.get('op')} on {w.name} failed: {type(e).__name__}: {e}",
                 "profile_failed", dep)


def worker_probe(w: Any, m: Message) -> None:
    """The worker's ``on_probe`` (I/O loop): take the payload as ``on_data`` would, ack if asked."""
    import numpy as np
    import torch

    from ..runtime import wire

    h = m.header
    if m.frames:
        torch.from_numpy(np.asarray(wire.decode_tensor(h, m.frames)))
    st = _probe_state(w)
    key = (h["dep"], m.sender)
    with st["lock"]:
        n = st["count"].get(key, 0) + 1
        st["count"][key] = n
        if len(st["count"]) > 256:
            st["count"].pop(next(iter(st["count"])))
    if h["ack"]:
        w.ep.send(m.sender, {"kind": "probe_ack", "dep": h["dep"], "seq": h["seq"], "t": h["t"],
                             "cpu_s": time.process_time(), "n": n}, shaped=m.sender in w.peers)


def worker_probe_ack(w: Any, m: Message) -> None:
    """The worker's ``on_probe_ack`` (I/O loop): wake the probing job."""
    st = _probe_state(w)
    with st["lock"]:
        waiter = st["waiters"].pop((m.header["dep"], m.header["seq"]), None)
    if waiter is not None:
        waiter[1].update(m.header)
        waiter[0].set()


class _Prober:
    """The probing side of one link (runs in the worker's build pool)."""

    def __init__(self, w: Any, dep: str, peer: str) -> None:
        self.w, self.dep, self.peer = w, dep, peer
        self.st = _probe_state(w)
        self.seq = itertools.count(1)

    def send(self, nbytes: int, ack: bool) -> tuple[int, float, threading.Event | None, dict[str, Any]]:
        """Send one probe (a copy of an ``nbytes`` payload, as a send assembles its region)."""
        import numpy as np

        from ..runtime import wire

        seq = next(self.seq)
        ev: threading.Event | None = None
        box: dict[str, Any] = {}
        if ack:
            ev = threading.Event()
            with self.st["lock"]:
                self.st["waiters"][(self.dep, seq)] = (ev, box)
        c0 = time.thread_time()
        hdr: dict[str, Any] = {"kind": "probe", "dep": self.dep, "seq": seq, "t": time.time(), "ack": ack}
        frames: list[Any] = []
        if nbytes > 0:
            meta, frames = wire.encode_tensor(np.zeros(nbytes, np.uint8).copy(), "raw", None)
            hdr.update(meta)
        self.w.ep.send(self.peer, hdr, frames, shaped=True)
        return seq, time.thread_time() - c0, ev, box

    def roundtrip(self, nbytes: int, timeout_s: float = 30.0) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        _, _, ev, box = self.send(nbytes, True)
        assert ev is not None
        if not ev.wait(timeout_s):
            raise TimeoutError(f"no probe_ack from {self.peer} within {timeout_s:.0f} s")
        return (time.perf_counter() - t0) * 1e3, box


def _probe_job(w: Any, dep: str, coord: str, spec: dict[str, Any]) -> None:
    peer = str(spec.get("peer", ""))
    if peer not in w.peers:
        w._error(coord, f"probe: {w.name} is not connected to {peer!r}; send the links op first", "bad_profile", dep)
        return
    pings = int(spec.get("pings", PINGS))
    sizes = [int(s) for s in spec.get("sizes", [1024, 65536, 262144])]
    reps = int(spec.get("reps", TRANSFER_REPS))
    burst = int(spec.get("burst", BURST))
    burst_sizes = [int(s) for s in spec.get("burst_sizes", [1024, 65536])]
    gap_s = float(spec.get("gap_ms", 3.0)) / 1e3
    p = _Prober(w, dep, peer)
    p.roundtrip(0)  # warm the path
    rtts = [p.roundtrip(0)[0] for _ in range(pings)]
    transfers = []
    for _ in range(reps):
        for s in sizes:
            transfers.append([s, p.roundtrip(s)[0]])
    cpu: dict[str, Any] = {}
    for s in burst_sizes:
        _, a = p.roundtrip(0)
        calls = []
        pc0 = time.process_time()
        for _ in range(burst):
            _, c, _, _ = p.send(s, False)
            calls.append(c)
            time.sleep(gap_s)
        pc1 = time.process_time()
        _, b = p.roundtrip(0)
        n = int(b["n"]) - int(a["n"])
        cpu[str(s)] = {"send_call_us": statistics.median(calls) * 1e6, "send_total_us": (pc1 - pc0) / burst * 1e6,
                       "recv_us": (float(b["cpu_s"]) - float(a["cpu_s"])) / max(n, 1) * 1e6, "n": n}
    _reply(w, coord, dep, {"ok": True, "op": "probe", "device": w.name, "peer": peer, "rtts_ms": rtts,
                           "transfers": transfers, "cpu": cpu})


def _model_job(w: Any, dep: str, coord: str, spec: dict[str, Any]) -> None:
    from ..modelspec import capture_model
    from .measure import profile_device

    shape = spec.get("input_shape")
    cm = capture_model(str(spec["model"]), None if shape is None else tuple(int(v) for v in shape),
                       int(spec.get("seed", 0)))
    last = [0.0]

    def progress(what: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.2 or done == total:
            last[0] = now
            w.ep.send(coord, {"kind": "profile_progress", "dep": dep, "device": w.name, "what": what[:200],
                              "done": done, "total": total})

    def checkpoint(prof: DeviceProfile, key: tuple[str, str], new: list[LayerSample]) -> None:
        seg: dict[str, Any] = {"start": key[0], "end": key[1],
                               "samples": [[x.family, list(x.x), x.ms] for x in new]}
        if key in prof.stages:
            seg["rows"] = [[r, ms] for r, ms in prof.stages[key]]
        else:
            seg["ms"] = prof.whole[key]
        if key in prof.chained:
            seg["chained"] = prof.chained[key]
        if key in prof.cols:
            seg["cols"] = [prof.cols[key][0], [[c, ms] for c, ms in prof.cols[key][1]]]
        w.ep.send(coord, {"kind": "profile_progress", "dep": dep, "device": w.name, "what": key[1][:200],
                          "done": 0, "total": 0, "segment": seg})

    skip = {(str(a), str(b)) for a, b in spec.get("skip") or []}
    known = {(str(a), str(b)): float(ms) for a, b, ms in spec.get("known_full") or []}
    prof = profile_device(cm, w.name, rows_points=int(spec.get("rows_points", 6)), reps=int(spec.get("reps", 3)),
                          warmup=int(spec.get("warmup", 1)), backend=str(spec.get("backend", "torch")),
                          precision=str(spec.get("precision", "fp32")), layer_reps=int(spec.get("layer_reps", 1)),
                          skip=skip, progress=progress, calibrate=False, clock=str(spec.get("clock", "wall")),
                          emulation=spec.get("emulation"), checkpoint=checkpoint, known_full=known,
                          evict_mb=min(max(int(spec.get("evict_mb", EVICT_MB)), 0), MAX_EVICT_MB))
    _reply(w, coord, dep, {"ok": True, "op": "model", "device": w.name, "machine": prof.machine,
                           "timing": prof.timing, "fingerprint": prof.fingerprint, "model": prof.model,
                           "backend": prof.backend, "whole_model_ms": prof.whole_model_ms})


# ======================================================================================
# coordinator side
# ======================================================================================
@dataclass
class DeviceRun:
    """What came back from one device (partial until ``done``)."""

    device: str
    stages: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)
    whole: dict[tuple[str, str], float] = field(default_factory=dict)
    samples: list[LayerSample] = field(default_factory=list)
    chained: dict[tuple[str, str], float] = field(default_factory=dict)
    cols: dict[tuple[str, str], tuple[int, list[tuple[int, float]]]] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    done_segments: int = 0
    total_segments: int = 0


def _seg_from_wire(run: DeviceRun, seg: dict[str, Any]) -> tuple[str, str]:
    try:
        key = (str(seg["start"]), str(seg["end"]))
        if "rows" in seg:
            run.stages[key] = sorted((int(r), float(ms)) for r, ms in seg["rows"])
        else:
            run.whole[key] = float(seg["ms"])
        if seg.get("chained") is not None:
            run.chained[key] = float(seg["chained"])
        if seg.get("cols") is not None:
            rows, pts = seg["cols"]
            run.cols[key] = (int(rows), sorted((int(c), float(ms)) for c, ms in pts))
        run.samples += [LayerSample(str(f), tuple(float(v) for v in x), float(ms)) for f, x, ms in seg["samples"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ProfileFailed(f"{run.device}: malformed segment from the worker ({e})") from None
    return key


def runtime_costs_from_probes(sent: list[dict[str, Any]], received: list[dict[str, Any]]) -> RuntimeCosts:
    """A device's :class:`RuntimeCosts` from the CPU bursts it sent and received (µs per message).

    ``sent`` / ``received``: the ``cpu`` entries of probe results, keyed by
    payload size. The small size gives the fixed costs, the slope between
    sizes the per-KB cost.
    """
    def per_size(items: list[dict[str, Any]], key: str) -> dict[int, float]:
        by: dict[int, list[float]] = {}
        for cpu in items:
            for size, v in cpu.items():
                by.setdefault(int(size), []).append(float(v[key]))
        return {s: statistics.median(v) for s, v in by.items()}

    base = BUILTIN_RUNTIME
    call = per_size(sent, "send_call_us")
    total = per_size(sent, "send_total_us")
    recv = per_size(received, "recv_us")
    if not call or not recv:
        return base
    small = min(call)
    send_us = call[small]
    io_us = max(0.0, total[small] - call[small])
    recv_us = recv[min(recv)]
    def slope(d: dict[int, float]) -> float | None:
        if len(d) < 2:
            return None
        lo, hi = min(d), max(d)
        return max(0.0, (d[hi] - d[lo]) / ((hi - lo) / 1024.0))

    io = {s: total[s] - call[s] for s in total if s in call}
    slopes = [x for x in (slope(io), slope(recv)) if x is not None]
    per_kb = statistics.mean(slopes) if slopes else base.per_kb_us
    call_kb = slope(call)
    return RuntimeCosts(send_us=round(send_us, 2), send_io_us=round(io_us, 2), recv_us=round(recv_us, 2),
                        per_kb_us=round(per_kb, 4),
                        send_per_kb_us=round(base.send_per_kb_us if call_kb is None else call_kb, 4),
                        compute_us=base.compute_us, delivery_ms=base.delivery_ms,
                        loopback_gbps=base.loopback_gbps, source="probed")


def pairings(devices: list[str]) -> list[list[tuple[str, str]]]:
    """Rounds of disjoint ordered pairs covering every ordered pair once (round-robin tournament).

    In a round each device probes or is probed by at most one other, so the
    CPU time a device reports is its own link's.
    """
    devs = list(devices)
    if len(devs) < 2:
        return []
    if len(devs) % 2:
        devs.append("")
    n = len(devs)
    rounds: list[list[tuple[str, str]]] = []
    for _ in range(n - 1):
        pairs = [(devs[i], devs[n - 1 - i]) for i in range(n // 2)]
        pairs = [(a, b) for a, b in pairs if a and b]
        rounds.append(pairs)
        rounds.append([(b, a) for a, b in pairs])
        devs = [devs[0], devs[-1], *devs[1:-1]]
    return rounds


def probe_sizes(mbps: float, target_ms: float = 40.0) -> list[int]:
    """Transfer sizes for a link: 1 KB and sizes taking about target/4 and target ms at its rate."""
    big = int(min(4 * 2**20, max(64 * 2**10, mbps * 1e6 / 8 * target_ms / 1e3)))
    return [1024, max(2048, big // 4), big]


class RemoteProfiler:
    """Drives ``coinfer profile`` on running workers (``addresses``: device → ``tcp://`` address).

    ``cpu_modes``: how each device is emulated (from the launcher / ``coinfer
    up``; a worker started elsewhere reports its own in ``hello_ok``): an
    emulated device is profiled in CPU time (``timing: cpu``).
    """

    def __init__(self, cluster: Cluster, addresses: dict[str, str], *, keys: str | None = None,
                 cpu_modes: dict[str, str] | None = None, timeout_s: float = 600.0) -> None:
        from ..runtime.coordinator import _advertise_host
        from ..runtime.security import KeyStore
        from ..runtime.transport import zmq_endpoint

        self.cluster = cluster
        self.addresses = dict(addresses)
        missing = [d for d in cluster.names if d not in self.addresses]
        if missing:
            raise UserError(f"devices {missing} have no address; start them (coinfer up) or give "
                            f"address: tcp://HOST:PORT in the cluster file")
        self.cpu_modes = dict(cpu_modes or {})
        self.timeout_s = timeout_s
        ks = KeyStore(keys) if keys else None
        host = _advertise_host(list(self.addresses.values()))
        self.name = f"prof-{os.getpid()}-{secrets.token_hex(3)}"
        self.ep = zmq_endpoint(self.name, f"tcp://{host}:0", keys=ks, insecure=ks is None)
        self.job = secrets.token_hex(4)
        self.info: dict[str, dict[str, Any]] = {}

    # -- plumbing ----------------------------------------------------------------------
    def close(self) -> None:
        self.ep.close()

    def __enter__(self) -> RemoteProfiler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _recv(self, deadline: float) -> Message:
        from ..runtime.transport import BadMessage

        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProfileFailed(f"no answer from the workers within {self.timeout_s:.0f} s")
            m = self.ep.recv(int(min(left, 0.5) * 1e3))
            if m is None:
                continue
            if isinstance(m, BadMessage):
                log.warning("malformed message from %s: %s", m.sender, m.error)
                continue
            if m.header["kind"] == "error":
                msg = m.header["msg"]
                if m.header.get("code") == "bad_kind":
                    msg += " (that worker's coinfer predates coinfer profile; update it)"
                raise ProfileFailed(f"{m.sender}: {msg}")
            return m

    def _await(self, want: dict[str, str], timeout_s: float | None = None,
               on_other: Callable[[Message], None] | None = None) -> dict[str, dict[str, Any]]:
        """Wait for one ``profile_result`` per device of ``want`` (device → job id)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        out: dict[str, dict[str, Any]] = {}
        while len(out) < len(want):
            m = self._recv(deadline)
            k = m.header["kind"]
            if k == "profile_result" and want.get(m.sender) == m.header["dep"]:
                out[m.sender] = m.header["result"]
            elif on_other is not None:
                on_other(m)
                deadline = time.monotonic() + (timeout_s or self.timeout_s)  # progress resets the clock
        return out

    def connect(self, timeout_s: float = 30.0) -> dict[str, dict[str, Any]]:
        """Connect to every device and say hello; returns each worker's ``hello_ok``."""
        from ..runtime.coordinator import tcp_refuses, unreachable

        refused = {d: self.addresses[d] for d in self.cluster.names if tcp_refuses(self.addresses[d])}
        if refused:
            raise unreachable(refused, refused=True)
        for dev in self.cluster.names:
            self.ep.connect(dev, self.addresses[dev])
            self.ep.send(dev, {"kind": "hello", "coord": self.ep.address})
        deadline = time.monotonic() + timeout_s
        while len(self.info) < len(self.cluster.names):
            try:
                m = self._recv(deadline)
            except ProfileFailed:  # before anything was measured: a set-up problem (exit 2), not a failure
                raise unreachable({d: a for d, a in self.addresses.items()
                                   if d in self.cluster.names and d not in self.info}) from None
            if m.header["kind"] == "hello_ok":
                self.info[m.sender] = dict(m.header)
                self.cpu_modes.setdefault(m.sender, str(m.header.get("cpu_mode", "none")))
        return self.info

    def emulated(self, dev: str) -> bool:
        return self.cpu_modes.get(dev, "none") not in ("none", "")

    # -- links -------------------------------------------------------------------------
    def setup_links(self) -> None:
        """Connect every worker to every other with the cluster's link shaping (as a deployment does)."""
        peers = {d: self.addresses[d] for d in self.cluster.names}
        want = {}
        for dev in self.cluster.names:
            links = {}
            local = {d.name for d in self.cluster.devices if d.is_local}
            if self.cluster.network.shape:  # as a deployment shapes them: links between local devices
                links = {p: list(self.cluster.link(dev, p)) for p in self.cluster.names
                         if p != dev and {dev, p} <= local}
            dep = f"{self.job}-links-{dev}"
            self.ep.send(dev, {"kind": "profile", "dep": dep, "spec": {"op": "links", "peers": peers, "links": links}})
            want[dev] = dep
        self._await(want, 30.0)

    def probe_links(self, progress: Callable[[int, int], None] | None = None,
                    devices: list[str] | None = None) -> tuple[dict[str, dict[str, LinkProbe]], dict[str, RuntimeCosts]]:
        """Probe every ordered pair of ``devices`` (default: all), disjoint pairs in parallel.

        Returns ``(links, runtime)``: per device its :class:`LinkProbe` to each
        peer, and its :class:`RuntimeCosts` from the CPU bursts.
        """
        devs = devices or self.cluster.names
        rounds = pairings(devs)
        total = sum(len(r) for r in rounds)
        done = 0
        links: dict[str, dict[str, LinkProbe]] = {d: {} for d in devs}
        sent: dict[str, list[dict[str, Any]]] = {d: [] for d in devs}
        recvd: dict[str, list[dict[str, Any]]] = {d: [] for d in devs}
        for rnd in rounds:
            want = {}
            for a, b in rnd:
                # an unshaped link (network.shape: false) runs at loopback speed, not the nominal rate:
                # the largest probe, or the sizes differ by less than the noise
                bw = self.cluster.link(a, b)[0] if self.cluster.network.shape else float("inf")
                dep = f"{self.job}-probe-{a}-{b}"
                self.ep.send(a, {"kind": "profile", "dep": dep,
                                 "spec": {"op": "probe", "peer": b, "sizes": probe_sizes(bw)}})
                want[a] = dep
            res = self._await(want, 120.0)
            for a, b in rnd:
                r = res[a]
                try:
                    links[a][b] = LinkProbe.fit([float(x) for x in r["rtts_ms"]],
                                                [(int(s), float(ms)) for s, ms in r["transfers"]])
                except ProfileError as e:
                    raise ProfileFailed(f"link {a}->{b}: {e} (or skip the link probes: --no-links)") from None
                sent[a].append(r["cpu"])
                recvd[b].append(r["cpu"])
                done += 1
                if progress is not None:
                    progress(done, total)
        runtime = {d: runtime_costs_from_probes(sent[d], recvd[d]) for d in devs}
        return links, runtime

    # -- the model ---------------------------------------------------------------------
    def profile_model(self, model: str, input_shape: tuple[int, ...] | None, *, devices: list[str] | None = None,
                      skip: dict[str, set[tuple[str, str]]] | None = None,
                      known_full: dict[str, dict[tuple[str, str], float]] | None = None, rows_points: int = 6, reps: int = 3,
                      warmup: int = 1, backend: str = "torch", precision: str = "fp32", seed: int = 0,
                      evict_mb: int = EVICT_MB, on_segment: Callable[[DeviceRun, tuple[str, str]], None] | None = None,
                      progress: Callable[[str, int, int, str], None] | None = None) -> dict[str, DeviceRun]:
        """Profile ``model`` on every device of ``devices`` in parallel; returns what each measured."""
        devs = devices or self.cluster.names
        runs = {d: DeviceRun(d) for d in devs}
        want = {}
        for dev in devs:
            emu = None
            if self.emulated(dev):
                emu = {"mode": self.cpu_modes[dev], "cpu_share": self.cluster.device(dev).cpu_share}
            spec = {"op": "model", "model": model, "input_shape": None if input_shape is None else list(input_shape),
                    "seed": seed, "rows_points": rows_points, "reps": reps, "warmup": warmup, "backend": backend,
                    "precision": precision, "clock": "cpu" if emu else "wall", "emulation": emu,
                    "evict_mb": evict_mb,
                    "skip": [list(k) for k in sorted((skip or {}).get(dev, set()))],
                    "known_full": [[a, b, ms] for (a, b), ms in sorted((known_full or {}).get(dev, {}).items())]}
            dep = f"{self.job}-model-{dev}"
            self.ep.send(dev, {"kind": "profile", "dep": dep, "spec": spec})
            want[dev] = dep

        def other(m: Message) -> None:
            h = m.header
            if h["kind"] != "profile_progress" or m.sender not in runs or want.get(m.sender) != h["dep"]:
                return
            run = runs[m.sender]
            seg = h.get("segment")
            if seg is not None:
                key = _seg_from_wire(run, seg)
                if on_segment is not None:
                    on_segment(run, key)
            else:
                run.done_segments, run.total_segments = int(h["done"]), int(h["total"])
                if progress is not None:
                    progress(m.sender, run.done_segments, run.total_segments, str(h["what"]))

        res = self._await(want, on_other=other)
        for dev, r in res.items():
            runs[dev].result = r
            if progress is not None:
                progress(dev, runs[dev].total_segments or 1, runs[dev].total_segments or 1, "done")
        return runs


def assemble(run: DeviceRun, model: str, fingerprint: str, *, base: DeviceProfile | None = None,
             links: dict[str, LinkProbe] | None = None, runtime: RuntimeCosts | None = None,
             emulation: dict[str, Any] | None = None, backend: str = "torch",
             complete: bool = True, graph: Any = None) -> DeviceProfile:
    """A :class:`DeviceProfile` from a device's run (plus ``base``: what an earlier, interrupted run measured)."""
    res = run.result or {}
    prof = DeviceProfile(run.device, model, fingerprint, backend=backend,
                         timing=str(res.get("timing", base.timing if base else "wall")),
                         emulation=emulation, complete=complete)
    samples: list[LayerSample] = []
    if base is not None:
        prof.stages.update(base.stages)
        prof.whole.update(base.whole)
        prof.chained.update(base.chained)
        prof.cols.update(base.cols)
        samples += base.samples
        if base.machine:
            prof.machine = dict(base.machine)
    prof.stages.update(run.stages)
    prof.whole.update(run.whole)
    prof.chained.update(run.chained)
    prof.cols.update(run.cols)
    samples += run.samples
    if res.get("machine"):
        prof.machine = dict(res["machine"])
    if res.get("whole_model_ms") is not None:
        prof.whole_model_ms = float(res["whole_model_ms"])
    elif base is not None:
        prof.whole_model_ms = base.whole_model_ms
    if complete:
        if prof.whole_model_ms is not None and graph is not None:
            from .measure import (
                chain_scale,  # pure arithmetic over the tables (torch is not touched)
            )

            prof.chain_scale = chain_scale(prof, graph, prof.whole_model_ms)
        prof.regressions = fit(samples)
        prof.date = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    else:
        prof.samples = samples
    prof.links = dict(links or {})
    prof.runtime = runtime
    return prof


# ======================================================================================
# the whole job (what `coinfer profile` runs)
# ======================================================================================
@dataclass
class ProfileJob:
    """The outcome of :func:`profile_cluster`."""

    profiles: dict[str, DeviceProfile]
    out_dir: str
    seconds: float
    measured: list[str]  # devices whose model segments were measured in this run
    resumed: list[str]  # devices that had an unfinished profile, continued
    skipped: list[str]  # devices already complete in out_dir
    probed: bool
    points: int  # rows-sweep points measured in this run (all devices)


class ProgressSink:
    """Callbacks for a progress display (the CLI draws a rich progress bar from them)."""

    def links(self, done: int, total: int) -> None: ...

    def device(self, dev: str, done: int, total: int, what: str) -> None: ...

    def note(self, msg: str) -> None: ...


def _save_atomic(prof: DeviceProfile, path: Any) -> None:
    from pathlib import Path

    p = Path(path)
    tmp = p.with_suffix(".json.tmp")
    prof.save(tmp)
    tmp.replace(p)


def profile_backend(backend: str, precision: str = "fp32") -> str:
    """A profile's ``backend`` field: the backend, ``backend/precision`` when not fp32."""
    return backend if precision == "fp32" else f"{backend}/{precision}"


def profile_file(device: str, backend: str = "torch") -> str:
    """The file name of ``device``'s profile on ``backend`` (``backend/precision`` when not fp32):
    ``<device>.json`` for torch fp32, else ``<device>@<backend>.json`` (``/`` written ``-``), the
    names :meth:`coinfer.cost.profile.ProfileSet.load_dir` reads as one device's alternatives."""
    return f"{device}.json" if backend == "torch" else f"{device}@{backend.replace('/', '-')}.json"


def existing_profiles(out_dir: str, devices: list[str], model: str, fingerprint: str,
                      backend: str = "torch") -> dict[str, DeviceProfile]:
    """Profiles already in ``out_dir`` for ``devices`` on ``backend`` (complete or not); refuses another model's."""
    from pathlib import Path

    out: dict[str, DeviceProfile] = {}
    d = Path(out_dir)
    for dev in devices:
        f = d / profile_file(dev, backend)
        if not f.is_file():
            continue
        prof = DeviceProfile.load(f)
        if prof.device != dev:
            raise ProfileError(f"{f} holds the profile of device {prof.device!r}, not {dev!r}; delete it or "
                               f"profile into another -o directory")
        if prof.fingerprint != fingerprint:
            what = f"model {prof.model!r}" if prof.model != model else f"another version of {model!r}"
            raise ProfileError(f"{f} holds a profile of {what}; profile {model} into another -o directory "
                               f"(one per model) or delete {d}")
        out[dev] = prof
    return out


class _Unthrottled:
    """Lift the cgroup CPU quota of the local workers this profiler started, for the model sweep.

    An emulated device is profiled in **CPU time** (``timing: cpu``), which
    does not depend on its quota (docs/profiling.md): throttled to 0.15 of a
    core, the sweep only takes 6.7x longer in wall time. So while the model is
    measured, the quota of every local worker started by :func:`profile_cluster`
    itself is lifted (cgroup v1 ``cpu.cfs_quota_us = -1``, v2 ``cpu.max =
    max``) and put back afterwards (before the workers stop, also on errors).
    The link and per-message probes run under the quota as a deployment does.
    Workers started elsewhere (``coinfer up``, a benchmark's testbed) and
    duty-cycle emulation are left alone.
    """

    def __init__(self, local: Any) -> None:
        self.lifted: list[Any] = []
        for w in getattr(local, "workers", {}).values() if local is not None else ():
            lim = getattr(w, "limiter", None)
            if lim is None or lim.path is None or lim.quota_us is None or not lim.mode.startswith("cgroup"):
                continue
            try:
                self._write(lim, None)
                self.lifted.append(lim)
            except OSError as e:  # not permitted: measure under the quota (slower, same figures)
                log.info("could not lift the CPU quota of %s (%s)", w.name, e)

    @staticmethod
    def _write(lim: Any, quota_us: int | None) -> None:
        if lim.mode == "cgroup-v2":
            (lim.path / "cpu.max").write_text(f"{'max' if quota_us is None else quota_us} {lim.period_us}")
        else:
            (lim.path / "cpu.cfs_quota_us").write_text("-1" if quota_us is None else str(quota_us))

    def restore(self) -> None:
        for lim in self.lifted:
            try:
                self._write(lim, lim.quota_us)
            except OSError as e:  # pragma: no cover - the cgroup went away with its process
                log.info("could not restore the CPU quota of %s (%s)", lim.name, e)
        self.lifted.clear()


def auto_evict_mb(graph: Any, devices: int) -> int:
    """The cold-cache buffer for profiling ``graph`` on ``devices`` devices: what the host touches between
    two runs of one part — about every device's copy of the model's weights — capped at :data:`EVICT_MB`.

    A fixed 256 MiB over-stated how cold MobileNetV2's parts run (its 14 MB of weights stay in the
    last-level cache between requests): re-predicting validation session D with profiles made this way
    (ResNet-18 187, MobileNetV2 56, VGG-16 256 MiB; this rule gives 178, 54, 256) gave median 7.6 %, p90
    17.8 % instead of 9.0 / 20.1 %
    (docs/simulator.md).
    """
    weights = sum(n.param_bytes for n in graph.nodes)
    return int(min(EVICT_MB, max(16, devices * weights / 2**20)))


def profile_cluster(cluster: Cluster, model: str, out_dir: str, *, input_shape: tuple[int, ...] | None = None,
                    addresses: dict[str, str] | None = None, cpu_modes: dict[str, str] | None = None,
                    keys: str | None = None, rows_points: int = 6, reps: int = 3, warmup: int = 1,
                    backend: str = "torch", precision: str = "fp32", probe: bool = True, seed: int = 0,
                    sink: ProgressSink | None = None, timeout_s: float = 600.0,
                    throttled: bool = False, evict_mb: int | None = None) -> ProfileJob:
    """Profile ``model`` on every device of ``cluster`` through the runtime and save ``out_dir/<device>.json``
    (``<device>@<backend>.json`` for another backend or precision than torch fp32: :func:`profile_file`).

    Local devices are started as worker processes (with their emulated CPU)
    unless ``addresses`` gives where they run (``coinfer up``); remote ones
    are reached at their cluster-file address. Resumable: complete profiles
    of this model in ``out_dir`` are kept, unfinished ones continued; link
    probes are redone unless every device already has them. The local
    workers started here measure the model without their CPU quota (CPU-time
    profiles do not depend on it; see :class:`_Unthrottled`) unless
    ``throttled``.
    """
    from pathlib import Path

    from ..modelspec import capture_model
    from ..runtime.launcher import LocalCluster

    t0 = time.monotonic()
    sink = sink or ProgressSink()
    if not (rows_points >= 2 and reps >= 1 and warmup >= 0):
        raise UserError(f"--points must be >= 2, --reps >= 1 and --warmup >= 0 (got {rows_points}, {reps}, {warmup})")
    g = capture_model(model, input_shape).graph
    fp = g.fingerprint()
    names = cluster.names
    if evict_mb is None:
        evict_mb = auto_evict_mb(g, len(names))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    be_key = profile_backend(backend, precision)
    have = existing_profiles(out_dir, names, model, fp, be_key)
    complete = {d for d, p in have.items() if p.complete}
    partial = {d: p for d, p in have.items() if not p.complete}
    todo = [d for d in names if d not in complete]
    need_probe = probe and (len(names) > 1) and not all(
        d in complete and have[d].runtime is not None and set(have[d].links) >= set(names) - {d} for d in names)
    if keys is None and cluster.security.auth == "curve":
        keys = cluster.security.keys
    local = None
    if addresses is None:
        addresses = {d.name: d.address for d in cluster.devices if not d.is_local}
        if (todo or need_probe) and any(d.is_local for d in cluster.devices):
            sink.note("starting the local workers…")
            local = LocalCluster(cluster, keys=keys).start()
            addresses.update(local.addresses)
            cpu_modes = {**(cpu_modes or {}), **local.cpu_modes()}
    runs: dict[str, DeviceRun] = {}
    links: dict[str, dict[str, LinkProbe]] = {d: dict(have[d].links) if d in have else {} for d in names}
    runtime: dict[str, RuntimeCosts | None] = {d: have[d].runtime if d in have else None for d in names}
    emulation: dict[str, Any] = {d: have[d].emulation if d in have else None for d in names}
    try:
        if todo or need_probe:
            with RemoteProfiler(cluster, addresses, keys=keys, cpu_modes=cpu_modes, timeout_s=timeout_s) as rp:
                rp.connect()
                for d in names:
                    if rp.emulated(d):
                        emulation[d] = {"mode": rp.cpu_modes[d], "cpu_share": cluster.device(d).cpu_share}
                    elif d in todo:
                        emulation[d] = None
                if need_probe:
                    rp.setup_links()
                    links, rt = rp.probe_links(sink.links)
                    runtime = dict(rt)

                def saved(run: DeviceRun, key: tuple[str, str]) -> None:
                    prof = assemble(run, model, fp, base=partial.get(run.device), links=links[run.device],
                                    runtime=runtime[run.device], emulation=emulation[run.device],
                                    backend=be_key, complete=False)
                    _save_atomic(prof, Path(out_dir) / profile_file(run.device, be_key))

                if todo:
                    skip = {d: set(p.stages) | set(p.whole) for d, p in partial.items()}
                    known = {d: {**{k: t[-1][1] for k, t in p.stages.items()}, **p.whole} for d, p in partial.items()}
                    free = _Unthrottled(None if throttled else local)
                    try:
                        runs = rp.profile_model(model, input_shape, devices=todo, skip=skip, known_full=known,
                                                rows_points=rows_points,
                                                reps=reps, warmup=warmup, backend=backend, precision=precision,
                                                seed=seed, evict_mb=evict_mb, on_segment=saved,
                                                progress=sink.device)
                    finally:
                        free.restore()
    finally:
        if local is not None:
            local.stop()
    profiles: dict[str, DeviceProfile] = {}
    for d in names:
        if d in runs:
            prof = assemble(runs[d], model, fp, base=partial.get(d), links=links[d], runtime=runtime[d],
                            emulation=emulation[d], backend=be_key, graph=g)
        else:
            prof = have[d]
            prof.links, prof.runtime = links[d], runtime[d]
        _save_atomic(prof, Path(out_dir) / profile_file(d, be_key))
        profiles[d] = prof
    points = sum(len(t) for r in runs.values() for t in r.stages.values())
    return ProfileJob(profiles, str(out_dir), time.monotonic() - t0, sorted(runs), sorted(set(partial) & set(runs)),
                      sorted(complete), need_probe, points)
