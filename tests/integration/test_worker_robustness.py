"""A real worker process under hostile input: malformed frames, oversized frames, wrong CURVE keys.

* ≥ 2,000 hypothesis-generated malformed messages (garbage bytes, random
  msgpack, headers of every kind with a field dropped / added / mistyped /
  out of range, bad regions, wrong versions and kinds, too few / too many /
  oversized / undersized payload frames, tensors declaring more than
  ``max_frame``, truncated headers, kinds a worker does not accept, valid
  messages for deployments that do not exist) are sent with ``send_raw`` from
  a raw client endpoint to one ``coinfer.runtime.worker_main`` process. Every
  message the wire format rejects gets exactly one ``bad_message`` error,
  every kind a worker does not serve exactly one ``bad_kind``; the worker stays
  up and then serves a real deployment and request with the exact output.
* A frame larger than ``max_frame`` (512 MiB) is refused by the socket
  (ZMQ_MAXMSGSIZE) without the worker buffering it; the worker keeps serving.
* A ``coinfer worker --keys`` process refuses a coordinator whose CURVE key
  is not among its public keys, and a plain (no-CURVE) one; a Session with the
  right keys then runs on it.
"""

from __future__ import annotations

import collections
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coinfer.cluster import parse_cluster
from coinfer.execute.local import TOLERANCE, compare, reference_output
from coinfer.inputs import random_input
from coinfer.modelspec import capture_model
from coinfer.plan.plan import Stage, Whole
from coinfer.runtime import wire
from coinfer.runtime.coordinator import DeviceUnreachable, Session
from coinfer.runtime.launcher import LocalCluster
from coinfer.runtime.transport import Message, zmq_endpoint
from coinfer.runtime.worker import Worker
from coinfer.strategies import PlanRequest

pytestmark = pytest.mark.integration

MODEL = "alexnet_digits"
N_FUZZ = 2200
#: Kinds whose *valid* messages may be sent in the fuzz: cheap handlers, no side effect beyond the
#: request state (``shutdown`` would stop the worker by design; profiling kinds do real work).
INTS = st.integers(-(2**63), 2**64 - 1)  # what msgpack can encode
VALID_OK = {"hello", "ping", "run", "data", "tile", "tile_out", "tiles_done", "cancel", "undeploy", "deploy",
            "hello_ok", "deploy_ok", "result", "trace", "pong", "error", "profile_result"}


def _plan(cl: Any, device: str) -> Any:
    cm = capture_model(MODEL)
    return cm, PlanRequest(cm.graph, cl, MODEL).make_plan([Stage("output", Whole(device))], "robustness")


def _check_serves(cl: Any, addresses: dict[str, str], device: str, **kw: Any) -> None:
    cm, plan = _plan(cl, device)
    x = random_input(tuple(cm.graph.input_shape), 5)
    with Session(plan, cl, addresses, dead_after_s=10.0, **kw) as s:
        y = s(x)
    assert compare(y, reference_output(cm, x))[1] <= TOLERANCE


@pytest.fixture(scope="module")
def worker():
    cl = parse_cluster({"source": "w0", "devices": [{"name": "w0"}], "network": {"shape": False}})
    lc = LocalCluster(cl, emulate_cpu=False).start()
    fz = zmq_endpoint("fuzz", "tcp://127.0.0.1:0", insecure=True)
    fz.connect("w0", lc.addresses["w0"])
    try:
        yield cl, lc, fz
    finally:
        fz.close()
        lc.stop()


