"""ZeroMQ CURVE security: keys, the bind rule, and socket set-up.

``coinfer keys --dir D --devices a,b,c`` (:func:`generate_keys`) makes one
CURVE key pair per device plus ``coordinator``: ``D/<name>.key`` (public),
``D/<name>.key_secret`` (secret, mode 600), and copies every public key into
``D/public/``. Each device needs its own ``.key_secret`` and the whole
``public/`` folder; the coordinator host needs ``coordinator.key_secret`` and
``public/``.

With keys, every endpoint's ROUTER is a CURVE server whose ZAP handler
(one :class:`zmq.auth.thread.ThreadAuthenticator` per context) admits exactly
the public keys in ``public/``: a client with any other key is refused during
the handshake and never gets a message through. Clients (the per-peer
DEALERs) authenticate with their own key and pin the server's key, so
traffic is encrypted and both ends authenticated. The transport also checks
that an inbound peer's name matches its key (a device key speaks only for
that device; the ``coordinator`` key may use any session name).

The bind rule (:func:`check_bind`): a socket bound beyond loopback requires
keys; ``--insecure`` is accepted only for loopback binds.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from ..cluster import NAME_RE
from ..errors import UserError

log = logging.getLogger("coinfer.security")

COORDINATOR = "coordinator"


class SecurityError(UserError):
    """Keys missing or a bind that needs them (one line with the fix)."""


def _dir(d: str | os.PathLike[str]) -> Path:
    return Path(d).expanduser()


def generate_keys(dir: str | os.PathLike[str], names: list[str], *, overwrite: bool = False) -> None:
    """A CURVE key pair for every name in ``names`` plus ``coordinator`` in ``dir``.

    Public keys are also copied into ``dir/public/``; secret keys are chmod 600 and the
    directory 700. Existing pairs are kept (so deployed devices keep working) unless
    ``overwrite``.
    """
    import zmq.auth

    d = _dir(dir)
    bad = [n for n in names if not NAME_RE.match(n)]
    if bad:
        raise SecurityError(f"device name(s) {bad} must be 1-64 letters, digits, '_', '-' or '.'")
    all_names = list(dict.fromkeys([*names, COORDINATOR]))
    pub = d / "public"
    pub.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for n in all_names:
        secret = d / f"{n}.key_secret"
        if overwrite or not secret.exists():
            old = os.umask(0o077)
            try:
                zmq.auth.create_certificates(str(d), n)
            finally:
                os.umask(old)
        os.chmod(secret, 0o600)
        shutil.copyfile(d / f"{n}.key", pub / f"{n}.key")


class KeyStore:
    """The CURVE keys of one directory made by :func:`generate_keys`."""

    def __init__(self, dir: str | os.PathLike[str]) -> None:
        self.dir = _dir(dir)
        if not self.public_dir.is_dir():
            raise SecurityError(f"{self.dir} has no public/ key folder; create keys with "
                                f"coinfer keys --dir {self.dir} --devices NAME,...")
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[bytes, bytes | None]] = {}
        for n in self.names():  # one bad file made the ZAP handler admit nobody, silently (QA)
            self.public(n)

    @property
    def public_dir(self) -> Path:
        """The folder of public keys a server admits."""
        return self.dir / "public"

    def has_secret(self, name: str) -> bool:
        return NAME_RE.match(name) is not None and (self.dir / f"{name}.key_secret").is_file()

    def has_public(self, name: str) -> bool:
        return NAME_RE.match(name) is not None and (
            (self.public_dir / f"{name}.key").is_file() or (self.dir / f"{name}.key").is_file())

    def _load(self, path: Path) -> tuple[bytes, bytes | None]:
        import zmq.auth

        try:
            pub, sec = zmq.auth.load_certificate(str(path))
        except (ValueError, OSError, UnicodeDecodeError) as e:  # a truncated or foreign file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SecurityError(f"{path} is not a CURVE key file ({first}); copy it again from the keys "
                                f"directory coinfer keys made (or remove it from {path.parent})") from None
        return pub, sec

    def secret(self, name: str) -> bytes:
        """The secret key (z85) of ``name``."""
        if not self.has_secret(name):
            if name == COORDINATOR:  # a new pair would be in no worker's public/ (every hello ignored)
                raise SecurityError(f"no CURVE secret key for 'coordinator' in {self.dir}; copy coordinator.key_secret "
                                    f"there from the keys directory coinfer keys made for these workers")
            raise SecurityError(f"no CURVE secret key for {name!r} in {self.dir}; copy {name}.key_secret "
                                f"there or run coinfer keys --dir {self.dir} --devices {name}")
        with self._lock:
            key = f"secret:{name}"
            if key not in self._cache:
                self._cache[key] = self._load(self.dir / f"{name}.key_secret")
            sec = self._cache[key][1]
        assert sec is not None
        return sec

    def keypair(self, name: str) -> tuple[bytes, bytes]:
        """``(public, secret)`` of ``name`` (from its secret file)."""
        sec = self.secret(name)
        return self._cache[f"secret:{name}"][0], sec

    def public(self, name: str) -> bytes:
        """The public key (z85) of ``name``."""
        with self._lock:
            if name in self._cache:
                return self._cache[name][0]
        for p in (self.public_dir / f"{name}.key", self.dir / f"{name}.key"):
            if NAME_RE.match(name) and p.is_file():
                pub = self._load(p)[0]
                with self._lock:
                    self._cache[name] = (pub, None)
                return pub
        raise SecurityError(f"no CURVE public key for {name!r} in {self.public_dir}; "
                            f"run coinfer keys --dir {self.dir} --devices {name} and copy public/")

    def names(self) -> list[str]:
        """Names whose public keys are admitted."""
        return sorted(p.name[:-4] for p in self.public_dir.glob("*.key"))

    def name_of(self, public_z85: bytes | str) -> str | None:
        """The name whose public key is ``public_z85`` (None if unknown)."""
        k = public_z85.encode() if isinstance(public_z85, str) else bytes(public_z85)
        for n in self.names():
            try:
                if self.public(n) == k:
                    return n
            except Exception:  # an unreadable key file names nobody
                log.debug("cannot read the public key of %s", n, exc_info=True)
        return None

    def __repr__(self) -> str:
        return f"KeyStore({str(self.dir)!r})"


# -- the bind rule ----------------------------------------------------------------------------
def is_loopback(address: str) -> bool:
    """True for ``tcp://127.x.x.x:P``, ``tcp://localhost:P``, ``tcp://[::1]:P``, ``ipc://`` and ``inproc://``."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    if not address.startswith("tcp://"):
        return False
    rest = address[len("tcp://"):]
    if ";" in rest:  # "source;endpoint" form: judge the bound side
        rest = rest.split(";", 1)[0]
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name


