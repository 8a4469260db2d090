"""Adaptive re-planning between requests: CoEdge's re-solve on device and bandwidth changes.

CoEdge (Zeng et al., IEEE/ACM ToN 2021, §IV-D "adaptive workload
partitioning") re-solves its partition whenever the set of available devices
or the network bandwidth changes (they replayed bandwidth fluctuating between
500 and 1500 KB/s). :class:`ReplanAdapter` does that for a running
:class:`~coinfer.runtime.coordinator.Session` (it implements the session's
``Adapter`` protocol; the new plan is deployed between requests):

* **devices** — when the live devices (the cluster's minus those the
  session declared dead) differ from the devices the current plan was made
  for, it re-plans over the live ones. (The session itself already re-plans
  after a failure with the plan's own strategy; the adapter also covers a
  device that comes back, and sessions with ``replan=False``.)
* **bandwidth** — from the session's link observations
  (:attr:`Session.link_samples`: bytes and sent→arrived time of every
  sizeable piece) it estimates each link's rate. Observed rates include the
  runtime's per-message costs and queueing, so a rate is compared with the
  *baseline* observed on the same link right after the current plan was
  deployed: when the median of the last ``window`` samples moves by more than
  ``threshold`` (relative) from the baseline, the link's assumed bandwidth is
  scaled by the same ratio and the plan is re-solved over the cluster with
  that bandwidth. Large pieces (>= ``absolute_bytes``), where those costs are
  negligible, are also compared with the assumed bandwidth directly.

The re-plan runs the plan's own strategy (``plan.strategy.name``) with its
stored ``objective``, ``deadline_ms`` and other parameters, as
:func:`coinfer.runtime.coordinator.default_replan` does, with a cost model
from ``profiles_dir`` when given. Every decision is kept in
:attr:`ReplanAdapter.events` and every request's latency and model energy in
:attr:`ReplanAdapter.history`, for reports.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cluster import Cluster, Link
from ..plan.plan import Plan
from ..trace import Trace

if TYPE_CHECKING:  # pragma: no cover
    from .coordinator import Session

log = logging.getLogger("coinfer.adaptive")


@dataclass
class AdaptEvent:
    t: float  # time.time()
    reason: str
    devices: list[str]  # devices of the new plan
    links: dict[str, float] = field(default_factory=dict)  # "a-b" -> assumed Mbit/s after the event
    replan_ms: float = 0.0
    predicted_latency_ms: float | None = None
    predicted_energy_j: float | None = None
    error: str | None = None


@dataclass
class _LinkState:
    assumed: float  # Mbit/s the current plan assumes
    baseline: float | None = None  # median observed rate just after the plan was deployed


def energy_of(summary: dict[str, Any], cluster: Cluster) -> dict[str, Any]:
    """Per-device and total energy (J) of a measured run from :func:`coinfer.runtime.report.summarize`.

    ``dynamic`` is CoEdge's Ec + Ex (busy_w x compute + tx_w x tx + rx_w x rx);
    ``total`` adds idle_w over the rest of the request for the devices that
    took part (busy > 0 or a transfer), as the simulator does. Model-based
    (the cluster's power figures): label it so next to a real reading.
    """
    span = float(summary["latency_ms"])
    dyn, tot = {}, {}
    for d in cluster.names:
        b = float(summary["busy_ms"].get(d, 0.0))
        tx = float(summary.get("tx_ms", {}).get(d, 0.0))
        rx = float(summary.get("rx_ms", {}).get(d, 0.0))
        if b <= 0 and tx <= 0 and rx <= 0:
            continue
        p = cluster.device(d).power
        dyn[d] = (p.busy_w * b + p.tx_w * tx + p.recv_w * rx) / 1e3
        tot[d] = dyn[d] + p.idle_w * max(0.0, span - b) / 1e3
    return {"dynamic_j": sum(dyn.values()), "total_j": sum(tot.values()), "device_dynamic_j": dyn,
            "device_total_j": tot, "source": "model"}


def replan(plan: Plan, cluster: Cluster, profiles_dir: str | None = None) -> tuple[Plan, dict[str, Any]]:
    """The plan's own strategy over ``cluster`` (its objective, deadline and parameters); (plan, info)."""
    from ..cost.model import load_cost_model
    from ..modelspec import capture_model
    from ..strategies import Infeasible, PlanRequest, run

    cm = capture_model(plan.model.name, plan.model.input_shape)
    params = dict(plan.strategy.params)
    objective = params.pop("objective", "latency")
    deadline = params.pop("deadline_ms", None)
    for k in ("shares",):  # outputs of the previous solve, not inputs
        params.pop(k, None)
    if "devices" in params:
        params["devices"] = [d for d in params["devices"] if d in cluster.names]
    if "order" in params:
        params["order"] = [d for d in params["order"] if d in cluster.names]
    costs = load_cost_model(cm.graph, cluster, profiles_dir)
    req = PlanRequest(cm.graph, cluster, plan.model.name, costs, objective, deadline, params)
    try:
        res = run(plan.strategy.name, req)
    except Infeasible as e:
        if e.best is None:
            raise
        res = e.best  # the deadline cannot be met any more: the fastest plan, and say so
        res.info = dict(res.info, infeasible=str(e))
    return res.plan, res.info


class ReplanAdapter:
    """Re-plans between requests when devices join/leave or a link's observed rate moves (see module doc).

    ``threshold``: relative change of a link's rate that triggers a re-solve
    (CoEdge's bandwidth fluctuated by a factor of 3; the default 0.35 ignores
    the noise of the emulated testbed). ``window``: samples per median;
    ``min_samples``: samples needed before a link is judged; ``cooldown_s``:
    the least time between two bandwidth-triggered re-plans.
    """

    def __init__(self, *, threshold: float = 0.35, window: int = 6, min_samples: int = 3,
                 absolute_bytes: int = 256 * 1024, cooldown_s: float = 0.5, profiles_dir: str | None = None) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0 (got {threshold})")
        self.threshold = threshold
        self.window = window
        self.min_samples = min_samples
        self.absolute_bytes = absolute_bytes
        self.cooldown_s = cooldown_s
        self.profiles_dir = profiles_dir
        self.events: list[AdaptEvent] = []
        self.history: list[dict[str, Any]] = []
        self._members: frozenset[str] | None = None
        self._since = time.time()
        self._last_bw_replan = 0.0
        self._links: dict[frozenset[str], _LinkState] = {}
        self._overrides: dict[frozenset[str], float] = {}
        self._plan_id: int = 0

    # -- the Adapter protocol -------------------------------------------------------------------------
    def before_request(self, session: Session) -> Plan | None:
        live = [d for d in session.cluster.names if d not in session.dead]
        members = frozenset(session.plan.devices)
        if self._members is None:
            self._members = members
        reason = None
        if set(live) != set(members) and getattr(session, "replan_enabled", False):
            # a session that re-plans itself does it for membership changes — a return in the
            # background while requests go on — through replan_for, and tells on_replan
            return None
        if set(live) != set(members):
            joined = sorted(set(live) - members)
            left = sorted(members - set(live))
            reason = "devices changed: " + ", ".join(
                x for x in (f"joined {joined}" if joined else "", f"left {left}" if left else "") if x)
        else:
            changed = self._bandwidth_changes(session)
            if changed and time.time() - self._last_bw_replan >= self.cooldown_s:
                reason = "bandwidth changed: " + ", ".join(
                    f"{'-'.join(sorted(k))} {old:.3g} -> {new:.3g} Mbit/s" for k, (old, new) in changed.items())
                for k, (_, new) in changed.items():
                    self._overrides[k] = new
                self._last_bw_replan = time.time()
        if reason is None:
            return None
        return self._replan(session, live, reason)

    def replan_for(self, session: Session, cluster: Cluster) -> Plan:
        """The plan the session re-plans to for the devices of ``cluster`` (a death, a return, a
        failover plan): the same re-solve as a bandwidth change, with the observed link rates."""
        try:
            return replan(session.plan, self.cluster_for(cluster, cluster.names), self.profiles_dir)[0]
        except Exception as e:  # noqa: BLE001 - the session's default (proportional as the last resort)
            from .coordinator import default_replan

            log.warning("adaptive re-plan over %s failed (%s); the session's default", cluster.names, e)
            return default_replan(session.plan, cluster)

    def on_replan(self, session: Session, plan: Plan) -> None:
        """The session re-planned over other devices: record it and judge links on the new plan."""
        before = self._members if self._members is not None else frozenset()
        now = frozenset(plan.devices)
        joined, left = sorted(now - before), sorted(before - now)
        reason = "devices changed: " + ", ".join(
            x for x in (f"joined {joined}" if joined else "", f"left {left}" if left else "") if x)
        rec = session.recoveries[-1] if getattr(session, "recoveries", None) else None
        ev = AdaptEvent(time.time(), f"{reason} (re-planned by the session{f', {rec.how}' if rec else ''})",
                        plan.devices_used_names(),
                        {"-".join(sorted(k)): v for k, v in self._overrides.items()})
        ev.replan_ms = rec.replan_ms if rec is not None else 0.0
        self.events.append(ev)
        self._members = now
        self._since = time.time()
        self._links.clear()
        self._plan_id += 1

    def after_request(self, session: Session, trace: Trace) -> None:
        from .report import summarize

        try:
            s = summarize(trace, session.cluster)
            e = energy_of(s, session.cluster)
        except Exception:  # noqa: BLE001 - a report must never fail a request
            return
        self.history.append({"t": time.time(), "plan": self._plan_id, "strategy": session.plan.strategy.name,
                             "devices": session.plan.devices_used_names(), "latency_ms": s["latency_ms"],
                             "energy_j": e["total_j"], "dynamic_energy_j": e["dynamic_j"],
                             "device_dynamic_j": e["device_dynamic_j"]})

    # -- internals -------------------------------------------------------------------------------------
    def cluster_for(self, base: Cluster, live: list[str]) -> Cluster:
        """``base`` without the dead devices, with the observed link rates the adapter assumes."""
        cl = base.without(*[d for d in base.names if d not in live])
        if not self._overrides:
            return cl
        links = [lk for lk in cl.network.links if frozenset(lk.between) not in self._overrides]
        for pair, mbps in self._overrides.items():
            if pair <= set(live):
                a, b = sorted(pair)
                lat = cl.link(a, b)[1]
                links.append(Link(between=(a, b), bandwidth_mbps=mbps, latency_ms=lat))
        # the observed rates replace a replayed trace in the planner's view (the shaper keeps replaying it)
        return cl.model_copy(update={"network": cl.network.model_copy(update={"links": links, "trace": None})})

    def _replan(self, session: Session, live: list[str], reason: str) -> Plan | None:
        t0 = time.perf_counter()
        cl = self.cluster_for(session.cluster, live)
        ev = AdaptEvent(time.time(), reason, [], {"-".join(sorted(k)): v for k, v in self._overrides.items()})
        try:
            plan, info = replan(session.plan, cl, self.profiles_dir)
        except Exception as e:  # noqa: BLE001 - keep serving on the current plan
            ev.error = f"{type(e).__name__}: {e}"
            ev.replan_ms = (time.perf_counter() - t0) * 1e3
            self.events.append(ev)
            log.warning("re-plan failed (%s); keeping the current plan", ev.error)
            return None
        ev.replan_ms = (time.perf_counter() - t0) * 1e3
        ev.devices = plan.devices_used_names()
        ev.predicted_latency_ms = info.get("model_latency_ms")
        ev.predicted_energy_j = info.get("model_energy_j")
        self.events.append(ev)
        self._members = frozenset(plan.devices)
        self._since = time.time()
        self._links.clear()  # baselines are re-learned on the new plan
        self._plan_id += 1
        log.info("adaptive re-plan (%s) over %s in %.0f ms", reason, ev.devices, ev.replan_ms)
        return plan

    def _bandwidth_changes(self, session: Session) -> dict[frozenset[str], tuple[float, float]]:
        by_link: dict[frozenset[str], list[Any]] = {}
        for smp in list(session.link_samples):
            if smp.t < self._since:
                continue
            by_link.setdefault(frozenset((smp.src, smp.dst)), []).append(smp)
        out: dict[frozenset[str], tuple[float, float]] = {}
        for pair, samples in by_link.items():
            if len(pair) != 2 or len(samples) < self.min_samples:
                continue
            a, b = sorted(pair)
            assumed_mbps, lat = session.cluster.link(a, b)
            st = self._links.get(pair)
            if st is None:
                st = self._links[pair] = _LinkState(self._overrides.get(pair, assumed_mbps))
            rates = [s.nbytes * 8 / 1e3 / max(s.ms - lat, 1e-3) for s in samples]
            if st.baseline is None:
                st.baseline = statistics.median(rates[: self.window])
                continue
            recent = statistics.median(rates[-self.window:])
            ratio = recent / max(st.baseline, 1e-9)
            big = [r for s, r in zip(samples, rates) if s.nbytes >= self.absolute_bytes][-self.window:]
            abs_ratio = statistics.median(big) / st.assumed if len(big) >= self.min_samples else 1.0
            if abs(ratio - 1) > self.threshold:
                out[pair] = (st.assumed, st.assumed * ratio)
            elif abs(abs_ratio - 1) > self.threshold:
                out[pair] = (st.assumed, st.assumed * abs_ratio)
        return out


#: CoEdge's adaptive mode (the same adapter; the plan's strategy decides what is re-solved)
CoEdgeAdapter = ReplanAdapter
