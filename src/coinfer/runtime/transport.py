"""Endpoints: how workers and the coordinator exchange messages (ZeroMQ, or in-process for tests).

One interface, :class:`Endpoint`, two implementations with the same semantics:

* :func:`zmq_endpoint` — ZeroMQ over TCP. Each endpoint binds one ROUTER
  socket (inbound from anyone; the sender of an inbound message is the
  peer's routing id, i.e. its endpoint name) and, per peer it
  :meth:`~Endpoint.connect`\\ s to, a DEALER whose identity is this endpoint's
  name. All of an endpoint's sockets are owned by one I/O thread (ZeroMQ
  sockets are not thread-safe): ``send`` only validates, packs and queues, so
  it is thread-safe and never blocks; ``recv`` takes the next message from
  the I/O thread's inbox (call it from one owner thread).
* :class:`InProcHub` — endpoints that pass frames through queues, for unit
  tests; they validate, shape and report errors exactly like the ZeroMQ ones.

**Sending.** ``send(peer, header, payload, shaped=False)``: a control message
goes out at once. With ``shaped=True`` the message is held until the link's
:class:`~coinfer.runtime.shaping.LinkShaper` says it has been delivered
(bandwidth and latency of the emulated link; see ``shaping``), then handed to
the socket (early by the estimated loopback copy time, :data:`LOOPBACK_S_PER_BYTE`,
so that its last byte lands on time): the receiver sees realistic arrival times. Control messages
never queue behind held data: they overtake it. ``peer`` is a name given to
:meth:`connect` — or the sender of a message received earlier, which is then
answered over the connection it came in on (a worker answers ``hello`` before
it knows the coordinator's address).

**Receiving.** ``recv(timeout_ms)`` returns a :class:`Message` (header
validated by :func:`coinfer.runtime.wire.unpack`, payload frames as
memoryviews, zero-copy), a :class:`BadMessage` for anything malformed — never
an exception — or None on timeout.

**Zero-copy.** Payload arrays are not copied by ZeroMQ (``copy=False``): do
not modify an array after sending it. Received payloads are views of the
ZeroMQ frames, kept alive by the views.

**Peers that disappear.** Each peer's queue is bounded (messages and bytes);
beyond it, messages are dropped with a log line, as are messages still queued
when the endpoint or the connection closes. ``close()`` joins the I/O thread
and closes every socket (linger 0) and, if the endpoint made its own
context, terminates it — no file descriptor is left behind.

**Security.** With ``keys`` the ROUTER is a CURVE server admitting exactly the
keys in ``keys.public_dir`` and every DEALER a CURVE client; an inbound peer
must use the key of its own name (or the ``coordinator`` key). See
:mod:`coinfer.runtime.security`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import os
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .security import (
    AUTH,
    COORDINATOR,
    KeyStore,
    SecurityError,
    check_bind,
    setup_client,
    setup_server,
)
from .shaping import LinkShaper
from .wire import DEFAULT_MAX_FRAME, MAX_FRAMES, WireError, pack, unpack

log = logging.getLogger("coinfer.transport")

#: Per-peer bound of queued outbound messages / bytes before new ones are dropped.
MAX_QUEUE = 10_000
MAX_QUEUE_BYTES = 4 * 2**30
#: Inbound messages the I/O thread buffers before it stops reading (backpressure).
MAX_INBOX = 10_000
HWM = 10_000
#: a connection whose sent data stays unacknowledged this long is closed (TCP_MAXRT): a link that
#: became blocked (firewall, route) while data waited on it is then seen as down, not silent forever;
#: a slow link that still acknowledges is not affected
MAX_RETRANSMIT_MS = 5000
#: a connection attempt that gets no answer is retried after this long (the kernel waits ~2 min)
CONNECT_TIMEOUT_MS = 3000
_SEEN = 4096
#: A shaped message is handed to the socket this much before its delivery time per byte
#: (the real loopback copy, ≈ 2 GB/s), so that its last byte lands when the link says.
LOOPBACK_S_PER_BYTE = 1 / 2e9


class Message(NamedTuple):
    """A valid inbound message: who sent it, its validated header, its payload memoryviews."""

    sender: str
    header: dict[str, Any]
    frames: list[Any]


class BadMessage(NamedTuple):
    """A malformed inbound message (returned by ``recv``, never raised): who sent it and why."""

    sender: str
    error: str


class UnknownPeer(KeyError):
    """``send`` to a name that was neither connected nor heard from."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown peer"


