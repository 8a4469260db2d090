"""Run-time adapters for :class:`coinfer.runtime.coordinator.Session` (its ``adapter=`` hook).

:class:`EdgentAdapter` is the online half of Edgent's dynamic-bandwidth mode
(Li, Zhou, Chen, IEEE TWC 2020 — "Edge AI: On-Demand Accelerating DNN
Inference via Edge Computing", §IV; the planning half is
:func:`coinfer.strategies.edgent.plan_dynamic`). The plan carries a
*configuration map* (``strategy.params["config_map"]``): bandwidth states found
offline in a historical trace and, per state, the (exit, partition) with the
best reward. Between requests the adapter

1. **estimates the bandwidth** from the transfers the last request made over
   the source–edge link. A piece of *n* bytes that took *t* ms from send to
   arrival over a link of latency *L* bounds the bandwidth *B*: the runtime
   only adds time, so ``B ≥ 8n / (t − L)``; and since its own per-message
   cost is at most ``overhead_ms`` (δ), ``B ≤ 8n / (t − L − δ)`` when
   ``t − L > δ`` (else no upper bound: the piece was too small to tell).
   The request's pieces are intersected into one interval;
2. **detects the state**: the states of the map whose band (geometric
   midpoints between the states' centres) meets that interval are possible;
   the current state is kept if it is one of them, else the lowest possible
   one is taken (the safe side for the deadline: a piece too small to tell
   two states apart never moves the adapter up);
3. **switches** (``before_request`` returns that state's plan) when the
   state's configuration differs from the running one. Every configuration
   is built on the workers when the session starts
   (:meth:`EdgentAdapter.plans_to_prepare`), so a switch costs no re-deploy.

A configuration that keeps everything on the device sends nothing over the
link, so it yields no samples: after ``probe_every_s`` without one, the
adapter runs the next request on the state's *probe* configuration (its best
link-crossing one, in the map) to measure the link, then goes back.

Every request is logged in :attr:`EdgentAdapter.log` (time, estimate, state,
configuration, probe) for the figures of ``benchmarks/edgent``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..plan.plan import Plan, PlanError, Stage, StrategyRef

if TYPE_CHECKING:  # pragma: no cover
    from ..trace import Trace
    from .coordinator import Session


@dataclass
class AdapterEvent:
    t: float  # time.time() before the request
    estimate_mbps: float | None  # the estimate the decision used (geometric middle of the interval)
    interval_mbps: tuple[float, float] | None  # the bandwidth interval of the last informative request
    state: int
    config: str
    probe: bool
    switched: bool


class EdgentAdapter:
    """Edgent's configuration-map adapter (see the module docstring).

    ``plan`` must come from ``coinfer plan --strategy edgent --param
    mode=dynamic`` (it carries the map). ``link_latency_ms`` (subtracted from
    every sample) defaults to the session's cluster's link latency.
    """

    def __init__(self, plan: Plan, *, min_bytes: int = 512, probe_every_s: float = 2.0,
                 link_latency_ms: float | None = None, overhead_ms: float = 10.0) -> None:
        self._load(plan)
        self.active = True  # False after a re-plan to a plan without a map: it proposes nothing
        self.min_bytes = int(min_bytes)
        self.probe_every_s = float(probe_every_s)
        self.link_latency_ms = link_latency_ms
        self.overhead_ms = float(overhead_ms)
        self.estimate: float | None = None
        self.interval: tuple[float, float] | None = None
        self._fresh = False
        self.last_sample_t = time.time()
        self.probing = False
        self.log: list[AdapterEvent] = []
        self.samples: list[tuple[float, float]] = []  # (time, Mbit/s) of every sample

    def _load(self, plan: Plan) -> None:
        """Take ``plan``'s configuration map (PlanError if it has none)."""
        params = plan.strategy.params
        cmap = params.get("config_map")
        if plan.strategy.name != "edgent" or not isinstance(cmap, list) or not cmap:
            raise PlanError("EdgentAdapter needs an edgent plan with a configuration map; plan with "
                            "coinfer plan --strategy edgent --param mode=dynamic --param trace=FILE.csv")
        states = params.get("bandwidth_states") or {}
        thresholds = [float(x) for x in states.get("thresholds_mbps", [])]
        if len(thresholds) != len(cmap) - 1:
            raise PlanError(f"config_map has {len(cmap)} states but {len(thresholds)} thresholds; re-plan")
        self.thresholds = thresholds
        self.base = plan
        self.source = plan.source
        self.entries = cmap
        self.plans = [self._plan(e) for e in cmap]
        self.probes = [self._plan(e["probe"]) if e.get("probe") else None for e in cmap]
        self.state = int(params.get("state", 0))

    def on_replan(self, session: Session, plan: Plan) -> None:
        """The session re-planned over other devices (one died or came back): the new plan's map
        replaces the old one, whose configurations may use a dead device. A plan without a map
        (the ``proportional`` fallback) stops the adapter: it proposes nothing from then on."""
        try:
            self._load(plan)
            self.active = True
        except PlanError:
            self.active = False
        self._fresh = self.interval is not None  # decide the state again on the new map

    def _plan(self, e: dict[str, Any]) -> Plan:
        stages = [Stage.from_dict(s, "config_map") for s in e["stages"]]
        params = {**self.base.strategy.params, "config": e["config"]}
        return Plan(model=self.base.model, devices=list(self.base.devices), source=self.source, stages=stages,
                    strategy=StrategyRef("edgent", params), exit=e.get("exit"), wire=self.base.wire)

    def state_of(self, mbps: float) -> int:
        i = 0
        while i < len(self.thresholds) and mbps >= self.thresholds[i]:
            i += 1
        return i

    def possible_states(self, lo: float, hi: float) -> list[int]:
        """States whose band [threshold below, threshold above) meets [lo, hi]."""
        bounds = [0.0, *self.thresholds, math.inf]
        return [s for s in range(len(bounds) - 1) if bounds[s] <= hi and lo < bounds[s + 1]]

    def decide(self, lo: float, hi: float) -> int:
        cands = self.possible_states(lo, hi) or [self.state_of(lo)]
        return self.state if self.state in cands else min(cands)

    def plans_to_prepare(self) -> list[Plan]:
        """Every configuration of the map (and its probe): the session builds them all when it
        starts, so a switch is one assignment at the coordinator instead of a re-deploy."""
        out = {p.to_json(): p for p in [*self.plans, *(q for q in self.probes if q is not None)]}
        return list(out.values())

    # -- the Session hook ------------------------------------------------------------------------
    def before_request(self, session: Session) -> Plan | None:
        if not self.active:
            return None
        now = time.time()
        if self._fresh and self.interval is not None:
            self.state = self.decide(*self.interval)
        self._fresh = False
        entry = self.entries[self.state]
        target = self.plans[self.state]
        probe = False
        if (not entry.get("uses_link") and self.probes[self.state] is not None
                and now - self.last_sample_t >= self.probe_every_s):
            target = self.probes[self.state]  # type: ignore[assignment]
            probe = True
        self.probing = probe
        current = session.plan.strategy.params.get("config")
        label = target.strategy.params["config"]
        switched = label != current
        self.log.append(AdapterEvent(now, self.estimate, self.interval, self.state, label, probe, switched))
        return target if switched else None

    def after_request(self, session: Session, trace: Trace) -> None:
        now = time.time()
        lo, hi, n = 0.0, math.inf, 0
        for e in trace.events:
            peer = e.args.get("peer")
            nb = int(e.args.get("bytes", 0) or 0)
            if e.lane != "recv" or not peer or nb < self.min_bytes or self.source not in (peer, e.device):
                continue
            lat = self.link_latency_ms
            if lat is None:
                lat = session.cluster.link(str(peer), e.device)[1] if session.cluster.network.shape else 0.0
            bits_k = nb * 8 / 1e3  # kbit: kbit / ms = Mbit/s
            t = max(e.dur_ms - lat, 1e-3)
            s_lo = bits_k / t
            s_hi = bits_k / (t - self.overhead_ms) if t > self.overhead_ms else math.inf
            self.samples.append((now, s_lo))
            n += 1
            lo, hi = max(lo, s_lo), min(hi, s_hi)
        if n == 0:
            return
        hi = max(hi, lo)  # inconsistent pieces (noise): trust the lower bounds, which the runtime cannot fake
        self.interval = (lo, hi)
        self.estimate = math.sqrt(lo * hi) if math.isfinite(hi) else lo
        self.last_sample_t = now
        self._fresh = True

    # -- reporting ---------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        switches = sum(1 for ev in self.log if ev.switched)
        probes = sum(1 for ev in self.log if ev.probe)
        return {"requests": len(self.log), "switches": switches, "probes": probes,
                "states": [e["config"] for e in self.entries]}