def check_bind(address: str, keys: KeyStore | None, insecure: bool) -> None:
    """Refuse to bind beyond loopback without CURVE keys; ``insecure`` only for loopback."""
    if is_loopback(address):
        return
    if keys is None:
        if insecure:
            raise SecurityError(f"--insecure is allowed only for loopback binds (got {address}); "
                                f"create CURVE keys: coinfer keys --dir D, then --keys D (or bind 127.0.0.1)")
        raise SecurityError(f"binding {address} beyond loopback needs CURVE keys: coinfer keys --dir D, "
                            f"then --keys D (or bind 127.0.0.1)")
    if insecure:
        raise SecurityError(f"--insecure and --keys together for {address}; drop --insecure "
                            f"(CURVE is used beyond loopback)")


# -- socket set-up (used by the transport) ------------------------------------------------------
class _AuthRegistry:
    """One ThreadAuthenticator per zmq context, shared by that context's endpoints (ref-counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._auth: dict[int, tuple[Any, Any, int]] = {}  # id(ctx) -> (ctx, auth, refs)

    def acquire(self, ctx: Any, domain: str, keys: KeyStore) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        with self._lock:
            ent = self._auth.get(id(ctx))
            if ent is None:
                auth = ThreadAuthenticator(ctx, log=_quiet_logger())
                auth.start()
                ent = (ctx, auth, 0)
            c, auth, refs = ent
            auth.configure_curve(domain=domain, location=str(keys.public_dir))
            self._auth[id(ctx)] = (c, auth, refs + 1)

    def release(self, ctx: Any, domain: str) -> None:
        with self._lock:
            ent = self._auth.get(id(ctx))
            if ent is None:
                return
            c, auth, refs = ent
            auth.certs.pop(domain, None)
            if refs <= 1:
                del self._auth[id(ctx)]
                auth.stop()
            else:
                self._auth[id(ctx)] = (c, auth, refs - 1)


def _quiet_logger() -> Any:
    import logging

    lg = logging.getLogger("coinfer.zap")
    return lg


AUTH = _AuthRegistry()


def setup_server(sock: Any, keys: KeyStore, key_name: str, domain: str) -> None:
    """Make ``sock`` (a ROUTER) a CURVE server with ``key_name``'s pair, checked by the ZAP domain."""
    pub, sec = keys.keypair(key_name)
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    sock.curve_server = True
    sock.zap_domain = domain.encode()


def setup_client(sock: Any, keys: KeyStore, key_name: str, server_public: bytes) -> None:
    """Make ``sock`` (a DEALER) a CURVE client with ``key_name``'s pair, pinning the server's key."""
    pub, sec = keys.keypair(key_name)
    sock.curve_publickey = pub
    sock.curve_secretkey = sec
    sock.curve_serverkey = server_public