@runtime_checkable
class Endpoint(Protocol):
    """One party's messaging: connect to peers, send to them, receive from anyone."""

    name: str
    address: str  # the actual bound address (port resolved if bound to :0)

    def connect(self, peer: str, address: str, *, shaper: LinkShaper | None = None) -> None: ...

    def send(self, peer: str, header: dict[str, Any], payload: Sequence[Any] = (), *,
             shaped: bool = False, check: bool = True) -> None: ...

    def recv(self, timeout_ms: int | None = None) -> Message | BadMessage | None: ...

    def disconnect(self, peer: str) -> None: ...

    def link_down_since(self, peer: str) -> float | None: ...

    def unreachable_since(self, peer: str) -> float | None: ...

    def close(self) -> None: ...


def _check_name(name: str, what: str = "endpoint name") -> bytes:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what} must be a non-empty string")
    b = name.encode()
    if len(b) > 255 or b[0] == 0:
        raise ValueError(f"{what} {name!r} must be 1-255 bytes and not start with NUL")
    return b


def _sender_name(rid: bytes) -> str:
    try:
        return rid.decode()
    except UnicodeDecodeError:
        return rid.decode("utf-8", "backslashreplace")


def _next(inbox: queue.SimpleQueue[Any], timeout_ms: int | None) -> Any:
    """An endpoint's next inbox item: None after ``timeout_ms`` (None: wait; ≤ 0: do not wait) or once
    the endpoint is closed (a None in the inbox, put back for the next reader)."""
    try:
        if timeout_ms is None:
            item = inbox.get()
        elif timeout_ms <= 0:
            item = inbox.get_nowait()
        else:
            item = inbox.get(timeout=timeout_ms / 1e3)
    except queue.Empty:
        return None
    if item is None:
        inbox.put(None)
    return item


