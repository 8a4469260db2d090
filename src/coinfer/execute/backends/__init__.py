"""Execution backends for the per-part function (see :mod:`.base` and docs/backends.md).

:func:`build_part` is the one entry point: ``build_part(cm, geom, backend,
precision, threads)`` returns a :class:`CompiledPart`. It

* checks the request (:func:`check_backend`: a backend not installed →
  :class:`BackendError` naming the extra; a precision the backend lacks →
  the supported list);
* resolves ``auto`` by building every installed candidate that supports the
  precision (:func:`candidates`) and timing them on the part (interleaved
  calls, the minimum of each, in thread CPU time for one-thread devices so
  other processes' load cannot sway it; :data:`AUTO_REPS`, more rounds when
  the call is close) and deciding with hysteresis (:func:`decide`): a
  candidate displaces the preferred one (onnxruntime, then openvino, then
  torch) only when it is more than :data:`AUTO_MARGIN` faster, so timing
  noise cannot flip the choice between deployments; a clear decision is
  remembered on disk (``$COINFER_CACHE/backends/auto.json``,
  keyed by the part program, precision, threads, machine and library
  versions) so later deployments build only the winner
  (``COINFER_AUTO_CACHE=0`` disables it);
* falls back to ``torch`` (exact, fp32 stays fp32) with one warning line
  naming the op when a backend cannot export a part;
* shares compiled parts between parts that are identical up to translation
  (:class:`PartCache`, keyed by the part program's signature: the shape of
  the input, every slice, padding and divisor), so a grid of interior tiles
  builds one session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import torch

from ...graph.capture import CapturedModel
from ...graph.geometry import PartGeom
from .base import (
    BACKEND_CHOICES,
    BACKENDS,
    PRECISIONS,
    BackendError,
    CompiledPart,
    ExportUnsupported,
    available_backends,
    candidates,
    check_backend,
)
from .optimize import PartProgram, part_program

__all__ = ["BACKENDS", "BACKEND_CHOICES", "PRECISIONS", "BackendError", "CompiledPart", "ExportUnsupported",
           "PartCache", "available_backends", "build_part", "candidates", "check_backend", "decide",
           "program_signature"]

log = logging.getLogger("coinfer.backends")
AUTO_REPS = 2  # timed calls per candidate when resolving auto (after one warm-up call each)
AUTO_MORE_REPS = 3  # extra rounds when the first ones leave the decision close to the margin
AUTO_MARGIN = 0.10  # a candidate must beat the preferred one by > 10 % to displace it
AUTO_PREFERENCE = ("onnxruntime", "openvino", "torch")  # who keeps a tie (fastest on the zoo first)
_WARNED: set[str] = set()


def program_signature(prog: PartProgram) -> Hashable:
    """What determines a compiled part, up to translation: shapes, ops, slices, pads, divisors."""
    sig: list[Any] = [prog.in_shape, prog.out_shape]
    for st in prog.steps:
        sig.append((st.out, st.node.name, tuple((s.buf, s.slice) for s in st.srcs), tuple(st.pads),
                    st.geom.pool_counts, st.whole, st.act.name if st.act else None, tuple(st.fused),
                    None if st.node.is_feature_map else st.geom.region))  # a features part's range
    return tuple(sig)


def _warn_fallback(backend: str, e: ExportUnsupported, where: str) -> None:
    msg = f"{backend} cannot run {where}: {e}; using torch for it (exact)"
    key = f"{backend}:{e.op}"
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(msg)
        import sys

        print(f"warning: {msg}", file=sys.stderr, flush=True)


def _make(name: str, cm: CapturedModel, geom: PartGeom, precision: str, threads: int,
          prog: PartProgram) -> CompiledPart:
    if name == "torch":
        from .torch_backend import TorchPart

        return TorchPart(cm, geom, precision, program=prog)
    if name == "onnxruntime":
        from .ort_backend import OrtPart

        return OrtPart(cm, geom, precision, threads=threads, program=prog)
    if name == "openvino":
        from .openvino_backend import OpenVinoPart

        return OpenVinoPart(cm, geom, precision, threads=threads, program=prog)
    raise BackendError(f"unknown backend {name!r}; use one of {', '.join(BACKEND_CHOICES)}")


def _versions() -> str:
    import importlib.metadata as md

    out = [platform.machine(), platform.processor() or "", str(os.cpu_count())]
    for pkg in ("torch", "onnxruntime", "openvino"):
        try:
            out.append(f"{pkg}={md.version(pkg)}")
        except md.PackageNotFoundError:
            out.append(f"{pkg}=-")
    return ",".join(out)


class AutoCache:
    """``auto`` decisions remembered on disk, one JSON object ``{key: {choice, ms}}``."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path

    @classmethod
    def default(cls) -> AutoCache:
        if os.environ.get("COINFER_AUTO_CACHE", "1") in ("0", "false", "no"):
            return cls(None)
        from ...paths import cache_dir

        return cls(cache_dir("backends") / "auto.json")

    @staticmethod
    def key(prog_sig: Hashable, graph_fp: str, precision: str, threads: int, cands: list[str]) -> str:
        blob = repr(("auto/3", prog_sig, graph_fp, precision, threads, sorted(cands), _versions()))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def _read(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        try:
            d = json.loads(self.path.read_text())
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    def get(self, key: str) -> str | None:
        v = self._read().get(key)
        return str(v["choice"]) if isinstance(v, dict) and "choice" in v else None

    def put(self, key: str, choice: str, ms: dict[str, float]) -> None:
        if self.path is None:
            return
        d = self._read()
        d[key] = {"choice": choice, "ms": ms}
        if len(d) > 5000:  # bounded: drop the oldest entries
            d = dict(list(d.items())[-4000:])
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(d))
            tmp.replace(self.path)
        except OSError:  # a read-only cache is not an error
            pass


