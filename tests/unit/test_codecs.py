"""Tensor codecs (coinfer.compress.codecs): exact lossless codecs, int8 error bound, int4 ratio,
and decoding that cannot be made to allocate more than the declared shape."""

from __future__ import annotations

import lz4.block
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from coinfer.compress import codecs as C
from coinfer.compress.codecs import CodecError, decode, encode, ratio

RNG = np.random.default_rng(0)


def _relu(shape: tuple[int, ...] = (1, 64, 56, 56)) -> np.ndarray:
    return np.maximum(RNG.standard_normal(shape), 0).astype(np.float32)


@pytest.mark.parametrize("codec", C.CODECS)
@pytest.mark.parametrize("dtype", C.DTYPES)
def test_lossless_codecs_are_exact(codec: str, dtype: str) -> None:
    x = (RNG.standard_normal((2, 3, 17, 5)) * 50).astype(dtype)
    meta, buf = encode(x, codec)
    y = decode(meta, buf)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
    assert meta["nbytes"] == len(memoryview(buf).cast("B"))


@settings(max_examples=150)
@given(hnp.arrays(st.sampled_from([np.float32, np.float16, np.int32, np.uint8]),
                  hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)),
       st.sampled_from(C.CODECS))
def test_lossless_round_trip_property(x: np.ndarray, codec: str) -> None:
    meta, buf = encode(x, codec)
    y = decode(meta, buf)
    assert y.shape == x.shape
    assert np.array_equal(x, y, equal_nan=True)


def test_compression_helps_on_activations() -> None:
    x = _relu()
    assert ratio(encode(x, "lz4")[0]) > 1.3
    assert ratio(encode(x, "zstd")[0]) > 1.5


@pytest.mark.parametrize("codec", C.CODECS)
def test_int8_error_is_at_most_half_a_step(codec: str) -> None:
    for x in (RNG.standard_normal((4, 32, 32)).astype(np.float32) * 7 + 3, _relu((8, 16, 16)),
              np.linspace(-1e4, 1e4, 1001, dtype=np.float32)):
        meta, buf = encode(x, codec, "int8")
        y = decode(meta, buf)
        scale = meta["scale"]
        assert scale == pytest.approx((float(x.max()) - float(x.min())) / 255)
        bound = scale / 2 + np.spacing(np.abs(x).astype(np.float32))  # + the float32 cast
        assert np.all(np.abs(y.astype(np.float64) - x) <= bound)
        assert np.abs(y - x).max() > scale / 4  # the bound is tight, not vacuous
        assert ratio(meta) >= 4.0 - 1e-9 if codec == "raw" else ratio(meta) > 3.5


@pytest.mark.parametrize("codec", C.CODECS)
def test_int8c_error_is_at_most_half_a_channel_step(codec: str) -> None:
    # channels of very different ranges (as after a linear bottleneck): per channel planes, not per tensor
    x = (RNG.standard_normal((2, 6, 9, 11)) * np.array([0.01, 0.1, 1, 10, 100, 0.5]).reshape(1, 6, 1, 1)
         + np.arange(6).reshape(1, 6, 1, 1)).astype(np.float32)
    x[1, 2] = 3.25  # a constant plane decodes exactly
    meta, buf = encode(x, codec, "int8c")
    y = decode(meta, buf).astype(np.float64)
    assert y.shape == x.shape and decode(meta, buf).dtype == np.float32
    steps = (x.max((2, 3)).astype(np.float64) - x.min((2, 3))) / 255  # (N, C)
    err = np.abs(y - x).max((2, 3))
    assert np.all(err <= steps / 2 * (1 + 1e-6) + np.spacing(np.abs(x).max((2, 3))))
    assert err[1, 2] == 0.0
    assert np.all(err[:, 0] < 1e-3)  # the small channel keeps its resolution
    assert meta["scale"] == pytest.approx(steps.max(), rel=1e-6)
    # per-tensor int8 on the same tensor loses the small channels entirely
    m8, b8 = encode(x, "raw", "int8")
    assert np.abs(decode(m8, b8)[:, 0] - x[:, 0]).max() > 100 * err[:, 0].max()
    if codec == "raw":  # 8 bytes of scale and zero per channel plane
        assert meta["nbytes"] == x.size + 8 * 12
    # flat tensors are one group; empty tensors have none
    for z in (np.linspace(-3, 5, 100, dtype=np.float32).reshape(4, 25), np.zeros((1, 3, 0, 2), np.float32)):
        mz, bz = encode(z, codec, "int8c")
        assert np.abs(decode(mz, bz) - z).max(initial=0.0) <= mz["scale"] / 2 + 1e-6
        if codec == "raw":
            assert mz["nbytes"] == z.size + (8 if z.size else 0)