def _nbytes(frames: Sequence[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


class _Out:
    __slots__ = ("due", "frames", "nbytes")

    def __init__(self, frames: list[Any], nbytes: int, due: float) -> None:
        self.frames = frames
        self.nbytes = nbytes
        self.due = due


class _Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.sent_bytes = 0
        self.received = 0
        self.received_bytes = 0
        self.bad = 0
        self.dropped = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


class _RateLimitedLog:
    def __init__(self, every_s: float = 5.0) -> None:
        self.every = every_s
        self.last: dict[str, float] = {}
        self.count: dict[str, int] = {}

    def warn(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        self.count[key] = self.count.get(key, 0) + 1
        if now - self.last.get(key, -math.inf) >= self.every:
            n = self.count.pop(key)
            self.last[key] = now
            log.warning(msg + (f" ({n} such since the last report)" if n > 1 else ""), *args)


# ================================================================================================
# ZeroMQ
# ================================================================================================
class _Peer:
    """A connected peer: its queues (shared, under the endpoint lock) and DEALER (I/O thread only)."""

    __slots__ = ("address", "blocked", "control", "data", "mon", "name", "queued_bytes", "shaper", "sock")

    def __init__(self, name: str, address: str, shaper: LinkShaper | None) -> None:
        self.name = name
        self.address = address
        self.shaper = shaper
        self.control: deque[_Out] = deque()
        self.data: deque[_Out] = deque()
        self.queued_bytes = 0
        self.sock: Any = None
        self.mon: Any = None  # the DEALER's monitor socket: connection lost / made
        self.blocked = False


class ZmqEndpoint:
    """A ZeroMQ endpoint (see the module doc). Create it with :func:`zmq_endpoint`."""

    def __init__(self, name: str, bind: str, *, keys: KeyStore | None = None, insecure: bool = False,
                 max_frame: int = DEFAULT_MAX_FRAME, ctx: Any = None, key_name: str | None = None,
                 max_queue: int = MAX_QUEUE, max_queue_bytes: int = MAX_QUEUE_BYTES) -> None:
        import zmq

        self._zmq = zmq
        self.name = name
        self._ident = _check_name(name)
        if not isinstance(bind, str):
            raise TypeError(f"bind address must be a string (got {bind!r})")
        check_bind(bind, keys, insecure)
        self.keys = keys
        self.max_frame = int(max_frame)
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.stats = _Stats()
        self._warn = _RateLimitedLog()
        self.key_name: str | None = None
        if keys is not None:
            if key_name is None:
                key_name = name if keys.has_secret(name) else COORDINATOR
            keys.secret(key_name)  # fail now, with the fix, if the secret is missing
            self.key_name = key_name
        self._own_ctx = ctx is None
        self.ctx = zmq.Context(io_threads=1) if ctx is None else ctx
        self._domain = f"coinfer/{name}/{id(self):x}"
        self._auth = False
        self._router: Any = None
        self._wake_r = self._wake_w = -1
        try:
            if keys is not None:
                AUTH.acquire(self.ctx, self._domain, keys)
                self._auth = True
            r = self.ctx.socket(zmq.ROUTER)
            self._router = r
            self._sockopts(r)
            r.setsockopt(zmq.ROUTER_MANDATORY, 1)
            r.setsockopt(zmq.ROUTER_HANDOVER, 0 if keys is not None else 1)
            if keys is not None:
                assert self.key_name is not None
                setup_server(r, keys, self.key_name, self._domain)
            addr = bind[:-2] + ":*" if bind.startswith("tcp://") and bind.endswith(":0") else bind
            try:
                r.bind(addr)
            except zmq.ZMQError as e:
                raise ValueError(f"cannot bind {bind}: {e}") from None
            self.address = r.getsockopt_string(zmq.LAST_ENDPOINT) or bind
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except BaseException:
            self._release()
            raise
        self._lock = threading.Lock()
        self._peers: dict[str, _Peer] = {}
        self._link_down: dict[str, float] = {}  # peer -> when its connection dropped (monitor events)
        self._retrying: dict[str, float] = {}  # peer never connected -> when its first attempt failed
        self._connected: set[str] = set()  # peers whose connection was up at least once
        self._replies: deque[tuple[bytes, _Out]] = deque()
        self._seen: OrderedDict[str, bytes] = OrderedDict()  # inbound sender -> routing id
        self._key_names: dict[bytes, str | None] = {}  # client public key (z85) -> key name
        self._learned: dict[str, bytes] = {}  # sender -> the public key it authenticated with
        self._cmds: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._inbox: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._inbox_n = 0
        self._woken = False
        self._closing = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"zmq-io-{name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"ZmqEndpoint({self.name!r}, {self.address!r}{', CURVE' if self.keys else ''})"

    # -- socket options ---------------------------------------------------------------------------
    def _sockopts(self, s: Any) -> None:
        zmq = self._zmq
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, HWM)
        s.setsockopt(zmq.RCVHWM, HWM)
        s.setsockopt(zmq.MAXMSGSIZE, self.max_frame)
        s.setsockopt(zmq.TCP_KEEPALIVE, 1)
        s.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
        s.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 10)
        s.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)

    # -- public API -------------------------------------------------------------------------------
    def connect(self, peer: str, address: str, *, shaper: LinkShaper | None = None) -> None:
        """Open (or re-point) the connection to ``peer`` at ``address``; ``shaper`` emulates the link."""
        _check_name(peer, "peer name")
        if not isinstance(address, str) or not address:
            raise ValueError(f"address for {peer!r} must be a string like tcp://HOST:PORT")
        server_key = None
        if self.keys is not None:
            if self.keys.has_public(peer):
                server_key = self.keys.public(peer)
            elif peer in self._learned:
                server_key = self._learned[peer]
            else:
                server_key = self.keys.public(COORDINATOR)
        self._call(lambda: self._do_connect(peer, address, shaper, server_key))

    def disconnect(self, peer: str) -> None:
        """Close the connection to ``peer`` (messages still queued for it are dropped)."""
        self._call(lambda: self._do_disconnect(peer, "disconnect"))

    def send(self, peer: str, header: dict[str, Any], payload: Sequence[Any] = (), *,
             shaped: bool = False, check: bool = True) -> None:
        """Queue a message for ``peer`` (thread-safe, non-blocking). Bad headers raise WireError
        (``check=False``: not looked at — see :func:`~coinfer.runtime.wire.pack`)."""
        frames = pack(header, payload, check=check)
        self._enqueue(peer, frames, shaped)

    def send_raw(self, peer: str, frames: Sequence[Any]) -> None:
        """Send frames as they are, without packing or validation (for fuzzing a receiver)."""
        fr = [f if isinstance(f, (bytes, bytearray, memoryview)) else bytes(f) for f in frames]
        self._enqueue(peer, fr, False)

    def recv(self, timeout_ms: int | None = None) -> Message | BadMessage | None:
        """The next inbound message (None after ``timeout_ms``, or once closed)."""
        item = None if self._closed else _next(self._inbox, timeout_ms)
        if item is None:
            return None
        with self._lock:
            self._inbox_n -= 1
        sender, frames = item
        if isinstance(frames, str):
            self.stats.bad += 1
            return BadMessage(sender, frames)
        try:
            h, payload = unpack(frames, self.max_frame)
        except WireError as e:
            self.stats.bad += 1
            return BadMessage(sender, str(e))
        return Message(sender, h, payload)

    def peers(self) -> list[str]:
        """Names of the connected peers."""
        with self._lock:
            return list(self._peers)

    def close(self) -> None:
        """Stop the I/O thread, close every socket (linger 0), drop what is still queued."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        self._closed = True
        self._inbox.put(None)
        if self._thread.is_alive():  # pragma: no cover - never seen; do not hang in ctx.term()
            log.error("%s: I/O thread did not stop; leaving its sockets open", self.name)
            self._own_ctx = False
        self._release()

    def __enter__(self) -> ZmqEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing (caller side) ---------------------------------------------------------------
    def _release(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1
        if self._router is not None and not self._router.closed:
            self._router.close(linger=0)
        if self._auth:
            AUTH.release(self.ctx, self._domain)
            self._auth = False
        if self._own_ctx:
            self.ctx.term()

    def _wake(self) -> None:
        # called with or without the lock; a spurious byte is harmless
        if self._woken:
            return
        self._woken = True
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _call(self, fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        fut: Future[Any] = Future()
        with self._lock:
            if self._closing:
                raise RuntimeError(f"endpoint {self.name!r} is closed")
            self._cmds.append((fn, fut))
        self._wake()
        return fut.result(timeout=timeout_s)

    def _enqueue(self, peer: str, frames: list[Any], shaped: bool) -> None:
        nbytes = _nbytes(frames)
        now = time.monotonic()
        with self._lock:
            if self._closing:
                self.stats.dropped += 1
                self._warn.warn("closed", "%s: endpoint closed; dropped a message to %s", self.name, peer)
                return
            p = self._peers.get(peer)
            if p is None:
                rid = self._seen.get(peer)
                if rid is None:
                    raise UnknownPeer(f"{self.name}: unknown peer {peer!r}; connect() it first "
                                      f"(or answer a peer that sent a message)")
                if len(self._replies) >= self.max_queue:
                    self.stats.dropped += 1
                    self._warn.warn("rq", "%s: reply queue full; dropped a message to %s", self.name, peer)
                    return
                self._replies.append((rid, _Out(frames, nbytes, now)))
            else:
                if len(p.control) + len(p.data) >= self.max_queue or p.queued_bytes + nbytes > self.max_queue_bytes:
                    self.stats.dropped += 1
                    self._warn.warn(f"q/{peer}", "%s: queue to %s is full (%d messages, %d bytes); is it down? "
                                    "dropped a message", self.name, peer, len(p.control) + len(p.data),
                                    p.queued_bytes)
                    return
                if shaped and p.shaper is not None:
                    due = p.shaper.schedule(nbytes, now) - nbytes * LOOPBACK_S_PER_BYTE
                    p.data.append(_Out(frames, nbytes, max(now, due)))
                elif shaped:
                    p.data.append(_Out(frames, nbytes, now))
                else:
                    p.control.append(_Out(frames, nbytes, now))
                p.queued_bytes += nbytes
            self._wake()

    # -- the I/O thread -------------------------------------------------------------------------
    def _do_connect(self, peer: str, address: str, shaper: LinkShaper | None, server_key: bytes | None) -> None:
        zmq = self._zmq
        with self._lock:
            old = self._peers.get(peer)
        if old is not None and old.address == address:
            old.shaper = shaper
            return
        if old is not None:
            self._do_disconnect(peer, "re-connect")
        s = self.ctx.socket(zmq.DEALER)
        try:
            self._sockopts(s)
            s.setsockopt(zmq.TCP_MAXRT, MAX_RETRANSMIT_MS)
            s.setsockopt(zmq.CONNECT_TIMEOUT, CONNECT_TIMEOUT_MS)
            s.setsockopt(zmq.IDENTITY, self._ident)
            if self.keys is not None:
                assert self.key_name is not None and server_key is not None
                setup_client(s, self.keys, self.key_name, server_key)
            try:
                s.connect(address)
            except zmq.ZMQError as e:
                raise ValueError(f"cannot connect to {peer!r} at {address!r}: {e}") from None
        except BaseException:
            s.close(linger=0)
            raise
        p = _Peer(peer, address, shaper)
        p.sock = s
        try:
            p.mon = s.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED)
        except zmq.ZMQError:  # monitoring is a help, not a need
            p.mon = None
        with self._lock:
            self._peers[peer] = p
        self._poller.register(s, zmq.POLLIN)
        self._sock_peer[s] = peer
        if p.mon is not None:
            self._poller.register(p.mon, zmq.POLLIN)
            self._mon_peer[p.mon] = peer

    def _do_disconnect(self, peer: str, why: str) -> None:
        with self._lock:
            p = self._peers.pop(peer, None)
            if p is None:
                return
            n = len(p.control) + len(p.data)
            p.control.clear()
            p.data.clear()
        if n:
            self.stats.dropped += n
            log.warning("%s: %s %s dropped %d queued message(s)", self.name, why, peer, n)
        self._close_monitor(p)
        with self._lock:
            self._link_down.pop(peer, None)
            self._retrying.pop(peer, None)
            self._connected.discard(peer)
        if p.sock is not None:
            self._poller.unregister(p.sock)
            self._sock_peer.pop(p.sock, None)
            p.sock.close(linger=0)

    def _close_monitor(self, p: _Peer) -> None:
        if p.mon is None:
            return
        self._poller.unregister(p.mon)
        self._mon_peer.pop(p.mon, None)
        with contextlib.suppress(Exception):  # closing anyway
            p.sock.disable_monitor()
        p.mon.close(linger=0)
        p.mon = None

    def _drain_monitor(self, mon: Any, peer: str) -> None:
        """Connection events of the DEALER to ``peer``: when its TCP connection drops (the peer's
        process died or closed it), :meth:`link_down_since` says since when, until it connects again."""
        from zmq.utils.monitor import recv_monitor_message

        zmq = self._zmq
        for _ in range(64):
            try:
                ev = recv_monitor_message(mon, zmq.NOBLOCK)
            except zmq.Again:
                return
            except Exception:  # noqa: BLE001 - a malformed event: ignore it
                return
            with self._lock:
                if ev["event"] == zmq.EVENT_DISCONNECTED:
                    self._link_down.setdefault(peer, time.monotonic())
                elif ev["event"] == zmq.EVENT_CONNECTED:
                    self._link_down.pop(peer, None)
                    self._retrying.pop(peer, None)
                    self._connected.add(peer)
                elif ev["event"] == zmq.EVENT_CONNECT_RETRIED and peer not in self._connected:
                    self._retrying.setdefault(peer, time.monotonic())

    def link_down_since(self, peer: str) -> float | None:
        """``time.monotonic()`` when the connection to ``peer`` was lost, or None while it is up
        (or unknown). A process that dies closes its connections at once; a device that loses
        power or network does not, so this is a quick hint, never the only sign of death."""
        with self._lock:
            return self._link_down.get(peer)

    def unreachable_since(self, peer: str) -> float | None:
        """``time.monotonic()`` since when ``peer`` cannot be reached: its connection dropped
        (:meth:`link_down_since`) or, never connected, the first attempt failed (refused or
        unanswered for ``CONNECT_TIMEOUT_MS``); None while connected or still trying the first time."""
        with self._lock:
            t = [v for v in (self._link_down.get(peer), self._retrying.get(peer)) if v is not None]
        return min(t) if t else None

    def _run(self) -> None:
        zmq = self._zmq
        self._poller = zmq.Poller()
        self._sock_peer: dict[Any, str | None] = {self._router: None}
        self._mon_peer: dict[Any, str] = {}
        self._poller.register(self._router, zmq.POLLIN)
        self._poller.register(self._wake_r, zmq.POLLIN)
        idle = zmq.Poller()  # when the inbox is full: only wake-ups
        idle.register(self._wake_r, zmq.POLLIN)
        try:
            while True:
                timeout = self._timeout_ms()
                full = self._inbox_n >= MAX_INBOX
                events = dict((idle if full else self._poller).poll(min(timeout, 5) if full else timeout))
                if self._wake_r in events:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                self._woken = False
                self._commands()
                if self._closing:
                    break
                for sock, ev in events.items():
                    if sock is not self._wake_r and ev & zmq.POLLIN and sock in self._sock_peer:
                        self._drain_in(sock, self._sock_peer[sock])
                    elif ev & zmq.POLLIN and sock in self._mon_peer:
                        self._drain_monitor(sock, self._mon_peer[sock])
                self._flush()
        except Exception:
            log.exception("%s: transport I/O thread failed", self.name)
        finally:
            self._shutdown_sockets()

    def _commands(self) -> None:
        while True:
            with self._lock:
                if not self._cmds:
                    return
                fn, fut = self._cmds.popleft()
            try:
                fut.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - reported to the caller
                fut.set_exception(e)

    def _timeout_ms(self) -> int:
        now = time.monotonic()
        due = math.inf
        with self._lock:
            if self._cmds or self._closing:
                return 0
            if self._replies:
                due = now + 0.01  # a reply that hit the high-water mark: retry soon
            for p in self._peers.values():
                if p.blocked:
                    continue  # woken by POLLOUT
                if p.control:
                    return 0
                if p.data:
                    due = min(due, p.data[0].due)
        if due == math.inf:
            return -1
        return max(0, math.ceil((due - now) * 1e3))

    def _drain_in(self, s: Any, peer: str | None) -> None:
        zmq = self._zmq
        for _ in range(256):
            if self._inbox_n >= MAX_INBOX:
                return
            try:
                first = s.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            parts = [first]
            more = first.more
            n = 1
            while more:  # the rest of a multipart is already here (delivery is atomic)
                f = s.recv(copy=False)
                n += 1
                if n <= MAX_FRAMES + 1:
                    parts.append(f)
                more = f.more
            if peer is None:  # ROUTER: the first frame is the routing id
                rid = parts[0].bytes
                sender = _sender_name(rid)
                frames: Any = parts[1:]
                err = None
                if self.keys is not None and len(parts) > 1:
                    err = self._check_identity(sender, parts[-1])
                if err is None:
                    with self._lock:
                        self._seen[sender] = rid
                        self._seen.move_to_end(sender)
                        if len(self._seen) > _SEEN:
                            self._seen.popitem(last=False)
                else:
                    frames = err
            else:
                sender, frames = peer, parts
            if n > MAX_FRAMES + (peer is None):
                frames = f"{n - (peer is None)} frames; at most {MAX_FRAMES}"
            self.stats.received += 1
            if not isinstance(frames, str):
                self.stats.received_bytes += sum(len(f) for f in frames)
            with self._lock:
                self._inbox_n += 1
            self._inbox.put((sender, frames))

    def controller(self, sender: str) -> bool:
        """Whether ``sender`` may control this endpoint's worker (deploy, run, shut down, …): with CURVE
        only a peer authenticated with the ``coordinator`` key; without, anyone (loopback only)."""
        return self.keys is None or sender in self._learned

    def _check_identity(self, sender: str, frame: Any) -> str | None:
        """A CURVE peer must speak under its own key's name (the coordinator key: any name)."""
        try:
            uid = frame.get("User-Id")
        except Exception:  # noqa: BLE001
            return "no CURVE identity on the message"
        k = uid.encode() if isinstance(uid, str) else bytes(uid)
        if k not in self._key_names:
            assert self.keys is not None
            self._key_names[k] = self.keys.name_of(k)
        kname = self._key_names[k]
        if kname is None:
            return "CURVE key not in the admitted public keys"
        if kname != sender and kname != COORDINATOR:
            return f"peer calls itself {sender!r} but authenticated with the key of {kname!r}"
        if kname == COORDINATOR:
            self._learned[sender] = k
        return None

    def _send(self, s: Any, frames: list[Any]) -> bool:
        zmq = self._zmq
        try:
            s.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False

    def _flush(self) -> None:
        zmq = self._zmq
        now = time.monotonic()
        with self._lock:
            peers = list(self._peers.values())
        for p in peers:
            was_blocked, p.blocked = p.blocked, False
            while True:
                with self._lock:
                    if p.control:
                        out, q = p.control[0], p.control
                    elif p.data and p.data[0].due <= now:
                        out, q = p.data[0], p.data
                    else:
                        break
                if not self._send(p.sock, out.frames):
                    p.blocked = True
                    break
                with self._lock:
                    if q and q[0] is out:
                        q.popleft()
                        p.queued_bytes -= out.nbytes
                self.stats.sent += 1
                self.stats.sent_bytes += out.nbytes
            if p.blocked != was_blocked and p.sock is not None and not p.sock.closed:
                self._poller.modify(p.sock, zmq.POLLIN | (zmq.POLLOUT if p.blocked else 0))
        while True:
            with self._lock:
                if not self._replies:
                    break
                rid, out = self._replies[0]
            try:
                ok = self._send(self._router, [rid, *out.frames])
            except zmq.ZMQError as e:  # EHOSTUNREACH: the peer is gone
                ok = True
                self.stats.dropped += 1
                self.stats.sent -= 1
                self.stats.sent_bytes -= out.nbytes
                self._warn.warn(f"r/{rid!r}", "%s: cannot answer %s (%s); dropped", self.name,
                                _sender_name(rid), e)
            if not ok:
                break
            with self._lock:
                self._replies.popleft()
            self.stats.sent += 1
            self.stats.sent_bytes += out.nbytes

    def _shutdown_sockets(self) -> None:
        with self._lock:
            self._closing = True
            peers = list(self._peers.values())
            self._peers.clear()
            dropped = sum(len(p.control) + len(p.data) for p in peers) + len(self._replies)
            self._replies.clear()
            cmds = list(self._cmds)
            self._cmds.clear()
        for _, fut in cmds:
            if not fut.done():
                fut.set_exception(RuntimeError(f"endpoint {self.name!r} is closed"))
        if dropped:
            self.stats.dropped += dropped
            # (info: a coordinator that gave up on an unreachable device closes with its hello queued —
            # a warning line beside the one-line error; stats.dropped keeps the count)
            log.info("%s: closed with %d queued message(s) unsent; dropped", self.name, dropped)
        for p in peers:
            if p.mon is not None:
                p.mon.close(linger=0)
            if p.sock is not None:
                p.sock.close(linger=0)
        self._router.close(linger=0)


