"""Tensor codecs for the wire: lossless compression and lossy quantisation.

A tensor goes on the wire as *meta* (a small dict merged into a message
header) plus one buffer. Encoding is two steps, both optional:

1. **quantise** (``quant``):

   - ``None`` — the raw little-endian bytes of the array (zero-copy when the
     array is C-contiguous and little-endian).
   - ``"int8"`` — per-tensor affine quantisation over [min, max]:
     ``scale = (max - min) / 255``, ``zero = min``, ``q = round((x - min) / scale)``
     stored as uint8, decoded as ``q * scale + zero``. The **maximum absolute
     error is scale / 2** (plus half a unit in the last place of the output
     dtype, from the final cast); a constant tensor decodes exactly.
   - ``"int8c"`` — the same affine 8-bit quantisation with a scale and zero
     **per channel**: for a tensor of three or more dimensions ``(N, C, ...)``
     each of the ``N·C`` channel planes gets its own [min, max] (a tensor of
     fewer dimensions is one group). The payload starts with the groups'
     scales and then their zeros (little-endian float32, ``8·N·C`` bytes),
     followed by the uint8 values. Maximum absolute error: the channel's
     scale / 2. Costs 8 bytes per channel plane, buys far less error where
     channels' ranges differ (linear bottlenecks, pre-BatchNorm outputs):
     on EfficientNet-Lite0 it halves the top-1 changes of per-tensor int8
     (docs/strategies/adcnn.md). Meta ``scale`` is the largest channel scale
     (the error bound ×2) and ``zero`` the smallest channel minimum.
   - ``"int4"`` — ADCNN's compression (Zhang et al., ICPP 2020, §4 of
     ``PAPERS.md``): a clipped ReLU clips the tensor to [0, clip] (``clip`` is
     the tensor's maximum unless given), the non-zero outputs are quantised to
     4 bits (``scale = clip / 15``), packed two per byte, and runs of zeros are
     run-length coded losslessly. Tensors with negative values (which a
     clipped ReLU would zero out) are quantised symmetrically instead, to
     [-7, 7] · scale with ``scale = max|x| / 7`` (signalled by ``zero < 0``,
     the lower clip bound), and packed two per byte without the run-length
     code (exactly ``ceil(n / 2)`` bytes: a signed tensor's zeros are mostly
     isolated, and the code cost 15× the CPU of the quantisation on an image
     tile). Maximum absolute error: scale / 2 inside the clip range (plus
     rounding: a float32 tensor is divided by the scale in float32, ≤ 1e-6 ·
     scale more). On i.i.d. post-ReLU data (half zeros)
     the ratio is ≈ 8.5× (ADCNN reports ≈ 8×); on real post-ReLU CNN
     activations 11–15× (sparser and heavy-tailed: with ``clip`` = the
     maximum many small values become zero).

2. **compress** (``codec``): ``raw`` (nothing), ``lz4`` (block format) or
   ``zstd`` (level 3). Both are lossless: decode(encode(x)) is bit-exact.

Decoding never trusts the input: the declared dtype and shape bound the output
size before anything is allocated (lz4 and zstd run with a maximum output
size, the run-length decoder checks the decoded count against the shape), so a
small malicious buffer cannot expand into a large allocation.

Meta fields: ``dtype`` (one of :data:`DTYPES`), ``shape`` (≤ 8 non-negative
ints), ``codec``, ``quant``, ``scale`` and ``zero`` (floats for quantised
tensors, ``None`` otherwise) and ``nbytes`` (the buffer length).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Union

import numpy as np

from ..errors import CoinferError

Buffer = Union[bytes, bytearray, memoryview]  # noqa: UP007 - a runtime alias (py3.10)

DTYPES: tuple[str, ...] = ("float32", "float16", "float64", "int8", "uint8", "int16", "int32", "int64", "bool")
CODECS: tuple[str, ...] = ("raw", "lz4", "zstd")
QUANTS: tuple[str | None, ...] = (None, "int8", "int8c", "int4")
META_FIELDS: tuple[str, ...] = ("dtype", "shape", "codec", "quant", "scale", "zero", "nbytes")
MAX_DIMS = 8
MAX_DIM = 2**31 - 1
#: Default bound on the decoded size of one tensor (bytes); the wire passes its own.
DEFAULT_MAX_BYTES = 512 * 2**20
ZSTD_LEVEL = 3
_FLOATS = ("float16", "float32", "float64")

#: Compression ratio (raw float32 bytes ÷ wire bytes) to expect for a CNN
#: activation, for the cost model. Keys: ``(codec, quant)``; the shorthands
#: ``"raw"``, ``"lz4"``, ``"zstd"`` (no quantisation), ``"int8"`` and ``"int4"``
#: (raw codec) are present too. Measured on post-ReLU activations (ReLU and
#: pooling outputs, where CNN stages are usually cut) of ResNet-18/50, VGG-16,
#: MobileNet-v2 and EfficientNet-Lite0 on the ``chelsea`` image (geometric mean,
#: rounded down; per-model figures and signed-activation figures — lz4/zstd
#: gain nothing on those — in ``docs/runtime-transport.md``). ``ratio(meta)``
#: gives the actual figure of a message.
EXPECTED_RATIO: dict[Any, float] = {
    ("raw", None): 1.0,
    ("lz4", None): 1.6,
    ("zstd", None): 1.9,
    ("raw", "int8"): 4.0,
    ("lz4", "int8"): 5.5,
    ("zstd", "int8"): 7.0,
    ("raw", "int8c"): 3.9,
    ("lz4", "int8c"): 5.2,
    ("zstd", "int8c"): 5.7,
    ("raw", "int4"): 11.0,
    ("lz4", "int4"): 12.0,
    ("zstd", "int4"): 17.0,
}
EXPECTED_RATIO.update({c: EXPECTED_RATIO[(c, None)] for c in CODECS})
EXPECTED_RATIO.update({q: EXPECTED_RATIO[("raw", q)] for q in ("int8", "int8c", "int4")})


#: CPU cost of the codecs, µs on one full core of this project's machine (Intel Xeon, numpy; 6 Dec
#: 2026, :func:`cpu_us`; the measurement: docs/cost-model.md, Codecs). Quantising is charged per KB
#: of raw bytes, compressing per KB of the bytes the compressor sees (the quantised stream), plus a
#: cost per call; signed dense tensors (the model input) are cheap for int4 (packed nibbles, no
#: run-length code) and for lz4 / zstd (incompressible bytes are skipped fast).
QUANT_US_PER_KB: dict[str | None, tuple[float, float]] = {  # (encode, decode)
    None: (0.0, 0.0), "int8": (0.85, 0.28), "int8c": (1.3, 0.6), "int4": (1.5, 1.25)}
QUANT_CALL_US: dict[str | None, float] = {None: 0.0, "int8": 20.0, "int8c": 40.0, "int4": 60.0}
COMPRESS_US_PER_KB: dict[str, tuple[float, float]] = {"raw": (0.0, 0.0), "lz4": (1.9, 0.45), "zstd": (3.8, 1.0)}
DENSE_US_PER_KB: dict[Any, tuple[float, float]] = {"int4": (0.1, 0.1), "lz4": (0.2, 0.1), "zstd": (1.3, 1.0)}


def cpu_us(codec: str, quant: str | None, nbytes: float, *, dense: bool = False) -> tuple[float, float]:
    """Estimated ``(encode, decode)`` CPU µs of a tensor of ``nbytes`` raw bytes on one full core.

    ``dense``: a signed tensor without runs of zeros (the model input). Zero for ``raw`` without
    quantisation (the copy is the runtime's per-KB send cost).
    """
    if codec == "raw" and quant is None:
        return 0.0, 0.0
    kb = nbytes / 1024.0
    qe, qd = DENSE_US_PER_KB["int4"] if dense and quant == "int4" else QUANT_US_PER_KB[quant]
    ce, cd = DENSE_US_PER_KB[codec] if dense and quant is None and codec in DENSE_US_PER_KB \
        else COMPRESS_US_PER_KB[codec]
    ckb = kb / EXPECTED_RATIO[("raw", quant)]
    call = QUANT_CALL_US[quant] + (10.0 if codec != "raw" else 0.0)
    return call + qe * kb + ce * ckb, call + qd * kb + cd * ckb


class CodecError(CoinferError, ValueError):
    """A tensor that cannot be encoded, or meta/bytes that do not decode."""


def expected_ratio(codec: str = "raw", quant: str | None = None) -> float:
    """:data:`EXPECTED_RATIO` for ``(codec, quant)`` (1.0 if unknown)."""
    return float(EXPECTED_RATIO.get((codec, quant), 1.0))


# -- meta validation -------------------------------------------------------------------
def _wire_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<") if np.dtype(name).itemsize > 1 else np.dtype(name)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _opt_float(meta: Mapping[str, Any], key: str) -> float | None:
    v = meta[key]
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise CodecError(f"{key} must be a number or null (got {type(v).__name__})")
    f = float(v)
    if not math.isfinite(f):
        raise CodecError(f"{key} must be finite (got {f})")
    return f


def validate_meta(meta: Mapping[str, Any], nbytes: int | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.dtype, tuple[int, ...], int]:
    """Check tensor meta before anything is decoded; return ``(dtype, shape, decoded_len)``.

    ``decoded_len`` is the exact length of the buffer after decompression (the
    quantised bytes for int8 and signed int4, an upper bound for int4's run-length stream).
    ``nbytes`` (the buffer's real length), when given, must equal ``meta["nbytes"]``.
    The decoded tensor (``prod(shape) * itemsize``) must fit in ``max_bytes``.
    """
    if not isinstance(meta, Mapping):
        raise CodecError("tensor meta must be a map")
    missing = [k for k in META_FIELDS if k not in meta]
    if missing:
        raise CodecError(f"tensor meta lacks {', '.join(missing)}")
    name = meta["dtype"]
    if not isinstance(name, str) or name not in DTYPES:
        raise CodecError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    dt = _wire_dtype(name)
    shape = meta["shape"]
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_DIMS:
        raise CodecError(f"shape must be a list of at most {MAX_DIMS} ints")
    n = 1
    for d in shape:
        if not _is_int(d) or not 0 <= int(d) <= MAX_DIM:
            raise CodecError(f"shape {list(shape)!r}: dimensions must be ints in [0, {MAX_DIM}]")
        n *= int(d)
        if n * dt.itemsize > max_bytes:
            break
    if n * dt.itemsize > max_bytes:
        raise CodecError(f"shape {list(shape)} ({name}) is {n * dt.itemsize} bytes decoded; "
                         f"the limit is {max_bytes}")
    codec, quant = meta["codec"], meta["quant"]
    if codec not in CODECS:
        raise CodecError(f"codec {codec!r} is not one of {', '.join(CODECS)}")
    if quant not in QUANTS:
        raise CodecError(f"quant {quant!r} is not one of null, int8, int8c, int4")
    scale, zero = _opt_float(meta, "scale"), _opt_float(meta, "zero")
    if quant is None:
        if scale is not None or zero is not None:
            raise CodecError("scale and zero must be null without quantisation")
        qlen = n * dt.itemsize
    else:
        if name not in _FLOATS:
            raise CodecError(f"{quant} quantisation needs a float dtype (got {name})")
        if scale is None or zero is None or scale < 0:
            raise CodecError(f"{quant} needs scale >= 0 and zero (got {scale}, {zero})")
        if quant == "int4" and zero > 0:
            raise CodecError(f"int4 zero is the lower clip bound and must be <= 0 (got {zero})")
        # int8c: the groups' scales and zeros first; int4: an upper bound of the run-length stream, or
        # (signed, zero < 0) exactly the packed nibbles
        qlen = n if quant == "int8" else n + 8 * channel_groups(shape, n) if quant == "int8c" else \
            (n + 1) // 2 if zero < 0 else n + 1
    nb = meta["nbytes"]
    if not _is_int(nb) or not 0 <= int(nb) <= max(max_bytes, qlen):
        raise CodecError(f"nbytes must be an int in [0, {max(max_bytes, qlen)}] (got {nb!r})")
    nb = int(nb)
    if nbytes is not None and nb != nbytes:
        raise CodecError(f"nbytes {nb} does not match the payload length {nbytes}")
    if codec == "raw":
        if quant == "int4" and zero is not None and not zero < 0:  # (int4 always has a zero: checked above)
            if nb > qlen:
                raise CodecError(f"int4 stream of {nb} bytes is longer than possible for {n} values")
        elif nb != qlen:
            raise CodecError(f"raw {quant or name} payload for shape {list(shape)} must be {qlen} bytes (got {nb})")
    return dt, tuple(int(d) for d in shape), qlen


# -- quantisation ------------------------------------------------------------------------
def _finite(x: np.ndarray, quant: str) -> None:
    if x.size and not np.isfinite(x).all():
        raise CodecError(f"{quant} quantisation needs finite values (the tensor has inf or nan)")


def _int8(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    _finite(x, "int8")
    if x.size == 0:
        return np.zeros(0, np.uint8), 0.0, 0.0
    lo, hi = float(x.min()), float(x.max())
    scale = (hi - lo) / 255.0
    if scale == 0.0 or not math.isfinite(scale):
        return np.zeros(x.size, np.uint8), 0.0, lo
    q = np.rint((x.reshape(-1).astype(np.float64) - lo) / scale)
    return np.clip(q, 0, 255).astype(np.uint8), scale, lo


def channel_groups(shape: Any, n: int | None = None) -> int:
    """int8c's number of (scale, zero) groups for ``shape``: ``N·C`` for three or more dimensions, else 1
    (0 for an empty tensor)."""
    n = math.prod(int(d) for d in shape) if n is None else n
    if n == 0:
        return 0
    return int(shape[0]) * int(shape[1]) if len(shape) >= 3 else 1


def _int8c(x: np.ndarray) -> tuple[bytes, float, float]:
    """Payload (scales, zeros, values) and the meta scale (largest) / zero (smallest) of int8c."""
    _finite(x, "int8c")
    g = channel_groups(x.shape, x.size)
    if g == 0:
        return b"", 0.0, 0.0
    a = x.reshape(g, -1).astype(np.float64)
    lo = a.min(1).astype("<f4")  # stored as float32: encode with exactly the values the decoder reads
    scale = ((a.max(1) - lo.astype(np.float64)) / 255.0).astype("<f4")
    s64 = scale.astype(np.float64)
    safe = np.where(s64 > 0, s64, 1.0)
    q = np.clip(np.rint((a - lo.astype(np.float64)[:, None]) / safe[:, None]), 0, 255).astype(np.uint8)
    payload = scale.tobytes() + lo.tobytes() + q.tobytes()
    return payload, float(scale.max()), float(lo.min())


def _int8c_decode(data: Buffer, shape: tuple[int, ...], n: int) -> np.ndarray:
    g = channel_groups(shape, n)
    if g == 0:
        return np.zeros(0, np.float64)
    head = np.frombuffer(data, "<f4", count=2 * g).astype(np.float64)
    scale, lo = head[:g], head[g:]
    if not (np.isfinite(head).all() and (scale >= 0).all()):
        raise CodecError("int8c channel scales and zeros must be finite and scales >= 0")
    q = np.frombuffer(data, np.uint8, count=n, offset=8 * g).reshape(g, -1)
    return q.astype(np.float64) * scale[:, None] + lo[:, None]


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths of the runs of True in a bool array."""
    edge = np.diff(np.concatenate(([False], mask, [False])).view(np.int8))
    starts = np.flatnonzero(edge == 1)
    return starts, np.flatnonzero(edge == -1) - starts


def _every(starts: np.ndarray, lens: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``start + step*j`` covering each run, and the run length left at each."""
    k = (lens + step - 1) // step
    rid = np.repeat(np.arange(starts.size), k)
    j = np.arange(int(k.sum())) - (np.cumsum(k) - k)[rid]
    return starts[rid] + step * j, lens[rid] - step * j


def _rle4_encode(q: np.ndarray) -> np.ndarray:
    """4-bit symbols (0..15) → packed bytes; a run of zeros becomes ``0, len-1`` per ≤ 16 zeros.

    Three vectorised ways to the same stream, by density (measured on 0.4 M symbols): no zeros
    at all → the symbols packed as they are; ≤ 25 % non-zeros (post-ReLU activations after the
    4-bit clip) → :func:`_rle4_sparse`, 2–3.5× faster there; otherwise :func:`_rle4_tokens`.
    """
    q = q.reshape(-1)
    nnz = int(np.count_nonzero(q))
    if nnz == q.size:
        return _pack_nibbles(q)
    if 4 * nnz <= q.size:
        return _rle4_sparse(q)
    return _rle4_tokens(q)


def _pack_nibbles(nib: np.ndarray) -> np.ndarray:
    if nib.size & 1:  # an odd stream is padded with one 0 nibble
        nib = np.concatenate((nib, np.zeros(1, np.uint8)))
    return (nib[0::2] << 4) | nib[1::2]


def _unpack_nibbles(buf: Buffer, n: int) -> np.ndarray:
    """The first ``n`` nibbles of packed bytes (high nibble first); the length was validated."""
    b = np.frombuffer(buf, np.uint8, count=(n + 1) // 2)
    nib = np.empty(2 * b.size, np.uint8)
    nib[0::2] = b >> 4
    nib[1::2] = b & 15
    return nib[:n]


def _rle4_tokens(q: np.ndarray) -> np.ndarray:
    """The stream over every symbol: a token's output position is the cumulative sum of
    token sizes (1 nibble per non-zero, 2 per zero-run chunk, 0 for the other zeros)."""
    nz = q != 0
    cstart, left = _every(*_runs(~nz), 16)
    cnt = nz.astype(np.int32)
    cnt[cstart] = 2
    end = np.cumsum(cnt, dtype=np.int64)
    out = np.zeros(int(end[-1]), np.uint8)
    vals = np.flatnonzero(nz)
    out[end[vals] - 1] = q[vals]
    out[end[cstart] - 1] = (np.minimum(16, left) - 1).astype(np.uint8)
    return _pack_nibbles(out)


def _rle4_sparse(q: np.ndarray) -> np.ndarray:
    """The stream over the non-zeros only: the gap of zeros before each non-zero (and after
    the last) becomes ``ceil(gap / 16)`` two-nibble chunks, so a value's output position is the
    cumulative sum of ``2·chunks + 1``."""
    pos = np.flatnonzero(q)
    edges = np.empty(pos.size + 2, np.int64)
    edges[0], edges[1:-1], edges[-1] = -1, pos, q.size
    gaps = np.diff(edges) - 1  # zeros before each non-zero; the last: the trailing zeros
    chunks = (gaps + 15) // 16
    size = 2 * chunks
    size[:-1] += 1  # the value itself
    end = np.cumsum(size)
    out = np.zeros(int(end[-1]), np.uint8)
    out[end[:-1] - 1] = q[pos]
    g = np.flatnonzero(chunks)
    k = chunks[g]
    gi = np.repeat(g, k)
    j = np.arange(gi.size) - np.repeat(np.cumsum(k) - k, k)  # chunk index within its gap
    out[end[gi] - size[gi] + 2 * j + 1] = (np.minimum(16, gaps[gi] - 16 * j) - 1).astype(np.uint8)
    return _pack_nibbles(out)


def _rle4_decode(buf: Buffer, n: int) -> np.ndarray:
    """Inverse of :func:`_rle4_encode`; the stream must decode to exactly ``n`` symbols.

    A zero nibble at an even offset of a run of zero nibbles is a run marker and the
    next nibble its length − 1 (a non-zero nibble is a value or a length, never a
    marker); a marker in the last place is the padding. The decoded count is checked
    against ``n`` before anything of size ``n`` is written.
    """
    b = np.frombuffer(buf, np.uint8)
    if n == 0:
        if b.size:
            raise CodecError("int4 stream has data for an empty tensor")
        return np.zeros(0, np.uint8)
    nib = np.empty(2 * b.size, np.uint8)
    nib[0::2] = b >> 4
    nib[1::2] = b & 15
    m = nib.size
    z = nib == 0
    markers, _ = _every(*_runs(z), 2)
    if markers.size and markers[-1] == m - 1:
        markers = markers[:-1]
        m -= 1
    value = ~z[:m]
    lenpos = markers + 1
    value[lenpos] = False
    cnt = value.astype(np.int64)
    cnt[markers] = nib[lenpos].astype(np.int64) + 1
    end = np.cumsum(cnt)
    total = int(end[-1]) if m else 0
    if total != n:
        raise CodecError(f"int4 stream decodes to {total} values; the shape has {n}")
    out = np.zeros(n, np.uint8)
    vi = np.flatnonzero(value)
    out[end[vi] - 1] = nib[vi]
    return out


def _int4(x: np.ndarray, clip: float | None) -> tuple[np.ndarray, float, float]:
    flat = x.reshape(-1)
    if flat.dtype == np.float16:  # computed in float32 (float32 / float64 as they are: no copy)
        flat = flat.astype(np.float32)
    if flat.size == 0:
        return _rle4_encode(np.zeros(0, np.uint8)), 0.0, 0.0
    lo, hi = float(flat.min()), float(flat.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # min / max propagate nan and see inf
        _finite(flat, "int4")
    if clip is not None or lo >= 0.0:  # ADCNN: clipped ReLU to [0, clip], 15 levels above zero
        c = hi if clip is None else float(clip)
        if not math.isfinite(c) or c < 0:
            raise CodecError(f"int4 clip must be finite and >= 0 (got {clip})")
        scale = c / 15.0
        if scale == 0.0:
            return _rle4_encode(np.zeros(flat.size, np.uint8)), 0.0, 0.0
        t = np.clip(flat, 0.0, c)
        np.divide(t, t.dtype.type(scale), out=t)
        np.rint(t, out=t)
        return _rle4_encode(t.astype(np.uint8)), scale, 0.0
    m = max(-lo, hi)  # signed tensor: symmetric, 4-bit two's complement in [-7, 7]
    scale = m / 7.0
    t = np.divide(flat, flat.dtype.type(scale))
    np.rint(t, out=t)
    np.clip(t, -7, 7, out=t)
    s = t.astype(np.int8).view(np.uint8) & 15
    return _pack_nibbles(s), scale, -7.0 * scale  # no run-length code: a signed tensor's zeros are isolated


def _lut_decode(q: np.ndarray, table: np.ndarray, dt: np.dtype) -> np.ndarray:
    """``table[q]`` in ``dt``: each code's value computed once in float64 and rounded once."""
    return table.astype(dt).take(q)


# -- public API ----------------------------------------------------------------------------
def as_wire_array(arr: Any) -> np.ndarray:
    """``arr`` as a C-contiguous little-endian array of a wire dtype (no copy when it already is)."""
    a = np.asarray(arr)
    if a.dtype.name not in DTYPES:
        raise CodecError(f"dtype {a.dtype.name} cannot go on the wire; cast to one of {', '.join(DTYPES)}")
    wdt = _wire_dtype(a.dtype.name)
    if a.dtype != wdt:
        a = a.astype(wdt)
    if not a.flags.c_contiguous:
        a = np.ascontiguousarray(a)  # (keeps 0-d arrays 0-d, unlike calling it unconditionally)
    return a


def raw_view(a: np.ndarray) -> memoryview:
    """A flat byte memoryview of a C-contiguous array (zero-copy)."""
    return a.reshape(-1).view(np.uint8).data


def encode(arr: Any, codec: str = "raw", quant: str | None = None, *,
           clip: float | None = None, level: int = ZSTD_LEVEL) -> tuple[dict[str, Any], Buffer]:
    """Encode ``arr``; return ``(meta, buffer)``. Raw unquantised contiguous arrays are not copied.

    ``clip`` is ADCNN's clipped-ReLU bound for ``int4`` (default: the tensor's maximum);
    ``level`` the zstd level.
    """
    if codec not in CODECS:
        raise CodecError(f"codec {codec!r} is not one of {', '.join(CODECS)}")
    if quant not in QUANTS:
        raise CodecError(f"quant {quant!r} is not one of null, int8, int8c, int4")
    a = as_wire_array(arr)
    if quant is not None and a.dtype.name not in _FLOATS:
        raise CodecError(f"{quant} quantisation needs a float tensor (got {a.dtype.name})")
    scale: float | None = None
    zero: float | None = None
    data: Buffer
    if quant is None:
        data = raw_view(a)
    elif quant == "int8":
        q, scale, zero = _int8(a)
        data = np.ascontiguousarray(q).data
    elif quant == "int8c":
        data, scale, zero = _int8c(a)
    else:
        q, scale, zero = _int4(a, clip)
        data = q.data
    if codec == "lz4":
        import lz4.block

        data = lz4.block.compress(data, store_size=False)
    elif codec == "zstd":
        import zstandard

        data = zstandard.ZstdCompressor(level=level).compress(data)
    meta = {"dtype": a.dtype.name, "shape": [int(d) for d in a.shape], "codec": codec, "quant": quant,
            "scale": scale, "zero": zero, "nbytes": len(memoryview(data).cast("B"))}
    return meta, data


def _decompress(codec: str, buf: Buffer, qlen: int, exact: bool) -> Buffer:
    if codec == "raw":
        return buf
    out: bytes
    if codec == "lz4":
        import lz4.block

        try:
            out = lz4.block.decompress(buf, uncompressed_size=max(qlen, 1))
        except Exception as e:  # noqa: BLE001 - corrupt input in any form
            raise CodecError(f"lz4 payload does not decode to at most {qlen} bytes: {e}") from None
    else:
        import zstandard

        try:
            size = zstandard.frame_content_size(buf)
            if size > qlen:
                raise CodecError(f"zstd frame declares {size} bytes; at most {qlen} expected")
            d = zstandard.ZstdDecompressor(max_window_size=1 << 27)
            out = d.decompress(buf, max_output_size=max(qlen, 1), allow_extra_data=False)
        except CodecError:
            raise
        except Exception as e:  # noqa: BLE001
            raise CodecError(f"zstd payload does not decode to at most {qlen} bytes: {e}") from None
    if (exact and len(out) != qlen) or len(out) > qlen:
        raise CodecError(f"{codec} payload decodes to {len(out)} bytes; {qlen} expected")
    return out


def decode(meta: Mapping[str, Any], buf: Buffer, *, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode ``(meta, buf)`` into an array of ``meta["dtype"]`` and ``meta["shape"]``.

    Everything is validated first (:func:`validate_meta`). Raw unquantised buffers are
    wrapped without a copy (``np.frombuffer``; read-only when the buffer is); a
    misaligned buffer is copied so that the result is always aligned.
    """
    view = memoryview(buf)
    if view.ndim != 1 or view.format not in ("B", "b", "c"):
        try:
            view = view.cast("B")
        except TypeError as e:
            raise CodecError(f"payload is not a contiguous byte buffer: {e}") from None
    dt, shape, qlen = validate_meta(meta, len(view), max_bytes)
    quant = meta["quant"]
    rle = quant == "int4" and float(meta["zero"]) >= 0.0  # int4's run-length stream has no fixed length
    data = _decompress(meta["codec"], view, qlen, exact=not rle)
    n = math.prod(shape)
    if quant is None:
        out = np.frombuffer(data, dtype=dt, count=n).reshape(shape)
        if not out.flags.aligned:
            out = out.copy()
        return out
    scale, zero = float(meta["scale"]), float(meta["zero"])
    if quant == "int8":
        y = _lut_decode(np.frombuffer(data, np.uint8, count=n), np.arange(256.0) * scale + zero, dt)
    elif quant == "int8c":
        y = _int8c_decode(data, shape, n).astype(dt)
    else:
        codes = np.arange(16.0)
        if zero < 0:  # signed symmetric mode: packed nibbles, 8..15 are -8..-1
            codes = np.where(codes < 8, codes, codes - 16.0)
            y = _lut_decode(_unpack_nibbles(data, n), codes * scale, dt)
        else:
            y = _lut_decode(_rle4_decode(data, n), codes * scale, dt)
    return y.reshape(shape)


def ratio(meta: Mapping[str, Any]) -> float:
    """Decoded (uncompressed, unquantised) bytes ÷ wire bytes for a tensor's meta."""
    n = math.prod(int(d) for d in meta["shape"]) * _wire_dtype(meta["dtype"]).itemsize
    nb = int(meta["nbytes"])
    return float(n) / nb if nb else (1.0 if n == 0 else math.inf)
