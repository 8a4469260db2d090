"""Device profiles: measured latencies of one model on one device (``coinfer.profile/1``).

Torch-free data, JSON round-trip, unknown fields rejected. A profile holds,
for one device and one model (name + structural fingerprint):

* ``stages``: per-stage latency tables ``(start, end) -> [(rows, ms), ...]``,
  the stage's output rows computed (anchored at the top, full width) against
  the median latency — DistrEdge's observation (Hou et al., 2022, §II) that
  latency is step-like, not linear, in the rows a device computes; the cost
  model interpolates them piecewise-linearly;
* ``whole``: latencies of stages run whole (non-splittable stages, the tail);
* ``regressions``: per-layer-type models (:mod:`coinfer.cost.regression`)
  for shapes not profiled;
* ``links``: probes from this device to its peers (bandwidth, round trip);
* ``calibration``: the device's own :class:`HostCalibration` (optional).

A directory of profiles holds one ``<device>.json`` per device
(``coinfer profile CLUSTER --model M -o DIR``). :meth:`ProfileSet.check`
refuses profiles of another model or of a device the cluster lacks, with a
one-line error naming the fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..graph.ir import Graph
from .calibration import HostCalibration
from .regression import LayerRegression

FORMAT = "coinfer.profile/1"

StageKey = tuple[str, str]


class ProfileError(UserError):
    """A profile that cannot be used for this model / cluster; the message names the fix."""


def _check_keys(d: Any, allowed: set[str], where: str, required: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    if not isinstance(d, dict):
        raise ProfileError(f"{where} must be a JSON object, got {type(d).__name__}")
    extra = set(d) - allowed
    if extra:
        raise ProfileError(f"{where}: unknown field(s) {sorted(extra)}; allowed: {sorted(allowed)}")
    missing = required - set(d)
    if missing:
        raise ProfileError(f"{where}: missing field(s) {sorted(missing)}")


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
        time against bytes (the intercept absorbs latency and per-message
        overhead), so use at least two clearly different sizes (e.g. 64 KB and 4 MB).
        """
        if not rtts_ms or len({b for b, _ in transfers}) < 2:
            raise ProfileError("a link probe needs pings and transfers of at least two sizes")
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

    def __post_init__(self) -> None:
        for key, pts in self.stages.items():
            self.stages[key] = sorted((int(r), float(ms)) for r, ms in pts)

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
            "stages": [{"start": s, "end": e, "rows": [[r, ms] for r, ms in pts]}
                       for (s, e), pts in self.stages.items()],
            "whole": [{"start": s, "end": e, "ms": ms} for (s, e), ms in self.whole.items()],
            "regressions": {k: v.to_dict() for k, v in self.regressions.items()},
            "links": {k: v.to_dict() for k, v in self.links.items()},
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: Any, where: str = "profile") -> DeviceProfile:
        _check_keys(d, {"format", "device", "model", "date", "machine", "backend", "stages", "whole",
                        "regressions", "links", "calibration"}, where, {"format", "device", "model"})
        if d["format"] != FORMAT:
            raise ProfileError(f"{where}: format {d['format']!r} is not {FORMAT!r}; re-run coinfer profile")
        _check_keys(d["model"], {"name", "fingerprint"}, f"{where}.model", {"name", "fingerprint"})
        try:
            stages: dict[StageKey, list[tuple[int, float]]] = {}
            for i, s in enumerate(d.get("stages") or []):
                _check_keys(s, {"start", "end", "rows"}, f"{where}.stages[{i}]", {"start", "end", "rows"})
                pts = [(int(r), float(ms)) for r, ms in s["rows"]]
                if not pts or any(r < 1 or not (math.isfinite(ms) and ms >= 0) for r, ms in pts):
                    raise ProfileError(f"{where}.stages[{i}]: rows must be [rows >= 1, ms >= 0] pairs")
                stages[(str(s["start"]), str(s["end"]))] = pts
            whole: dict[StageKey, float] = {}
            for i, s in enumerate(d.get("whole") or []):
                _check_keys(s, {"start", "end", "ms"}, f"{where}.whole[{i}]", {"start", "end", "ms"})
                whole[(str(s["start"]), str(s["end"]))] = float(s["ms"])
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
        return cls(
            device=str(d["device"]), model=str(d["model"]["name"]), fingerprint=str(d["model"]["fingerprint"]),
            date=str(d.get("date", "")), machine=dict(d.get("machine") or {}), backend=str(d.get("backend", "torch")),
            stages=stages, whole=whole, regressions=regs, links=links,
            calibration=None if cal is None else HostCalibration.from_dict(cal, f"{where}.calibration"),
        )

    @classmethod
    def load(cls, path: str | Path) -> DeviceProfile:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise ProfileError(f"profile {str(p)!r} does not exist; create it with coinfer profile") from None
        except json.JSONDecodeError as e:
            raise ProfileError(f"profile {str(p)!r} is not valid JSON ({e.msg}, line {e.lineno}); "
                               f"re-run coinfer profile") from None
        return cls.from_dict(d, str(p))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")


@dataclass
class ProfileSet:
    """The profiles of one model on the devices of one cluster (``DIR/<device>.json``)."""

    profiles: dict[str, DeviceProfile] = field(default_factory=dict)
    where: str = "profiles"

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
        if not p.is_dir():
            raise ProfileError(f"profiles directory {str(p)!r} does not exist; create it with "
                               f"coinfer profile CLUSTER --model MODEL -o {p}")
        out: dict[str, DeviceProfile] = {}
        for f in sorted(p.glob("*.json")):
            prof = DeviceProfile.load(f)
            if prof.device in out:
                raise ProfileError(f"{f}: a second profile for device {prof.device!r}; keep one file per device")
            if f.stem != prof.device:
                raise ProfileError(f"{f} holds the profile of device {prof.device!r}; name it "
                                   f"{prof.device}.json (one file per device)")
            out[prof.device] = prof
        if not out:
            raise ProfileError(f"no profiles (*.json) in {str(p)!r}; create them with "
                               f"coinfer profile CLUSTER --model MODEL -o {p}")
        return cls(out, str(p))

    def save_dir(self, path: str | Path) -> None:
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        for dev, prof in self.profiles.items():
            prof.save(p / f"{dev}.json")

    def check(self, graph: Graph, devices: list[str]) -> None:
        """Refuse profiles of another model (fingerprint) or of devices not in ``devices``."""
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
