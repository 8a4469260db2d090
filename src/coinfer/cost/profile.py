"""Device profiles: measured latencies of one model on one device (``coinfer.profile/1``).

Torch-free data, JSON round-trip, unknown fields rejected. A profile holds,
for one device and one model (name + structural fingerprint):

* ``stages``: per-stage latency tables ``(start, end) -> [(rows, ms), ...]``,
  the stage's output rows computed (anchored at the top, full width) against
  the median latency — DistrEdge's observation (Hou et al., 2022, §II) that
  latency is step-like, not linear, in the rows a device computes; the cost
  model interpolates them piecewise-linearly;
* ``whole``: latencies of stages run whole (non-splittable stages, the tail);
* ``cols``: per swept segment, its cost at one row count (about half the
  height) over narrower widths, left-anchored, the full width included:
  a grid tile does not cost its share of the FLOPs of a full-width slab
  (fixed per-part costs, narrower kernels) — ResNet-18's half-width 7-row
  tiles took 0.80–1.10 of the full-width slab's time where the FLOPs say
  0.6; the cost model corrects partial-width parts with it;
* ``chained``: per segment, what it adds (ms, full height; may be
  negative) when it runs in one part right after the segment before it:
  ``pair - previous alone``. A part's cost is not the sum of its segments':
  the per-part backend fuses across segment boundaries (a BN or ReLU folded
  into the conv before it) and converts a part's input and output between
  memory layouts once per part — the stem of ResNet-18 costs 3.8 ms as one
  part and 10.8 ms as four, VGG-16's first conv 25 ms alone and 9 ms with
  its ReLU. Chained costs telescope: first segment alone + the later ones'
  chained costs = the part, boundary conversions included. ``chain_scale``
  scales the chained costs so that the whole model as one part costs what
  was measured (``whole_model_ms``);
* ``regressions``: per-layer-type models (:mod:`coinfer.cost.regression`)
  for shapes not profiled;
* ``links``: probes from this device to its peers (bandwidth, round trip);
* ``calibration``: the device's own :class:`HostCalibration` (optional);
* ``timing``: ``wall`` (latencies as measured) or ``cpu`` (the thread's CPU
  time: what the device computes at full speed; used for devices emulated
  with a cgroup quota, whose wall time the simulator derives from the quota —
  ``emulation`` records the mode and share the profile ran under);
* ``runtime``: the runtime's own per-message / per-instruction CPU costs on
  this device (:class:`~coinfer.cost.runtime.RuntimeCosts`), probed through
  the real transport.

A directory of profiles holds one ``<device>.json`` per device
(``coinfer profile CLUSTER --model M -o DIR``). :meth:`ProfileSet.check`
refuses profiles of another model or of a device the cluster lacks, with a
one-line error naming the fix.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import UserError, check_keys
from ..graph.ir import Graph
from ..paths import write_text
from .calibration import HostCalibration
from .regression import LayerRegression, LayerSample
from .runtime import RuntimeCosts, RuntimeCostsError

FORMAT = "coinfer.profile/1"

StageKey = tuple[str, str]
TIMINGS = ("wall", "cpu")
_LIST_OF_NUMBERS = re.compile(r"\[(?:\s*(?:-?[\d.eE+-]+|\[[^\[\]]*\]|\"[^\"]*\")\s*,?)+\s*\]")


class ProfileError(UserError):
    """A profile that cannot be used for this model / cluster; the message names the fix."""


def _check_keys(d: Any, allowed: set[str], where: str, required: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    check_keys(d, allowed, where, required, error=ProfileError)


def _chain(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if not (math.isfinite(x) and -1e6 <= x <= 1e6):
        raise ProfileError(f"{where}: chained costs are numbers in [-1e6, 1e6] (got {v!r}); re-run coinfer profile")
    return x


@dataclass(frozen=True)
class LinkProbe:
    """Measured from the profiled device to ``peer``."""

    bandwidth_mbps: float
    rtt_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"bandwidth_mbps": self.bandwidth_mbps, "rtt_ms": self.rtt_ms}

    @classmethod
    def fit(cls, rtts_ms: list[float], transfers: list[tuple[int, float]]) -> LinkProbe:
        """A probe from ping round trips and one-way transfers ``[(bytes, ms), ...]``.

        RTT: the median ping. Bandwidth: the least-squares slope of transfer
        time against bytes over the fastest transfer of each size (the
        intercept absorbs latency and per-message overhead), so use at least
        two clearly different sizes (e.g. 64 KB and 4 MB).
        """
        if not rtts_ms or len({b for b, _ in transfers}) < 2:
            raise ProfileError("a link probe needs pings and transfers of at least two sizes")
        # the fastest of each size's repeats: a transfer that met a stall (a CPU quota's throttled
        # period, another process) says nothing about the link; on a fast unshaped link such stalls
        # are larger than the differences between sizes and turned the slope negative
        best: dict[int, float] = {}
        for b, t in transfers:
            best[b] = min(t, best.get(b, t))
        transfers = sorted(best.items())
        n = len(transfers)
        mx = sum(b for b, _ in transfers) / n
        my = sum(t for _, t in transfers) / n
        sxx = sum((b - mx) ** 2 for b, _ in transfers)
        slope = sum((b - mx) * (t - my) for b, t in transfers) / sxx  # ms per byte
        if not slope > 0:
            raise ProfileError("link probe: transfer time does not grow with size; probe with larger messages")
        rtts = sorted(rtts_ms)
        return cls(round(8.0 / (slope * 1e3), 3), round(rtts[len(rtts) // 2], 4))


@dataclass
class DeviceProfile:
    device: str
    model: str
    fingerprint: str
    date: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    backend: str = "torch"
    stages: dict[StageKey, list[tuple[int, float]]] = field(default_factory=dict)
    whole: dict[StageKey, float] = field(default_factory=dict)
    regressions: dict[str, LayerRegression] = field(default_factory=dict)
    links: dict[str, LinkProbe] = field(default_factory=dict)
    calibration: HostCalibration | None = None
    timing: str = "wall"  # wall | cpu
    emulation: dict[str, Any] | None = None  # {"mode": "cgroup-v1", "cpu_share": 0.15} when emulated
    runtime: RuntimeCosts | None = None
    complete: bool = True  # False: a checkpoint of an interrupted coinfer profile (resumable)
    chained: dict[StageKey, float] = field(default_factory=dict)
    chain_scale: float = 1.0
    whole_model_ms: float | None = None  # the whole model as one part, full height (what chain_scale matches)
    samples: list[LayerSample] = field(default_factory=list)  # regression samples of a partial profile
    # per swept segment: (rows, [(cols, ms), ...]) — the segment at ``rows`` rows and narrower widths
    # (left-anchored), the full width included: what a grid tile costs against a full-width slab
    cols: dict[StageKey, tuple[int, list[tuple[int, float]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, pts in self.stages.items():
            self.stages[key] = sorted((int(r), float(ms)) for r, ms in pts)
        for key, (rows, cpts) in self.cols.items():
            self.cols[key] = (int(rows), sorted((int(c), float(ms)) for c, ms in cpts))
        if self.timing not in TIMINGS:
            raise ProfileError(f"profile of {self.device}: timing {self.timing!r} is not one of {TIMINGS}")

    @property
    def empty(self) -> bool:
        return not (self.stages or self.whole or self.regressions)

    # -- JSON -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "device": self.device,
            "model": {"name": self.model, "fingerprint": self.fingerprint},
            "date": self.date,
            "machine": dict(self.machine),
            "backend": self.backend,
            "stages": [{"start": s, "end": e, "rows": [[r, ms] for r, ms in pts],
                        **({"chained": self.chained[(s, e)]} if (s, e) in self.chained else {}),
                        **({"cols": {"rows": self.cols[(s, e)][0],
                                     "points": [[c, ms] for c, ms in self.cols[(s, e)][1]]}}
                           if (s, e) in self.cols else {})}
                       for (s, e), pts in self.stages.items()],
            "whole": [{"start": s, "end": e, "ms": ms,
                       **({"chained": self.chained[(s, e)]} if (s, e) in self.chained else {})}
                      for (s, e), ms in self.whole.items()],
            "regressions": {k: v.to_dict() for k, v in self.regressions.items()},
            "links": {k: v.to_dict() for k, v in self.links.items()},
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "timing": self.timing,
            "emulation": self.emulation,
            "runtime": None if self.runtime is None else self.runtime.to_dict(),
            **({"chain_scale": self.chain_scale} if self.chain_scale != 1.0 else {}),
            **({"whole_model_ms": self.whole_model_ms} if self.whole_model_ms is not None else {}),
            **({} if self.complete else {"complete": False,
                                         "samples": [[x.family, list(x.x), x.ms] for x in self.samples]}),
        }

    def to_json(self) -> str:
        """Indented JSON with each table, sample and list of numbers on one line."""
        text = json.dumps(self.to_dict(), indent=1)
        return _LIST_OF_NUMBERS.sub(lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text)

    @classmethod
    def from_dict(cls, d: Any, where: str = "profile") -> DeviceProfile:
        _check_keys(d, {"format", "device", "model", "date", "machine", "backend", "stages", "whole",
                        "regressions", "links", "calibration", "timing", "emulation", "runtime", "complete", "samples", "chain_scale", "whole_model_ms"}, where,
                    {"format", "device", "model"})
        if d["format"] != FORMAT:
            raise ProfileError(f"{where}: format {d['format']!r} is not {FORMAT!r}; re-run coinfer profile")
        _check_keys(d["model"], {"name", "fingerprint"}, f"{where}.model", {"name", "fingerprint"})
        try:
            chained: dict[StageKey, float] = {}
            stages: dict[StageKey, list[tuple[int, float]]] = {}
            cols: dict[StageKey, tuple[int, list[tuple[int, float]]]] = {}
            for i, s in enumerate(d.get("stages") or []):
                _check_keys(s, {"start", "end", "rows", "chained", "cols"}, f"{where}.stages[{i}]",
                            {"start", "end", "rows"})
                pts = [(int(r), float(ms)) for r, ms in s["rows"]]
                if not pts or any(r < 1 or not (math.isfinite(ms) and ms >= 0) for r, ms in pts):
                    raise ProfileError(f"{where}.stages[{i}]: rows must be [rows >= 1, ms >= 0] pairs")
                if any(a[0] >= b[0] for a, b in itertools.pairwise(pts)):  # as coinfer profile writes them
                    raise ProfileError(f"{where}.stages[{i}]: rows must rise strictly (got {[r for r, _ in pts]}); "
                                       f"re-run coinfer profile")
                stages[(str(s["start"]), str(s["end"]))] = pts
                if "cols" in s:
                    c = s["cols"]
                    _check_keys(c, {"rows", "points"}, f"{where}.stages[{i}].cols", {"rows", "points"})
                    cpts = [(int(w), float(ms)) for w, ms in c["points"]]
                    if int(c["rows"]) < 1 or not cpts or any(w < 1 or not (math.isfinite(ms) and ms >= 0)
                                                             for w, ms in cpts):
                        raise ProfileError(f"{where}.stages[{i}].cols: rows >= 1 and [cols >= 1, ms >= 0] pairs")
                    cols[(str(s["start"]), str(s["end"]))] = (int(c["rows"]), cpts)
                if "chained" in s:
                    chained[(str(s["start"]), str(s["end"]))] = _chain(s["chained"], f"{where}.stages[{i}]")
            whole: dict[StageKey, float] = {}
            for i, s in enumerate(d.get("whole") or []):
                _check_keys(s, {"start", "end", "ms", "chained"}, f"{where}.whole[{i}]", {"start", "end", "ms"})
                ms = float(s["ms"])
                if not (math.isfinite(ms) and ms >= 0):
                    raise ProfileError(f"{where}.whole[{i}]: ms must be >= 0 (got {s['ms']!r}); re-run coinfer profile")
                whole[(str(s["start"]), str(s["end"]))] = ms
                if "chained" in s:
                    chained[(str(s["start"]), str(s["end"]))] = _chain(s["chained"], f"{where}.whole[{i}]")
            regs = {str(k): LayerRegression.from_dict(str(k), v) for k, v in (d.get("regressions") or {}).items()}
            links = {}
            for k, v in (d.get("links") or {}).items():
                _check_keys(v, {"bandwidth_mbps", "rtt_ms"}, f"{where}.links.{k}", {"bandwidth_mbps", "rtt_ms"})
                if not float(v["bandwidth_mbps"]) > 0 or not float(v["rtt_ms"]) >= 0:
                    raise ProfileError(f"{where}.links.{k}: bandwidth must be > 0 and rtt >= 0; re-probe the link")
                links[str(k)] = LinkProbe(float(v["bandwidth_mbps"]), float(v["rtt_ms"]))
        except (TypeError, ValueError, KeyError) as e:
            if isinstance(e, ProfileError):
                raise
            raise ProfileError(f"{where}: malformed profile ({e}); re-run coinfer profile") from None
        cal = d.get("calibration")
        timing = d.get("timing", "wall")
        if timing not in TIMINGS:
            raise ProfileError(f"{where}.timing: {timing!r} is not one of {TIMINGS}; re-run coinfer profile")
        wm = d.get("whole_model_ms")
        if wm is not None and not (isinstance(wm, (int, float)) and math.isfinite(wm) and wm > 0):
            raise ProfileError(f"{where}.whole_model_ms must be > 0 (got {wm!r}); re-run coinfer profile")
        cs = d.get("chain_scale", 1.0)
        if not (isinstance(cs, (int, float)) and CHAIN_SCALE[0] <= cs <= CHAIN_SCALE[1]):
            raise ProfileError(f"{where}.chain_scale must be in [{CHAIN_SCALE[0]}, {CHAIN_SCALE[1]}] (coinfer profile "
                               f"clamps it there; got {cs!r}); re-run coinfer profile")
        be = str(d.get("backend", "torch"))
        if be.split("/", 1)[0] not in KNOWN_BACKENDS:
            raise ProfileError(f"{where}.backend {be!r} is not one of {', '.join(KNOWN_BACKENDS)}; re-run coinfer "
                               f"profile")
        emu = d.get("emulation")
        if emu is not None and not isinstance(emu, dict):
            raise ProfileError(f"{where}.emulation must be null or an object; re-run coinfer profile")
        try:
            samples = [LayerSample(str(f), tuple(float(v) for v in x), float(ms))
                       for f, x, ms in (d.get("samples") or [])]
        except (TypeError, ValueError):
            raise ProfileError(f"{where}.samples: malformed; delete the file and re-run coinfer profile") from None
        try:
            rt = None if d.get("runtime") is None else RuntimeCosts.from_dict(d["runtime"], f"{where}.runtime")
        except RuntimeCostsError as e:
            raise ProfileError(str(e)) from None
        return cls(
            device=str(d["device"]), model=str(d["model"]["name"]), fingerprint=str(d["model"]["fingerprint"]),
            date=str(d.get("date", "")), machine=dict(d.get("machine") or {}), backend=str(d.get("backend", "torch")),
            stages=stages, whole=whole, regressions=regs, links=links,
            calibration=None if cal is None else HostCalibration.from_dict(cal, f"{where}.calibration"),
            timing=timing, emulation=None if emu is None else dict(emu), runtime=rt,
            complete=bool(d.get("complete", True)), samples=samples, chained=chained,
            chain_scale=_chain(d.get("chain_scale", 1.0), f"{where}.chain_scale"),
            whole_model_ms=None if d.get("whole_model_ms") is None else float(d["whole_model_ms"]),
            cols=cols,
        )

    @classmethod
    def load(cls, path: str | Path) -> DeviceProfile:
        from ..paths import read_user_text

        p = Path(path)
        text = read_user_text(p, what="profile", kind="JSON", error=ProfileError,
                              fix="give a directory of the <device>.json files coinfer profile writes",
                              missing="create it with coinfer profile")
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProfileError(f"profile {str(p)!r} is not valid JSON ({e.msg}, line {e.lineno}); "
                               f"re-run coinfer profile") from None
        return cls.from_dict(d, str(p))

    def save(self, path: str | Path) -> None:
        write_text(path, self.to_json() + "\n")


@dataclass
class ProfileSet:
    """The profiles of one model on the devices of one cluster (``DIR/<device>.json``).

    A device profiled on several execution backends has one file per backend,
    ``DIR/<device>@<backend>.json`` (``<backend>`` = the profile's ``backend``
    field, ``/`` written as ``-``: ``d0@onnxruntime.json``, ``d0@openvino-bf16.json``);
    :meth:`select` keeps, per device, the profile of the backend the cluster
    file chooses (``auto``: the fastest profiled one at the device's precision).
    """

    profiles: dict[str, DeviceProfile] = field(default_factory=dict)
    where: str = "profiles"
    alternatives: dict[str, dict[str, DeviceProfile]] = field(default_factory=dict)  # device -> backend -> profile
    # device -> what its cluster entry runs and the table that prices it instead (select(); shown by
    # coinfer plan / simulate: the price of another backend used to go unsaid)
    mismatched: dict[str, tuple[str, str]] = field(default_factory=dict)  # device -> (runs, priced with)

    def select(self, cluster: Any) -> ProfileSet:
        """One profile per device: the cluster's ``backend``/``precision`` for it (issue 10); ``auto``
        the fastest profiled one that ``auto`` would run (at fp32 with onnxruntime profiled: torch or
        onnxruntime, as :data:`coinfer.execute.backends.base.AUTO_FP32` — it priced openvino, which
        ``auto`` never runs at fp32). A device priced with another backend's table than it runs is
        recorded in ``mismatched``."""
        devs = {d.name: d for d in cluster.devices}
        chosen: dict[str, DeviceProfile] = {}
        mismatched: dict[str, tuple[str, str]] = {}
        for dev, prof in self.profiles.items():
            alts = self.alternatives.get(dev) or {prof.backend: prof}
            spec = devs.get(dev)
            prec = spec.precision if spec is not None else "fp32"
            want = None if spec is None or spec.backend == "auto" else (
                spec.backend if prec == "fp32" else f"{spec.backend}/{prec}")
            if want in alts:
                chosen[dev] = alts[want]
                continue
            same = {k: v for k, v in alts.items() if (k.split("/", 1)[1] if "/" in k else "fp32") == prec}
            if want is None and prec == "fp32" and "onnxruntime" in same:
                same = {k: v for k, v in same.items() if k in AUTO_FP32}
            chosen[dev] = min((same or alts).values(), key=_profile_total_ms)
            have = chosen[dev].backend
            if want is not None or (prec != "fp32" and not same):
                mismatched[dev] = (want or f"auto/{prec}", have)
            elif prec == "fp32" and "onnxruntime" not in alts and _installed("onnxruntime"):
                mismatched[dev] = ("auto", have)  # auto takes onnxruntime where it is faster
        for dev, prof in chosen.items():  # links and message costs are the device's, not a backend's: a
            # backend profiled with --no-links borrows them from a sibling table (QA: it fell back to the
            # built-in per-message costs, and --links probed said there was no probe)
            others = [a for a in (self.alternatives.get(dev) or {}).values() if a is not prof]
            rt = prof.runtime or next((a.runtime for a in others if a.runtime is not None), None)
            links = prof.links or next((a.links for a in others if a.links), {})
            if rt is not prof.runtime or links is not prof.links:
                chosen[dev] = replace(prof, runtime=rt, links=dict(links))
        return ProfileSet(chosen, self.where, self.alternatives, mismatched)

    def mismatch_notes(self) -> list[str]:
        """One line per kind of :attr:`mismatched` device, for ``coinfer plan`` / ``simulate``."""
        return mismatch_notes(self.mismatched, self.where)

    def __iter__(self) -> Iterator[str]:
        return iter(self.profiles)

    def __len__(self) -> int:
        return len(self.profiles)

    def get(self, device: str) -> DeviceProfile | None:
        return self.profiles.get(device)

    def items(self) -> Iterator[tuple[str, DeviceProfile]]:
        return iter(self.profiles.items())

    @classmethod
    def load_dir(cls, path: str | Path) -> ProfileSet:
        p = Path(path)
        if p.is_file():  # following "create it with -o" would have overwritten that file
            raise ProfileError(f"--profiles {str(p)!r} is a file, not a directory; give the directory coinfer "
                               f"profile wrote (default profiles/<model>)")
        if not p.is_dir():
            raise ProfileError(f"profiles directory {str(p)!r} does not exist; create it with "
                               f"coinfer profile CLUSTER --model MODEL -o {p}")
        out: dict[str, DeviceProfile] = {}
        alts: dict[str, dict[str, DeviceProfile]] = {}
        for f in sorted(p.glob("*.json")):
            prof = DeviceProfile.load(f)
            if not prof.complete:  # <device>.json and <device>@<backend>.json alike
                raise ProfileError(f"{f} is an unfinished profile (coinfer profile was interrupted); finish it "
                                   f"with the same coinfer profile command (it resumes) or delete the file")
            if "@" in f.stem:  # <device>@<backend>.json: one of several backends of a device
                dev, tag = f.stem.split("@", 1)
                if dev != prof.device or tag != prof.backend.replace("/", "-"):
                    raise ProfileError(f"{f} holds device {prof.device!r} on backend {prof.backend!r}; name it "
                                       f"{prof.device}@{prof.backend.replace('/', '-')}.json")
                if prof.backend in alts.get(dev, {}):
                    raise ProfileError(f"{f}: a second profile of {dev!r} on {prof.backend!r}; keep one")
                alts.setdefault(dev, {})[prof.backend] = prof
                out.setdefault(dev, prof)
                continue
            if prof.device in out:
                raise ProfileError(f"{f}: a second profile for device {prof.device!r}; keep one file per device")
            if f.stem != prof.device:
                raise ProfileError(f"{f} holds the profile of device {prof.device!r}; name it "
                                   f"{prof.device}.json (one file per device)")
            # <device>.json is one of the device's alternatives too (coinfer profile writes the torch
            # fp32 profile there and the other backends' beside it)
            alts.setdefault(prof.device, {})[prof.backend] = prof
            out[prof.device] = prof
        if not out:
            raise ProfileError(f"no profiles (*.json) in {str(p)!r}; create them with "
                               f"coinfer profile CLUSTER --model MODEL -o {p}")
        return cls(out, str(p), alts)

    def save_dir(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        for dev, prof in self.profiles.items():
            prof.save(p / f"{dev}.json")

    def check(self, graph: Graph, devices: list[str], shares: dict[str, float] | None = None,
              emulated: set[str] | None = None) -> None:
        """Refuse profiles of another model (fingerprint), of devices not in ``devices``, or — for
        wall-clock profiles of emulated devices — measured at another ``cpu_share`` than ``shares`` gives,
        or measured without emulation for a device the cluster emulates (``emulated``)."""
        fp = graph.fingerprint()
        for dev, prof in self.profiles.items():
            if prof.fingerprint != fp:
                what = (f"model {prof.model!r}" if prof.model != graph.name
                        else f"another version of {prof.model!r} (fingerprint {prof.fingerprint[:19]}…)")
                raise ProfileError(
                    f"{self.where}/{dev}.json was measured for {what}, not {graph.name} "
                    f"({fp[:19]}…); profile this model with coinfer profile CLUSTER --model {graph.name} "
                    f"-o DIR and pass --profiles DIR"
                )
            if dev not in devices:
                raise ProfileError(
                    f"{self.where}/{dev}.json is for device {dev!r}, which the cluster does not have "
                    f"(devices: {', '.join(devices)}); use the profiles of this cluster or remove that file"
                )
            names = {n.name for n in graph.nodes} | {n.name for br in graph.exits.values() for n in br.nodes} \
                | {"output", "input"}
            for (a, b) in [*prof.stages, *prof.whole]:
                if a not in names or b not in names:  # an edited file: the table prices nothing it names
                    raise ProfileError(f"{self.where}/{dev}.json has a segment {a}→{b} of nodes model {graph.name} "
                                       f"does not have; re-run coinfer profile")
            emu = prof.emulation or {}
            measured_free = (prof.timing == "wall" and "cpu_share" not in emu and bool(prof.machine)
                             and "cpu_share" not in (prof.machine.get("emulation") or {}))  # DistrEdge's record
            if emulated and dev in emulated and measured_free:
                raise ProfileError(
                    f"{self.where}/{dev}.json was measured in wall time without CPU emulation (full speed), but "
                    f"the cluster emulates {dev} at cpu_share {(shares or {}).get(dev, '?')}; re-profile this "
                    f"cluster with coinfer profile, or set emulation: {{cpu: off}} in the cluster file"
                )
            if shares and prof.timing == "wall" and "cpu_share" in emu and dev in shares \
                    and abs(float(emu["cpu_share"]) - shares[dev]) > 1e-9:
                raise ProfileError(
                    f"{self.where}/{dev}.json was measured with cpu_share {emu['cpu_share']}, but the cluster gives "
                    f"{dev} cpu_share {shares[dev]}; re-profile this cluster with coinfer profile"
                )


def mismatch_notes(mismatched: dict[str, tuple[str, str]], where: str) -> list[str]:
    """One line per kind of device priced with another backend's table than it runs (``mismatched``:
    device -> (runs, priced with), :meth:`ProfileSet.select`); ``where``: the profiles directory."""
    out = []
    auto = sorted(d for d, (want, _) in mismatched.items() if want == "auto")
    if auto:
        out.append(f"note: {', '.join(auto)} {'runs' if len(auto) == 1 else 'run'} backend auto (onnxruntime where "
                   f"it is faster) but only {'its' if len(auto) == 1 else 'their'} {mismatched[auto[0]][1]} table "
                   f"is profiled in {where}: coinfer profile --backend all prices what runs")
    for dev, (want, have) in sorted(mismatched.items()):
        if want != "auto":
            be, _, prec = want.partition("/")
            fix = f"coinfer profile --backend {be if be != 'auto' else 'all'}" + (f" --precision {prec}" if prec else "")
            out.append(f"note: {dev} runs {want} but is priced with its {have} table in {where}: {fix}")
    return out


#: what coinfer profile measures (execute.backends.BACKENDS; a test keeps them equal) and the chain scale's
#: clamp (cost.measure.CHAIN_SCALE_MIN/MAX)
KNOWN_BACKENDS = ("torch", "onnxruntime", "openvino")
CHAIN_SCALE = (0.25, 1.5)

#: the backends ``auto`` considers at fp32 when onnxruntime is installed (execute.backends.base.AUTO_FP32,
#: not imported: this module stays torch-free; a test keeps the two equal)
AUTO_FP32 = ("torch", "onnxruntime")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _profile_total_ms(prof: DeviceProfile) -> float:
    """The whole model's latency as profiled: whole stages plus each table's full-height point."""
    return sum(prof.whole.values()) + sum(max(ms for _, ms in pts) for pts in prof.stages.values() if pts)