def test_int8c_rejects_bad_channel_parameters() -> None:
    x = RNG.standard_normal((1, 3, 4, 4)).astype(np.float32)
    meta, buf = encode(x, "raw", "int8c")
    for bad in (np.float32(np.nan), np.float32(-1.0)):
        b = bytearray(buf)
        b[0:4] = bad.tobytes()  # the first channel's scale
        with pytest.raises(CodecError, match="int8c"):
            decode(meta, bytes(b))
    with pytest.raises(CodecError, match="bytes"):
        decode({**meta, "nbytes": len(buf) - 8}, bytes(buf)[:-8])


def test_int8_constant_and_empty_tensors_are_exact() -> None:
    for x in (np.full((3, 3), 2.5, np.float32), np.zeros((0, 4), np.float32), np.float32(7.0)):
        meta, buf = encode(np.asarray(x), "raw", "int8")
        np.testing.assert_array_equal(decode(meta, buf), x)


def test_quantisation_needs_floats_and_finite_values() -> None:
    with pytest.raises(CodecError, match="float"):
        encode(np.arange(4, dtype=np.int32), "raw", "int8")
    with pytest.raises(CodecError, match="finite"):
        encode(np.array([1.0, np.inf], np.float32), "raw", "int8")
    with pytest.raises(CodecError, match="finite"):
        encode(np.array([1.0, np.nan], np.float32), "raw", "int4")
    with pytest.raises(CodecError, match="cannot go on the wire"):
        encode(np.zeros(2, np.complex64))


def test_int4_ratio_on_a_sparse_post_relu_tensor() -> None:
    """ADCNN (ICPP 2020): clipped ReLU, 4-bit non-zeros, run-length zeros → ≈ 8× smaller."""
    x = _relu()
    meta, buf = encode(x, "raw", "int4")
    r = ratio(meta)
    print(f"int4 ratio on a 50%-zero post-ReLU tensor: {r:.2f}x")
    assert 6.0 <= r <= 9.0
    y = decode(meta, buf)
    assert meta["scale"] == pytest.approx(float(x.max()) / 15) and meta["zero"] == 0.0
    assert np.abs(y - x).max() <= meta["scale"] / 2 * (1 + 1e-6)
    # sparser tensors compress more; a dense one still gets the 4-bit packing (≈ 8×)
    sparse = x * (RNG.random(x.shape) < 0.2)
    assert ratio(encode(sparse, "raw", "int4")[0]) > 2 * r
    dense = np.abs(x) + 1.0
    assert ratio(encode(dense, "raw", "int4")[0]) == pytest.approx(8.0, rel=0.01)


def test_int4_clip_parameter_and_signed_tensors() -> None:
    x = _relu((4, 8, 8)) * 3
    meta, buf = encode(x, "raw", "int4", clip=1.0)  # clipped ReLU at 1.0
    y = decode(meta, buf)
    assert y.max() <= 1.0 + 1e-6
    inside = x <= 1.0
    assert np.abs(y - x)[inside].max() <= meta["scale"] / 2 * (1 + 1e-6)
    s = RNG.standard_normal((4, 8, 8)).astype(np.float32)  # signed: symmetric 4-bit instead
    meta, buf = encode(s, "zstd", "int4")
    assert meta["zero"] < 0
    y = decode(meta, buf)
    assert np.abs(y - s).max() <= meta["scale"] / 2 * (1 + 1e-6)


def test_signed_int4_is_packed_without_run_length_code() -> None:
    """A signed tensor (an image) goes as plain nibbles: exactly ceil(n / 2) bytes, any other length
    is refused before decoding."""
    for n in (1, 7, 10):
        s = RNG.standard_normal(n).astype(np.float32)
        s[0] = -abs(s[0]) - 0.1  # signed
        meta, buf = encode(s, "raw", "int4")
        assert meta["zero"] < 0 and meta["nbytes"] == (n + 1) // 2
        assert np.abs(decode(meta, buf) - s).max() <= meta["scale"] / 2 * (1 + 1e-6)
        with pytest.raises(CodecError, match="must be"):
            decode({**meta, "nbytes": meta["nbytes"] + 1}, bytes(buf) + b"\x00")
    img = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    meta, buf = encode(img, "zstd", "int4")  # and through a compressor
    assert np.abs(decode(meta, buf) - img).max() <= meta["scale"] / 2 * (1 + 1e-6)


