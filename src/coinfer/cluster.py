"""The cluster file (YAML, validated with pydantic): devices, links, security.

Torch-free. Errors name the field and the fix, e.g.
``cluster.yaml: devices[1].cpu_share: must be > 0 and <= 64 (got -1); a fraction of one core``.

Example::

    source: pi1
    devices:
      - {name: pi1, address: local, cpu_share: 0.25, threads: 1,
         power: {busy_w: 5.1, idle_w: 2.7, tx_w: 1.2}}
      - {name: jetson, address: "tcp://10.0.0.7:7070", power: {busy_w: 10, idle_w: 2}}
    network:
      bandwidth_mbps: 100
      latency_ms: 1.0
      links: [{between: [pi1, jetson], bandwidth_mbps: 300}]
    security: {auth: curve, keys: ~/.coinfer/keys}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import CoinferError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ADDR_RE = re.compile(r"^tcp://[^:/\s]+:\d{1,5}$")


def tcp_address_problem(address: str, *, bind: bool = False) -> str | None:
    """What is wrong with ``tcp://HOST:PORT`` (None: nothing). A bind may use port 0 (any free port)."""
    if not ADDR_RE.match(address):
        return "must be tcp://HOST:PORT"
    port, lo = int(address.rsplit(":", 1)[1]), 0 if bind else 1
    if not lo <= port <= 65535:
        return f"the port must be {lo}-65535, not {port}"
    return None