def zmq_endpoint(name: str, bind: str, *, keys: KeyStore | None = None, insecure: bool = False,
                 max_frame: int = DEFAULT_MAX_FRAME, ctx: Any = None, key_name: str | None = None) -> ZmqEndpoint:
    """A ZeroMQ endpoint named ``name`` bound at ``bind`` (``tcp://127.0.0.1:0`` picks a port;
    ``.address`` tells which).

    ``keys``: CURVE (required to bind beyond loopback, see
    :func:`~coinfer.runtime.security.check_bind`); the endpoint uses the key pair of
    ``key_name`` — by default its own name if ``keys`` holds that secret, else
    ``coordinator``. ``insecure``: explicitly no CURVE (loopback only). ``max_frame``:
    the largest frame accepted (ZMQ_MAXMSGSIZE; larger ones drop the connection) and
    the largest decoded tensor. ``ctx``: share a ZeroMQ context (by default the endpoint
    makes and terminates its own).
    """
    return ZmqEndpoint(name, bind, keys=keys, insecure=insecure, max_frame=max_frame, ctx=ctx,
                       key_name=key_name)


# ================================================================================================
# In-process
# ================================================================================================
class InProcHub:
    """A registry of in-process endpoints (addresses ``hub://NAME``) with the ZeroMQ semantics.

    Frames are copied at ``send`` (``copy=True``, like a network: the sender may reuse its
    arrays, the receiver gets read-only buffers); shaped messages are delivered by one
    timer thread when their link says so; malformed input comes out as :class:`BadMessage`.
    """

    def __init__(self, *, copy: bool = True, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.copy = copy
        self.max_frame = max_frame
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._by_addr: dict[str, InProcEndpoint] = {}
        self._heap: list[tuple[float, int, str, str, list[Any]]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def endpoint(self, name: str) -> InProcEndpoint:
        """A new endpoint called ``name`` (names are unique among open endpoints of the hub)."""
        _check_name(name)
        addr = f"hub://{name}"
        with self._lock:
            if addr in self._by_addr:
                raise ValueError(f"an endpoint named {name!r} is already open on this hub")
            ep = InProcEndpoint(self, name, addr)
            self._by_addr[addr] = ep
        return ep

    def _lookup(self, address: str) -> InProcEndpoint | None:
        with self._lock:
            return self._by_addr.get(address)

    def _remove(self, ep: InProcEndpoint) -> None:
        with self._lock:
            if self._by_addr.get(ep.address) is ep:
                del self._by_addr[ep.address]

    def _schedule(self, due: float, address: str, sender: str, frames: list[Any]) -> None:
        with self._cv:
            if self._thread is None:
                self._thread = threading.Thread(target=self._timer, name="inproc-hub", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (due, next(self._seq), address, sender, frames))
            self._cv.notify()

    def _timer(self) -> None:
        while True:
            with self._cv:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cv.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic()))
                if self._closed:
                    return
                _, _, address, sender, frames = heapq.heappop(self._heap)
            _deliver(self, address, sender, frames)

    def close(self) -> None:
        """Stop the timer thread (endpoints should be closed first)."""
        with self._cv:
            self._closed = True
            self._heap.clear()
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> InProcHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _deliver(hub: InProcHub, address: str, sender: str, frames: list[Any]) -> None:
    ep = hub._lookup(address)
    if ep is None or ep._closed:
        log.warning("hub: no endpoint at %s; dropped a message from %s", address, sender)
        return
    ep._incoming(sender, frames)


