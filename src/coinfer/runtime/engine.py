"""Execute one device's lowered program for one request.

The engine walks the program (see :mod:`coinfer.plan.lower`): waits for
pieces to arrive, computes parts with the core's :class:`PartRunner`, sends
pieces to peers (shaped, asynchronous), serves or masters dynamic tile
stages, and finally returns the output to the coordinator. Every instruction
leaves a trace event (wall-clock milliseconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import torch

from ..graph.geometry import Region
from ..plan.lower import INPUT, Instr
from . import dilation
from .deployment import Deployment
from .schedulers import make_scheduler
from .store import RequestAborted, RequestState


class WorkerIO(Protocol):
    """What the engine needs from its worker: sending to peers and to the coordinator."""

    name: str

    def send_tensor(self, peer: str, header: dict[str, Any], value: torch.Tensor, *, shaped: bool) -> None: ...

    def send_control(self, peer: str, header: dict[str, Any]) -> None: ...


def _now_ms() -> float:
    return time.time() * 1e3


def _last_uses(program: list[Instr]) -> dict[int, list[int]]:
    """instruction index -> tensors whose last use is that instruction."""
    last: dict[int, int] = {}
    for i, ins in enumerate(program):
        if ins.op in ("recv", "send", "output"):
            last[ins.tensor] = i
        elif ins.op in ("compute", "dyn_master"):
            last[ins.tensor - 1] = i
            last.setdefault(ins.tensor, i)
    out: dict[int, list[int]] = {}
    for t, i in last.items():
        out.setdefault(i, []).append(t)
    return out


def run_program(d: Deployment, st: RequestState, io: WorkerIO, timeout_s: float,
                local_pool: ThreadPoolExecutor | None = None) -> None:
    """Run ``d.program`` for request ``st``; raises RequestAborted on cancel/timeout."""
    me = io.name
    drops = _last_uses(d.program)
    ev = st.events
    for i, ins in enumerate(d.program):
        op = ins.op
        t0 = _now_ms()
        if op == "input":
            st.wait_for(lambda: st.input is not None, timeout_s, "the request input")
            assert st.input is not None
            st.store.add(INPUT, ins.region, st.input)
        elif op == "recv":
            key = (ins.tensor, ins.region, ins.peer or "")
            v = st.take(key, timeout_s)
            st.store.add(ins.tensor, ins.region, v)
            sent, arrived = st.arrivals.get(key, (t0, _now_ms()))
            ev.append(["recv", ins.text(), sent, arrived, {"bytes": ins.nbytes, "waited_ms": _now_ms() - t0,
                                                          "peer": ins.peer or ""}])
            t0 = -1.0
        elif op == "compute":
            info = d.lowered.parts[(ins.tensor, ins.part)]  # type: ignore[index]
            with dilation.section():
                c0 = time.thread_time()
                x = _assemble(d, st, ins.tensor - 1, info.in_region)
                runner = d.runner(ins.tensor, ins.part)  # type: ignore[arg-type]
                c1 = time.thread_time()
                y = runner(x)
                c2 = time.thread_time()
                st.store.add(ins.tensor, info.out_region, y)
                c3 = time.thread_time()
            ev.append(["compute", ins.text(), t0, _now_ms(), {"flops": info.flops, "backend": runner.backend,
                                                              "precision": runner.precision,
                                                              "cpu_ms": round((c3 - c0) * 1e3, 3),
                                                              "run_cpu_ms": round((c2 - c1) * 1e3, 3)}])
            t0 = -1.0
        elif op == "send":
            with dilation.section(exclusive=False):
                c0 = time.thread_time()
                v = _assemble(d, st, ins.tensor, ins.region)
                hdr = {"kind": "data", "dep": d.dep, "req": st.req, "tensor": ins.tensor,
                       "region": None if ins.region is None else list(ins.region), "src": me}
                io.send_tensor(ins.peer or "", hdr, v, shaped=True)
                c1 = time.thread_time()
            ev.append(["send", ins.text(), t0, _now_ms(), {"bytes": ins.nbytes, "cpu_ms": round((c1 - c0) * 1e3, 3)}])
            t0 = -1.0
        elif op == "dyn_master":
            _dyn_master(d, st, io, ins.tensor, timeout_s, local_pool)
        elif op == "dyn_worker":
            _dyn_worker(d, st, io, ins.tensor, timeout_s)
        elif op == "output":
            with dilation.section(exclusive=False):
                y = _assemble(d, st, ins.tensor, ins.region)
                io.send_tensor(d.coord, {"kind": "result", "dep": d.dep, "req": st.req}, y, shaped=False)
        for t in drops.get(i, ()):
            if op != "output":
                st.store.drop(t)


def _dyn_master(d: Deployment, st: RequestState, io: WorkerIO, stage: int, timeout_s: float,
                local_pool: ThreadPoolExecutor | None) -> None:
    """Hand out the tiles of dynamic ``stage`` to whichever participant is free (source side).

    With ``strategy.params.tile_deadline_ms`` (ADCNN; off by default) tiles
    whose output has not arrived that long after the stage started are
    zero-filled, and a ``late`` trace event counts them.
    """
    me = io.name
    lw = d.lowered
    info = lw.stages[stage]
    tiles = sorted(p for (s, p) in lw.parts if s == stage)
    sched = make_scheduler(d.plan.strategy.params, tiles, list(info.devices),
                           {p: lw.parts[(stage, p)].device for p in tiles},
                           state=d.sched_state.setdefault(stage, {}))
    deadline_ms = d.plan.strategy.params.get("tile_deadline_ms")
    t_deadline = None if deadline_ms is None else time.monotonic() + float(deadline_ms) / 1e3
    x_full = st.store.assemble(stage - 1, _full(info.in_shape))
    alloc = torch.empty if t_deadline is None else torch.zeros
    out = alloc(info.out_shape, dtype=x_full.dtype) if len(info.out_shape) == 4 else None
    inflight: dict[str, int] = {dev: 0 for dev in info.devices}
    done = 0
    pool = local_pool or ThreadPoolExecutor(1)
    local_futs: list[Future[None]] = []
    lock = threading.Lock()

    def local_tile(p: int, x: torch.Tensor) -> None:
        t0 = _now_ms()
        with dilation.section():
            y = d.runner(stage, p)(x)
        ms = _now_ms() - t0
        st.events.append(["compute", f"compute s{stage}.p{p} (tile)", t0, t0 + ms,
                      {"tile": True, "backend": d.runner(stage, p).backend}])
        with st.cv:
            st.tile_outs.append((stage, p, me, ms, y))
            st.cv.notify_all()

    def dispatch() -> None:
        for dev in info.devices:
            while inflight[dev] < sched.depth:
                p = sched.next_tile(dev)
                if p is None:
                    break
                pinfo = lw.parts[(stage, p)]
                r = pinfo.in_region
                x = x_full if r is None else x_full[:, :, r[0]:r[1], r[2]:r[3]]
                inflight[dev] += 1
                if dev == me:
                    local_futs.append(pool.submit(local_tile, p, x.contiguous()))
                else:
                    t0 = _now_ms()
                    with dilation.section(exclusive=False):
                        io.send_tensor(dev, {"kind": "tile", "dep": d.dep, "req": st.req, "tensor": stage - 1,
                                             "stage": stage, "part": p}, x.contiguous(), shaped=True)
                    st.events.append(["send", f"send tile s{stage}.p{p} to {dev}", t0, _now_ms(),
                                      {"bytes": pinfo.in_bytes}])

    with lock:
        dispatch()
    late = 0
    while done < len(tiles):
        if t_deadline is not None and not _wait_until(st, t_deadline, timeout_s, f"tiles of stage {stage}"):
            late = len(tiles) - done
            break
        st.wait_for(lambda: bool(st.tile_outs), timeout_s, f"tiles of stage {stage}")
        with st.cv:
            s, p, dev, ms, y = st.tile_outs.popleft()
        if s != stage:
            continue
        r = lw.parts[(stage, p)].out_region
        with dilation.section(exclusive=False):
            if out is None or r is None:
                out = y
            else:
                out[:, :, r[0]:r[1], r[2]:r[3]] = y
        inflight[dev] = max(0, inflight[dev] - 1)
        sched.done(dev, p, ms)
        done += 1
        dispatch()
    if late:
        for f in local_futs:
            f.cancel()
        t = _now_ms()
        st.events.append(["late", f"zero-filled {late} late tiles of s{stage}", t, t, {"late_tiles": late}])
    else:
        for f in local_futs:
            f.result()
    for dev in info.devices:
        if dev != me:
            io.send_control(dev, {"kind": "tiles_done", "dep": d.dep, "req": st.req, "stage": stage})
    assert out is not None
    st.store.add(stage, _full(info.out_shape), out)
    if local_pool is None:
        pool.shutdown(wait=False)


def _wait_until(st: RequestState, t_deadline: float, timeout_s: float, what: str) -> bool:
    """Wait for a tile output until ``t_deadline`` (monotonic s); False when the deadline passed."""
    with st.cv:
        while not st.tile_outs:
            left = t_deadline - time.monotonic()
            if left <= 0:
                return False
            st.cv.wait(min(left, 0.5))
    st.wait_for(lambda: True, timeout_s, what)  # raises if the request was aborted meanwhile
    return True


def _dyn_worker(d: Deployment, st: RequestState, io: WorkerIO, stage: int, timeout_s: float) -> None:
    """Compute tiles of dynamic ``stage`` as the source hands them out, until it says done.

    Tiles still queued when "done" arrives (only after a tile deadline) are dropped.
    """
    src = d.plan.source
    while True:
        st.wait_for(lambda: any(t[0] == stage for t in st.tiles) or stage in st.tiles_done,
                    timeout_s, f"tiles of stage {stage}")
        with st.cv:
            item = next((t for t in st.tiles if t[0] == stage), None)
            if item is None or stage in st.tiles_done:
                for t in [t for t in st.tiles if t[0] == stage]:
                    st.tiles.remove(t)
                return
            st.tiles.remove(item)
        _, p, x, _ = item
        t0 = _now_ms()
        with dilation.section():
            y = d.runner(stage, p)(x)
        ms = _now_ms() - t0
        st.events.append(["compute", f"compute s{stage}.p{p} (tile)", t0, t0 + ms,
                      {"tile": True, "backend": d.runner(stage, p).backend}])
        with dilation.section(exclusive=False):
            io.send_tensor(src, {"kind": "tile_out", "dep": d.dep, "req": st.req, "tensor": stage,
                                 "stage": stage, "part": p, "device": io.name, "ms": ms}, y, shaped=True)


def _shape(d: Deployment, tensor: int) -> tuple[int, ...]:
    """Shape of the output of stage ``tensor`` (-1: the model input)."""
    st = d.lowered.stages
    return st[0].in_shape if tensor == INPUT else st[tensor].out_shape


def _full(shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    return (0, shape[2], 0, shape[3]) if len(shape) == 4 else None


def _assemble(d: Deployment, st: RequestState, tensor: int, region: Region | None) -> torch.Tensor:
    """``region`` of ``tensor`` from the pieces held; ``None`` (the whole tensor) is its full extent when
    spatial, so a map held as row pieces (e.g. gathered at the source) is assembled too."""
    return st.store.assemble(tensor, region or _full(_shape(d, tensor)))


RunFn = Callable[[Deployment, RequestState, WorkerIO, float], None]
__all__ = ["RequestAborted", "WorkerIO", "run_program"]