class ClusterError(CoinferError, ValueError):
    """A cluster file that cannot be used; one line, naming the field and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Power(_Strict):
    """Power draw in watts (CoEdge's energy model): computing, idle, transmitting, receiving."""

    busy_w: float = Field(5.0, gt=0, le=10000)
    idle_w: float = Field(2.0, ge=0, le=10000)
    tx_w: float = Field(1.0, ge=0, le=10000)
    rx_w: float | None = Field(None, ge=0, le=10000)

    @property
    def recv_w(self) -> float:
        return self.tx_w if self.rx_w is None else self.rx_w


class Device(_Strict):
    name: str
    address: str = "local"
    cpu_share: float = Field(1.0, gt=0, le=64)
    threads: int = Field(1, ge=1, le=256)
    backend: Literal["auto", "torch", "onnxruntime", "openvino"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # pydantic's default_factory overloads make mypy infer Never for a model class; Power() is fine
    power: Power = Field(default_factory=Power)  # type: ignore[arg-type]
    memory_mb: float | None = Field(None, gt=0)
    speed_gflops: float | None = Field(None, gt=0)  # planning speed before profiling (optional)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v == "local":
            return v
        problem = tcp_address_problem(v)
        if problem:
            raise ValueError(problem.replace("must be tcp", "must be 'local' or tcp", 1))
        return v

    @property
    def is_local(self) -> bool:
        return self.address == "local"


class Link(_Strict):
    between: tuple[str, str]
    bandwidth_mbps: float | None = Field(None, gt=0)
    latency_ms: float | None = Field(None, ge=0)


class Network(_Strict):
    bandwidth_mbps: float = Field(100.0, gt=0)
    latency_ms: float = Field(1.0, ge=0)
    links: list[Link] = Field(default_factory=list)
    trace: str | None = None  # CSV (t_s, mbps) replayed by the link shaper
    shape: bool = True  # emulate bandwidth/latency in the transport for local devices


CpuEmulation = Literal["quota", "dilate", "off"]
CPU_EMULATIONS: tuple[str, ...] = get_args(CpuEmulation)


class Emulation(_Strict):
    # how `address: local` devices get their cpu_share: a cgroup CPU quota (time dilation where no
    # cgroup is writable), time dilation inside the worker (coinfer.runtime.dilation), or not at all
    cpu: CpuEmulation = "quota"

    @field_validator("cpu", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        return "off" if v is False else v  # YAML reads a bare `off` as false


class Security(_Strict):
    auth: Literal["curve", "none"] = "none"
    keys: str = "~/.coinfer/keys"


class Cluster(_Strict):
    source: str
    devices: list[Device]
    network: Network = Field(default_factory=Network)  # type: ignore[arg-type]  # as Device.power
    security: Security = Field(default_factory=Security)
    emulation: Emulation = Field(default_factory=Emulation)

    @model_validator(mode="after")
    def _check(self) -> Cluster:
        names = [d.name for d in self.devices]
        if not names:
            raise ValueError("devices: list at least one device")
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"devices: duplicate name(s) {sorted(dup)}; names must be unique")
        if self.source not in names:
            raise ValueError(f"source: {self.source!r} is not a device; devices are {names}")
        for i, link in enumerate(self.network.links):
            for end in link.between:
                if end not in names:
                    raise ValueError(f"network.links[{i}].between: unknown device {end!r}; devices are {names}")
            if link.between[0] == link.between[1]:
                raise ValueError(f"network.links[{i}].between: a link needs two different devices")
        remote = [d.name for d in self.devices if not d.is_local]
        if remote and self.security.auth == "none" and any(not _is_loopback(d.address) for d in self.devices
                                                           if not d.is_local):
            raise ValueError(
                f"security.auth: devices {remote} are reached beyond loopback; set auth: curve "
                f"(generate keys with coinfer keys)"
            )
        return self

    # -- access -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [d.name for d in self.devices]

    def device(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise ClusterError(f"unknown device {name!r}; devices are {self.names}")

    def link(self, a: str, b: str) -> tuple[float, float]:
        """(bandwidth Mbit/s, latency ms) of the link between devices a and b."""
        bw, lat = self.network.bandwidth_mbps, self.network.latency_ms
        for link in self.network.links:
            if set(link.between) == {a, b}:
                bw = link.bandwidth_mbps if link.bandwidth_mbps is not None else bw
                lat = link.latency_ms if link.latency_ms is not None else lat
        return bw, lat

    def without(self, *names: str) -> Cluster:
        """The cluster with devices removed (re-planning after a failure)."""
        keep = [d for d in self.devices if d.name not in names]
        if self.source in names:
            raise ClusterError(f"cannot remove the source device {self.source!r}")
        links = [lk for lk in self.network.links if not set(lk.between) & set(names)]
        return self.model_copy(update={"devices": keep,
                                       "network": self.network.model_copy(update={"links": links})})

    def with_bandwidth(self, mbps: float) -> Cluster:
        return self.model_copy(update={"network": self.network.model_copy(
            update={"bandwidth_mbps": mbps, "links": [lk.model_copy(update={"bandwidth_mbps": None})
                                                      for lk in self.network.links]})})

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _is_loopback(address: str) -> bool:
    host = address[len("tcp://"):].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def _format_error(e: ValidationError, where: str) -> str:
    err = e.errors()[0]
    loc = ".".join(f"[{x}]" if isinstance(x, int) else str(x) for x in err["loc"]).replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] == "extra_forbidden":
        return f"{where}: {loc}: unknown field; check the spelling (see docs/concepts.md#cluster-file)"
    if err["type"] == "missing":
        return f"{where}: {loc}: required field is missing"
    tail = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{where}: {loc + ': ' if loc else ''}{msg}{tail}"


def parse_cluster(data: Any, where: str = "cluster") -> Cluster:
    if not isinstance(data, dict):
        raise ClusterError(f"{where}: must be a YAML mapping with 'source' and 'devices'")
    try:
        return Cluster.model_validate(data)
    except ValidationError as e:
        raise ClusterError(_format_error(e, where)) from None


def load_cluster(path: str | Path) -> Cluster:
    from .paths import read_user_text

    p = Path(path)
    text = read_user_text(
        p, what="cluster file", kind="YAML", error=ClusterError,
        fix=f"give a cluster YAML file (docs/concepts.md#cluster-file) or a built-in ({', '.join(BUILTIN)})",
        missing=f"name a built-in ({', '.join(BUILTIN)}) or write one (docs/concepts.md#cluster-file; examples "
                f"in the repository's configs/)")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ClusterError(f"{p.name}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    return _relative_to(parse_cluster(data, p.name), p.parent)


def _relative_to(cluster: Cluster, folder: Path) -> Cluster:
    """Relative paths in a cluster file (``network.trace``, ``security.keys``) are read from its folder."""
    def resolve(path: str) -> str:
        q = Path(path)
        return path if q.is_absolute() or path.startswith("~") else str(folder / q)

    net, sec = cluster.network, cluster.security
    update: dict[str, Any] = {}
    if net.trace:
        update["network"] = net.model_copy(update={"trace": resolve(net.trace)})
    if sec.keys != resolve(sec.keys):
        update["security"] = sec.model_copy(update={"keys": resolve(sec.keys)})
    return cluster.model_copy(update=update) if update else cluster


def builtin_cluster(name: str) -> Cluster:
    """Named example clusters (``demo4``, ``eq4``, ``het4``, ``edgent``...), see :data:`BUILTIN`."""
    if name not in BUILTIN:
        raise ClusterError(f"unknown built-in cluster {name!r}; built-ins: {', '.join(BUILTIN)}")
    return parse_cluster(BUILTIN[name], name)


def _devs(shares: list[float], prefix: str = "d", power: dict[str, float] | None = None) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{i}", "address": "local", "cpu_share": s, "threads": 1,
             "power": power or {"busy_w": round(2.0 + 8.0 * s, 2), "idle_w": 1.5, "tx_w": 1.0}}
            for i, s in enumerate(shares)]


BUILTIN: dict[str, dict[str, Any]] = {
    # the demo: four heterogeneous devices on 100 Mbit/s
    "demo4": {"source": "d0", "devices": _devs([0.15, 0.25, 0.4, 0.7]),
              "network": {"bandwidth_mbps": 100, "latency_ms": 0.5}},
    "eq4": {"source": "d0", "devices": _devs([0.35] * 4), "network": {"bandwidth_mbps": 1000, "latency_ms": 0.2}},
    "het4": {"source": "d0", "devices": _devs([0.15, 0.25, 0.4, 0.7]),
             "network": {"bandwidth_mbps": 100, "latency_ms": 0.5}},
    # Edgent: a weak device ("Pi", source) and an edge server
    "edgent": {"source": "pi", "devices": [
        {"name": "pi", "cpu_share": 0.15, "power": {"busy_w": 5.1, "idle_w": 2.7, "tx_w": 1.2}},
        {"name": "edge", "cpu_share": 1.0, "power": {"busy_w": 65.0, "idle_w": 20.0, "tx_w": 2.0}}],
        "network": {"bandwidth_mbps": 1.0, "latency_ms": 1.0}},
    "het8": {"source": "d0", "devices": _devs([0.12, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5]),
             "network": {"bandwidth_mbps": 88, "latency_ms": 1.0}},
    "eq8": {"source": "d0", "devices": _devs([0.2] * 8), "network": {"bandwidth_mbps": 88, "latency_ms": 1.0}},
    "eq16": {"source": "d0", "devices": _devs([0.12] * 16), "network": {"bandwidth_mbps": 100, "latency_ms": 1.0}},
}


def with_cpu_emulation(cluster: Cluster, mode: str | None) -> Cluster:
    """``cluster`` with ``emulation.cpu`` set to ``mode`` (a CLI's ``--cpu-emulation``; None: as is)."""
    if mode is None:
        return cluster
    if mode not in CPU_EMULATIONS:
        raise ClusterError(f"--cpu-emulation {mode!r} is unknown; use {', '.join(CPU_EMULATIONS)}")
    return cluster.model_copy(update={"emulation": Emulation(cpu=mode)})  # type: ignore[arg-type]


def resolve_cluster(spec: str) -> Cluster:
    """A cluster from a YAML path or a built-in name."""
    if spec in BUILTIN and not Path(spec).is_file():  # a folder named demo4 (coinfer demo --out) is no cluster file
        return builtin_cluster(spec)
    return load_cluster(spec)