class InProcEndpoint:
    """An in-process endpoint of an :class:`InProcHub` (same semantics as :class:`ZmqEndpoint`)."""

    def __init__(self, hub: InProcHub, name: str, address: str) -> None:
        self.hub = hub
        self.name = name
        self.address = address
        self.max_frame = hub.max_frame
        self.stats = _Stats()
        self._lock = threading.Lock()
        self._peers: dict[str, tuple[str, LinkShaper | None]] = {}
        self._seen: OrderedDict[str, str] = OrderedDict()  # sender -> its address
        self._inbox: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self._closed = False

    def __repr__(self) -> str:
        return f"InProcEndpoint({self.name!r})"

    def link_down_since(self, peer: str) -> float | None:
        """In process there are no connections to lose: always None (see ZmqEndpoint)."""
        return None

    def unreachable_since(self, peer: str) -> float | None:
        """In process every peer is reachable: always None (see ZmqEndpoint)."""
        return None

    def connect(self, peer: str, address: str, *, shaper: LinkShaper | None = None) -> None:
        _check_name(peer, "peer name")
        if not isinstance(address, str) or not address.startswith("hub://"):
            raise ValueError(f"address for {peer!r} must be hub://NAME on an in-process hub (got {address!r})")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"endpoint {self.name!r} is closed")
            self._peers[peer] = (address, shaper)

    def disconnect(self, peer: str) -> None:
        with self._lock:
            self._peers.pop(peer, None)

    def peers(self) -> list[str]:
        with self._lock:
            return list(self._peers)

    def send(self, peer: str, header: dict[str, Any], payload: Sequence[Any] = (), *,
             shaped: bool = False, check: bool = True) -> None:
        self._send(peer, pack(header, payload, check=check), shaped)

    def send_raw(self, peer: str, frames: Sequence[Any]) -> None:
        self._send(peer, list(frames), False)

    def _send(self, peer: str, frames: list[Any], shaped: bool) -> None:
        if self.hub.copy:
            frames = [bytes(memoryview(f).cast("B")) if not isinstance(f, bytes) else f
                      for f in frames] if all(_is_buffer(f) for f in frames) else list(frames)
        with self._lock:
            if self._closed:
                self.stats.dropped += 1
                log.warning("%s: endpoint closed; dropped a message to %s", self.name, peer)
                return
            link = self._peers.get(peer)
            if link is None:
                addr = self._seen.get(peer)
                if addr is None:
                    raise UnknownPeer(f"{self.name}: unknown peer {peer!r}; connect() it first "
                                      f"(or answer a peer that sent a message)")
                link = (addr, None)
        address, shaper = link
        nbytes = _nbytes(frames) if all(_is_buffer(f) for f in frames) else 0
        self.stats.sent += 1
        self.stats.sent_bytes += nbytes
        if shaped and shaper is not None:
            self.hub._schedule(shaper.schedule(nbytes, time.monotonic()), address, self.name, frames)
        else:
            _deliver(self.hub, address, self.name, frames)

    def _incoming(self, sender: str, frames: list[Any]) -> None:
        with self._lock:
            if self._closed:
                return
            self._seen[sender] = f"hub://{sender}"
            self._seen.move_to_end(sender)
            if len(self._seen) > _SEEN:
                self._seen.popitem(last=False)
        self._inbox.put((sender, frames))

    def recv(self, timeout_ms: int | None = None) -> Message | BadMessage | None:
        item = None if self._closed else _next(self._inbox, timeout_ms)
        if item is None:
            return None
        sender, frames = item
        self.stats.received += 1
        try:
            h, payload = unpack(frames, self.max_frame)
        except WireError as e:
            self.stats.bad += 1
            return BadMessage(sender, str(e))
        self.stats.received_bytes += sum(p.nbytes for p in payload)
        return Message(sender, h, payload)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.hub._remove(self)
        self._inbox.put(None)

    def __enter__(self) -> InProcEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_buffer(f: Any) -> bool:
    try:
        memoryview(f)
        return True
    except TypeError:
        return False


__all__ = ["BadMessage", "Endpoint", "InProcEndpoint", "InProcHub", "Message", "SecurityError", "UnknownPeer",
           "ZmqEndpoint", "zmq_endpoint"]
