"""The wire format: a message is a multipart of ``[msgpack header] + raw payload frames``.

The header is a msgpack map with ``"v"`` (:data:`PROTOCOL_VERSION`),
``"kind"`` (a key of :data:`SCHEMAS`) and the kind's fields. Tensors travel as
meta fields in the header (``dtype``, ``shape``, ``codec``, ``quant``,
``scale``, ``zero``, ``nbytes`` — see :mod:`coinfer.compress.codecs`) plus
exactly one payload frame of ``nbytes`` bytes, sent and received zero-copy.

Nothing that came over the network is trusted: :func:`unpack` bounds the
number and size of frames, decodes the header with msgpack's strict limits
(no ext types, bounded strings, arrays and maps, string keys only), then
checks the protocol version, the kind, every field against the kind's schema
(type, range, length; unknown fields are rejected) and the payload frames
against what the kind expects. Every failure is a :class:`WireError` with a
one-line reason. Never pickle, never ``torch.load``.

The schema is data: :data:`SCHEMAS` maps a kind to a :class:`Schema`, and
:func:`register_kind` adds (or replaces) one::

    register_kind("stats", {"dep": Field("str"), "rss_mb": Field("float", lo=0)})
    register_kind("blob", {"name": "str", "note": Field("str", required=False)}, payload_frames=1)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import msgpack
import numpy as np

from ..compress import codecs
from ..errors import CoinferError

PROTOCOL_VERSION = 2  # v2 (6 Dec 2026): tile and tile_out carry the tensor id
DEFAULT_MAX_FRAME = 512 * 2**20
#: At most this many frames in one message (header included).
MAX_FRAMES = 65
#: The header frame is at most this big (a plan JSON is ≤ 4 MiB).
MAX_HEADER = 8 * 2**20
MAX_STR = 256
MAX_BIG_STR = 4 * 2**20
MAX_LIST = 1024
MAX_EVENTS = 100_000
MAX_JSON_NODES = 100_000
MAX_JSON_DEPTH = 8
MAX_BIN = 64 * 2**10
INT_MIN, INT_MAX = -(2**63), 2**64 - 1
TENSOR_FIELDS: tuple[str, ...] = codecs.META_FIELDS

Frame = Union[bytes, bytearray, memoryview, np.ndarray, Any]  # noqa: UP007 - Any: zmq.Frame


class WireError(CoinferError, ValueError):
    """A message that does not follow the wire format (one line: what and where)."""


# -- schema ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """One header field.

    ``type``: ``str`` (≤ ``max_len`` chars, default 256), ``bigstr`` (≤ 4 MiB),
    ``int`` / ``float`` (within ``[lo, hi]``; floats finite, ints accepted),
    ``bool``, ``bytes`` (≤ 64 KiB), ``list[str]``, ``list[int]``, ``list[float]``,
    ``dict[str,str]``, ``dict[str,list[float]]``, ``region`` (None or
    ``[r0, r1, c0, c1]``, non-negative, ``r0 < r1``, ``c0 < c1``), ``events``
    (a list of ≤ 100,000 short lists of JSON values) or ``json`` (any
    nesting of maps with string keys, lists, strings, numbers, bools and None;
    bounded depth and size). ``nullable`` admits None; ``required=False`` lets
    the field be absent.
    """

    type: str
    required: bool = True
    nullable: bool = False
    lo: float | None = None
    hi: float | None = None
    max_len: int | None = None

    def __post_init__(self) -> None:
        if self.type not in _CHECKERS:
            raise ValueError(f"unknown field type {self.type!r}; use one of {', '.join(_CHECKERS)}")


@dataclass(frozen=True)
class Schema:
    """A kind: its fields, and its payload — an exact frame count, ``"tensor"`` (tensor meta
    fields + one frame) or ``"tensor?"`` (a tensor, or no tensor and no frame)."""

    name: str
    fields: Mapping[str, Field]
    payload_frames: int | str = 0
    _allowed: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @property
    def tensor(self) -> str | None:
        """``"required"``, ``"optional"`` or None."""
        return {"tensor": "required", "tensor?": "optional"}.get(str(self.payload_frames))


def _fld(spec: Field | str) -> Field:
    if isinstance(spec, Field):
        return spec
    if isinstance(spec, str):
        s = spec.replace(" ", "")
        nullable = s.endswith(("?", "|None"))
        s = s.removesuffix("?").removesuffix("|None")
        return Field(s, nullable=nullable)
    raise TypeError(f"a field is a Field or a type string, not {type(spec).__name__}")


def register_kind(name: str, fields: Mapping[str, Field | str], payload_frames: int | str = 0, *,
                  replace: bool = True) -> Schema:
    """Add the message kind ``name`` to :data:`SCHEMAS` (replacing an existing one unless
    ``replace=False``). ``fields`` maps a field to a :class:`Field` or a shorthand type string
    (``"str"``, ``"int"``, ``"str?"`` for nullable...). ``payload_frames``: an int (0–64),
    ``"tensor"`` or ``"tensor?"``."""
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ValueError(f"kind name {name!r} must be a non-empty string of at most 64 chars")
    if name in SCHEMAS and not replace:
        raise ValueError(f"kind {name!r} is already registered")
    fs = {str(k): _fld(v) for k, v in fields.items()}
    reserved = {"v", "kind"} & set(fs)
    if reserved:
        raise ValueError(f"fields {sorted(reserved)} are reserved")
    if payload_frames in ("tensor", "tensor?"):
        clash = set(TENSOR_FIELDS) & set(fs)
        if clash:
            raise ValueError(f"fields {sorted(clash)} clash with the tensor meta fields")
    elif not isinstance(payload_frames, int) or not 0 <= payload_frames < MAX_FRAMES:
        raise ValueError(f"payload_frames must be an int in [0, {MAX_FRAMES - 1}], 'tensor' or 'tensor?'")
    allowed = frozenset({"v", "kind", *fs, *(TENSOR_FIELDS if payload_frames in ("tensor", "tensor?") else ())})
    sch = Schema(name, fs, payload_frames, allowed)
    SCHEMAS[name] = sch
    return sch


# -- field checkers (value, field, where) -> normalised value ---------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _c_str(v: Any, f: Field, where: str) -> str:
    if not isinstance(v, str):
        raise WireError(f"{where} must be a string (got {type(v).__name__})")
    m = f.max_len or MAX_STR
    if len(v) > m:
        raise WireError(f"{where} is {len(v)} chars; at most {m}")
    return v


def _c_bigstr(v: Any, f: Field, where: str) -> str:
    return _c_str(v, Field("str", max_len=f.max_len or MAX_BIG_STR), where)


def _bounds(v: float, f: Field, where: str, lo: float, hi: float) -> None:
    lo = lo if f.lo is None else f.lo
    hi = hi if f.hi is None else f.hi
    if not lo <= v <= hi:
        raise WireError(f"{where} = {v} is out of range [{lo}, {hi}]")


def _c_int(v: Any, f: Field, where: str) -> int:
    if not _is_int(v):
        raise WireError(f"{where} must be an int (got {type(v).__name__})")
    _bounds(v, f, where, INT_MIN, INT_MAX)
    return int(v)


def _c_float(v: Any, f: Field, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise WireError(f"{where} must be a number (got {type(v).__name__})")
    x = float(v)
    if not math.isfinite(x):
        raise WireError(f"{where} must be finite (got {x})")
    _bounds(x, f, where, -math.inf, math.inf)
    return x


def _c_bool(v: Any, f: Field, where: str) -> bool:
    if not isinstance(v, bool):
        raise WireError(f"{where} must be a bool (got {type(v).__name__})")
    return v


def _c_bytes(v: Any, f: Field, where: str) -> bytes:
    if not isinstance(v, (bytes, bytearray)):
        raise WireError(f"{where} must be bytes (got {type(v).__name__})")
    if len(v) > (f.max_len or MAX_BIN):
        raise WireError(f"{where} is {len(v)} bytes; at most {f.max_len or MAX_BIN}")
    return bytes(v)


def _seq(v: Any, f: Field, where: str, default: int) -> list[Any]:
    if not isinstance(v, (list, tuple)):
        raise WireError(f"{where} must be a list (got {type(v).__name__})")
    m = f.max_len or default
    if len(v) > m:
        raise WireError(f"{where} has {len(v)} items; at most {m}")
    return list(v)


def _c_list_of(item: Callable[[Any, Field, str], Any]) -> Callable[[Any, Field, str], list[Any]]:
    def check(v: Any, f: Field, where: str) -> list[Any]:
        inner = Field("str") if item is _c_str else Field("int" if item is _c_int else "float", lo=f.lo, hi=f.hi)
        return [item(x, inner, f"{where}[{i}]") for i, x in enumerate(_seq(v, f, where, MAX_LIST))]
    return check


def _map(v: Any, f: Field, where: str) -> dict[Any, Any]:
    if not isinstance(v, dict):
        raise WireError(f"{where} must be a map (got {type(v).__name__})")
    m = f.max_len or MAX_LIST
    if len(v) > m:
        raise WireError(f"{where} has {len(v)} entries; at most {m}")
    return v


def _c_dict_str_str(v: Any, f: Field, where: str) -> dict[str, str]:
    s = Field("str")
    return {_c_str(k, s, f"{where} key"): _c_str(x, s, f"{where}[{k!r}]") for k, x in _map(v, f, where).items()}


def _c_dict_str_floats(v: Any, f: Field, where: str) -> dict[str, list[float]]:
    s, lf = Field("str"), Field("list[float]", max_len=8)
    return {_c_str(k, s, f"{where} key"): _c_list_of(_c_float)(x, lf, f"{where}[{k!r}]")
            for k, x in _map(v, f, where).items()}


def _c_region(v: Any, f: Field, where: str) -> list[int] | None:
    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise WireError(f"{where} must be null or [r0, r1, c0, c1]")
    r0, r1, c0, c1 = (_c_int(x, Field("int", lo=0, hi=2**31 - 1), f"{where}[{i}]") for i, x in enumerate(v))
    if not (r0 < r1 and c0 < c1):
        raise WireError(f"{where} {list(v)} is empty or reversed; need r0 < r1 and c0 < c1")
    return [r0, r1, c0, c1]


def _json(v: Any, where: str, depth: int, budget: list[int]) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise WireError(f"{where}: too many values (at most {MAX_JSON_NODES})")
    if v is None or isinstance(v, bool):
        return v
    if _is_int(v):
        if not INT_MIN <= v <= INT_MAX:
            raise WireError(f"{where}: int out of range")
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise WireError(f"{where}: numbers must be finite")
        return v
    if isinstance(v, str):
        if len(v) > MAX_BIG_STR:
            raise WireError(f"{where}: string too long")
        return v
    if depth >= MAX_JSON_DEPTH:
        raise WireError(f"{where}: nested deeper than {MAX_JSON_DEPTH}")
    if isinstance(v, (list, tuple)):
        return [_json(x, where, depth + 1, budget) for x in v]
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if not isinstance(k, str) or len(k) > MAX_STR:
                raise WireError(f"{where}: map keys must be strings of at most {MAX_STR} chars")
            out[k] = _json(x, where, depth + 1, budget)
        return out
    raise WireError(f"{where}: {type(v).__name__} is not a JSON value")


def _c_json(v: Any, f: Field, where: str) -> Any:
    return _json(v, where, 0, [f.max_len or MAX_JSON_NODES])


def _c_json_map(v: Any, f: Field, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise WireError(f"{where} must be a map (got {type(v).__name__})")
    out: dict[str, Any] = _c_json(v, f, where)
    return out


def _c_events(v: Any, f: Field, where: str) -> list[list[Any]]:
    evs = _seq(v, f, where, MAX_EVENTS)
    budget = [MAX_JSON_NODES * 4]
    out = []
    for i, e in enumerate(evs):
        if not isinstance(e, (list, tuple)) or len(e) > 16:
            raise WireError(f"{where}[{i}] must be a list of at most 16 values")
        out.append([_json(x, f"{where}[{i}]", 1, budget) for x in e])
    return out


_CHECKERS: dict[str, Callable[[Any, Field, str], Any]] = {
    "str": _c_str, "bigstr": _c_bigstr, "int": _c_int, "float": _c_float, "bool": _c_bool,
    "bytes": _c_bytes, "list[str]": _c_list_of(_c_str), "list[int]": _c_list_of(_c_int),
    "list[float]": _c_list_of(_c_float), "dict[str,str]": _c_dict_str_str,
    "dict[str,list[float]]": _c_dict_str_floats, "region": _c_region, "events": _c_events,
    "json": _c_json, "dict": _c_json_map,
}

SCHEMAS: dict[str, Schema] = {}

_NAME = Field("str")
_DEP = Field("str")
_REQ = Field("int", lo=0, hi=2**63 - 1)
_IDX = Field("int", lo=0, hi=2**31 - 1)
_TENSOR = Field("int", lo=-1, hi=2**31 - 1)  # a stage's output tensor; -1 the model input
_MS = Field("float", lo=0.0)


def _initial_kinds() -> None:
    opt = {"required": False}
    # coord: the coordinator's address; device: the device the coordinator expects at this address (both
    # optional; hello_ok's asked echoes device: a cluster file with two addresses swapped is then named)
    register_kind("hello", {"coord": Field("str", **opt), "device": Field("str", max_len=64, **opt)})
    # instance: a token the worker process draws when it starts (optional): a new one on a device's
    # pong says it restarted, and the deployments it held are gone
    register_kind("hello_ok", {"name": _NAME, "pid": Field("int", lo=0, hi=2**31 - 1), "version": "str",
                               "cpu_mode": "str", "backends": Field("list[str]", max_len=64),
                               "instance": Field("str", max_len=32, **opt), "asked": Field("str", max_len=64, **opt)})
    register_kind("deploy", {"dep": _DEP, "plan": "bigstr", "device": _NAME, "peers": "dict[str,str]",
                             "coord": "str", "seed": "int",
                             # links: peer -> [bandwidth_mbps, latency_ms] to shape (optional)
                             "links": Field("dict[str,list[float]]", **opt),
                             # link_trace: {"t0": wall-clock s of trace time 0, "rows": [[t_s, mbps]...]}:
                             # the cluster's network.trace replayed by every shaped link (optional; issue 6)
                             "link_trace": Field("dict", nullable=True, **opt),
                             # the device's execution backend and precision (cluster file; issue 10)
                             "backend": Field("str", max_len=32, **opt), "precision": Field("str", max_len=16, **opt)})
    register_kind("deploy_ok", {"dep": _DEP, "device": _NAME, "build_ms": _MS,
                                # backends that compute this device's parts ("onnxruntime", "torch/bf16"...)
                                # and memory figures {weights_bytes, rss_bytes} after the build (optional)
                                "backends": Field("list[str]", max_len=64, **opt), "memory": Field("dict", **opt)})
    register_kind("undeploy", {"dep": _DEP})
    register_kind("run", {"dep": _DEP, "req": _REQ}, "tensor?")
    register_kind("data", {"dep": _DEP, "req": _REQ, "tensor": _TENSOR,
                           "region": Field("region", nullable=True), "src": _NAME,
                           "ts": Field("float", **opt)}, "tensor")
    register_kind("result", {"dep": _DEP, "req": _REQ}, "tensor")
    register_kind("trace", {"dep": _DEP, "req": _REQ, "device": _NAME, "events": "events",
                            "t0": Field("float", **opt)})
    register_kind("error", {"msg": Field("str", max_len=4096), "code": "str",
                            "dep": Field("str", nullable=True, required=False),
                            "req": Field("int", lo=0, hi=2**63 - 1, nullable=True, required=False)})
    register_kind("ping", {"seq": Field("int", lo=0), "t": "float"})
    # building: how many deployments the worker is building (for any coordinator): a slow device's
    # answers may lag meanwhile, so coordinators give it the build grace (optional)
    register_kind("pong", {"seq": Field("int", lo=0), "t": "float", "name": _NAME,
                           "building": Field("int", lo=0, hi=2**31 - 1, required=False),
                           "instance": Field("str", max_len=32, required=False),
                           "down": Field("dict", required=False)})
    # a dynamic stage's tile: tensor = its input (stage - 1; -1 the model input); tile_out: its output (stage)
    register_kind("tile", {"dep": _DEP, "req": _REQ, "tensor": _TENSOR, "stage": _IDX, "part": _IDX}, "tensor")
    register_kind("tile_out", {"dep": _DEP, "req": _REQ, "tensor": _TENSOR, "stage": _IDX, "part": _IDX,
                               "device": _NAME, "ms": _MS}, "tensor")
    register_kind("tiles_done", {"dep": _DEP, "req": _REQ, "stage": _IDX})
    register_kind("cancel", {"dep": _DEP, "req": _REQ})
    register_kind("shutdown", {})
    register_kind("profile", {"dep": _DEP, "spec": "dict"})
    register_kind("profile_result", {"dep": _DEP, "result": "dict"})
    # coinfer profile (coinfer.cost.remote): per-segment progress, and link probes between workers
    register_kind("profile_progress", {"dep": _DEP, "device": _NAME, "what": "str", "done": _IDX, "total": _IDX,
                                       "segment": Field("dict", nullable=True, required=False)})
    register_kind("probe", {"dep": _DEP, "seq": _IDX, "t": "float", "ack": "bool"}, "tensor?")
    register_kind("probe_ack", {"dep": _DEP, "seq": _IDX, "t": "float", "cpu_s": Field("float", lo=0.0),
                                "n": _IDX})


_initial_kinds()


# -- validation ------------------------------------------------------------------------------
def validate(header: Any, payload_lens: Sequence[int], max_frame: int = DEFAULT_MAX_FRAME) -> dict[str, Any]:
    """Check a decoded header against its kind's schema and the payload frame lengths.

    Returns the header with numbers normalised (ints given for floats become floats,
    tuples become lists). Raises :class:`WireError`.
    """
    if not isinstance(header, dict):
        raise WireError(f"header must be a map (got {type(header).__name__})")
    for k in header:
        if not isinstance(k, str):
            raise WireError(f"header keys must be strings (got {type(k).__name__})")
    v = header.get("v")
    if v != PROTOCOL_VERSION or isinstance(v, bool):
        raise WireError(f"protocol version {v!r} is not supported (this end speaks v{PROTOCOL_VERSION})")
    kind = header.get("kind")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        shown = kind[:40] if isinstance(kind, str) else kind
        raise WireError(f"unknown message kind {shown!r}")
    sch = SCHEMAS[kind]
    extra = [k for k in header if k not in sch._allowed]
    if extra:
        raise WireError(f"{kind}: unknown field(s) {', '.join(repr(k[:40]) for k in extra[:5])}")
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "kind": kind}
    for name, f in sch.fields.items():
        if name not in header:
            if f.required:
                raise WireError(f"{kind}: missing field {name!r}")
            continue
        val = header[name]
        if val is None and (f.nullable or f.type == "region"):
            out[name] = None
            continue
        out[name] = _CHECKERS[f.type](val, f, f"{kind}.{name}")
    tensor = sch.tensor
    has_tensor = any(k in header for k in TENSOR_FIELDS)
    if tensor == "required" or (tensor == "optional" and has_tensor):
        if len(payload_lens) != 1:
            raise WireError(f"{kind}: a tensor message has exactly 1 payload frame (got {len(payload_lens)})")
        meta: dict[str, Any] = {k: header.get(k) for k in TENSOR_FIELDS}
        missing = [k for k in TENSOR_FIELDS if k not in header]
        if missing:
            raise WireError(f"{kind}: tensor meta lacks {', '.join(missing)}")
        try:
            codecs.validate_meta(meta, int(payload_lens[0]), max_frame)
        except codecs.CodecError as e:
            raise WireError(f"{kind}: {e}") from None
        meta["shape"] = [int(d) for d in meta["shape"]]
        for k in ("scale", "zero"):
            if meta[k] is not None:
                meta[k] = float(meta[k])
        out.update(meta)
    elif tensor == "optional":
        if payload_lens:
            raise WireError(f"{kind}: without tensor meta there must be no payload (got {len(payload_lens)} frames)")
    else:
        want = int(sch.payload_frames)
        if len(payload_lens) != want:
            raise WireError(f"{kind}: expected {want} payload frame(s), got {len(payload_lens)}")
    return out


def _view(f: Any, i: int, max_frame: int) -> memoryview:
    if isinstance(f, np.ndarray):
        f = codecs.raw_view(codecs.as_wire_array(f)) if f.dtype.name in codecs.DTYPES else f
    try:
        m = memoryview(f)
    except TypeError:
        raise WireError(f"frame {i} is a {type(f).__name__}, not a buffer") from None
    if m.ndim != 1 or m.format not in ("B", "b", "c") or m.itemsize != 1:
        if not m.c_contiguous:
            raise WireError(f"frame {i} is not contiguous")
        m = m.cast("B")
    if m.nbytes > max_frame:
        raise WireError(f"frame {i} is {m.nbytes} bytes; the limit is {max_frame}")
    return m


def unpack(frames: Sequence[Frame], max_frame: int = DEFAULT_MAX_FRAME) -> tuple[dict[str, Any], list[memoryview]]:
    """Validate and decode a received multipart into ``(header, payload memoryviews)``.

    Frames may be ``bytes``, ``memoryview`` or ``zmq.Frame`` (kept alive by the views).
    Raises :class:`WireError` (and nothing else) for anything malformed.
    """
    try:
        n = len(frames)
    except TypeError:
        raise WireError("frames must be a sequence") from None
    if n == 0:
        raise WireError("empty message")
    if n > MAX_FRAMES:
        raise WireError(f"{n} frames; at most {MAX_FRAMES}")
    views = [_view(frames[i], i, max_frame) for i in range(n)]
    hb = views[0]
    if hb.nbytes > MAX_HEADER:
        raise WireError(f"header is {hb.nbytes} bytes; at most {MAX_HEADER}")
    try:
        header = msgpack.unpackb(hb, raw=False, strict_map_key=True, use_list=True,
                                 max_str_len=MAX_BIG_STR, max_bin_len=MAX_BIN, max_array_len=MAX_EVENTS,
                                 max_map_len=MAX_JSON_NODES, max_ext_len=0)
    except Exception as e:  # noqa: BLE001 - msgpack raises many types for bad input
        raise WireError(f"header is not valid msgpack: {type(e).__name__}: {str(e)[:120]}") from None
    payload = views[1:]
    try:
        h = validate(header, [p.nbytes for p in payload], max_frame)
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - belt and braces: never another exception type
        raise WireError(f"invalid header: {type(e).__name__}: {str(e)[:120]}") from None
    return h, payload


def pack(header: Mapping[str, Any], payload: Sequence[Frame] = (), *, check: bool = True) -> list[Any]:
    """Build ``[header bytes, *payload]`` for a message; ``"v"`` is added.

    The header must validate (a wrong field is a programming error: :class:`WireError`).
    ``check=False`` skips that schema check — for the tensor messages a worker sends on every
    request from fields it built itself, where the check is a third of the send's CPU; the
    receiver validates every header anyway (:func:`unpack`). Frame count and sizes are checked
    either way.
    Payload items are ``bytes``, ``memoryview`` or C-contiguous ``np.ndarray`` (sent as
    their raw bytes without a copy — do not modify an array after sending it).
    """
    if not isinstance(header, Mapping):
        raise WireError(f"header must be a dict (got {type(header).__name__})")
    h = dict(header)
    if h.setdefault("v", PROTOCOL_VERSION) != PROTOCOL_VERSION:
        raise WireError(f"header v={h['v']!r}; this end speaks v{PROTOCOL_VERSION}")
    views = [_view(p, i + 1, 2**62) for i, p in enumerate(payload)]
    if len(views) + 1 > MAX_FRAMES:
        raise WireError(f"{len(views) + 1} frames; at most {MAX_FRAMES}")
    if check:
        validate(h, [v.nbytes for v in views], 2**62)
    try:
        hb = msgpack.packb(h, use_bin_type=True)
    except Exception as e:  # noqa: BLE001
        raise WireError(f"header cannot be encoded: {e}") from None
    if len(hb) > MAX_HEADER:
        raise WireError(f"header is {len(hb)} bytes; at most {MAX_HEADER}")
    return [hb, *views]


def payload_nbytes(frames: Sequence[Any]) -> int:
    """Total bytes of a packed message (header + payload)."""
    return sum(memoryview(f).nbytes for f in frames)


# -- tensors ---------------------------------------------------------------------------------
def encode_tensor(arr: np.ndarray, codec: str = "raw", quant: str | None = None, *,
                  clip: float | None = None) -> tuple[dict[str, Any], list[Any]]:
    """Tensor meta fields (merge them into a header) and the payload frames.

    Raw unquantised C-contiguous arrays are not copied (the frame is a view of
    ``arr``: do not modify it until it is sent). ``clip``: int4's clipped-ReLU bound.
    """
    try:
        meta, buf = codecs.encode(arr, codec, quant, clip=clip)
    except codecs.CodecError as e:
        raise WireError(str(e)) from None
    return meta, [buf]


def decode_tensor(header: Mapping[str, Any], frames: Sequence[Any], *,
                  max_bytes: int = DEFAULT_MAX_FRAME) -> np.ndarray:
    """The tensor of a message (validated again; raw tensors are zero-copy and may be read-only)."""
    if "dtype" not in header:
        raise WireError(f"{header.get('kind')!r} message carries no tensor")
    if len(frames) != 1:
        raise WireError(f"a tensor has exactly one payload frame (got {len(frames)})")
    meta = {k: header.get(k) for k in TENSOR_FIELDS}
    try:
        return codecs.decode(meta, frames[0], max_bytes=max_bytes)
    except codecs.CodecError as e:
        raise WireError(str(e)) from None
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001
        raise WireError(f"tensor does not decode: {type(e).__name__}: {e}") from None
