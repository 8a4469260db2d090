"""Expected on-the-wire size of a tensor under the plan's ``wire`` codec (torch-free).

A planner cannot know how well a tensor compresses before it exists, so the
cost model multiplies the raw fp32 size by an *expected* ratio per
(codec, quantisation). The table was measured with the runtime's own codecs
(:func:`coinfer.compress.codecs.encode`) on every splittable cut-point
activation and the input of efficientnet_lite0 (real weights), resnet18,
vgg16 and mobilenet_v2 on the ``chelsea`` image — byte-weighted ratios,
rounded; docs/cost-model.md has the per-model figures and the command.
``int4`` is ADCNN's 4-bit quantisation with run-length coding, so it is
already below 1/8. Codec CPU time is not charged: lz4/zstd run at hundreds of
MB/s, one to two orders of magnitude faster than the edge links they feed.
``benchmarks/runtime/transport/wire_ratios.py`` re-measures the table (whole tensors and row bands).
"""

from __future__ import annotations

from ..errors import UserError

#: bytes on the wire / raw fp32 bytes, by (codec, quant)
WIRE_RATIO: dict[tuple[str, str | None], float] = {
    ("raw", None): 1.0, ("lz4", None): 0.83, ("zstd", None): 0.74,
    ("raw", "int8"): 0.25, ("lz4", "int8"): 0.21, ("zstd", "int8"): 0.165,
    ("raw", "int8c"): 0.26, ("lz4", "int8c"): 0.22, ("zstd", "int8c"): 0.19,
    ("raw", "int4"): 0.09, ("lz4", "int4"): 0.07, ("zstd", "int4"): 0.05,
}
CODECS = ("raw", "lz4", "zstd")
QUANTS = (None, "int8", "int8c", "int4")


def wire_ratio(codec: str = "raw", quant: str | None = None) -> float:
    """Expected on-wire bytes per raw fp32 byte."""
    if codec not in CODECS:
        raise UserError(f"wire codec {codec!r} is unknown; use one of {', '.join(CODECS)}")
    if quant not in QUANTS:
        raise UserError(f"wire quant {quant!r} is unknown; use null, int8, int8c or int4")
    return WIRE_RATIO[(codec, quant)]


def wire_bytes(nbytes: float, codec: str = "raw", quant: str | None = None) -> float:
    return float(nbytes) * wire_ratio(codec, quant)
