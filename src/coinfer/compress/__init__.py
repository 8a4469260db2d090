"""Tensor compression for the wire: lz4/zstd (lossless) and int8/int4 quantisation.

See :mod:`coinfer.compress.codecs`.
"""

from .codecs import (
                     CODECS,
                     DTYPES,
                     EXPECTED_RATIO,
                     QUANTS,
                     CodecError,
                     decode,
                     encode,
                     expected_ratio,
                     ratio,
)

__all__ = ["CODECS", "DTYPES", "EXPECTED_RATIO", "QUANTS", "CodecError", "decode", "encode",
           "expected_ratio", "ratio"]
