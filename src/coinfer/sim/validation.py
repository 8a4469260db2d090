"""Simulator against runtime: run plans on the local emulated cluster and simulate the same plans.

What ``coinfer bench`` runs (the runtime and torch are imported inside the
functions; importing this module is light):

* :class:`Testbed` — local worker processes per cluster (emulated CPU
  shares), reused across plans, models and bandwidths (a deployment carries
  its links' shaping), and :meth:`Testbed.measure`: deploy a plan, warm it
  up, run it ``repeat`` times; the median request latency (the coordinator's
  send of the input to the arrival of the result, as
  :class:`~coinfer.runtime.coordinator.Session` records it) with the trace of
  the median run;
* :func:`validation_cases` — the issue's matrix: models × plan kinds
  (``rows``: ``proportional`` over every device; ``grid``: a 2×2 grid of
  tiles per fused stage; ``whole``: the model cut in two whole stages, the
  head on the source and the tail on the fastest other device) × clusters ×
  bandwidths;
* :func:`validate` — profiles (``coinfer profile``, cached per model and
  cluster), measures and simulates every case, and returns one
  :class:`CaseResult` per case; :func:`write_csv`, :func:`scatter_png` and
  :func:`error_stats` report them.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cluster import Cluster, resolve_cluster
from ..errors import UserError
from ..graph.ir import OUTPUT, Graph
from ..paths import output_file, save_figure
from ..plan.plan import Grid, Plan, Stage, Whole
from ..trace import Trace

KINDS = ("rows", "grid", "whole")
DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "vgg16")
DEFAULT_CLUSTERS = ("eq4", "het4")
DEFAULT_BANDWIDTHS = (100.0, 1000.0)


def pinned_backend(cluster: Cluster, backend: str = "torch") -> Cluster:
    """The cluster with every device on ``backend`` (``auto`` picks per part at deploy time, by timing:
    a validation needs the backend the profiles measured)."""
    return cluster.model_copy(update={"devices": [d.model_copy(update={"backend": backend})
                                                  for d in cluster.devices]})


# -- plans -------------------------------------------------------------------------------------
def _weights(costs: Any, cluster: Cluster) -> dict[str, float]:
    return {d: costs.speed(d) for d in cluster.names}


def rows_plan(model: str, graph: Graph, cluster: Cluster, costs: Any) -> Plan:
    """``proportional``: rows split by profiled speed, stages fused while the halo costs <= 10%."""
    from ..strategies import PlanRequest, run

    return run("proportional", PlanRequest(graph, cluster, model, costs)).plan


def _split(size: int, a: float, b: float) -> int:
    cut = round(size * a / (a + b))
    return min(max(cut, 1), size - 1)


def grid_plan(model: str, graph: Graph, cluster: Cluster, costs: Any, max_redundancy: float = 0.25) -> Plan:
    """A 2x2 grid per fused stage over the first four devices (rows/cols split by speed), tail on the source."""
    from ..strategies import PlanRequest
    from ..strategies.common import fused_boundaries

    devs = cluster.names[:4]
    if len(devs) < 4:
        raise ValueError("a grid plan needs 4 devices")
    w = _weights(costs, cluster)
    stages: list[Stage] = []
    for c in fused_boundaries(graph, {d: w[d] for d in devs}, max_redundancy):
        n = graph[c]
        if n.height < 2 or n.width < 2:
            break
        r = _split(n.height, w[devs[0]] + w[devs[1]], w[devs[2]] + w[devs[3]])
        col = _split(n.width, w[devs[0]] + w[devs[2]], w[devs[1]] + w[devs[3]])
        stages.append(Stage(c, Grid((0, r, n.height), (0, col, n.width), ((devs[0], devs[1]), (devs[2], devs[3])))))
    stages.append(Stage(OUTPUT, Whole(cluster.source)))
    req = PlanRequest(graph, cluster, model, costs)
    return req.make_plan(stages, "grid2x2", {"max_redundancy": max_redundancy})


def whole_plan(model: str, graph: Graph, cluster: Cluster, costs: Any) -> Plan:
    """Two whole stages: the source computes up to the cut point nearest half the FLOPs, the fastest
    other device the rest (a Neurosurgeon-style split; the output returns to the source)."""
    from ..graph.geometry import part_geometry
    from ..strategies import PlanRequest

    src = cluster.source
    others = [d for d in cluster.names if d != src]
    fast = max(others, key=lambda d: costs.speed(d)) if others else src
    cuts = [c for c in graph.cut_points() if c != graph.output.name]
    total = graph.flops or 1
    best = min(cuts, key=lambda c: abs(part_geometry(graph, graph.input.name, c, None).flops / total - 0.5))
    stages = [Stage(best, Whole(src)), Stage(OUTPUT, Whole(fast))]
    return PlanRequest(graph, cluster, model, costs).make_plan(stages, "split2", {"cut": best, "tail": fast})


PLANNERS: dict[str, Callable[[str, Graph, Cluster, Any], Plan]] = {
    "rows": rows_plan, "grid": grid_plan, "whole": whole_plan}


@dataclass
class Case:
    model: str
    kind: str
    cluster_name: str
    mbps: float
    input_shape: tuple[int, ...] | None = None  # for import-path models

    @property
    def name(self) -> str:
        return f"{self.model}-{self.kind}-{self.cluster_name}-{self.mbps:g}"


def validation_cases(models: tuple[str, ...] = DEFAULT_MODELS, kinds: tuple[str, ...] = KINDS,
                     clusters: tuple[str, ...] = DEFAULT_CLUSTERS,
                     bandwidths: tuple[float, ...] = DEFAULT_BANDWIDTHS) -> list[Case]:
    return [Case(m, k, c, b) for c in clusters for m in models for b in bandwidths for k in kinds]


# -- measuring ----------------------------------------------------------------------------------
@dataclass
class Measured:
    latency_ms: float  # median over the runs
    latencies_ms: list[float]
    trace: Trace  # of the run closest to the median
    summary: dict[str, Any]  # coinfer.runtime.report.summarize of that run


PRIORITY_GROUP = "coinfer-bench"
PRIORITY_WEIGHT = 262144  # cgroup v1's maximum cpu.shares: the devices' quotas, not other processes, decide


class Testbed:
    """Local worker processes for clusters, started on first use and reused; ``close()`` stops them.

    ``priority``: give the emulated devices their CPU share even when other
    processes load the host. With cgroup v1 the launcher's per-device quota
    groups sit under one ``coinfer`` group, which competes with every other
    process of the host as *one* task: at a load average of 10 on 2 cores
    all emulated devices together get a fraction of a core and a 0.7-share
    device runs at ~0.1. With ``priority`` each device's process moves to a
    group of the same quota under ``coinfer-bench`` (cpu.shares 262144, the
    maximum), so it gets its quota whenever it is runnable — what the
    cluster file says — and nothing beyond (the quota still caps it); this
    process (the coordinator) joins a group without quota there. They move
    back before the workers stop. Only for cgroup v1; a no-op elsewhere.
    """

    def __init__(self, *, keys: str | None = None, priority: bool = False) -> None:
        self.keys = keys
        self.priority = priority
        self.locals: dict[str, Any] = {}
        self._moved: list[tuple[int, Path, Path]] = []  # (pid, priority group, original group)

    def _prioritise(self, lc: Any) -> None:
        from ..runtime.emulation import _own_cgroup, _v1_root

        root = _v1_root()
        if root is None:
            return
        base = root / PRIORITY_GROUP
        if base.is_dir():  # groups left by a run that crashed: empty ones go
            for stale in base.iterdir():
                if stale.is_dir():
                    try:
                        stale.rmdir()
                    except OSError:
                        pass
        me = os.getpid()
        if not any(pid == me for pid, _, _ in self._moved):  # the coordinator: no quota, high weight
            try:
                base.mkdir(exist_ok=True)
                (base / "cpu.shares").write_text(str(PRIORITY_WEIGHT))
                grp = base / f"coord-{me}"
                grp.mkdir(exist_ok=True)
                (grp / "cpu.shares").write_text(str(PRIORITY_WEIGHT))
                own = _own_cgroup(me, False)
                home = root / own.lstrip("/") if own else root
                (grp / "cgroup.procs").write_text(str(me))
                self._moved.append((me, grp, home))
            except OSError:
                pass
        for w in lc.workers.values():
            lim = w.limiter
            if lim is None or lim.mode != "cgroup-v1" or lim.path is None:
                continue
            try:
                base.mkdir(exist_ok=True)
                (base / "cpu.shares").write_text(str(PRIORITY_WEIGHT))
                grp = base / f"{w.name}-{lim.pid}"
                grp.mkdir(exist_ok=True)
                (grp / "cpu.shares").write_text(str(PRIORITY_WEIGHT))
                (grp / "cpu.cfs_period_us").write_text(str(lim.period_us))
                (grp / "cpu.cfs_quota_us").write_text(str(lim.quota_us))
                (grp / "cgroup.procs").write_text(str(lim.pid))
                self._moved.append((lim.pid, grp, lim.path))
            except OSError:  # not permitted here: the launcher's groups stay as they are
                continue

    def _unprioritise(self) -> None:
        for pid, grp, home in reversed(self._moved):
            try:
                (home / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass
            try:
                grp.rmdir()
            except OSError:
                pass
        self._moved.clear()

    @staticmethod
    def _key(cluster: Cluster) -> str:
        return repr(sorted((d.name, d.cpu_share, d.threads, d.address) for d in cluster.devices))

    def adopt(self, cluster: Cluster, local: Any) -> None:
        """Use already running local workers (a :class:`LocalCluster`) for ``cluster`` (closed with the bed)."""
        self.locals[self._key(cluster)] = local

    def addresses(self, cluster: Cluster) -> tuple[dict[str, str], dict[str, str]]:
        """(addresses, cpu modes) of the cluster's devices (local ones started here)."""
        from ..runtime.launcher import LocalCluster

        key = self._key(cluster)
        lc = self.locals.get(key)
        if lc is None:
            lc = LocalCluster(cluster, keys=self.keys).start()
            self.locals[key] = lc
            if self.priority:
                self._prioritise(lc)
        return lc.addresses, lc.cpu_modes()

    def measure(self, plan: Plan, cluster: Cluster, *, repeat: int = 5, warmup: int = 1, seed: int = 0,
                gap_s: float = 0.05) -> Measured:
        """Deploy ``plan`` on the emulated ``cluster``, run it ``warmup`` + ``repeat`` times.

        Requests are ``gap_s`` apart: each starts on idle devices, as the
        simulator's single request does (back to back, a request would start
        while the source is still sending the previous one's trace, its CPU
        quota spent — a benchmark artefact worth ~a quota period on a
        0.15-share source).
        """
        import time

        from ..inputs import make_input
        from ..runtime.coordinator import Session
        from ..runtime.report import measure_energy, summarize

        addresses, modes = self.addresses(cluster)
        x = make_input(None, tuple(plan.model.input_shape))
        lats: list[float] = []
        traces: list[Trace] = []
        energy: list[tuple[float | None, str]] = []  # a real power reading per run where the host has one
        with Session(plan, cluster, addresses, keys=self.keys, replan=False, cpu_modes=modes, seed=seed,
                     dead_after_s=30.0) as s:
            for _ in range(warmup):
                s(x)
            for _ in range(repeat):
                time.sleep(gap_s)
                _, joules, source = measure_energy(lambda: s(x))
                energy.append((joules, source))
                tr = s.last_trace
                assert tr is not None
                traces.append(tr)
                lats.append(float(tr.meta["latency_ms"]))
        med = statistics.median(lats)
        i = min(range(len(lats)), key=lambda k: abs(lats[k] - med))
        summ = summarize(traces[i], cluster, measured_energy_j=energy[i][0], energy_source=energy[i][1])
        summ["latency_ms"] = med
        return Measured(med, lats, traces[i], summ)

    def close(self) -> None:
        self._unprioritise()
        for lc in self.locals.values():
            lc.stop()
        self.locals.clear()

    def __enter__(self) -> Testbed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- results ------------------------------------------------------------------------------------