# -- generating messages -------------------------------------------------------------------------
def _value(f: wire.Field, name: str, addr: str) -> st.SearchStrategy[Any]:
    """A valid value for field ``name`` of type ``f`` (a few fields get values that keep the
    worker's side effects bounded: its coordinator/peer connections point back at the fuzzer)."""
    if name == "coord":  # (re-pointing the worker's connection to its sender would drop queued replies)
        return st.just(addr)
    if name == "peers":
        return st.sampled_from([{}, {"w0": addr}])
    if name == "device":
        return st.sampled_from(["w0", "elsewhere"])
    if name == "plan":
        return st.sampled_from(["{}", "not json", '{"format": "coinfer.plan/1"}', "[]"])
    if name == "dep":
        return st.sampled_from(["fz", "", "x" * 256])
    t = f.type
    lo = -(2**63) if f.lo is None else int(f.lo)
    if t == "str":
        return st.text(max_size=12)
    if t == "bigstr":
        return st.text(max_size=40)
    if t == "int":
        hi = 2**63 - 1 if f.hi is None else int(min(f.hi, 2**63 - 1))
        return st.integers(max(lo, -(2**63)), hi)
    if t == "float":
        return st.floats(min_value=None if f.lo is None else f.lo, allow_nan=False, allow_infinity=False)
    if t == "bool":
        return st.booleans()
    if t == "bytes":
        return st.binary(max_size=16)
    if t == "list[str]":
        return st.lists(st.text(max_size=5), max_size=3)
    if t == "list[int]":
        return st.lists(st.integers(0, 100), max_size=3)
    if t == "list[float]":
        return st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=3)
    if t == "dict[str,str]":
        return st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2)
    if t == "dict[str,list[float]]":
        return st.dictionaries(st.text(max_size=5), st.lists(st.floats(0, 1e4), max_size=2), max_size=2)
    if t == "region":
        return st.none() | st.tuples(st.integers(0, 8), st.integers(1, 8), st.integers(0, 8), st.integers(1, 8)).map(
            lambda r: [r[0], r[0] + r[1], r[2], r[2] + r[3]])
    if t == "events":
        return st.lists(st.lists(INTS | st.text(max_size=5), max_size=4), max_size=3)
    return st.dictionaries(st.text(max_size=5), INTS | st.text(max_size=5), max_size=3)  # json/dict


@st.composite
def _tensor(draw: st.DrawFn) -> tuple[dict[str, Any], list[Any]]:
    dtype = draw(st.sampled_from(["float32", "float64", "int8", "uint8", "bool", "int32"]))
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4))
    arr = np.zeros(shape, dtype=dtype) if dtype == "bool" else \
        np.arange(math.prod(shape), dtype=dtype).reshape(shape)
    codec = draw(st.sampled_from(["raw", "lz4", "zstd"]))
    quant = draw(st.sampled_from([None, "int8", "int8c"])) if dtype.startswith("float") else None
    return wire.encode_tensor(arr, codec, quant)


@st.composite
def _valid(draw: st.DrawFn, addr: str) -> tuple[dict[str, Any], list[Any]]:
    kind = draw(st.sampled_from(sorted(wire.SCHEMAS)))
    sch = wire.SCHEMAS[kind]
    h: dict[str, Any] = {"v": wire.PROTOCOL_VERSION, "kind": kind}
    for name, f in sch.fields.items():
        if not f.required and draw(st.booleans()):
            continue
        h[name] = None if f.nullable and draw(st.integers(0, 4)) == 0 else draw(_value(f, name, addr))
    frames: list[Any] = []
    if sch.tensor == "required" or (sch.tensor == "optional" and draw(st.booleans())):
        meta, frames = draw(_tensor())
        h.update(meta)
    elif isinstance(sch.payload_frames, int):
        frames = [b"p"] * sch.payload_frames
    return h, frames


