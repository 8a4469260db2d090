"""The transport (coinfer.runtime.transport): one test body run over ZeroMQ/TCP loopback and over the
in-process hub, so both have the same semantics; then ZeroMQ-only checks (fds, frame limits, dead peers).

Timing: a 10 MB message on a 100 Mbit/s link arrives 0.8 s ± 5 % after ``send`` (measured
send → recv); latency adds; a replayed trace changes the rate; control messages overtake data
that waits on its link.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from conftest import machine_oversubscribed

from coinfer.runtime import wire
from coinfer.runtime.shaping import LinkShaper
from coinfer.runtime.transport import (
    BadMessage,
    Endpoint,
    InProcHub,
    Message,
    UnknownPeer,
    ZmqEndpoint,
    zmq_endpoint,
)

Make = Callable[..., Endpoint]


@pytest.fixture(params=["zmq", "inproc"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    eps: list[Endpoint] = []
    hub = InProcHub()

    def mk(name: str, **kw: object) -> Endpoint:
        ep: Endpoint
        if request.param == "zmq":
            ep = zmq_endpoint(name, "tcp://127.0.0.1:0", **kw)  # type: ignore[arg-type]
        else:
            ep = hub.endpoint(name)
        eps.append(ep)
        return ep

    mk.kind = request.param  # type: ignore[attr-defined]
    yield mk
    for ep in eps:
        ep.close()
    hub.close()


def _data(arr: np.ndarray, req: int = 1, tensor: int = 0) -> tuple[dict, list]:
    meta, frames = wire.encode_tensor(arr)
    return {"kind": "data", "dep": "d", "req": req, "tensor": tensor, "region": None, "src": "a", **meta}, frames


def _recv(ep: Endpoint, timeout_s: float = 5.0) -> Message | BadMessage:
    m = ep.recv(int(timeout_s * 1000))
    assert m is not None, f"{ep.name}: nothing received within {timeout_s} s"
    return m


def _pair(make: Make, shaper: LinkShaper | None = None) -> tuple[Endpoint, Endpoint]:
    a, b = make("a"), make("b")
    a.connect("b", b.address, shaper=shaper)
    # settle the connection (TCP + handshake) so timings measure the link, not the connect
    a.send("b", {"kind": "ping", "seq": 0, "t": 0.0})
    m = _recv(b)
    assert isinstance(m, Message) and m.header["kind"] == "ping"
    return a, b


# -- semantics shared by both transports ------------------------------------------------------------
def test_round_trip_and_reply_to_an_unconnected_sender(make: Make) -> None:
    a, b = _pair(make)
    x = np.random.default_rng(0).standard_normal((1, 8, 16, 16)).astype(np.float32)
    h, frames = _data(x)
    a.send("b", h, frames)
    m = _recv(b)
    assert isinstance(m, Message) and m.sender == "a" and m.header["kind"] == "data"
    np.testing.assert_array_equal(wire.decode_tensor(m.header, m.frames), x)
    # b never connected to a: it answers over the connection the message came in on
    b.send("a", {"kind": "pong", "seq": 1, "t": 2.0, "name": "b"})
    r = _recv(a)
    assert isinstance(r, Message) and r.sender == "b" and r.header == {"v": wire.PROTOCOL_VERSION, "kind": "pong", "seq": 1,
                                                                        "t": 2.0, "name": "b"}


def test_unknown_peer_and_bad_headers_raise_at_send(make: Make) -> None:
    a, _ = _pair(make)
    with pytest.raises(UnknownPeer, match="connect"):
        a.send("nobody", {"kind": "shutdown"})
    with pytest.raises(wire.WireError):
        a.send("b", {"kind": "ping", "seq": "one", "t": 0.0})


def test_malformed_input_is_returned_not_raised(make: Make) -> None:
    a, b = _pair(make)
    a.send_raw("b", [b"\xc1 not msgpack"])  # type: ignore[attr-defined]
    a.send_raw("b", [wire.pack({"kind": "shutdown"})[0], b"unexpected payload"])  # type: ignore[attr-defined]
    for _ in range(2):
        m = _recv(b)
        assert isinstance(m, BadMessage) and m.sender == "a" and m.error
    a.send("b", {"kind": "cancel", "dep": "d", "req": 3})  # still serving
    m = _recv(b)
    assert isinstance(m, Message) and m.header["req"] == 3


def test_shaped_10MB_at_100Mbit_takes_0_8_s(make: Make) -> None:
    a, b = _pair(make, LinkShaper(100.0))
    x = np.ones(10_000_000 // 4, np.float32)  # 10 MB
    h, frames = _data(x)
    t0 = time.monotonic()
    a.send("b", h, frames, shaped=True)
    m = _recv(b)
    dt = time.monotonic() - t0
    assert isinstance(m, Message)
    print(f"{make.kind}: 10 MB at 100 Mbit/s: {dt:.3f} s")  # type: ignore[attr-defined]
    assert dt >= 0.8 * 0.95  # the shaper never lets it through faster, whatever the load
    if not machine_oversubscribed():
        assert dt == pytest.approx(0.8, rel=0.05)
    assert wire.decode_tensor(m.header, m.frames).sum() == x.size


def test_latency_adds_and_messages_queue_on_the_link(make: Make) -> None:
    a, b = _pair(make, LinkShaper(80.0, latency_ms=100.0))
    t0 = time.monotonic()
    for i in range(3):  # 3 x 1 MB at 80 Mbit/s: each 0.1 s on the link, + 0.1 s latency (pipelined)
        a.send("b", *_data(np.zeros(250_000, np.float32), tensor=i), shaped=True)
    arrivals = []
    for i in range(3):
        m = _recv(b)
        assert isinstance(m, Message) and m.header["tensor"] == i  # in order
        arrivals.append(time.monotonic() - t0)
    print(f"{make.kind}: arrivals {[round(t, 3) for t in arrivals]}")  # type: ignore[attr-defined]
    for i, t in enumerate(arrivals):
        assert t == pytest.approx(0.1 * (i + 1) + 0.1, abs=0.03)


def test_trace_replay_changes_the_rate(make: Make) -> None:
    trace = [(0.0, 10.0), (10.0, 100.0)]  # 10 s at 10 Mbit/s, then 10 s at 100 Mbit/s, looping
    x = np.zeros(250_000 // 4, np.float32)  # 250 kB = 2 Mbit
    expected = {"slow": 0.2, "crossing": 0.05 + 1.5 / 100, "fast": 0.02}
    for phase, t_in in (("slow", 0.0), ("crossing", 9.95), ("fast", 12.0)):
        a, b = make(f"a-{phase}"), make(f"b-{phase}")
        sh = LinkShaper(1.0, trace=trace, t0=time.monotonic() + 0.05 - t_in)
        a.connect("b", b.address, shaper=sh)
        a.send("b", {"kind": "ping", "seq": 0, "t": 0.0})
        _recv(b)
        time.sleep(max(0.0, sh.t0 + t_in - time.monotonic()))
        t0 = time.monotonic()
        a.send("b", *_data(x), shaped=True)
        _recv(b)
        dt = time.monotonic() - t0
        print(f"{make.kind}: {phase}: {dt * 1e3:.1f} ms (expected {expected[phase] * 1e3:.0f})")  # type: ignore[attr-defined]
        assert dt == pytest.approx(expected[phase], abs=0.012 + 0.05 * expected[phase])


def test_control_messages_overtake_queued_data(make: Make) -> None:
    a, b = _pair(make, LinkShaper(10.0))
    t0 = time.monotonic()
    a.send("b", *_data(np.zeros(1_250_000 // 4, np.float32)), shaped=True)  # 1 s on a 10 Mbit/s link
    a.send("b", {"kind": "cancel", "dep": "d", "req": 9})
    first = _recv(b)
    t_first = time.monotonic() - t0
    second = _recv(b)
    t_second = time.monotonic() - t0
    assert isinstance(first, Message) and first.header["kind"] == "cancel"
    assert isinstance(second, Message) and second.header["kind"] == "data"
    assert t_first < 0.1
    assert t_second == pytest.approx(1.0, rel=0.05)


def test_control_messages_keep_order_and_senders_are_thread_safe(make: Make) -> None:
    a, b = _pair(make)

    def sender(k: int) -> None:
        for i in range(200):
            a.send("b", {"kind": "ping", "seq": k * 1000 + i, "t": 0.0})

    ts = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    seen: dict[int, list[int]] = {k: [] for k in range(4)}
    for _ in range(800):
        m = _recv(b)
        assert isinstance(m, Message)
        seen[m.header["seq"] // 1000].append(m.header["seq"] % 1000)
    assert all(v == list(range(200)) for v in seen.values())
    assert b.recv(50) is None


def test_disconnect_and_reconnect(make: Make) -> None:
    a, b = _pair(make)
    a.disconnect("b")
    with pytest.raises(UnknownPeer):
        a.send("b", {"kind": "shutdown"})
    a.connect("b", b.address)
    a.send("b", {"kind": "shutdown"})
    assert _recv(b).header["kind"] == "shutdown"  # type: ignore[union-attr]


def test_close_is_final(make: Make) -> None:
    a, b = _pair(make)
    b.close()
    assert b.recv(10) is None
    a.close()
    a.send("b", {"kind": "shutdown"})  # dropped with a log line, not raised
    assert a.recv(0) is None


def test_inproc_max_frame_rejects_big_payloads() -> None:
    """In-process, max_frame is enforced by unpack (ZeroMQ drops it in the socket: see below)."""
    hub = InProcHub(max_frame=1000)
    a, b = hub.endpoint("a"), hub.endpoint("b")
    a.connect("b", b.address)
    a.send("b", *_data(np.zeros(1000, np.float32)))
    m = _recv(b)
    assert isinstance(m, BadMessage) and "limit is 1000" in m.error
    hub.close()


# -- ZeroMQ only ------------------------------------------------------------------------------------------
def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_zmq_no_fd_leak_over_200_endpoints() -> None:
    # warm up pyzmq's process-wide machinery (the zero-copy garbage collector thread)
    a, b = zmq_endpoint("wa", "tcp://127.0.0.1:0"), zmq_endpoint("wb", "tcp://127.0.0.1:0")
    a.connect("wb", b.address)
    a.send("wb", *_data(np.zeros(100_000, np.float32)))
    assert b.recv(5000) is not None
    a.close()
    b.close()
    gc.collect()
    base = _fds()
    threads = threading.active_count()
    for i in range(100):
        a = zmq_endpoint(f"a{i}", "tcp://127.0.0.1:0")
        b = zmq_endpoint(f"b{i}", "tcp://127.0.0.1:0")
        a.connect(f"b{i}", b.address, shaper=LinkShaper(1000.0))
        a.send(f"b{i}", *_data(np.zeros(50_000, np.float32)), shaped=i % 2 == 0)
        m = b.recv(5000)
        assert isinstance(m, Message)
        b.send(f"a{i}", {"kind": "pong", "seq": i, "t": 0.0, "name": f"b{i}"})
        assert isinstance(a.recv(5000), Message)
        del m
        a.close()
        b.close()
    gc.collect()
    time.sleep(0.1)
    print(f"fds: {base} before, {_fds()} after 200 endpoints")
    assert _fds() == base
    assert threading.active_count() == threads


def test_zmq_bound_address_is_resolved() -> None:
    with zmq_endpoint("x", "tcp://127.0.0.1:0") as ep:
        host, port = ep.address.rsplit(":", 1)
        assert host == "tcp://127.0.0.1" and int(port) > 0


def test_zmq_oversized_frame_drops_it_and_the_endpoint_keeps_serving() -> None:
    with zmq_endpoint("a", "tcp://127.0.0.1:0") as a, \
            zmq_endpoint("b", "tcp://127.0.0.1:0", max_frame=2**20) as b:
        a.connect("b", b.address)
        a.send("b", *_data(np.zeros(2**20 // 4 + 1, np.float32)))  # one frame of 1 MiB + 4 B
        assert b.recv(500) is None  # ZMQ_MAXMSGSIZE: the connection is dropped, nothing delivered
        deadline = time.monotonic() + 5
        got = None
        while got is None and time.monotonic() < deadline:  # the DEALER reconnects by itself
            a.send("b", {"kind": "ping", "seq": 1, "t": 0.0})
            got = b.recv(200)
        assert isinstance(got, Message) and got.header["kind"] == "ping"


def test_zmq_dead_peer_never_blocks_the_sender(caplog: pytest.LogCaptureFixture) -> None:
    with zmq_endpoint("lonely", "tcp://127.0.0.1:0") as a:
        assert isinstance(a, ZmqEndpoint)
        a.max_queue = 50
        a.connect("ghost", "tcp://127.0.0.1:9")  # nobody listens there
        x = np.zeros(250_000, np.float32)
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="coinfer.transport"):
            for i in range(20_000):
                a.send("ghost", *_data(x, tensor=i % 1000))
            assert time.monotonic() - t0 < 10
            assert a.stats.dropped > 0
        assert any("full" in r.getMessage() for r in caplog.records)
        t1 = time.monotonic()
    assert time.monotonic() - t1 < 2  # closing does not wait for the dead peer


def test_zmq_zero_copy_receive() -> None:
    with zmq_endpoint("a", "tcp://127.0.0.1:0") as a, zmq_endpoint("b", "tcp://127.0.0.1:0") as b:
        a.connect("b", b.address)
        x = np.arange(1_000_000, dtype=np.float32)
        a.send("b", *_data(x))
        m = _recv(b)
        assert isinstance(m, Message)
        y = wire.decode_tensor(m.header, m.frames)
        assert np.shares_memory(y, np.frombuffer(m.frames[0], np.uint8))
        assert y.flags.aligned  # (writable here: the frame is ours; in general it may be read-only)
        np.testing.assert_array_equal(y, x)


def test_a_closed_peer_shows_as_link_down_until_it_is_back() -> None:
    """ZeroMQ hides connections; the endpoint's socket monitor tells when the one to a peer dropped
    (its process died or closed) and clears it when the peer is back at the same address."""
    a = zmq_endpoint("a", "tcp://127.0.0.1:0")
    b = zmq_endpoint("b", "tcp://127.0.0.1:0")
    try:
        a.connect("b", b.address)
        a.send("b", {"kind": "ping", "seq": 0, "t": 0.0})
        assert isinstance(_recv(b), Message)
        assert a.link_down_since("b") is None
        address = b.address
        t0 = time.monotonic()
        b.close()
        deadline = time.monotonic() + 5
        while a.link_down_since("b") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        since = a.link_down_since("b")
        assert since is not None and t0 <= since < t0 + 5
        b = zmq_endpoint("b", address)  # back at the same address: a's DEALER reconnects
        deadline = time.monotonic() + 10
        while a.link_down_since("b") is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert a.link_down_since("b") is None
        a.send("b", {"kind": "ping", "seq": 1, "t": 0.0})
        m = _recv(b)
        assert isinstance(m, Message) and m.header["seq"] == 1
    finally:
        a.close()
        b.close()
    with InProcHub() as hub:
        assert hub.endpoint("x").link_down_since("y") is None  # in process: nothing to lose