def _time(parts: dict[str, CompiledPart], shape: tuple[int, ...], reps: int, threads: int) -> dict[str, float]:
    """Minimum ms per backend over ``reps`` interleaved calls.

    One thread: the calling thread's CPU time (every backend computes in the
    caller's thread then), which other processes' load and a cgroup quota do
    not distort; several threads: wall-clock time.
    """
    clock = time.thread_time if threads == 1 else time.perf_counter
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    best: dict[str, float] = {}
    with torch.no_grad():
        for p in parts.values():
            p(x)
        for _ in range(max(1, reps)):
            for n, p in parts.items():
                t0 = clock()
                p(x)
                best[n] = min(best.get(n, float("inf")), (clock() - t0) * 1e3)
    return best


def decide(times: dict[str, float], margin: float = AUTO_MARGIN) -> tuple[str, bool]:
    """``auto``'s choice among measured candidates, with hysteresis: ``(choice, clear)``.

    The *incumbent* is the most preferred candidate (:data:`AUTO_PREFERENCE`);
    another candidate replaces it only when it is faster by more than
    ``margin`` (its time < incumbent / (1 + margin)), and then the fastest
    such candidate wins. A few percent of timing noise therefore never flips
    the choice. ``clear`` is False when some candidate is within a factor
    ``(1 + margin/2)`` of the decision threshold on either side — then more
    rounds are worth measuring, and the decision is not remembered on disk.
    """
    if not times:
        raise ValueError("no candidate was measured")
    rank = {n: i for i, n in enumerate(AUTO_PREFERENCE)}
    order = sorted(times, key=lambda n: (rank.get(n, len(rank)), n))
    inc = order[0]
    thresh = times[inc] / (1.0 + margin)
    better = [n for n in order[1:] if times[n] < thresh]
    choice = min(better, key=times.__getitem__) if better else inc
    band = 1.0 + margin / 2
    clear = all(not (thresh / band <= times[n] <= thresh * band) for n in order[1:])
    return choice, clear


def build_part(cm: CapturedModel, geom: PartGeom, backend: str = "torch", precision: str = "fp32",
               threads: int | None = None, *, program: PartProgram | None = None,
               installed: list[str] | None = None) -> CompiledPart:
    """Compile one part with ``backend`` (``auto``: the fastest candidate measured here)."""
    check_backend(backend, precision, installed=installed)
    threads = int(threads or torch.get_num_threads())
    prog = program or part_program(cm, geom)
    where = f"part ({geom.start}, {geom.end}]"
    if backend != "auto":
        try:
            return _make(backend, cm, geom, precision, threads, prog)
        except ExportUnsupported as e:
            if backend == "torch":  # pragma: no cover - torch runs every op
                raise
            _warn_fallback(backend, e, where)
            p = _make("torch", cm, geom, precision if BACKENDS["torch"].supports(precision) else "fp32",
                      threads, prog)
            p.notes["fallback"] = f"{backend}: {e}"
            return p
    cands = candidates(precision, installed)
    cache = AutoCache.default()
    key = AutoCache.key(program_signature(prog), cm.graph.fingerprint(), precision, threads, cands)
    remembered = cache.get(key)
    if remembered in cands:
        try:
            part = _make(remembered, cm, geom, precision, threads, prog)
            part.notes["auto"] = {"remembered": True}
            return part
        except ExportUnsupported:
            pass
    built: dict[str, CompiledPart] = {}
    skipped: dict[str, str] = {}
    for name in cands:
        try:
            built[name] = _make(name, cm, geom, precision, threads, prog)
        except ExportUnsupported as e:
            skipped[name] = str(e)
    times: dict[str, float] = {}
    choice = next(iter(built))
    if len(built) > 1:
        times = _time(built, prog.in_shape, AUTO_REPS, threads)
        choice, clear = decide(times)
        if not clear:  # close to the margin: more rounds, the minimum over all of them decides
            more = _time(built, prog.in_shape, AUTO_MORE_REPS, threads)
            times = {k: min(v, more[k]) for k, v in times.items()}
            choice, clear = decide(times)
        if clear:  # remember only decisions that more timing would not change
            cache.put(key, choice, {k: round(v, 3) for k, v in times.items()})
    for n, p in built.items():
        if n != choice:
            p.release()
    part = built[choice]
    part.notes["auto"] = {"ms": {k: round(v, 3) for k, v in times.items()}, **({"skipped": skipped} if skipped else {})}
    return part


class PartCache:
    """Compiled parts of one deployment (or one in-process executor), shared by signature."""

    def __init__(self, threads: int | None = None, installed: list[str] | None = None) -> None:
        self.threads = threads
        self.installed = installed
        self.parts: dict[Hashable, CompiledPart] = {}
        self.hits = 0

    def get(self, cm: CapturedModel, geom: PartGeom, backend: str, precision: str) -> CompiledPart:
        prog = part_program(cm, geom)
        key = (program_signature(prog), backend, precision)
        p = self.parts.get(key)
        if p is None:
            p = build_part(cm, geom, backend, precision, self.threads, program=prog, installed=self.installed)
            self.parts[key] = p
        else:
            self.hits += 1
        return p

    def clear(self) -> None:
        for p in self.parts.values():
            p.release()
        self.parts.clear()
