"""The interface every execution backend implements: "compute this part".

A *part* is one device's share of one stage: it receives the region of the
stage input its geometry asks for (halo included) and returns its output
region, padding only at true image borders (:mod:`coinfer.graph.geometry`).
A backend turns a part into a :class:`CompiledPart` once (per deployment),
and the compiled part is then called per request.

Backends (see docs/backends.md):

``torch``
    eager PyTorch over an optimised part program (:mod:`.optimize`: BatchNorm
    folded into the preceding convolution, activations applied in place,
    channels-last where measured faster). Always available, all precisions.
``onnxruntime``
    the part exported as a static-shape ONNX graph (:mod:`.onnx_export`) run
    in an ``InferenceSession`` with the device's thread count. fp32 only.
    Extra: ``pip install 'coinfer[onnx]'``.
``openvino``
    the same ONNX graph compiled by OpenVINO for the CPU; bf16 where the CPU
    has it. Extra: ``pip install 'coinfer[openvino]'``.
``auto``
    each candidate that is installed and supports the precision is built and
    timed on the part (a few calls, interleaved); the fastest serves it.

Reduced precision (``bf16``/``fp16``) is an explicit, approximate mode: it is
never chosen unless asked for, and :attr:`CompiledPart.exact` is ``False``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import UserError

log = logging.getLogger("coinfer.backends")

PRECISIONS = ("fp32", "bf16", "fp16")
BACKEND_CHOICES = ("auto", "torch", "onnxruntime", "openvino")


class BackendError(UserError):
    """A backend/precision request that cannot be served (CLI: exit 2); the message names the fix."""


class ExportUnsupported(Exception):
    """A part a backend cannot express; ``op`` names the operation (the caller falls back to torch)."""

    def __init__(self, op: str, node: str = "", why: str = "") -> None:
        self.op, self.node, self.why = op, node, why
        where = f" (node {node})" if node else ""
        super().__init__(f"{op}{where}" + (f": {why}" if why else ""))


@dataclass(frozen=True)
class BackendInfo:
    """Static facts about a backend: how to install it and what it can run."""

    name: str
    modules: tuple[str, ...]  # importable modules it needs
    extra: str  # the pip extra that installs it
    precisions: Callable[[], tuple[str, ...]]  # supported precisions on this machine
    exact_fp32: bool = True

    def installed(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    def install_hint(self) -> str:
        return f"pip install 'coinfer[{self.extra}]'"

    def supports(self, precision: str) -> bool:
        """fp32 everywhere; reduced precisions as the backend reports them (OpenVINO: loads its
        CPU plugin to ask, so fp32 never pays for that)."""
        return precision == "fp32" or precision in self.precisions()


def _torch_precisions() -> tuple[str, ...]:
    return ("fp32", "bf16", "fp16")


def _ort_precisions() -> tuple[str, ...]:
    # onnxruntime's CPU provider has no bf16 / fp16 convolution kernels on x86.
    return ("fp32",)


_OV_CAPS: list[tuple[str, ...]] = []


def _ov_precisions() -> tuple[str, ...]:
    if not _OV_CAPS:
        out = ["fp32"]
        try:
            import openvino as ov

            caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            if "BF16" in caps:
                out.append("bf16")
            if "FP16" in caps:
                out.append("fp16")
        except Exception:  # noqa: BLE001, S110 - not installed / no CPU plugin: fp32 only
            pass
        _OV_CAPS.append(tuple(out))
    return _OV_CAPS[0]


BACKENDS: dict[str, BackendInfo] = {
    "torch": BackendInfo("torch", ("torch",), "torch", _torch_precisions),
    "onnxruntime": BackendInfo("onnxruntime", ("onnx", "onnxruntime"), "onnx", _ort_precisions),
    "openvino": BackendInfo("openvino", ("onnx", "openvino"), "openvino", _ov_precisions),
}


HIDE_ENV = "COINFER_HIDE_BACKENDS"  # comma-separated backends to treat as not installed


def available_backends() -> list[str]:
    """Backends installed in this process's environment (``torch`` always).

    ``COINFER_HIDE_BACKENDS=openvino,onnxruntime`` hides installed backends (from ``auto`` and from
    what a worker reports), e.g. to keep a device on torch or to test a missing extra."""
    hidden = {s.strip() for s in os.environ.get(HIDE_ENV, "").split(",") if s.strip()} - {"torch"}
    return [n for n, b in BACKENDS.items() if n not in hidden and b.installed()]


def check_backend(backend: str, precision: str = "fp32", *, installed: list[str] | None = None,
                  where: str = "") -> None:
    """Raise :class:`BackendError` unless ``backend`` is installed and supports ``precision``.

    ``installed``: the backends a (remote) device reports; default this process's.
    ``auto`` needs at least one installed backend supporting ``precision``.
    """
    at = f"{where}: " if where else ""
    if precision not in PRECISIONS:
        raise BackendError(f"{at}precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if backend not in BACKEND_CHOICES:
        raise BackendError(f"{at}backend {backend!r} is not one of {', '.join(BACKEND_CHOICES)}")
    have = available_backends() if installed is None else list(installed)
    if backend == "auto":
        ok = [b for b in have if b in BACKENDS and BACKENDS[b].supports(precision)]
        if not ok:
            raise BackendError(f"{at}no installed backend supports precision {precision!r} "
                               f"(installed: {', '.join(have)}); use precision fp32")
        return
    info = BACKENDS[backend]
    if backend not in have:
        raise BackendError(f"{at}backend {backend!r} is not installed; install it with "
                           f"{info.install_hint()} (or set backend: auto)")
    if not info.supports(precision):
        sup = info.precisions()
        raise BackendError(f"{at}backend {backend!r} does not support precision {precision!r} on this "
                           f"machine; supported: {', '.join(sup)}")


# fp32 candidates of ``auto``: OpenVINO's fp32 latency measured within ±5 % of onnxruntime's or
# 30-50 % slower on the zoo, at the cost of its compile time and ~45 MB of plugin per worker, so at
# fp32 it joins only without onnxruntime (docs/backends.md); for bf16/fp16 every backend that has
# the precision is a candidate.
AUTO_FP32 = ("torch", "onnxruntime")


def candidates(precision: str, installed: list[str] | None = None) -> list[str]:
    """Backends ``auto`` considers for ``precision``: installed ones that support it."""
    have = available_backends() if installed is None else installed
    out = [b for b in have if b in BACKENDS and BACKENDS[b].supports(precision)]
    if precision == "fp32" and "onnxruntime" in out:
        out = [b for b in out if b in AUTO_FP32]
    return out


@dataclass
class CompiledPart(ABC):
    """A part compiled by one backend: ``part(x) -> y`` on the part's input region.

    ``in_shape``/``out_shape`` are static. ``notes`` collects what the build
    did (folded BatchNorms, fused activations, layout, fallbacks, timings).
    """

    backend: str
    precision: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """fp32 results equal the model within the core tolerance; reduced precision does not."""
        return self.precision == "fp32"

    @abstractmethod
    def __call__(self, x: Any) -> Any:  # torch.Tensor -> torch.Tensor
        """Compute the part's output region from its input region (a float32 tensor)."""

    def release(self) -> None:
        """Drop references that keep large buffers alive (sessions, weights)."""
