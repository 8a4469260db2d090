"""CURVE security (coinfer.runtime.security + transport): keys, refusal of unknown clients, identity
binding, the bind rule, and ``coinfer keys``."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
import zmq.auth

from coinfer.runtime import wire
from coinfer.runtime.security import KeyStore, SecurityError, check_bind, generate_keys, is_loopback
from coinfer.runtime.transport import BadMessage, Message, zmq_endpoint


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyStore:
    d = tmp_path_factory.mktemp("keys")
    generate_keys(d, ["pi1", "pi2"])
    return KeyStore(d)


def test_generate_keys_layout_and_permissions(keys: KeyStore) -> None:
    d = keys.dir
    for n in ("pi1", "pi2", "coordinator"):
        assert (d / f"{n}.key").is_file() and (d / "public" / f"{n}.key").is_file()
        secret = d / f"{n}.key_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        pub, sec = zmq.auth.load_certificate(str(secret))
        assert keys.public(n) == pub and keys.secret(n) == sec
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert keys.names() == ["coordinator", "pi1", "pi2"]
    assert keys.name_of(keys.public("pi2")) == "pi2"
    with pytest.raises(SecurityError, match="coinfer keys"):
        keys.secret("ghost")


def test_generate_keys_keeps_existing_pairs(tmp_path: Path) -> None:
    generate_keys(tmp_path, ["a"])
    before = (tmp_path / "a.key_secret").read_bytes()
    generate_keys(tmp_path, ["a", "b"])
    assert (tmp_path / "a.key_secret").read_bytes() == before
    generate_keys(tmp_path, ["a"], overwrite=True)
    assert (tmp_path / "a.key_secret").read_bytes() != before
    with pytest.raises(SecurityError, match="device name"):
        generate_keys(tmp_path, ["bad name"])


def _ping(seq: int = 1) -> dict:
    return {"kind": "ping", "seq": seq, "t": 0.0}


def test_good_client_talks_unknown_key_gets_nothing_server_survives(keys: KeyStore, tmp_path: Path) -> None:
    with zmq_endpoint("pi1", "tcp://127.0.0.1:0", keys=keys) as server, \
            zmq_endpoint("pi2", "tcp://127.0.0.1:0", keys=keys) as good:
        good.connect("pi1", server.address)
        x = np.arange(1000, dtype=np.float32)
        meta, frames = wire.encode_tensor(x)
        good.send("pi1", {"kind": "result", "dep": "d", "req": 1, **meta}, frames)
        m = server.recv(5000)
        assert isinstance(m, Message) and m.sender == "pi2"
        np.testing.assert_array_equal(wire.decode_tensor(m.header, m.frames), x)
        server.send("pi2", {"kind": "pong", "seq": 1, "t": 0.0, "name": "pi1"})  # reply over the link
        r = good.recv(5000)
        assert isinstance(r, Message) and r.header["kind"] == "pong"

        # a stranger: a valid CURVE pair whose public key is not in keys/public
        other = tmp_path / "other"
        generate_keys(other, ["mallory"])
        ks_m = KeyStore(other)
        (other / "public" / "pi1.key").write_bytes((keys.public_dir / "pi1.key").read_bytes())
        with zmq_endpoint("mallory", "tcp://127.0.0.1:0", keys=ks_m) as mallory:
            mallory.connect("pi1", server.address)
            for i in range(5):
                mallory.send("pi1", _ping(i))
            assert server.recv(1000) is None  # refused in the handshake: nothing gets through

        # a plain (no CURVE) client gets nothing either
        ctx = zmq.Context()
        plain = ctx.socket(zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.setsockopt(zmq.IDENTITY, b"pi2")
        plain.connect(server.address)
        plain.send_multipart(wire.pack(_ping(7)))
        assert server.recv(500) is None
        plain.close()
        ctx.term()

        # the server is still up and serving its legitimate peer
        good.send("pi1", _ping(99))
        m = server.recv(5000)
        assert isinstance(m, Message) and m.header["seq"] == 99


def test_a_device_key_cannot_speak_for_another_device(keys: KeyStore) -> None:
    with zmq_endpoint("pi1", "tcp://127.0.0.1:0", keys=keys) as server, \
            zmq_endpoint("pi2-impostor", "tcp://127.0.0.1:0", keys=keys, key_name="pi2") as liar:
        liar.connect("pi1", server.address)
        liar.send("pi1", _ping())
        m = server.recv(5000)
        assert isinstance(m, BadMessage) and "authenticated with the key of 'pi2'" in m.error


def test_coordinator_key_may_use_a_session_name(keys: KeyStore) -> None:
    """The coordinator runs as coord-<pid>-<hex> with the 'coordinator' key; workers answer it."""
    with zmq_endpoint("pi1", "tcp://127.0.0.1:0", keys=keys) as worker, \
            zmq_endpoint("coord-123-abc", "tcp://127.0.0.1:0", keys=keys) as coord:
        assert coord.key_name == "coordinator" and worker.key_name == "pi1"
        coord.connect("pi1", worker.address)
        coord.send("pi1", {"kind": "hello", "coord": coord.address})
        m = worker.recv(5000)
        assert isinstance(m, Message) and m.sender == "coord-123-abc"
        worker.send(m.sender, {"kind": "hello_ok", "name": "pi1", "pid": 1, "version": "x", "cpu_mode": "none",
                               "backends": ["torch"]})
        assert isinstance(coord.recv(5000), Message)
        # and the worker can connect back to it (server key learned: the coordinator's)
        worker.connect(m.sender, m.header["coord"])
        worker.send(m.sender, {"kind": "pong", "seq": 1, "t": 0.0, "name": "pi1"})
        r = coord.recv(5000)
        assert isinstance(r, Message) and r.sender == "pi1"


def test_traffic_is_encrypted(keys: KeyStore) -> None:
    """Sniff loopback bytes through a relay: the payload never appears in clear."""
    import socket
    import threading

    secret = b"THE-CLEAR-TEXT-MARKER-" * 20
    seen = bytearray()
    with zmq_endpoint("pi1", "tcp://127.0.0.1:0", keys=keys) as server, \
            zmq_endpoint("pi2", "tcp://127.0.0.1:0", keys=keys) as client:
        port = int(server.address.rsplit(":", 1)[1])
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        relay_port = lsock.getsockname()[1]

        def relay() -> None:
            c, _ = lsock.accept()
            s = socket.create_connection(("127.0.0.1", port))

            def pump(src: socket.socket, dst: socket.socket, log: bool) -> None:
                try:
                    while data := src.recv(65536):
                        if log:
                            seen.extend(data)
                        dst.sendall(data)
                except OSError:
                    pass

            threading.Thread(target=pump, args=(s, c, False), daemon=True).start()
            pump(c, s, True)

        threading.Thread(target=relay, daemon=True).start()
        client.connect("pi1", f"tcp://127.0.0.1:{relay_port}")
        client.send("pi1", {"kind": "result", "dep": "d", "req": 1,
                            **wire.encode_tensor(np.frombuffer(secret, np.uint8))[0]},
                    wire.encode_tensor(np.frombuffer(secret, np.uint8))[1])
        m = server.recv(5000)
        assert isinstance(m, Message) and bytes(m.frames[0]) == secret
        time.sleep(0.05)
        assert len(seen) > len(secret) and b"THE-CLEAR-TEXT-MARKER" not in bytes(seen)
        lsock.close()


@pytest.mark.parametrize("address,loop", [("tcp://127.0.0.1:7070", True), ("tcp://127.3.2.1:1", True),
                                          ("tcp://localhost:7070", True), ("tcp://[::1]:7070", True),
                                          ("ipc:///tmp/x", True), ("tcp://0.0.0.0:7070", False),
                                          ("tcp://*:7070", False), ("tcp://10.0.0.7:7070", False),
                                          ("tcp://eth0:7070", False), ("tcp://example.org:1", False)])
def test_is_loopback(address: str, loop: bool) -> None:
    assert is_loopback(address) is loop


def test_check_bind(keys: KeyStore) -> None:
    check_bind("tcp://127.0.0.1:7070", None, False)
    check_bind("tcp://127.0.0.1:7070", None, True)
    check_bind("tcp://0.0.0.0:7070", keys, False)
    with pytest.raises(SecurityError) as ei:
        check_bind("tcp://0.0.0.0:7070", None, False)
    assert str(ei.value) == ("binding tcp://0.0.0.0:7070 beyond loopback needs CURVE keys: coinfer keys --dir D, "
                             "then --keys D (or bind 127.0.0.1)")
    with pytest.raises(SecurityError, match="--insecure is allowed only for loopback binds"):
        check_bind("tcp://0.0.0.0:7070", None, True)
    with pytest.raises(SecurityError, match="beyond loopback needs CURVE keys"):
        zmq_endpoint("x", "tcp://0.0.0.0:0")


def test_endpoint_binds_beyond_loopback_with_keys(keys: KeyStore) -> None:
    with zmq_endpoint("pi1", "tcp://0.0.0.0:0", keys=keys) as server, \
            zmq_endpoint("pi2", "tcp://127.0.0.1:0", keys=keys) as client:
        client.connect("pi1", "tcp://127.0.0.1:" + server.address.rsplit(":", 1)[1])
        client.send("pi1", _ping())
        assert isinstance(server.recv(5000), Message)


def test_keys_cli(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "k"
    r = run_cli("keys", "--dir", d, "--devices", "pi1,pi2,jetson")
    assert r.returncode == 0, r.stderr
    assert "created pi1, pi2, jetson, coordinator" in r.stdout and "public" in r.stdout
    assert sorted(p.name for p in (d / "public").iterdir()) == ["coordinator.key", "jetson.key", "pi1.key",
                                                                   "pi2.key"]
    r = run_cli("keys", "--dir", d, "--devices", "pi1,pi3", "--json")
    out = json.loads(r.stdout)
    assert out["created"] == ["pi3"] and out["kept"] == ["pi1", "coordinator"]
    r = run_cli("keys", "--dir", d, "--devices", "bad name")
    assert r.returncode == 2 and r.stderr.startswith("error: device name") and "Traceback" not in r.stderr


def test_a_corrupt_key_file_is_one_line_naming_it(tmp_path: Path) -> None:
    """QA: a corrupt secret was a ValueError traceback on the coordinator and 'fix the bind address' on
    a worker; a corrupt public key made the worker print READY and refuse every client."""
    generate_keys(tmp_path, ["a"])
    (tmp_path / "public" / "zz.key").write_text("garbage\n")
    with pytest.raises(SecurityError, match=r"public/zz\.key is not a CURVE key file .*remove it from"):
        KeyStore(tmp_path)
    (tmp_path / "public" / "zz.key").unlink()
    (tmp_path / "coordinator.key_secret").write_text("garbage\n")
    with pytest.raises(SecurityError, match=r"coordinator\.key_secret is not a CURVE key file"):
        KeyStore(tmp_path).secret("coordinator")