@dataclass
class CaseResult:
    case: str
    model: str
    kind: str
    cluster: str
    mbps: float
    stages: int
    devices: int
    predicted_ms: float
    measured_ms: float
    error: float  # (predicted - measured) / measured
    predicted_energy_j: float
    measured_energy_j: float
    predicted_bytes: int
    measured_bytes: int
    ideal_ms: float  # the simulator without the runtime's overheads (what it predicted before)
    runs_ms: list[float] = field(default_factory=list)
    load: float = 0.0  # 1-minute load average when measured
    energy_source: str = "model"  # "rapl" / "ina3221" when the host has a real power reader, else the model

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["runs_ms"] = " ".join(f"{v:.1f}" for v in self.runs_ms)
        return d


def error_stats(results: list[CaseResult]) -> dict[str, float]:
    """Median, p90 and max of |error| (fractions), and how many cases."""
    errs = sorted(abs(r.error) for r in results)
    if not errs:
        return {"n": 0}

    def pct(q: float) -> float:
        k = (len(errs) - 1) * q
        lo, hi = math.floor(k), math.ceil(k)
        return errs[lo] + (errs[hi] - errs[lo]) * (k - lo)

    return {"n": len(errs), "median": round(pct(0.5), 4), "p90": round(pct(0.9), 4), "max": round(errs[-1], 4),
            "mean_signed": round(statistics.mean(r.error for r in results), 4)}


