"""One trace format for the simulator and the runtime (torch-free).

Events are per device and per lane (``compute``, ``send``, ``recv``), times
in milliseconds from the request's start. Saved as Chrome/Perfetto trace JSON
(open in ui.perfetto.dev or chrome://tracing), so a prediction and a
measurement of the same plan can be viewed side by side; ``gantt()`` draws a
PNG.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from .errors import UserError
from .paths import save_figure, write_text

LANES = ("compute", "send", "recv")


class TraceFileError(UserError):
    """A trace file (:meth:`Trace.load`) that is missing or not a coinfer trace (exit 2)."""
_STAGE = re.compile(r"compute s(\d+)\.")


@dataclass
class Event:
    device: str
    lane: str  # compute | send | recv
    name: str  # the lowered instruction's text, e.g. "compute s2.p1" or "send s1 rows[0,4) to d2"
    start_ms: float
    end_ms: float
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def dur_ms(self) -> float:
        return self.end_ms - self.start_ms


class StageTime(NamedTuple):
    """One stage of a run (:meth:`Trace.stage_times`)."""

    stage: int
    device: str  # the busiest device of the stage
    compute_ms: float  # its compute in the stage
    end_ms: float  # when the stage's last compute ended
    lost_ms: float  # previous stage's end → this end, minus compute_ms: messages, waiting, skew (< 0: overlap)


@dataclass
class Trace:
    events: list[Event] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # kind (measured|simulated), latency_ms, plan...

    def add(self, device: str, lane: str, name: str, start_ms: float, end_ms: float, **args: Any) -> None:
        self.events.append(Event(device, lane, name, start_ms, end_ms, dict(args)))

    @property
    def devices(self) -> list[str]:
        return list(dict.fromkeys(e.device for e in self.events))

    @property
    def span_ms(self) -> float:
        return max((e.end_ms for e in self.events), default=0.0)

    def busy_ms(self, device: str, lane: str = "compute") -> float:
        """Union length of ``lane`` intervals on ``device`` (overlaps counted once)."""
        iv = sorted((e.start_ms, e.end_ms) for e in self.events if e.device == device and e.lane == lane)
        total, cur_s, cur_e = 0.0, None, None
        for s, e in iv:
            if cur_e is None or s > cur_e:
                if cur_e is not None and cur_s is not None:
                    total += cur_e - cur_s
                cur_s, cur_e = s, e
            else:
                cur_e = max(cur_e, e)
        if cur_e is not None and cur_s is not None:
            total += cur_e - cur_s
        return total

    def stage_times(self) -> list[StageTime]:
        """Per stage of the plan (from its compute events, ``compute s3.p1``), in stage order:
        the busiest device and its compute in the stage (several tiles of a dynamic stage add
        up), when the stage's last compute ended, and ``lost_ms`` — the time from the previous
        stage's end to this one's not spent on that busiest compute (messages, waiting, skew;
        negative when the stage's parts began before the previous stage's slowest part ended).
        Σ ``lost_ms`` = the last stage's end − :meth:`critical_compute_ms`."""
        per: dict[tuple[int, str], float] = {}
        ends: dict[int, float] = {}
        for e in self.events:
            m = _STAGE.match(e.name) if e.lane == "compute" else None
            if m:
                k = int(m.group(1))
                per[(k, e.device)] = per.get((k, e.device), 0.0) + e.dur_ms
                ends[k] = max(ends.get(k, e.end_ms), e.end_ms)
        out: list[StageTime] = []
        prev_end = 0.0
        for k in sorted(ends):
            ms, dev = max((v, d) for (s, d), v in per.items() if s == k)
            out.append(StageTime(k, dev, ms, ends[k], ends[k] - prev_end - ms))
            prev_end = ends[k]
        return out

    def critical_compute_ms(self) -> float:
        """Σ over the plan's stages of the busiest device's compute in that stage.

        A stage's parts run in parallel and the next stage needs them, so this
        is the latency the run would have had, stage after stage, if messages,
        waiting and skew between devices cost nothing; ``latency − this`` is
        what they cost. (A part that needs only its neighbours' halos may start
        before the stage's slowest part ends, so a run can overlap a little more
        than this counts.)"""
        return sum(st.compute_ms for st in self.stage_times())

    # -- Chrome trace JSON ----------------------------------------------------
    def to_chrome(self) -> dict[str, Any]:
        devs = self.devices
        ev: list[dict[str, Any]] = []
        for pid, d in enumerate(devs):
            ev.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": d}})
            for tid, lane in enumerate(LANES):
                ev.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": lane}})
        for e in self.events:
            ev.append({"name": e.name, "ph": "X", "pid": devs.index(e.device),
                       "tid": LANES.index(e.lane) if e.lane in LANES else len(LANES),
                       "ts": round(e.start_ms * 1000.0, 3), "dur": round(max(e.dur_ms, 0.0) * 1000.0, 3),
                       "args": {"device": e.device, "lane": e.lane, **e.args}})
        return {"traceEvents": ev, "displayTimeUnit": "ms", "coinfer": self.meta}

    def save(self, path: str | Path) -> None:
        write_text(path, json.dumps(self.to_chrome()))

    @classmethod
    def from_chrome(cls, d: dict[str, Any]) -> Trace:
        t = cls(meta=dict(d.get("coinfer", {})))
        for e in d.get("traceEvents", []):
            if e.get("ph") != "X":
                continue
            a = dict(e.get("args", {}))
            dev, lane = a.pop("device"), a.pop("lane")
            s = e["ts"] / 1000.0
            t.events.append(Event(dev, lane, e["name"], s, s + e["dur"] / 1000.0, a))
        return t

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """A trace written by :meth:`save` (``coinfer run`` / ``simulate --trace``); :class:`TraceFileError`
        (one line: the file, what is wrong, the fix) for a missing, binary or malformed file."""
        p = Path(path)
        fix = "give the trace JSON written by coinfer run or coinfer simulate --trace"
        from .paths import read_user_text

        text = read_user_text(p, what="trace file", kind="JSON", fix=fix, error=TraceFileError)
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise TraceFileError(f"trace file {str(p)!r} is not valid JSON ({e.msg}, line {e.lineno}); {fix}") from None
        try:
            if not isinstance(d.get("traceEvents"), list):  # a plan or any other JSON object: no events
                raise TypeError("no traceEvents")
            return cls.from_chrome(d)
        except (AttributeError, KeyError, TypeError, ValueError):
            raise TraceFileError(f"trace file {str(p)!r} is not a coinfer trace (Chrome trace events with a device "
                                 f"and lane each); {fix}") from None

    # -- picture -------------------------------------------------------------
    def gantt(self, path: str | Path, title: str | None = None) -> None:
        """A Gantt chart PNG: one row per device and lane."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        devs = self.devices
        colors = {"compute": "tab:blue", "send": "tab:orange", "recv": "tab:green"}
        rows = [(d, lane) for d in devs for lane in LANES
                if any(e.device == d and e.lane == lane for e in self.events)]
        fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.2))
        for y, (d, lane) in enumerate(rows):
            spans = [(e.start_ms, e.dur_ms) for e in self.events if e.device == d and e.lane == lane]
            ax.broken_barh(spans, (y - 0.4, 0.8), color=colors.get(lane, "grey"))
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels([f"{d} {lane}" for d, lane in rows])
        ax.invert_yaxis()
        ax.set_xlabel("time (ms)")
        ax.set_title(title or f"{self.meta.get('kind', 'trace')}: {self.span_ms:.1f} ms")
        fig.tight_layout()
        try:
            save_figure(fig, path, dpi=110)
        finally:
            plt.close(fig)
