"""Discrete-event simulation of the lowered per-device programs (torch-free).

:func:`simulate` executes exactly the programs of a
:class:`~coinfer.plan.lower.Lowered` — the ones the runtime runs — with
costs from a :class:`~coinfer.cost.model.CostModel`:

* **Programs run in order on each device.** ``compute`` occupies the device's
  single compute queue (its ``threads`` only change its speed, through the
  cost model) from the moment the preceding instructions are done for its
  part's :meth:`~coinfer.cost.model.CostModel.part_ms`; ``recv`` waits until
  the matching ``send`` has arrived; ``send`` is asynchronous: it is queued
  on the link and the program goes on, so communication overlaps compute.
* **Links.** Each direction of each device pair is a FIFO with the link's
  bandwidth and latency: a transfer starts when it is issued and the link is
  free, holds the link for ``wire bytes × 8 / bandwidth`` (integrated over a
  bandwidth trace), and arrives one latency after its last bit. By default a
  device's outgoing links do **not** share a NIC (``nic="per_link"``): the
  cluster file gives each pair its own bandwidth, as a switched full-duplex
  network does, and the runtime's emulation shapes each link with its own
  token bucket — the testbed the simulator is validated against.
  ``nic="shared"`` serialises all of a device's outgoing transfers on one
  queue instead (a single radio, e.g. a Pi on WiFi scattering to many peers).
* **Dynamic stages** (``dyn_master`` / ``dyn_worker``: DeepThings' work
  stealing, ADCNN's dynamic scheduling) run as the runtime's master does: a
  tile pool at the source with the runtime's tile scheduler
  (:mod:`coinfer.runtime.schedulers`, pure policy; ``steal`` by default —
  each device first takes the tiles the plan assigns it, then steals from
  the longest queue). When the source reaches ``dyn_master`` it pushes every
  pool device up to the scheduler's depth (1) of tiles: the tile's input
  region goes over the link, the device computes it once it has reached
  ``dyn_worker`` and is free, and sends the output region back; the arrival
  of an output frees the device for its next tile. The source computes its
  own tiles when it is in the pool. The stage ends at the source when the
  last output has arrived; a worker leaves it when the master's "done"
  message reaches it (one latency later).

* **The runtime's own costs** (``overheads=True``, the default): every
  device's CPU (:class:`~coinfer.cost.runtime.CpuBucket`: the cgroup quota
  of an emulated device, a plain core otherwise) is drawn on by its program
  thread and its transport threads alike: a compute costs the part's CPU
  time (:meth:`CostModel.cpu_ms`) plus the input assembly; a send costs its
  program-thread part before the bytes leave; when the link delivers, the
  sender's transport wakes up and hands the bytes over, then the receiver's
  transport takes them — each on its device's quota, concurrently with the
  program (a period the program used up delays them). The request starts with the coordinator's input
  reaching the source (an unshaped loopback hop, then a receive) and ends
  when the output reaches the coordinator — what the runtime measures.
  Per-message costs come from the device's profile (probed through the
  runtime) or :data:`~coinfer.cost.runtime.BUILTIN_RUNTIME`.
  ``overheads=False`` gives the ideal machine: free messages, devices at
  their steady share. Emulated devices are processes of one host: when
  more of them take part than it has cores, a running device gets
  ``cores / running`` of a core (a second pass, over the first pass's
  concurrency).

Transfers and computations become events of a :class:`~coinfer.trace.Trace`
(kind ``simulated``) named by the instruction texts, the format the runtime
writes, so one viewer shows prediction and measurement side by side. A send
event spans the bytes on the wire, a recv event the bytes arriving.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..cluster import ClusterError
from ..compress.codecs import cpu_us
from ..cost.bandwidth import BandwidthTrace
from ..cost.model import CostModel
from ..cost.runtime import CpuBucket, RuntimeCosts
from ..errors import CoinferError
from ..graph.geometry import PartGeom, Region, part_geometry
from ..plan.lower import INPUT, Lowered
from ..trace import Trace
from .result import SimResult

NIC_MODES = ("per_link", "shared")


class SimulationError(RuntimeError, CoinferError):
    """The programs cannot complete (a lowering bug: a recv without its send, a deadlock)."""


@dataclass(frozen=True)
class _Xfer:
    sender: str
    start: float  # first bit on the wire
    end: float  # last bit on the wire
    lat: float
    wire: float  # expected on-wire bytes
    decode_ms: float = 0.0  # the receiver's CPU to decode it (full speed; codecs.cpu_us)

    @property
    def arrival(self) -> float:
        return self.end + self.lat


MailKey = tuple[str, str, int, Region | None]


class _Engine:
    def __init__(self, lowered: Lowered, costs: CostModel, nic: str, overheads: bool = True,
                 speed: tuple[list[float], list[float]] | None = None, record: bool = False,
                 tracing: bool = True) -> None:
        if nic not in NIC_MODES:
            raise ValueError(f"nic must be one of {NIC_MODES}, got {nic!r}")
        self.L = lowered
        self.costs = costs
        self.nic = nic
        self.overheads = overheads
        self.tracing = tracing
        plan = lowered.plan
        self.src = plan.source
        self.plan = plan
        self.devs = list(lowered.programs)
        missing = [d for d in self.devs if d not in costs.cluster.names]
        if missing:
            raise ClusterError(
                f"the plan uses device(s) {missing} that the cluster does not have (devices: "
                f"{', '.join(costs.cluster.names)}); simulate with the cluster the plan was made for or "
                f"re-plan with coinfer plan --cluster"
            )
        self.t = {d: 0.0 for d in self.devs}
        self.pc = {d: 0 for d in self.devs}
        self.busy = {d: 0.0 for d in self.devs}
        self.tx = {d: 0.0 for d in self.devs}
        self.rx = {d: 0.0 for d in self.devs}
        self.egress_free: dict[Any, float] = {}
        self.mail: dict[MailKey, deque[_Xfer]] = {}
        self.waiting: dict[MailKey, str] = {}
        self.work: deque[str] = deque(self.devs)
        self.reach: dict[int, dict[str, float]] = {}
        self.trace = Trace(meta={"kind": "simulated"})
        self.wire_total = 0.0
        self.raw_total = 0
        self.output_ms: float | None = None
        self.latency: float | None = None
        self.rt: dict[str, RuntimeCosts] = {}
        self.cpu: dict[str, CpuBucket] = {}
        if overheads:
            for d in self.devs:
                self.rt[d] = costs.runtime_costs(d)
                local = costs.device(d).is_local
                self.cpu[d] = CpuBucket(costs.quota(d), speed if local else None, record and local)
            self._start()

    # -- the runtime's request start ---------------------------------------------
    def _start(self) -> None:
        """The coordinator sends the input to the source and ``run`` to the others (unshaped, loopback)."""
        import math

        in_bytes = 4 * math.prod(self.L.stages[0].in_shape) if self.L.stages else 0
        for d in self.devs:
            rt = self.rt[d]
            nb = in_bytes if d == self.src else 64
            self.t[d] = self.cpu[d].run(rt.loopback_ms(nb), rt.recv_ms(nb))

    # -- links ----------------------------------------------------------------
    def _transfer(self, a: str, b: str, nbytes: int, tensor: int, issue: float, name: str, **args: Any) -> _Xfer:
        res: Any = (a, b) if self.nic == "per_link" else a
        start = max(issue, self.egress_free.get(res, 0.0))
        codec, quant = self.plan.wire_for(tensor)
        dec_ms = cpu_us(codec, quant, nbytes, dense=tensor == INPUT)[1] / 1e3 if self.overheads else 0.0
        ser = self.costs.serialize_ms(a, b, nbytes, codec, quant, start)
        end = start + ser
        self.egress_free[res] = end
        lat = self.costs.link(a, b)[1]
        wire = self.costs.wire_bytes(nbytes, codec, quant)
        self.tx[a] += ser
        self.wire_total += wire
        self.raw_total += nbytes
        if self.tracing:
            self.trace.add(a, "send", name, start, end, peer=b, bytes=nbytes, wire_bytes=round(wire), **args)
        return _Xfer(a, start, end, lat, wire, dec_ms)

    def _arrive(self, d: str, x: _Xfer, nbytes: int, now: float) -> float:
        """When the program on ``d`` (at ``now``) has message ``x``: its arrival plus the receiver's handling."""
        if not self.overheads:
            return x.arrival
        # the link delivers at x.arrival: the sender's transport wakes up (whole-ms polls) and hands the
        # bytes over — on the sender's quota — then the receiver's transport takes them — on its quota
        # (all the device's threads share it: a period the program used up delays them, and vice versa)
        rs, rr = self.rt[x.sender], self.rt[d]
        sent = self.cpu[x.sender].side(x.arrival + rs.delivery_ms, rs.send_io_ms(nbytes))
        got = self.cpu[d].side(sent + rr.loopback_ms(nbytes), rr.recv_ms(nbytes) + x.decode_ms)
        return max(got, now)

    def _received(self, d: str, x: _Xfer, name: str, ready: float | None = None, **args: Any) -> None:
        s = x.start + x.lat
        self.rx[d] += x.arrival - s
        if self.tracing:
            self.trace.add(d, "recv", name, s, x.arrival if ready is None else max(ready, x.arrival),
                           peer=x.sender, **args)

    def _send_cpu(self, d: str, t: float, nbytes: int, tensor: int | None) -> float:
        """The sender's program-thread part of a send, encoding in the tensor's wire codec included
        (``None``: the result, always raw; the transport's part runs at delivery: ``_arrive``)."""
        if not self.overheads:
            return t
        enc_ms = 0.0
        if tensor is not None:
            codec, quant = self.plan.wire_for(tensor)
            enc_ms = cpu_us(codec, quant, nbytes, dense=tensor == INPUT)[0] / 1e3
        return self.cpu[d].run(t, self.rt[d].send_ms(nbytes) + enc_ms)

    def _geom(self, stage: int, part: int) -> PartGeom:
        """The part's geometry (rebuilt when the Lowered came without it, e.g. from data)."""
        geom = self.L.geoms.get((stage, part))
        if geom is None:
            st, info = self.L.stages[stage], self.L.parts[(stage, part)]
            geom = part_geometry(self.L.graph, st.start, st.end, info.out_region, st.halo)
            self.L.geoms[(stage, part)] = geom
        return geom

    def _compute(self, d: str, start: float, stage: int, part: int, name: str, **args: Any) -> float:
        geom = self._geom(stage, part)
        if self.overheads:
            info = self.L.parts[(stage, part)]
            c = self.costs.cpu_ms(d, geom) + self.rt[d].compute_ms(info.in_bytes)
            start = max(start, self.cpu[d].free)
            end = self.cpu[d].run(start, c)
        else:
            end = start + self.costs.part_ms(d, geom)
        self.busy[d] += end - start
        if self.tracing:
            self.trace.add(d, "compute", name, start, end, flops=geom.flops, **args)
        return end

    # -- programs ---------------------------------------------------------------
    def run(self) -> None:
        while self.work:
            d = self.work.popleft()
            self._advance(d)
        stuck = [d for d in self.devs if self.pc[d] < len(self.L.programs[d])]
        if stuck:
            where = "; ".join(f"{d} at #{self.pc[d]} {self.L.programs[d][self.pc[d]].text()}" for d in stuck)
            raise SimulationError(f"the programs deadlock: {where} (a lowering bug; please report it)")
        left = [k for k, q in self.mail.items() if q]
        if left:
            raise SimulationError(f"sends never received: {left[:3]} (a lowering bug; please report it)")
        if self.output_ms is None:
            raise SimulationError("the source program has no output instruction (a lowering bug)")

    def _advance(self, d: str) -> None:
        prog = self.L.programs[d]
        while self.pc[d] < len(prog):
            i = self.pc[d]
            ins = prog[i]
            op = ins.op
            if op == "send":
                assert ins.peer is not None
                self.t[d] = self._send_cpu(d, self.t[d], ins.nbytes, ins.tensor)
                x = self._transfer(d, ins.peer, ins.nbytes, ins.tensor, self.t[d],
                                   ins.text() if self.tracing else "", instr=i)
                key = (d, ins.peer, ins.tensor, ins.region)
                self.mail.setdefault(key, deque()).append(x)
                w = self.waiting.pop(key, None)
                if w is not None:
                    self.work.append(w)
            elif op == "recv":
                assert ins.peer is not None
                key = (ins.peer, d, ins.tensor, ins.region)
                q = self.mail.get(key)
                if not q:
                    self.waiting[key] = d
                    return
                x = q.popleft()
                ready = self._arrive(d, x, ins.nbytes, self.t[d])
                self._received(d, x, ins.text() if self.tracing else "", ready, instr=i, bytes=ins.nbytes)
                self.t[d] = max(self.t[d], ready)
            elif op == "compute":
                assert ins.part is not None
                self.t[d] = self._compute(d, self.t[d], ins.tensor, ins.part, ins.text() if self.tracing else "",
                                          instr=i)
            elif op in ("dyn_master", "dyn_worker"):
                reach = self.reach.setdefault(ins.tensor, {})
                reach.setdefault(d, self.t[d])
                pool = set(self.L.stages[ins.tensor].devices) | {self.src}
                if not pool <= set(reach):
                    return  # wait for the rest of the pool; the last to arrive runs the stage
                self._run_pool(ins.tensor, reach)
                continue  # _run_pool advanced every member's pc, including ours
            elif op == "output":
                self.output_ms = self.t[d]
                self.latency = self.t[d]
                if self.overheads:  # the result goes back to the coordinator (unshaped), which decodes it
                    st = self.L.stages[-1]
                    import math

                    nb = 4 * math.prod(st.out_shape)
                    rt = self.rt[d]
                    t = self._send_cpu(d, self.t[d], nb, None)
                    t = self.cpu[d].side(t, rt.send_io_ms(nb))  # unshaped: the transport sends at once
                    self.latency = t + rt.loopback_ms(nb) + rt.recv_ms(nb)
            self.pc[d] = i + 1

    def _run_pool(self, s: int, reach: dict[str, float]) -> None:
        """A dynamic stage, as the runtime's master runs it (``runtime.engine._dyn_master``).

        The tile policy is the runtime's own scheduler (DeepThings' work
        stealing by default): the master fills every pool device up to the
        scheduler's depth at once, then gives a device its next tile when one
        of its outputs arrives.
        """
        from ..runtime.schedulers import make_scheduler  # pure policy, torch-free

        src = self.src
        members = list(self.L.stages[s].devices)
        m0 = reach[src]
        infos = {p: info for (st, p), info in self.L.parts.items() if st == s}
        tiles = sorted(infos)
        sched = make_scheduler(self.L.plan.strategy.params, tiles, members,
                               {p: infos[p].device for p in tiles}, now_ms=m0)
        free = {d: reach.get(d, m0) for d in members}
        inflight = {d: 0 for d in members}
        # heap of (output reaches the master, seq, device, tile, compute ms, transfer or None)
        done_at: list[tuple[float, int, str, int, float, Any]] = []
        seq = 0
        done = m0

        def dispatch(now: float) -> None:
            nonlocal seq
            for d in members:
                while inflight[d] < sched.depth:
                    p = sched.next_tile(d)
                    if p is None:
                        break
                    info = infos[p]
                    inflight[d] += 1
                    name = f"compute s{s}.p{p} (tile)"
                    if d == src:
                        begin = max(now, free[d])
                        end = self._compute(d, begin, s, p, name, tile=True)
                        free[d] = end
                        arrive = end
                    else:
                        issue = self._send_cpu(src, now, info.in_bytes, s - 1)
                        x = self._transfer(src, d, info.in_bytes, s - 1, issue, f"send tile s{s}.p{p} to {d}",
                                           tile=True)
                        got = self._arrive(d, x, info.in_bytes, free[d])
                        self._received(d, x, f"recv tile s{s}.p{p} from {src}", got, tile=True)
                        begin = max(got, free[d])
                        end = self._compute(d, begin, s, p, name, tile=True)
                        free[d] = self._send_cpu(d, end, info.out_bytes, s)
                        y = self._transfer(d, src, info.out_bytes, s, free[d], f"send tile_out s{s}.p{p} to {src}",
                                           tile=True)
                        # the master handles the output when it arrives (in arrival order, below), not now:
                        # charging its CPU at dispatch would block its next sends until this tile is back
                        heapq.heappush(done_at, (y.arrival, seq, d, p, end - begin, y))
                        seq += 1
                        continue
                    heapq.heappush(done_at, (arrive, seq, d, p, end - begin, None))
                    seq += 1

        dl = self.L.plan.strategy.params.get("tile_deadline_ms")  # ADCNN: late tiles are zero-filled
        t_dl = None if dl is None else m0 + float(dl)
        dispatch(m0)
        master = m0
        while done_at:
            t, _, d, p, ms, y = heapq.heappop(done_at)
            inflight[d] -= 1
            if t_dl is not None and t > t_dl:  # late: the master has moved on (zero-filled)
                done = max(done, t_dl)
                continue
            if y is not None:
                nb = infos[p].out_bytes
                t = self._arrive(src, y, nb, master)
                self._received(src, y, f"recv tile_out s{s}.p{p} from {d}", t, tile=True)
            master = max(master, t)
            sched.done(d, p, ms, now_ms=t)
            done = max(done, t)
            dispatch(t)
        for d in set(members) | {src}:
            if d == src:
                self.t[d] = max(self.t[d], done)
            else:  # a worker leaves the stage when the master's "tiles done" reaches it
                self.t[d] = max(self.t[d], free[d], done + self.costs.link(src, d)[1])
            self.pc[d] += 1
            if d not in self.work:
                self.work.append(d)

    # -- result ------------------------------------------------------------------
    def result(self) -> SimResult:
        assert self.output_ms is not None
        T = self.latency if self.latency is not None else self.output_ms
        idle = {d: max(0.0, T - self.busy[d]) for d in self.devs}
        dev_e = {d: self.costs.energy_j(d, self.busy[d], idle[d], self.tx[d], self.rx[d]) for d in self.devs}
        dyn_e = sum(self.costs.dynamic_energy_j(d, self.busy[d], self.tx[d], self.rx[d]) for d in self.devs)
        plan = self.L.plan
        costs = self.costs.describe()
        self.trace.meta.update({
            "kind": "simulated", "latency_ms": T, "model": plan.model.name, "strategy": plan.strategy.name,
            "devices": self.devs, "nic": self.nic, "costs": costs, "overheads": self.overheads,
        })
        return SimResult(
            latency_ms=T, busy_ms=dict(self.busy), idle_ms=idle, tx_ms=dict(self.tx), rx_ms=dict(self.rx),
            bytes_moved=round(self.wire_total), raw_bytes=self.raw_total,
            energy_j=sum(dev_e.values()), dynamic_energy_j=dyn_e, device_energy_j=dev_e,
            trace=self.trace, costs=costs,
        )


