"""The plan file ``coinfer.plan/1``: what runs where.

Plain dataclasses, torch-free, JSON round-trip with unknown fields rejected.
:meth:`Plan.validate` checks a plan against a model's :class:`Graph` and
explains the fix in one line ("rows [0,40) and [38,224) overlap on stage 3;
parts must tile 0..224").

A plan is a list of stages; each ends at a cut point (``until``) and has a
partition: ``whole`` (one device), ``rows`` (parts by output rows, full
width), ``grid`` (row x column tiles) or ``features`` (a stage of one linear
layer split by output features). Ranges are half-open, in the stage's
*output* coordinates, and must tile the output exactly.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CoinferError, check_keys
from ..graph.geometry import HALO_MODES, Region, feature_region, features_layer
from ..graph.ir import OUTPUT, Graph, GraphError
from ..paths import write_text

FORMAT = "coinfer.plan/1"
SCHEDULES = ("static", "dynamic")
EXCHANGES = ("direct", "via_source")
CODECS = ("raw", "lz4", "zstd")
QUANTS = (None, "int8", "int8c", "int4")
#: the tensor id of the model input (tensors are named by the stage producing them)
INPUT_TENSOR = -1


class PlanError(CoinferError, ValueError):
    """A plan that cannot run; the message names what is wrong and the fix."""


def _check_keys(d: Any, allowed: set[str], where: str, required: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    check_keys(d, allowed, where, required, error=PlanError)


def _int_pair(v: Any, where: str) -> tuple[int, int]:
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
        raise PlanError(f"{where} must be a pair of integers [start, end), got {v!r}")
    return int(v[0]), int(v[1])


@dataclass(frozen=True)
class ModelRef:
    name: str
    input_shape: tuple[int, ...]
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "input_shape": list(self.input_shape), "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: Any) -> ModelRef:
        _check_keys(d, {"name", "input_shape", "fingerprint"}, "model", {"name", "input_shape", "fingerprint"})
        shape = d["input_shape"]
        if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(x, int) and x > 0 for x in shape)):
            raise PlanError(f"model.input_shape must be [N, C, H, W] positive integers, got {shape!r}")
        return cls(str(d["name"]), tuple(shape), str(d["fingerprint"]))


@dataclass(frozen=True)
class Whole:
    device: str
    type: str = "whole"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "whole", "device": self.device}


@dataclass(frozen=True)
class RowPart:
    device: str
    rows: tuple[int, int]


@dataclass(frozen=True)
class Rows:
    parts: tuple[RowPart, ...]
    schedule: str = "static"
    type: str = "rows"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "rows",
                             "parts": [{"device": p.device, "rows": list(p.rows)} for p in self.parts]}
        if self.schedule != "static":
            d["schedule"] = self.schedule
        return d


@dataclass(frozen=True)
class Grid:
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    devices: tuple[tuple[str, ...], ...]
    schedule: str = "static"
    type: str = "grid"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "grid", "rows": list(self.rows), "cols": list(self.cols),
                "devices": [list(r) for r in self.devices], "schedule": self.schedule}


@dataclass(frozen=True)
class FeaturePart:
    device: str
    features: tuple[int, int]


@dataclass(frozen=True)
class Features:
    """A stage of one linear layer (plus activations) split by output features (MoDNN's FC partition).

    Every part reads the whole stage input and computes features ``[c0, c1)``
    of the flat ``(N, F)`` output; the parts must tile ``0..F``. Exact.
    """

    parts: tuple[FeaturePart, ...]
    type: str = "features"

    def to_dict(self) -> dict[str, Any]:
        return {"type": "features",
                "parts": [{"device": p.device, "features": list(p.features)} for p in self.parts]}


Partition = Whole | Rows | Grid | Features


def _ranged_parts(parts: Any, key: str, where: str) -> list[tuple[str, tuple[int, int]]]:
    """``[{"device": d, key: [a, b]}, ...]`` (a rows or features partition's parts), checked."""
    if not isinstance(parts, list) or not parts:
        raise PlanError(f"{where}.parts must be a non-empty list")
    out = []
    for i, p in enumerate(parts):
        _check_keys(p, {"device", key}, f"{where}.parts[{i}]", {"device", key})
        out.append((str(p["device"]), _int_pair(p[key], f"{where}.parts[{i}].{key}")))
    return out


def partition_from_dict(d: Any, where: str) -> Partition:
    if not isinstance(d, dict) or "type" not in d:
        raise PlanError(f"{where} needs a 'type': whole, rows, grid or features")
    t = d["type"]
    if t == "whole":
        _check_keys(d, {"type", "device"}, where, {"device"})
        return Whole(str(d["device"]))
    if t == "rows":
        _check_keys(d, {"type", "parts", "schedule"}, where, {"parts"})
        return Rows(tuple(RowPart(dev, r) for dev, r in _ranged_parts(d["parts"], "rows", where)),
                    str(d.get("schedule", "static")))
    if t == "grid":
        _check_keys(d, {"type", "rows", "cols", "devices", "schedule"}, where, {"rows", "cols", "devices"})
        for k in ("rows", "cols"):
            if not (isinstance(d[k], list) and all(isinstance(x, int) for x in d[k])):
                raise PlanError(f"{where}.{k} must be a list of integer boundaries like [0, 14, 28]")
        devs = d["devices"]
        if not (isinstance(devs, list) and all(isinstance(r, list) for r in devs)):
            raise PlanError(f"{where}.devices must be a matrix (list of lists) of device names")
        return Grid(tuple(d["rows"]), tuple(d["cols"]), tuple(tuple(str(x) for x in r) for r in devs),
                    str(d.get("schedule", "static")))
    if t == "features":
        _check_keys(d, {"type", "parts"}, where, {"parts"})
        return Features(tuple(FeaturePart(dev, r) for dev, r in _ranged_parts(d["parts"], "features", where)))
    raise PlanError(f"{where}.type {t!r} is unknown; use whole, rows, grid or features")


@dataclass(frozen=True)
class Stage:
    until: str
    partition: Partition
    halo: str = "exact"
    exchange: str = "direct"  # "via_source": outputs regathered at the source and redistributed (MoDNN)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"until": self.until}
        if not isinstance(self.partition, Whole):
            d["halo"] = self.halo
        d["partition"] = self.partition.to_dict()
        if self.exchange != "direct":
            d["exchange"] = self.exchange
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str) -> Stage:
        _check_keys(d, {"until", "halo", "partition", "exchange"}, where, {"until", "partition"})
        return cls(str(d["until"]), partition_from_dict(d["partition"], f"{where}.partition"),
                   str(d.get("halo", "exact")), str(d.get("exchange", "direct")))


@dataclass(frozen=True)
class Wire:
    codec: str = "raw"
    quant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"codec": self.codec, "quant": self.quant}

    @property
    def lossless(self) -> bool:
        return self.quant is None

    def for_tensor(self, model_input: bool = False, model_output: bool = False) -> tuple[str, str | None]:
        """``(codec, quant)`` of a transfer: quantisation is for activations.

        The model output (what the caller gets back) is never quantised. The model input is quantised
        only by ``int4``: ADCNN's FDSP tiles the image and fine-tunes with those tiles 4-bit quantised
        (docs/strategies/adcnn.md), while ``int8``/``int8c`` are applied without fine-tuning, and
        re-quantising the input data is their largest error (on EfficientNet-Lite0, int8 on the input
        alone changes the top-1 of 3.8 % of the augmented sample images).
        """
        if model_output or (model_input and self.quant != "int4"):
            return self.codec, None
        return self.codec, self.quant