def write_csv(results: list[CaseResult], path: str | Path) -> None:
    rows = [r.row() for r in results]
    with output_file(path), open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case"])
        w.writeheader()
        w.writerows(rows)


def read_csv(path: str | Path) -> list[CaseResult]:
    """The cases of a ``validation.csv`` written by :func:`write_csv`; :class:`UserError` (one line: the
    file, the row, the fix) for a binary file or one with other columns or values."""
    fix = "give a validation.csv written by coinfer bench --validate"
    from ..paths import read_user_text

    text = read_user_text(path, what="validation CSV", kind="CSV", fix=fix, error=UserError)
    out = []
    for n, r in enumerate(csv.DictReader(io.StringIO(text, newline="")), 2):
        try:
            out.append(CaseResult(
                r["case"], r["model"], r["kind"], r["cluster"], float(r["mbps"]), int(r["stages"]),
                int(r["devices"]), float(r["predicted_ms"]), float(r["measured_ms"]), float(r["error"]),
                float(r["predicted_energy_j"]), float(r["measured_energy_j"]), int(r["predicted_bytes"]),
                int(r["measured_bytes"]), float(r["ideal_ms"]), [float(v) for v in r["runs_ms"].split()],
                float(r["load"]), r.get("energy_source") or "model"))
        except KeyError as e:
            raise UserError(f"{path} has no column {e.args[0]!r}; {fix}") from None
        except (AttributeError, TypeError, ValueError) as e:
            raise UserError(f"{path}:{n}: {e}; {fix}") from None
    return out