@settings(max_examples=200)
@given(st.lists(st.integers(0, 15), max_size=200), st.floats(0, 1))
def test_int4_run_length_code_round_trips(vals: list[int], sparsity: float) -> None:
    q = np.array(vals, np.uint8)
    q[np.random.default_rng(len(vals)).random(q.size) < sparsity] = 0
    enc = C._rle4_encode(q)
    assert np.array_equal(C._rle4_decode(enc.tobytes(), q.size), q)
    assert enc.nbytes <= q.size + 1


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(1, 40)), max_size=60))
def test_int4_encoders_agree(runs: list[tuple[int, int]]) -> None:
    """The sparse and the token encoder (and the all-non-zero packing) write the same stream."""
    q = np.array([v for v, n in runs for _ in range(n)], np.uint8)
    ref = C._rle4_tokens(q) if q.size else np.zeros(0, np.uint8)
    if q.size:
        assert np.array_equal(C._rle4_sparse(q), ref)
    assert np.array_equal(C._rle4_encode(q), ref)
    if q.size and q.all():
        assert np.array_equal(C._pack_nibbles(q), ref)
    assert np.array_equal(C._rle4_decode(ref.tobytes(), q.size), q)


def _meta(**kw: object) -> dict:
    m = {"dtype": "float32", "shape": [4], "codec": "raw", "quant": None, "scale": None, "zero": None,
         "nbytes": 16}
    m.update(kw)
    return m


def test_decode_validates_meta() -> None:
    with pytest.raises(CodecError, match="dtype"):
        decode(_meta(dtype="object"), b"x" * 16)
    with pytest.raises(CodecError, match="must be 16 bytes"):
        decode(_meta(nbytes=8), b"x" * 8)
    with pytest.raises(CodecError, match="payload length"):
        decode(_meta(), b"x" * 12)
    with pytest.raises(CodecError, match="scale and zero must be null"):
        decode(_meta(scale=1.0), b"x" * 16)
    with pytest.raises(CodecError, match="shape"):
        decode(_meta(shape=[-4]), b"x" * 16)
    with pytest.raises(CodecError, match="limit"):
        decode(_meta(shape=[2**30, 2**30]), b"x" * 16)


def test_no_decompression_bombs() -> None:
    """A tiny payload that claims to expand beyond the declared shape is refused, not inflated."""
    bomb = np.zeros(64 * 2**20, np.uint8)  # 64 MiB of zeros
    small = {"dtype": "float32", "shape": [16], "quant": None, "scale": None, "zero": None}
    zb = zstandard.ZstdCompressor().compress(bomb)
    with pytest.raises(CodecError, match="zstd frame declares"):
        decode({**small, "codec": "zstd", "nbytes": len(zb)}, zb)
    zs = zstandard.ZstdCompressor(write_content_size=False).compress(bomb)
    with pytest.raises(CodecError, match="zstd"):
        decode({**small, "codec": "zstd", "nbytes": len(zs)}, zs)
    lb = lz4.block.compress(bomb, store_size=False)
    with pytest.raises(CodecError, match="lz4"):
        decode({**small, "codec": "lz4", "nbytes": len(lb)}, lb)
    # int4: a run-length stream that claims more values than the shape has
    runs = bytes([0x0F] * 1000)  # 500 runs of 16 zeros
    with pytest.raises(CodecError, match="decodes to"):
        decode({**small, "quant": "int4", "scale": 1.0, "zero": 0.0, "codec": "raw", "nbytes": 17},
               runs[:17])
    # a short payload is refused too (exact length for lossless codecs)
    lz = lz4.block.compress(bytes(32), store_size=False)
    with pytest.raises(CodecError, match="64 expected"):
        decode({**small, "codec": "lz4", "nbytes": len(lz)}, lz)


def test_corrupt_payloads_raise_codec_error() -> None:
    x = _relu((2, 8, 8))
    for codec in ("lz4", "zstd"):
        meta, buf = encode(x, codec)
        b = bytearray(buf)
        b[len(b) // 2] ^= 0xFF
        del b[-3:]
        meta["nbytes"] = len(b)
        with pytest.raises(CodecError):
            decode(meta, bytes(b))


def test_expected_ratio_table() -> None:
    for c in C.CODECS:
        for q in C.QUANTS:
            assert C.EXPECTED_RATIO[(c, q)] >= 1.0
            assert C.expected_ratio(c, q) == C.EXPECTED_RATIO[(c, q)]
    assert C.EXPECTED_RATIO["lz4"] == C.EXPECTED_RATIO[("lz4", None)]
    assert C.EXPECTED_RATIO["int4"] == C.EXPECTED_RATIO[("raw", "int4")]
    assert C.EXPECTED_RATIO[("raw", "int8")] == 4.0