@dataclass(frozen=True)
class StrategyRef:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}


@dataclass(frozen=True)
class Part:
    """One unit of work: a region of a stage's output computed on a device."""

    stage: int
    index: int
    device: str
    region: Region | None  # None: the whole (possibly non-spatial) output


@dataclass
class Plan:
    model: ModelRef
    devices: list[str]
    source: str
    stages: list[Stage]
    strategy: StrategyRef = field(default_factory=lambda: StrategyRef("manual"))
    exit: str | None = None
    wire: Wire = field(default_factory=Wire)
    predicted: dict[str, Any] | None = None

    # -- serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model.to_dict(),
            "devices": list(self.devices),
            "source": self.source,
            "strategy": self.strategy.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "exit": self.exit,
            "wire": self.wire.to_dict(),
            "predicted": self.predicted,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: Any) -> Plan:
        allowed = {"format", "model", "devices", "source", "strategy", "stages", "exit", "wire", "predicted"}
        _check_keys(d, allowed, "plan", {"format", "model", "devices", "source", "stages"})
        if d["format"] != FORMAT:
            raise PlanError(f"plan format {d['format']!r} is not {FORMAT!r}; re-create it with coinfer plan")
        devs = d["devices"]
        if not (isinstance(devs, list) and devs and all(isinstance(x, str) for x in devs)):
            raise PlanError("plan.devices must be a non-empty list of device names")
        st = d.get("strategy") or {"name": "manual", "params": {}}
        _check_keys(st, {"name", "params"}, "strategy", {"name"})
        wire = d.get("wire") or {}
        _check_keys(wire, {"codec", "quant"}, "wire")
        if not isinstance(d["stages"], list) or not d["stages"]:
            raise PlanError("plan.stages must be a non-empty list")
        pred = d.get("predicted")
        if pred is not None and not isinstance(pred, dict):
            raise PlanError("plan.predicted must be an object or null")
        if not isinstance(st.get("params") or {}, dict):
            raise PlanError("strategy.params must be an object of strategy parameters (or omitted)")
        if d.get("exit") is not None and not isinstance(d["exit"], str):
            raise PlanError("plan.exit must be null (the final output) or the name of an early exit")
        return cls(
            model=ModelRef.from_dict(d["model"]),
            devices=list(devs),
            source=str(d["source"]),
            stages=[Stage.from_dict(s, f"stages[{i}]") for i, s in enumerate(d["stages"])],
            strategy=StrategyRef(str(st["name"]), dict(st.get("params") or {})),
            exit=d.get("exit"),
            wire=Wire(str(wire.get("codec", "raw")), wire.get("quant")),
            predicted=pred,
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"plan is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        from ..paths import read_user_text

        return cls.from_json(read_user_text(path, what="plan file", kind="JSON", error=PlanError,
                                            fix="give the plan written by coinfer plan",
                                            missing="create one with coinfer plan"))

    def save(self, path: str | Path) -> None:
        write_text(path, self.to_json() + "\n")

    def wire_for(self, tensor: int) -> tuple[str, str | None]:
        """``(codec, quant)`` of a transfer of ``tensor`` (the stage producing it; -1 the model input):
        :meth:`Wire.for_tensor` — the runtime, the simulator and the codec emulation all ask here."""
        return self.wire.for_tensor(tensor == INPUT_TENSOR, tensor >= len(self.stages) - 1)

    # -- structure -------------------------------------------------------------
    def stage_bounds(self, graph: Graph) -> list[tuple[str, str]]:
        """(start, end) node names of every stage, resolved in ``graph``."""
        out = []
        prev = graph.input.name
        for s in self.stages:
            end = graph.resolve(s.until)
            out.append((prev, end))
            prev = end
        return out

    def parts(self, graph: Graph, stage: int) -> list[Part]:
        """The parts of ``stage`` with their absolute output regions."""
        s = self.stages[stage]
        node = graph[s.until]
        p = s.partition
        if isinstance(p, Whole):
            region = (0, node.height, 0, node.width) if node.is_feature_map else None
            return [Part(stage, 0, p.device, region)]
        if isinstance(p, Rows):
            return [Part(stage, i, rp.device, (rp.rows[0], rp.rows[1], 0, node.width))
                    for i, rp in enumerate(p.parts)]
        if isinstance(p, Features):
            return [Part(stage, i, fp.device, feature_region(*fp.features)) for i, fp in enumerate(p.parts)]
        out = []
        k = 0
        for i in range(len(p.rows) - 1):
            for j in range(len(p.cols) - 1):
                out.append(Part(stage, k, p.devices[i][j], (p.rows[i], p.rows[i + 1], p.cols[j], p.cols[j + 1])))
                k += 1
        return out

    def all_parts(self, graph: Graph) -> Iterator[Part]:
        for i in range(len(self.stages)):
            yield from self.parts(graph, i)

    @property
    def is_exact(self) -> bool:
        """Every stage has exact halos and the wire is lossless: the output equals the plain model's
        (within the core tolerance) when every device also computes at fp32."""
        return all(s.halo == "exact" for s in self.stages) and self.wire.lossless

    def devices_used_names(self) -> list[str]:
        """Devices with work in some stage, plus the source (no graph needed)."""
        used = {self.source}
        for s in self.stages:
            p = s.partition
            if isinstance(p, Whole):
                used.add(p.device)
            elif isinstance(p, (Rows, Features)):
                used.update(rp.device for rp in p.parts)
            else:
                used.update(d for row in p.devices for d in row)
        return [d for d in self.devices if d in used]

    def devices_used(self, graph: Graph) -> list[str]:
        used = {p.device for p in self.all_parts(graph)} | {self.source}
        return [d for d in self.devices if d in used]

    # -- validation -------------------------------------------------------------
    def validate(self, graph: Graph, *, check_fingerprint: bool = True) -> Graph:
        """Check the plan against ``graph`` (the full model); return the graph it runs (exit applied)."""
        if list(self.model.input_shape) != list(graph.input_shape):
            raise PlanError(
                f"plan is for input shape {list(self.model.input_shape)} but the model takes "
                f"{list(graph.input_shape)}; re-plan with coinfer plan"
            )
        if check_fingerprint and self.model.fingerprint != graph.fingerprint():
            raise PlanError(
                f"plan is for a different model (fingerprint {self.model.fingerprint[:19]}…, "
                f"model {graph.name} is {graph.fingerprint()[:19]}…); re-plan with coinfer plan for this model"
            )
        if len(set(self.devices)) != len(self.devices):
            raise PlanError(f"plan.devices lists a device twice: {self.devices}")
        if self.source not in self.devices:
            raise PlanError(f"source {self.source!r} is not one of the plan devices {self.devices}")
        if self.wire.codec not in CODECS:
            raise PlanError(f"wire.codec {self.wire.codec!r} is unknown; use one of {', '.join(CODECS)}")
        if self.wire.quant not in QUANTS:
            raise PlanError(f"wire.quant {self.wire.quant!r} is unknown; use null, int8, int8c or int4")
        try:
            g = graph.for_exit(self.exit)
        except GraphError as e:
            raise PlanError(str(e)) from None
        cuts = g.cut_points()
        cutset = set(cuts)
        split = g.splittable_cuts()
        prev_idx = 0
        prev = g.input.name
        for i, s in enumerate(self.stages):
            where = f"stage {i} (until {s.until!r})"
            if s.until not in g:
                raise PlanError(
                    f"{where}: no node {s.until!r} in {g.name}; cut points are listed by "
                    f"coinfer inspect {self.model.name}"
                )
            end = g.resolve(s.until)
            if end not in cutset:
                near = ", ".join(cuts[:3] + ["…"] + cuts[-2:]) if len(cuts) > 6 else ", ".join(cuts)
                raise PlanError(f"{where}: {end!r} is not a cut point; stages must end at one of: {near}")
            idx = g.index(end)
            if idx <= prev_idx:
                raise PlanError(f"{where}: stages must go forward through the model; {end!r} is not after {prev!r}")
            if s.halo not in HALO_MODES:
                raise PlanError(f"{where}: halo {s.halo!r} is unknown; use exact or zero")
            if s.exchange not in EXCHANGES:
                raise PlanError(f"{where}: exchange {s.exchange!r} is unknown; use direct or via_source")
            self._validate_partition(g, i, s, where, split.get(end, False) and g.segment_is_spatial(prev, end), prev)
            prev_idx, prev = idx, end
        if g.resolve(self.stages[-1].until) != g.output.name:
            raise PlanError(
                f"the last stage ends at {self.stages[-1].until!r}, not at the model output; "
                f"add a final stage with until \"{OUTPUT}\""
            )
        return g

    def _validate_partition(self, g: Graph, i: int, s: Stage, where: str, splittable: bool, prev: str) -> None:
        p = s.partition
        node = g[s.until]
        devset = set(self.devices)

        def known(dev: str) -> None:
            if dev not in devset:
                raise PlanError(f"{where}: unknown device {dev!r}; plan devices are {self.devices}")

        if isinstance(p, Whole):
            known(p.device)
            return
        if isinstance(p, Features):
            for fp in p.parts:
                known(fp.device)
            lin, why = features_layer(g, prev, node.name)
            if lin is None:
                raise PlanError(f"{where}: a features partition needs a stage of one linear layer and its "
                                f"activations, but {why}")
            if s.halo != "exact":
                raise PlanError(f"{where}: a features partition is exact; drop halo from this stage")
            _check_tiling([fp.features for fp in p.parts], node.shape[1], "features", where)
            return
        if not splittable:
            raise PlanError(
                f"{where}: this stage cannot be split (it contains global pooling, flatten, linear or "
                f"a non-local op, or follows one); use partition type whole"
            )
        if getattr(p, "schedule", "static") not in SCHEDULES:
            raise PlanError(f"{where}: schedule {p.schedule!r} is unknown; use static or dynamic")
        H, W = node.height, node.width
        if isinstance(p, Rows):
            for rp in p.parts:
                known(rp.device)
            _check_tiling([rp.rows for rp in p.parts], H, "rows", where)
            return
        assert isinstance(p, Grid)
        for k, n, size in (("rows", p.rows, H), ("cols", p.cols, W)):
            if len(n) < 2 or n[0] != 0 or n[-1] != size or any(b <= a for a, b in itertools.pairwise(n)):
                raise PlanError(
                    f"{where}: grid {k} {list(n)} must increase strictly from 0 to {size} "
                    f"(the output is {H}x{W})"
                )
        if len(p.devices) != len(p.rows) - 1 or any(len(r) != len(p.cols) - 1 for r in p.devices):
            raise PlanError(
                f"{where}: grid devices must be a {len(p.rows) - 1}x{len(p.cols) - 1} matrix "
                f"(one device per tile), got {len(p.devices)} row{'s' if len(p.devices) != 1 else ''} of lengths "
                f"{[len(r) for r in p.devices]}"
            )
        for r in p.devices:
            for dev in r:
                known(dev)


def _check_tiling(ranges: list[tuple[int, int]], size: int, what: str, where: str) -> None:
    for a, b in ranges:
        if not (0 <= a < b <= size):
            raise PlanError(f"{where}: {what} [{a},{b}) is empty or outside 0..{size}; parts must tile 0..{size}")
    srt = sorted(ranges)
    for (a0, b0), (a1, b1) in itertools.pairwise(srt):
        if a1 < b0:
            raise PlanError(f"{where}: {what} [{a0},{b0}) and [{a1},{b1}) overlap; parts must tile 0..{size}")
        if a1 > b0:
            raise PlanError(f"{where}: {what} [{b0},{a1}) are not covered by any part; parts must tile 0..{size}")
    if srt[0][0] != 0 or srt[-1][1] != size:
        raise PlanError(
            f"{where}: {what} cover [{srt[0][0]},{srt[-1][1]}) but the output has {size}; parts must tile 0..{size}"
        )