def _other_type(v: Any) -> list[Any]:
    pool: list[Any] = ["s", 7, -1, 2.5, True, None, [1, 2], {"k": 1}, b"\x00", 2**70 // 2**7, float("nan")]
    return [x for x in pool if type(x) is not type(v)]


BAD_REGIONS = [[2, 1, 0, 1], [0, 1, 0], [-1, 2, 0, 1], "x", [0.5, 1, 0, 1], [0, 2**40, 0, 1], [0, 0, 0, 0],
               [0, 1, 0, 1, 2], {"r0": 0}]
MUTATIONS = ["drop", "extra", "type", "range", "region", "version", "kind", "frames+", "frames-", "undersized",
             "oversized", "shape", "dtype", "codec", "huge", "truncate", "many_frames", "garbage", "msgpack",
             "int_keys", "none"]


@st.composite
def malformed(draw: st.DrawFn, addr: str) -> list[Any]:
    h, frames = draw(_valid(addr))
    frames = [bytes(memoryview(f).cast("B")) for f in frames]
    m = draw(st.sampled_from(MUTATIONS))
    fields = [k for k in h if k not in ("v", "kind")]
    if m == "drop" and fields:
        del h[draw(st.sampled_from(fields))]
    elif m == "extra":
        h[draw(st.sampled_from(["zz", "Kind", "version", "region2", ""]))] = draw(INTS | st.text(max_size=3))
    elif m == "type" and fields:
        k = draw(st.sampled_from(fields))
        h[k] = draw(st.sampled_from(_other_type(h[k])))
    elif m == "range":
        ints = [k for k in fields if isinstance(h[k], int) and not isinstance(h[k], bool)]
        if ints:
            h[draw(st.sampled_from(ints))] = draw(st.sampled_from([-1, -(2**63), 2**64 - 1, 2**31]))
    elif m == "region":
        h["region"] = draw(st.sampled_from(BAD_REGIONS))
    elif m == "version":
        h["v"] = draw(st.sampled_from([0, 2, "1", True, None, 1.0, -1]))
    elif m == "kind":
        h["kind"] = draw(st.sampled_from(["", "hellO", "on_run", "__init__", "x" * 300, 3, None, ["run"]]))
    elif m == "frames+":
        frames = frames + [b"extra"] * draw(st.integers(1, 3))
    elif m == "frames-" and frames:
        frames = frames[:-1]
    elif m == "undersized" and frames and frames[0]:
        frames[0] = frames[0][: draw(st.integers(0, len(frames[0]) - 1))]
    elif m == "oversized" and frames:
        frames[0] = frames[0] + b"\x00" * draw(st.integers(1, 64))
    elif m == "shape" and "shape" in h:
        h["shape"] = draw(st.sampled_from([[-1], [1, 2, 3, 4, 5, 6, 7, 8, 9], "3", [2.5], [2**40, 2**40], None]))
    elif m == "dtype" and "dtype" in h:
        h["dtype"] = draw(st.sampled_from(["object", "complex64", "<f4", "", "float128", 5]))
    elif m == "codec" and "codec" in h:
        h["codec"] = draw(st.sampled_from(["pickle", "gzip", "", None, "int8"]))
    elif m == "huge" and "shape" in h:
        h.update(shape=[1, 2**20, 2**10, 64], dtype="float32", codec="lz4", quant=None, scale=None, zero=None)
    hb = msgpack.packb(h, use_bin_type=True)
    if m == "truncate":
        hb = hb[: draw(st.integers(0, max(0, len(hb) - 1)))]
    elif m == "many_frames":
        frames = [b""] * draw(st.integers(wire.MAX_FRAMES, wire.MAX_FRAMES + 40))
    elif m == "garbage":
        return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=3))
    elif m == "msgpack":
        val = draw(st.recursive(st.none() | st.booleans() | INTS | st.text(max_size=8),
                                lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                                max_leaves=8))
        hb = msgpack.packb(val, use_bin_type=True)
    elif m == "int_keys":
        hb = msgpack.packb({1: "v", "kind": "ping"}, use_bin_type=True, strict_types=False)
    return [hb, *frames]


def _expect(frames: list[Any]) -> str | None:
    """What the worker should answer: the error code, the reply kind, ``None`` (nothing
    guaranteed), or ``"skip"`` (do not send: a valid message of a kind with real side effects)."""
    try:
        h, _ = wire.unpack(frames)
    except wire.WireError:
        return "bad_message"
    kind = h["kind"]
    if kind not in VALID_OK:
        return "skip"
    if not hasattr(Worker, f"on_{kind}"):
        return "bad_kind"
    if kind == "ping":
        return "pong"
    if kind == "run":
        return "no_deployment"
    if kind == "deploy" and h["device"] != "w0":
        return "wrong_device"
    return None


