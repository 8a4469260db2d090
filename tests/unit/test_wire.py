"""The wire format (coinfer.runtime.wire): round trips, validation, and fuzzing of ``unpack``.

The fuzz tests feed ≥ 2,000 hypothesis-generated malformed frame lists to
``unpack``: it may only raise ``WireError`` and must reject every message that
was made invalid on purpose. Messages that are accepted by chance (random byte
flips that keep a message valid) are checked to satisfy the schema.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coinfer.runtime import wire
from coinfer.runtime.wire import SCHEMAS, WireError, decode_tensor, encode_tensor, pack, unpack

# -- valid examples of every kind ------------------------------------------------------------------
T = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
META, FRAMES = encode_tensor(T)

VALID: dict[str, tuple[dict, list]] = {
    "hello": ({}, []),
    "hello_ok": ({"name": "pi1", "pid": 42, "version": "0.1.0", "cpu_mode": "cgroup-v1",
                  "backends": ["torch", "onnxruntime"]}, []),
    "deploy": ({"dep": "d1", "plan": '{"format": "coinfer.plan/1"}' * 100, "device": "pi1",
                "peers": {"pi1": "tcp://127.0.0.1:7000", "pi2": "tcp://127.0.0.1:7001"},
                "coord": "tcp://127.0.0.1:7100", "seed": 0}, []),
    "deploy_ok": ({"dep": "d1", "device": "pi1", "build_ms": 12.5}, []),
    "undeploy": ({"dep": "d1"}, []),
    "run": ({"dep": "d1", "req": 7}, []),
    "data": ({"dep": "d1", "req": 7, "tensor": 3, "region": [0, 2, 0, 4], "src": "pi2", **META}, FRAMES),
    "result": ({"dep": "d1", "req": 7, **META}, FRAMES),
    "trace": ({"dep": "d1", "req": 7, "device": "pi1",
               "events": [["compute", "compute s0.p1", 0.5, 3.25, {"flops": 10}], ["send", "x", 1, 2, {}]]}, []),
    "error": ({"msg": "bad", "code": "bad_message", "dep": None, "req": None}, []),
    "ping": ({"seq": 1, "t": 1700000000.5}, []),
    "pong": ({"seq": 1, "t": 1700000000.5, "name": "pi1"}, []),
    "tile": ({"dep": "d1", "req": 7, "tensor": 0, "stage": 1, "part": 3, **META}, FRAMES),
    "tile_out": ({"dep": "d1", "req": 7, "tensor": 1, "stage": 1, "part": 3, "device": "pi1", "ms": 4.0, **META},
                 FRAMES),
    "tiles_done": ({"dep": "d1", "req": 7, "stage": 1}, []),
    "cancel": ({"dep": "d1", "req": 7}, []),
    "shutdown": ({}, []),
    "profile": ({"dep": "p", "spec": {"layers": ["conv1"], "repeat": 3, "nested": {"a": [1, 2.5, None]}}}, []),
    "profile_result": ({"dep": "p", "result": {"conv1": {"ms": 1.5}}}, []),
}


def _msg(kind: str) -> tuple[dict, list]:
    fields, payload = VALID[kind]
    return {"kind": kind, **fields}, list(payload)


def test_every_initial_kind_has_an_example() -> None:
    initial = {"hello", "hello_ok", "deploy", "deploy_ok", "undeploy", "run", "data", "result", "trace",
               "error", "ping", "pong", "tile", "tile_out", "tiles_done", "cancel", "shutdown", "profile",
               "profile_result"}
    assert initial <= set(SCHEMAS)
    assert initial <= set(VALID)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_round_trip(kind: str) -> None:
    h, payload = _msg(kind)
    frames = pack(h, payload)
    assert len(frames) == 1 + len(payload)
    got, views = unpack([bytes(memoryview(f)) for f in frames])
    assert got["v"] == wire.PROTOCOL_VERSION and got["kind"] == kind
    for k, v in h.items():
        assert got[k] == (list(v) if isinstance(v, tuple) else v), k
    if "dtype" in h:
        np.testing.assert_array_equal(decode_tensor(got, views), T)


def test_run_with_and_without_tensor() -> None:
    h, _ = unpack(pack({"kind": "run", "dep": "d", "req": 1}))
    assert "dtype" not in h
    h, views = unpack(pack({"kind": "run", "dep": "d", "req": 1, **META}, FRAMES))
    np.testing.assert_array_equal(decode_tensor(h, views), T)
    with pytest.raises(WireError, match="no payload"):
        unpack(pack({"kind": "run", "dep": "d", "req": 1})[:1] + [b"x"])


def test_optional_fields_the_runtime_uses() -> None:
    unpack(pack({"kind": "hello", "coord": "tcp://127.0.0.1:1"}))
    unpack(pack({**_msg("deploy")[0], "links": {"pi2": [100.0, 1.0]}}))
    h, p = _msg("data")
    unpack(pack({**h, "ts": 123.5}, p))
    unpack(pack({**_msg("trace")[0], "t0": 5.0}))
    unpack(pack({"kind": "error", "msg": "m", "code": "c"}))


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64",
                                   "bool"])
def test_tensor_dtypes_zero_copy(dtype: str) -> None:
    x = (np.arange(60) % 7).astype(dtype).reshape(3, 4, 5)
    meta, frames = encode_tensor(x)
    assert np.shares_memory(np.frombuffer(frames[0], np.uint8), x)  # no copy on the way out
    h, views = unpack(pack({"kind": "result", "dep": "d", "req": 0, **meta}, frames))
    y = decode_tensor(h, views)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, x)
    assert np.shares_memory(y, np.frombuffer(views[0], np.uint8))  # nor on the way in


def test_non_contiguous_and_big_endian_are_converted() -> None:
    x = np.arange(20, dtype=np.float32).reshape(4, 5).T
    meta, frames = encode_tensor(x)
    np.testing.assert_array_equal(decode_tensor(meta, [memoryview(frames[0]).cast("B")]), x)
    be = np.arange(6, dtype=">f4")
    meta, frames = encode_tensor(be)
    assert meta["dtype"] == "float32"
    np.testing.assert_array_equal(decode_tensor(meta, frames), be.astype("<f4"))


def test_pack_rejects_programming_errors() -> None:
    with pytest.raises(WireError, match="missing field 'req'"):
        pack({"kind": "cancel", "dep": "d"})
    with pytest.raises(WireError, match="unknown field"):
        pack({"kind": "cancel", "dep": "d", "req": 1, "extra": 1})
    with pytest.raises(WireError, match="unknown message kind"):
        pack({"kind": "nope"})
    with pytest.raises(WireError, match="payload frame"):
        pack({"kind": "ping", "seq": 1, "t": 0.0}, [b"x"])
    with pytest.raises(WireError, match="does not match the payload"):
        pack({"kind": "result", "dep": "d", "req": 1, **META}, [b"short"])
    with pytest.raises(WireError, match="finite"):
        pack({"kind": "ping", "seq": 1, "t": math.nan})
    with pytest.raises(WireError, match="int"):
        pack({"kind": "cancel", "dep": "d", "req": True})
    with pytest.raises(WireError, match="chars"):
        pack({"kind": "undeploy", "dep": "x" * 257})


def test_unchecked_pack_is_the_same_message_and_the_receiver_still_validates() -> None:
    """``check=False`` (the worker's tensor sends) skips only the sender's schema check."""
    for kind in ("data", "result", "tile"):
        h, payload = _msg(kind)
        assert [bytes(memoryview(f)) for f in pack(h, payload, check=False)] == \
            [bytes(memoryview(f)) for f in pack(h, payload)]
    bad = pack({"kind": "cancel", "dep": "d", "req": 1, "extra": 1}, check=False)  # not looked at ...
    with pytest.raises(WireError, match="unknown field"):  # ... but refused where it arrives
        unpack([bytes(memoryview(f)) for f in bad])
    with pytest.raises(WireError, match="frames; at most"):  # the frame count is checked either way
        pack({"kind": "ping", "seq": 1, "t": 0.0}, [b"x"] * wire.MAX_FRAMES, check=False)


@pytest.mark.parametrize("region,ok", [(None, True), ([0, 1, 0, 1], True), ([2, 1, 0, 1], False),
                                       ([0, 0, 0, 1], False), ([-1, 1, 0, 1], False), ([0, 1, 0], False),
                                       ([0, 1, 0, 1.5], False), ("0,1,0,1", False)])
def test_regions(region: object, ok: bool) -> None:
    h, p = _msg("data")
    h = {**h, "region": region}
    if ok:
        unpack(pack(h, p))
    else:
        with pytest.raises(WireError, match="region"):
            pack(h, p)


def test_oversized_frames_are_rejected() -> None:
    h, p = _msg("result")
    frames = [bytes(memoryview(f)) for f in pack(h, p)]
    unpack(frames, max_frame=len(frames[1]))
    with pytest.raises(WireError, match="frame 1 is 96 bytes; the limit is 95"):
        unpack(frames, max_frame=95)
    with pytest.raises(WireError, match="frame 0"):
        unpack([b"\x80" * 200], max_frame=100)
    with pytest.raises(WireError, match="frames; at most"):
        unpack([frames[0]] * (wire.MAX_FRAMES + 1))


def test_decoded_size_is_bounded_by_max_frame() -> None:
    big = np.zeros((1024, 1024), np.float32)  # 4 MiB of zeros: zstd makes it tiny
    meta, frames = encode_tensor(big, "zstd")
    assert meta["nbytes"] < 1000
    with pytest.raises(WireError, match="limit is"):
        unpack(pack({"kind": "result", "dep": "d", "req": 1, **meta}, frames), max_frame=2**20)
    h, v = unpack(pack({"kind": "result", "dep": "d", "req": 1, **meta}, frames))
    assert decode_tensor(h, v).shape == (1024, 1024)


def test_msgpack_limits_and_types() -> None:
    ext = msgpack.packb({"v": wire.PROTOCOL_VERSION, "kind": "shutdown", "x": msgpack.ExtType(5, b"abc")})
    with pytest.raises(WireError, match="msgpack"):
        unpack([ext])
    with pytest.raises(WireError, match="map key"):
        unpack([msgpack.packb({"v": wire.PROTOCOL_VERSION, "kind": "shutdown", 1: 2}, strict_types=False)])
    with pytest.raises(WireError, match="keys must be strings"):
        wire.validate({"v": wire.PROTOCOL_VERSION, "kind": "shutdown", 1: 2}, [])
    with pytest.raises(WireError, match="map"):
        unpack([msgpack.packb([1, 2, 3])])
    with pytest.raises(WireError, match="protocol version"):
        unpack([msgpack.packb({"v": wire.PROTOCOL_VERSION + 1, "kind": "shutdown"})])
    with pytest.raises(WireError, match="msgpack"):  # a bin longer than max_bin_len
        unpack([msgpack.packb({"v": wire.PROTOCOL_VERSION, "kind": "shutdown", "b": b"x" * (wire.MAX_BIN + 1)})])
    with pytest.raises(WireError, match="msgpack"):  # a truncated header
        unpack([msgpack.packb({"v": wire.PROTOCOL_VERSION, "kind": "shutdown"})[:-1]])
    with pytest.raises(WireError, match="extra"):
        unpack([msgpack.packb({"v": wire.PROTOCOL_VERSION, "kind": "shutdown"}) + b"\x00"])


def test_big_plan_string_bounds() -> None:
    h = dict(_msg("deploy")[0])
    h["plan"] = "x" * wire.MAX_BIG_STR
    unpack(pack(h))
    h["plan"] = "x" * (wire.MAX_BIG_STR + 1)
    with pytest.raises(WireError, match="plan"):
        pack(h)


def test_register_kind_extends_the_table() -> None:
    try:
        wire.register_kind("stats_test", {"dep": "str", "rss_mb": wire.Field("float", lo=0),
                                          "note": wire.Field("str", required=False),
                                          "owner": "str?"}, payload_frames=2)
        unpack(pack({"kind": "stats_test", "dep": "d", "rss_mb": 3, "owner": None}, [b"a", b"b"]))
        with pytest.raises(WireError, match="out of range"):
            pack({"kind": "stats_test", "dep": "d", "rss_mb": -1, "owner": None}, [b"a", b"b"])
        with pytest.raises(ValueError, match="unknown field type"):
            wire.Field("complex")
        with pytest.raises(ValueError, match="clash"):
            wire.register_kind("bad_test", {"dtype": "str"}, "tensor")
        with pytest.raises(ValueError, match="already registered"):
            wire.register_kind("stats_test", {}, replace=False)
    finally:
        SCHEMAS.pop("stats_test", None)
        SCHEMAS.pop("bad_test", None)


# -- fuzzing -----------------------------------------------------------------------------------------
_INT = st.integers(-(2**63), 2**64 - 1)  # what msgpack can encode
_SCALARS = st.one_of(st.none(), st.booleans(), _INT, st.floats(allow_nan=True),
                     st.text(max_size=20), st.binary(max_size=20))
_VALUES = st.recursive(_SCALARS, lambda c: st.one_of(st.lists(c, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), c, max_size=4)),
                       max_leaves=12)


def _packed(h: dict, payload: list) -> list[bytes]:
    """Frames of ``h`` packed without validation (so invalid headers can be made)."""
    return [msgpack.packb(h, use_bin_type=True), *[bytes(memoryview(p)) for p in payload]]


def _valid_case(kind: str) -> tuple[dict, list]:
    h, p = _msg(kind)
    return {"v": wire.PROTOCOL_VERSION, **h}, p


def _check_accepted(h: dict, views: list) -> None:
    """An accepted message really satisfies its schema (and its tensor decodes or raises WireError)."""
    sch = SCHEMAS[h["kind"]]
    for name, f in sch.fields.items():
        if f.required:
            assert name in h
    assert set(h) <= sch._allowed
    if "dtype" in h:
        try:
            y = decode_tensor(h, views)
        except WireError:
            return
        assert list(y.shape) == h["shape"]


@st.composite
def invalid_messages(draw: st.DrawFn) -> list[bytes]:
    """A message made invalid in one known way (unpack must reject it)."""
    kind = draw(st.sampled_from(sorted(VALID)))
    h, p = _valid_case(kind)
    sch = SCHEMAS[kind]
    how = draw(st.sampled_from(["drop", "extra", "type", "version", "kind", "payload", "nbytes", "notmap",
                                "range", "shape", "dtype", "keys"]))
    fields = [k for k, f in sch.fields.items() if f.required]
    if how == "drop" and fields:
        del h[draw(st.sampled_from(fields))]
    elif how == "extra":
        name = draw(st.text(min_size=1, max_size=10).filter(lambda s: s not in sch._allowed))
        h[name] = draw(_VALUES)
    elif how == "type" and sch.fields:
        name = draw(st.sampled_from(sorted(sch.fields)))
        f = sch.fields[name]
        bad = {"str": st.one_of(_INT, st.lists(st.text(), max_size=2), st.binary(min_size=1)),
               "bigstr": _INT, "int": st.one_of(st.text(), st.floats(), st.booleans()),
               "float": st.one_of(st.text(), st.booleans(), st.just(math.inf), st.just(math.nan)),
               "list[str]": st.one_of(st.text(), st.lists(_INT, min_size=1, max_size=3)),
               "dict[str,str]": st.one_of(st.lists(st.text()), st.dictionaries(st.text(), _INT,
                                                                               min_size=1, max_size=2)),
               "dict[str,list[float]]": st.one_of(st.text(), st.dictionaries(st.text(), st.text(), min_size=1,
                                                                             max_size=2)),
               "region": st.one_of(st.text(), st.lists(st.integers(0, 5), min_size=5, max_size=6),
                                   st.just([3, 1, 0, 1])),
               "events": st.one_of(st.text(), st.lists(_INT, min_size=1, max_size=3)),
               "dict": st.one_of(st.text(), st.lists(_INT, max_size=3), _INT)}
        h[name] = draw(bad.get(f.type, st.just(object)))
        if f.type in ("dict", "events") and h[name] is object:
            h[name] = "x"
    elif how == "version":
        h["v"] = draw(st.one_of(_INT.filter(lambda v: v != 1), st.text(), st.none(), st.just(True)))
    elif how == "kind":
        h["kind"] = draw(st.one_of(st.text().filter(lambda s: s not in SCHEMAS), _INT, st.none()))
    elif how == "payload":
        n = draw(st.integers(0, 4).filter(lambda n: n != len(p)))
        p = [b"x" * draw(st.integers(0, 8)) for _ in range(n)]
        if sch.tensor == "optional" and "dtype" not in h and n == 1:
            p.append(b"y")  # one frame without meta would be 'no tensor, 1 frame': also invalid, keep 2
    elif how == "nbytes" and "dtype" in h:
        h["nbytes"] = draw(st.one_of(st.integers(-5, 10**6).filter(lambda n: n != META["nbytes"]), st.text()))
    elif how == "range":
        ints = [k for k, f in sch.fields.items() if f.type == "int" and f.lo is not None]
        if ints:
            name = draw(st.sampled_from(ints))
            h[name] = draw(st.integers(max_value=int(sch.fields[name].lo) - 1, min_value=-(2**63)))
        else:
            h["v"] = 0
    elif how == "shape" and "dtype" in h:
        h["shape"] = draw(st.one_of(st.lists(st.integers(-3, 3), min_size=9, max_size=10),
                                    st.just([1, 2, 3, 5]), st.just([-1, 24]), st.text(),
                                    st.just([2**31, 2**31])))
    elif how == "dtype" and "dtype" in h:
        h["dtype"] = draw(st.sampled_from(["object", "complex64", "<f4", "float128", "", "U10"]))
    elif how == "keys":
        return [msgpack.packb({**h, 1: 2}, strict_types=False)] + list(p)
    elif how == "notmap":
        return [msgpack.packb(draw(st.one_of(st.lists(_SCALARS, max_size=3), _SCALARS)), use_bin_type=True),
                *p]
    else:
        h["v"] = 99  # the chosen mutation did not apply to this kind: break the version instead
    return _packed(h, p)


@settings(max_examples=1200)
@given(invalid_messages())
def test_fuzz_invalid_messages_are_rejected(frames: list[bytes]) -> None:
    with pytest.raises(WireError):
        unpack(frames)


@st.composite
def corrupted_messages(draw: st.DrawFn) -> list[object]:
    """Random damage: byte flips, truncation, garbage frames, odd frame types."""
    kind = draw(st.sampled_from(sorted(VALID)))
    frames: list[object] = [bytearray(f) for f in _packed(*_valid_case(kind))]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "garbage", "drop", "weird"]))
        byte_frames = [k for k, f in enumerate(frames) if isinstance(f, bytearray)]
        if op in ("flip", "truncate", "insert") and byte_frames:
            b = frames[draw(st.sampled_from(byte_frames))]
            assert isinstance(b, bytearray)
            if op == "flip" and len(b):
                b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
            elif op == "truncate":
                del b[draw(st.integers(0, max(0, len(b) - 1))):]
            elif op == "insert":
                j = draw(st.integers(0, len(b)))
                b[j:j] = draw(st.binary(min_size=1, max_size=8))
        elif op == "garbage":
            frames.insert(draw(st.integers(0, len(frames))), bytearray(draw(st.binary(max_size=64))))
        elif op == "drop" and frames:
            frames.pop(draw(st.integers(0, len(frames) - 1)))
        elif op == "weird":
            frames.insert(draw(st.integers(0, len(frames))),
                          draw(st.one_of(st.none(), _INT, st.text(max_size=5),
                                         st.just(np.zeros((2, 2), np.float32)[:, :1]))))
    return [bytes(f) if isinstance(f, bytearray) else f for f in frames]


@settings(max_examples=800)
@given(corrupted_messages())
def test_fuzz_corrupted_messages_only_raise_wire_error(frames: list[object]) -> None:
    try:
        h, views = unpack(frames)  # type: ignore[arg-type]
    except WireError:
        return
    _check_accepted(h, views)


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=6))
def test_fuzz_random_bytes(frames: list[bytes]) -> None:
    try:
        h, views = unpack(frames)
    except WireError:
        return
    _check_accepted(h, views)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["v", "kind", "dep", "req", "dtype", "shape", "codec", "quant", "scale",
                                        "zero", "nbytes", "region", "events", "spec", "seq", "t", "name"]),
                       _VALUES, max_size=10),
       st.sampled_from(sorted(VALID)), st.lists(st.binary(max_size=64), max_size=2))
def test_fuzz_structured_headers(h: dict, kind: str, payload: list[bytes]) -> None:
    h = {"v": wire.PROTOCOL_VERSION, "kind": kind, **h}
    try:
        got, views = unpack(_packed(h, payload))
    except WireError:
        return
    _check_accepted(got, views)
