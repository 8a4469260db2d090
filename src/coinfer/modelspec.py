"""Resolve a MODEL argument: a zoo name, ``package.module:callable`` or an ``.onnx`` file.

The same string is recorded in plans (``model.name``) so that workers on
other devices rebuild the same model: zoo models from their name and seed (or
the weights package), user models by importing the callable on that device.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CoinferError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from .graph.capture import CapturedModel


class ModelError(CoinferError, ValueError):
    """The MODEL argument cannot be resolved (exit 2)."""


def parse_shape(text: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        vals = [int(v) for v in text]
    else:
        try:
            vals = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise ModelError(f"--input-shape {text!r} is not a list of integers like 1,3,224,224") from None
    if len(vals) != 4 or min(vals) <= 0:
        raise ModelError(f"--input-shape must be 4 positive integers N,C,H,W like 1,3,224,224 (got {text!r})")
    return tuple(vals)


@dataclass
class ModelSource:
    spec: str
    module: nn.Module
    input_shape: tuple[int, ...]
    display: str


def is_onnx(spec: str) -> bool:
    """An ``.onnx`` file (any case of the extension: ``Net.ONNX`` was taken for an unknown zoo name)."""
    return spec.lower().endswith(".onnx")


def is_import_path(spec: str) -> bool:
    return ":" in spec and not is_onnx(spec) and "/" not in spec.split(":")[0]


def load_module(spec: str, input_shape: Any = None, seed: int = 0) -> ModelSource:
    """Build the ``nn.Module`` for ``spec`` (eval mode) and its input shape."""
    shape = parse_shape(input_shape)
    if is_onnx(spec):
        from .onnx_import import load_onnx

        mod, onnx_shape = load_onnx(spec, shape)
        return ModelSource(spec, mod.eval(), onnx_shape, Path(spec).name)
    if is_import_path(spec):
        mod_name, _, attr = spec.partition(":")
        try:
            with _seeded(seed):  # a module built at import time is initialised alike everywhere too
                m = importlib.import_module(mod_name)
        except ImportError as e:
            raise ModelError(f"cannot import {mod_name!r} for model {spec!r}: {e}; is it on PYTHONPATH?") from None
        except Exception as e:  # noqa: BLE001 - the user's module: report, do not trace back
            raise ModelError(f"importing {mod_name} (for model {spec}) raised {_describe(e)}") from None
        fn = m
        for part in attr.split("."):
            fn = getattr(fn, part, None)  # type: ignore[assignment]
            if fn is None:
                raise ModelError(f"{mod_name!r} has no attribute {attr!r} (model {spec!r})")
        if shape is None:
            raise ModelError(f"model {spec!r} is an import path: give --input-shape N,C,H,W")
        from torch import nn

        obj = _call_factory(fn, spec, seed) if callable(fn) and not isinstance(fn, nn.Module) else fn
        if not isinstance(obj, nn.Module):
            raise ModelError(f"{spec!r} must be an nn.Module or a callable returning one, got {type(obj).__name__}")
        return ModelSource(spec, obj.eval(), shape, spec)
    from . import zoo

    try:
        entry = zoo.entry(spec)
    except (KeyError, ValueError) as err:
        raise ModelError(str(err).strip("'\"")) from None
    if shape is not None and tuple(shape) != tuple(entry.input_shape):
        raise ModelError(
            f"{spec} takes input shape {list(entry.input_shape)}, not {list(shape)} (zoo models have a fixed "
            f"input shape): drop --input-shape, or re-plan with coinfer plan if a plan says otherwise"
        )
    try:
        mod = zoo.get(spec, seed=seed)
    except zoo.MissingExtraError as err:
        raise ModelError(str(err)) from None
    return ModelSource(spec, mod, tuple(entry.input_shape), spec)


def _describe(e: Exception) -> str:
    """``Type: first line`` of an exception raised by the user's code; a SyntaxError gets its file:line."""
    if isinstance(e, SyntaxError):
        where = f" ({e.filename}:{e.lineno})" if e.filename else ""
        return f"{type(e).__name__}: {e.msg}{where}"
    first = (str(e).strip().splitlines() or [""])[0]
    return type(e).__name__ + (f": {first}" if first else "")


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the user's model code with torch, numpy and ``random`` seeded by ``seed`` (the plan's, as
    zoo models are built), the caller's generator states restored after: a factory that initialises
    its weights at random builds the same weights on every device — the plan's fingerprint covers
    the structure, not the weights, and each worker built different ones (wrong results, no error)."""
    import random

    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _call_factory(fn: Any, spec: str, seed: int = 0) -> Any:
    """The user's ``package.module:callable``, called (seeded); whatever it raises is one line (exit 2)."""
    try:
        with _seeded(seed):
            return fn()
    except Exception as e:  # noqa: BLE001 - the user's code: report, do not trace back
        raise ModelError(f"model factory {spec} raised {_describe(e)}") from None


_CACHE: dict[tuple[str, tuple[int, ...] | None, int, Any], CapturedModel] = {}


def _file_identity(spec: str) -> Any:
    """What changes when an ``.onnx`` file (or its external data) is rewritten: a capture memoised for
    the old file is not served for the new one (a notebook that re-exported ``model.onnx`` planned and
    verified the old network)."""
    if not is_onnx(spec):
        return None
    p = Path(spec)
    out = []
    sidecars = sorted(p.parent.glob(p.name + ".*")) if p.parent.is_dir() else []
    for f in (p, *sidecars):
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((f.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


_CAPTURE_LOCK = threading.RLock()


def capture_model(spec: str, input_shape: Any = None, seed: int = 0) -> CapturedModel:
    """Load and capture ``spec`` (memoised per process: workers and CLI reuse it; an ``.onnx`` file
    is captured again when it changed)."""
    shape = parse_shape(input_shape)
    ident = _file_identity(spec)
    key = (spec, shape, seed, ident)
    with _CAPTURE_LOCK:  # torch.fx tracing patches torch globally: one capture at a time per process
        cm = _CACHE.get(key)
        if cm is None:
            from .graph.capture import capture

            src = load_module(spec, shape, seed)
            cm = capture(src.module, src.input_shape, spec)
            _CACHE[key] = cm
            if shape is None:  # asked for again with its own input shape (a plan's model.input_shape, as
                # re-planning after a device died does), it is the same capture
                _CACHE[(spec, tuple(src.input_shape), seed, ident)] = cm
    return cm