# -- the tests -----------------------------------------------------------------------------------
def test_malformed_frames_never_crash_a_worker(worker) -> None:
    cl, lc, fz = worker
    sent: collections.Counter[str] = collections.Counter()
    pid = lc.workers["w0"].proc.pid
    t0 = time.monotonic()

    @settings(max_examples=N_FUZZ, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(frames=malformed(fz.address))
    def fuzz(frames: list[Any]) -> None:
        exp = _expect(frames)
        if exp == "skip":
            return
        fz.send_raw("w0", frames)
        sent["total"] += 1
        sent[str(exp)] += 1

    fuzz()
    gen_s = time.monotonic() - t0
    assert sent["total"] >= 2000, sent
    assert sent["bad_message"] >= 1500, sent  # most are malformed on the wire; the rest semantically bad

    got: collections.Counter[str] = collections.Counter()
    internal: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = fz.recv(1000)
        if m is None:
            if got["bad_message"] >= sent["bad_message"] and got["bad_kind"] >= sent["bad_kind"]:
                break
            continue
        assert isinstance(m, Message), m
        h = m.header
        got[h["code"] if h["kind"] == "error" else h["kind"]] += 1
        if h["kind"] == "error" and h["code"] == "internal":
            internal.append(h["msg"])
    print(f"\nfuzz: sent {sent['total']} messages in {gen_s:.1f} s: {dict(sent)}; answers {dict(got)}")
    assert lc.workers["w0"].alive(), "the worker died"
    # every message the wire format rejects got exactly one error; every unserved kind one bad_kind
    assert got["bad_message"] == sent["bad_message"], (got, sent)
    assert got["bad_kind"] == sent["bad_kind"], (got, sent)
    assert got["pong"] == sent["pong"]
    assert got["no_deployment"] >= sent["no_deployment"]
    assert got["wrong_device"] == sent["wrong_device"]
    assert not internal, set(internal)  # no handler failed on a message that passed the wire checks

    # ... and it still serves a real deployment and request, exactly
    _check_serves(cl, lc.addresses, "w0")
    import psutil

    assert psutil.Process(pid).memory_info().rss < 2e9


def test_oversized_frame_is_refused_and_worker_keeps_serving(worker) -> None:
    cl, lc, fz = worker
    import psutil

    proc = psutil.Process(lc.workers["w0"].proc.pid)
    rss0 = proc.memory_info().rss
    big = np.zeros(wire.DEFAULT_MAX_FRAME + 1, np.uint8)  # lazily zeroed: costs no RSS until read
    fz.send_raw("w0", [wire.pack({"kind": "ping", "seq": 1, "t": 0.0})[0], big])
    del big
    pong = None
    deadline = time.monotonic() + 20
    seq = 100
    while pong is None and time.monotonic() < deadline:  # the DEALER reconnects after the drop
        seq += 1
        fz.send("w0", {"kind": "ping", "seq": seq, "t": 0.0})
        t = time.monotonic() + 0.5
        while time.monotonic() < t:
            m = fz.recv(100)
            if isinstance(m, Message) and m.header["kind"] == "pong":
                assert m.header["seq"] > 1, "the oversized message was delivered"
                pong = m
                break
    assert pong is not None, "the worker stopped answering after an oversized frame"
    assert lc.workers["w0"].alive()
    grew = proc.memory_info().rss - rss0
    assert grew < 64 * 2**20, f"the worker buffered the oversized frame (+{grew / 2**20:.0f} MiB)"
    _check_serves(cl, lc.addresses, "w0")


def _coinfer() -> list[str]:
    exe = Path(sys.executable).parent / "coinfer"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "coinfer.cli.main"]


def test_real_worker_refuses_a_coordinator_without_the_right_key(tmp_path: Path) -> None:
    from coinfer.runtime.security import generate_keys

    keys, other = tmp_path / "keys", tmp_path / "other"
    generate_keys(keys, ["w1", "w2"])
    generate_keys(other, ["w1"])  # a stranger's pairs: its coordinator key is not admitted by w1
    (other / "public" / "w1.key").write_bytes((keys / "public" / "w1.key").read_bytes())  # w1's key is public
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    p = subprocess.Popen([*_coinfer(), "worker", "--bind", "tcp://127.0.0.1:0", "--name", "w1", "--keys", str(keys)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    try:
        assert p.stdout is not None
        line = ""
        deadline = time.monotonic() + 120
        while not line.startswith("READY ") and time.monotonic() < deadline and p.poll() is None:
            line = p.stdout.readline().decode(errors="replace").strip()
        assert line.startswith("READY "), line
        addr = {"w1": line.split()[2]}
        cl = parse_cluster({"source": "w1", "devices": [{"name": "w1", "address": addr["w1"]}],
                            "network": {"shape": False}})
        _, plan = _plan(cl, "w1")
        for kw in ({"keys": str(other)}, {"keys": None}):  # a stranger's CURVE key; no CURVE at all
            t0 = time.monotonic()
            with pytest.raises(DeviceUnreachable, match="no answer from w1"):
                Session(plan, cl, addr, hello_timeout_s=2.0, **kw)
            assert time.monotonic() - t0 < 10
            assert p.poll() is None, "the worker died"
        # another device's key is admitted for data, not for control (QA: with w2's key, shutdown stopped w1)
        from coinfer.runtime.security import KeyStore

        with zmq_endpoint("w2", "tcp://127.0.0.1:0", keys=KeyStore(keys)) as peer:
            peer.connect("w1", addr["w1"])
            for kind in ("shutdown", "hello", "undeploy"):
                hdr: dict[str, Any] = {"kind": kind}
                if kind == "hello":
                    hdr["coord"] = peer.address
                if kind == "undeploy":
                    hdr["dep"] = "x"
                peer.send("w1", hdr)
                m = peer.recv(10_000)
                assert isinstance(m, Message) and m.header["kind"] == "error", m
                assert m.header["code"] == "forbidden" and "only from the coordinator's key" in m.header["msg"]
            time.sleep(0.5)
            assert p.poll() is None, "a device's key shut the worker down"
        _check_serves(cl, addr, "w1", keys=str(keys))
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