def _host_cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        return os.cpu_count() or 1


def simulate(lowered: Lowered, costs: CostModel, *, bandwidth_trace: BandwidthTrace | None = None,
             trace_start_s: float = 0.0, nic: str = "per_link", overheads: bool = True,
             host_cores: int | None = None) -> SimResult:
    """Simulate one request of ``lowered`` with ``costs`` (see the module docstring for the model).

    ``bandwidth_trace`` (with the request starting at ``trace_start_s`` into
    it) overrides the cost model's trace. ``nic``: ``per_link`` (default) or
    ``shared`` — whether a device's outgoing transfers share one queue.
    ``overheads``: model the runtime's own CPU costs and the emulated
    devices' quotas (default), or the ideal machine. When more local
    (emulated) devices take part than this host has cores (``host_cores``,
    default: this machine's), their processes share the cores: a first
    pass measures how many run at every moment, the second runs each at
    ``min(1, cores / running devices)`` of a core then
    (:func:`~coinfer.cost.runtime.core_share`).
    """
    from ..cost.runtime import core_share

    if bandwidth_trace is not None:
        costs = costs.with_trace(bandwidth_trace, trace_start_s)
    cores = host_cores or _host_cores()
    local = [d for d in lowered.programs if costs.device(d).is_local] if overheads else []
    contend = len(local) > cores
    eng = _Engine(lowered, costs, nic, overheads, record=contend, tracing=not contend)
    eng.run()
    if contend:  # the first pass (every device at full speed) only measures the concurrency
        runs = [eng.cpu[d].runs or [] for d in local]
        eng = _Engine(lowered, costs, nic, overheads, speed=core_share(runs, cores))
        eng.run()
    res = eng.result()
    res.trace.meta["host_cores"] = cores if contend else None
    return res