def scatter_png(results: list[CaseResult], path: str | Path, title: str = "") -> None:
    """Predicted vs measured latency (log-log) with y = x and ±10% / ±20% bands, colour by plan kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 5.6))
    xs = [r.measured_ms for r in results] + [r.predicted_ms for r in results]
    lo, hi = min(xs) * 0.8, max(xs) * 1.25
    grid = [lo, hi]
    ax.plot(grid, grid, color="black", lw=1, label="y = x")
    for f, ls in ((0.1, "--"), (0.2, ":")):
        ax.plot(grid, [v * (1 + f) for v in grid], color="grey", lw=0.8, ls=ls, label=f"±{f:.0%}")
        ax.plot(grid, [v * (1 - f) for v in grid], color="grey", lw=0.8, ls=ls)
    marks = {"eq4": "o", "het4": "s"}
    colors = {"rows": "tab:blue", "grid": "tab:orange", "whole": "tab:green"}
    for r in results:
        ax.scatter(r.measured_ms, r.predicted_ms, marker=marks.get(r.cluster, "^"), color=colors.get(r.kind, "tab:red"),
                   edgecolor="black", lw=0.4, s=36)
    for k, c in colors.items():
        ax.scatter([], [], color=c, label=k)
    for k, m in marks.items():
        ax.scatter([], [], marker=m, color="white", edgecolor="black", label=k)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms, emulated cluster)")
    ax.set_ylabel("predicted latency (ms, simulator)")
    st = error_stats(results)
    ax.set_title(title or f"simulator vs runtime: {st.get('n')} cases, median |err| {st.get('median', 0):.1%}, "
                          f"p90 {st.get('p90', 0):.1%}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    try:
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


# -- the whole run --------------------------------------------------------------------------------
def profiles_for(bed: Testbed, model: str, cluster: Cluster, root: str | Path, *, reps: int = 3,
                 sink: Any = None) -> str:
    """``root/<cluster key>/<model>``: profiled through the runtime once (resumable), then reused."""
    from ..cost.remote import profile_cluster

    key = "-".join(f"{d.name}{d.cpu_share:g}" for d in cluster.devices)
    out = Path(root) / key / model
    addresses, modes = bed.addresses(cluster)
    profile_cluster(cluster, model, str(out), addresses=addresses, cpu_modes=modes, keys=bed.keys, reps=reps,
                    sink=sink)
    return str(out)


@dataclass
class Prepared:
    """One case planned and simulated, ready to measure."""

    case: Case
    cluster: Cluster
    plan: Plan
    devices: int  # devices with a program
    sim: Any
    ideal: Any


def prepare_case(case: Case, cluster: Cluster, profiles: str | None) -> Prepared:
    """Plan and simulate one case (with and without the runtime's overheads)."""
    from ..cost.model import load_cost_model
    from ..modelspec import capture_model
    from ..plan.lower import lower
    from .engine import simulate

    g = capture_model(case.model, case.input_shape).graph
    costs = load_cost_model(g, cluster, profiles)
    plan = PLANNERS[case.kind](case.model, g, cluster, costs)
    low = lower(plan, g)
    return Prepared(case, cluster, plan, len(low.programs), simulate(low, costs),
                    simulate(low, costs, overheads=False))


def merge_measured(rounds: list[Measured]) -> Measured:
    """Several measurements of one plan as one: the median of all runs, the trace of the round closest to it."""
    lats = [v for m in rounds for v in m.latencies_ms]
    med = statistics.median(lats)
    best = min(rounds, key=lambda m: abs(m.latency_ms - med))
    return Measured(med, lats, best.trace, {**best.summary, "latency_ms": med})


def case_result(p: Prepared, meas: Measured, load: float, traces_dir: str | Path | None = None) -> CaseResult:
    """The row of one case: predicted vs measured (and the traces saved under ``traces_dir``)."""
    case, plan, sim, ideal = p.case, p.plan, p.sim, p.ideal
    if traces_dir is not None:
        d = Path(traces_dir)
        d.mkdir(parents=True, exist_ok=True)
        meas.trace.meta["case"] = sim.trace.meta["case"] = case.name
        meas.trace.save(d / f"{case.name}.measured.json")
        sim.trace.save(d / f"{case.name}.simulated.json")
        plan.save(d / f"{case.name}.plan.json")
    m = meas.latency_ms
    return CaseResult(case.name, case.model, case.kind, case.cluster_name, case.mbps, len(plan.stages),
                      p.devices, round(sim.latency_ms, 3), round(m, 3),
                      round((sim.latency_ms - m) / m, 4),
                      round(sim.energy_j, 5), round(float(meas.summary["energy_j"]), 5), int(sim.bytes_moved),
                      int(meas.summary["bytes_moved"]), round(ideal.latency_ms, 3),
                      [round(v, 2) for v in meas.latencies_ms], round(load, 2),
                      str(meas.summary.get("energy_source", "model")))


def run_case(bed: Testbed, case: Case, cluster: Cluster, profiles: str | None, *, repeat: int = 5,
             warmup: int = 1, traces_dir: str | Path | None = None) -> CaseResult:
    """Plan, simulate (with and without the runtime's overheads) and measure one case."""
    p = prepare_case(case, cluster, profiles)
    load = load_average()
    return case_result(p, bed.measure(p.plan, cluster, repeat=repeat, warmup=warmup), load, traces_dir)


def validate(cases: list[Case], out_dir: str | Path, *, repeat: int = 5, warmup: int = 1,
             profiles_root: str | Path | None = None, keys: str | None = None, traces: bool = True,
             on_result: Callable[[CaseResult], None] | None = None, sink: Any = None,
             priority: bool = False, rounds: int = 1) -> list[CaseResult]:
    """Measure and simulate every case (profiling each model on each cluster first); see the module doc.

    ``rounds`` > 1 measures every case that many times, the cases in a
    rotated order each round (``repeat`` requests each time), and takes the
    median of all its runs: a slow spell of the host then spreads over the
    cases instead of landing on the few measured during it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(profiles_root) if profiles_root else out / "profiles"
    tdir = out / "traces" if traces else None
    with Testbed(keys=keys, priority=priority) as bed:
        prepared = []
        for case in cases:
            base = pinned_backend(resolve_cluster(case.cluster_name))
            prof = profiles_for(bed, case.model, base, root, sink=sink)
            prepared.append(prepare_case(case, base.with_bandwidth(case.mbps), prof))
        n, rounds = len(prepared), max(1, rounds)
        meas: list[list[Measured]] = [[] for _ in prepared]
        loads: list[list[float]] = [[] for _ in prepared]
        done: dict[int, CaseResult] = {}
        for k in range(rounds):
            if rounds > 1 and sink is not None and hasattr(sink, "note"):
                sink.note(f"round {k + 1}/{rounds}")
            for j in range(n):
                i = (j + k * max(1, n // rounds)) % n
                p = prepared[i]
                loads[i].append(load_average())
                meas[i].append(bed.measure(p.plan, p.cluster, repeat=repeat, warmup=warmup))
                if k == rounds - 1:  # the case's last measurement: its result now
                    done[i] = case_result(p, merge_measured(meas[i]), statistics.mean(loads[i]), tdir)
                    if on_result is not None:
                        on_result(done[i])
        results = [done[i] for i in range(n)]
    return results


def resimulate(csv_paths: Sequence[str | Path], profiles_root: str | Path, *,
               traces: bool = True) -> list[CaseResult]:
    """Predict measured cases again with the current simulator and cost model, without re-measuring.

    Reads ``validation.csv`` files written by :func:`validate` (their
    ``traces/`` next to them hold each case's plan and measured trace) and
    re-simulates every case's *saved plan* with the profiles under
    ``profiles_root`` (the same ``<cluster key>/<model>`` layout); the
    measured columns are kept. For iterating on the model against one set of
    measurements (which are load-sensitive and slow to repeat). With
    ``traces`` the new simulated traces replace the old ones.
    """
    from ..cost.model import load_cost_model
    from ..modelspec import capture_model
    from ..plan.lower import lower
    from .engine import simulate

    out: list[CaseResult] = []
    for path in csv_paths:
        tdir = Path(path).parent / "traces"
        for r in read_csv(path):
            pf = tdir / f"{r.case}.plan.json"
            if not pf.is_file():
                raise FileNotFoundError(f"{pf} is missing: re-simulation needs the traces/ that coinfer bench "
                                        f"--validate wrote next to {path}")
            plan = Plan.load(pf)
            cl = pinned_backend(resolve_cluster(r.cluster)).with_bandwidth(r.mbps)
            key = "-".join(f"{d.name}{d.cpu_share:g}" for d in cl.devices)
            g = capture_model(plan.model.name, tuple(plan.model.input_shape)).graph
            costs = load_cost_model(g, cl, str(Path(profiles_root) / key / r.model))
            low = lower(plan, g)
            sim = simulate(low, costs)
            ideal = simulate(low, costs, overheads=False)
            if traces:
                sim.trace.meta["case"] = r.case
                sim.trace.save(tdir / f"{r.case}.simulated.json")
            m = r.measured_ms
            out.append(CaseResult(**{**asdict(r), "predicted_ms": round(sim.latency_ms, 3),
                                     "error": round((sim.latency_ms - m) / m, 4),
                                     "predicted_energy_j": round(sim.energy_j, 5),
                                     "predicted_bytes": int(sim.bytes_moved),
                                     "ideal_ms": round(ideal.latency_ms, 3)}))
    return out
