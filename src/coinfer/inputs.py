"""Inputs for runs and verification: a seeded random tensor, a sample image or an image file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import CoinferError

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "cat")


class InputError(CoinferError, ValueError):
    pass


def random_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def load_image(spec: str) -> np.ndarray:
    """HWC uint8 RGB from a skimage sample name (``chelsea``...) or an image file.

    The first frame of a multi-frame file (GIF, multi-page TIFF) is used; grey, grey+alpha and
    RGBA become RGB (alpha dropped); 16-bit, float ([0, 1]) and bool pixels are rescaled to 0..255.
    """
    if spec in SAMPLES:
        from skimage import data

        return getattr(data, spec)()
    p = Path(spec)
    if p.is_dir():
        raise InputError(f"--input {spec!r} is a directory; give an image file (PNG/JPEG), "
                         f"one of {', '.join(SAMPLES)}, or random")
    if not p.is_file():
        raise InputError(f"--input {spec!r}: no such file; give an image path, one of {', '.join(SAMPLES)}, or random")
    import imageio.v3 as iio

    try:
        img = np.asarray(iio.imread(p, index=0))
    except Exception as e:  # noqa: BLE001 - any decoder failure is a user error
        why = (str(e).splitlines() or [type(e).__name__])[0].replace("`", "").rstrip(".")
        raise InputError(f"--input {spec!r} is not an image imageio can read ({why}); give a PNG/JPEG file") from None
    return _to_rgb8(img, spec)


def _to_rgb8(img: np.ndarray, spec: str) -> np.ndarray:
    """An HxW / HxWxC (C in 1..4, or channels first) image of any real dtype -> HxWx3 uint8."""
    if img.ndim == 3 and img.shape[-1] > 4 and img.shape[0] in (3, 4):
        img = np.moveaxis(img, 0, -1)  # channels first (planar TIFF)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or not 1 <= img.shape[2] <= 4 or min(img.shape[:2]) < 1:
        raise InputError(f"--input {spec!r} has shape {list(img.shape)}, not an HxW grey or HxWx3 colour image; "
                         "give a PNG/JPEG file")
    img = img[:, :, :1] if img.shape[2] <= 2 else img[:, :, :3]  # grey(+alpha) / RGB(A): drop alpha
    rgb = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
    return _to_uint8(rgb, spec)


def _to_uint8(img: np.ndarray, spec: str) -> np.ndarray:
    """Pixels rescaled by their dtype's range: bool -> 0/255, integers by their max, float [0, 1] x 255."""
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * 255
    if np.issubdtype(img.dtype, np.integer):
        top = float(np.iinfo(img.dtype).max)
        return np.clip(np.rint(img.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        lo, hi = (float(img.min()), float(img.max())) if img.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo >= 0.0 and hi <= 1.0):
            raise InputError(f"--input {spec!r} has float pixels in [{lo:g}, {hi:g}], not [0, 1]; "
                             "give an 8-bit PNG/JPEG file or scale the pixels to [0, 1]")
        return np.clip(np.rint(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    raise InputError(f"--input {spec!r} has {img.dtype} pixels; give an 8-bit PNG/JPEG file")


def make_input(spec: str | None, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The tensor for ``--input``: None/'random' -> seeded noise, else an image resized and normalised."""
    if spec is None or spec == "random":
        return random_input(shape, seed)
    if not spec.strip():
        raise InputError(f"--input is empty; give an image path, one of {', '.join(SAMPLES)}, or random")
    if len(shape) != 4 or shape[1] != 3:
        raise InputError(f"--input {spec!r} is an image but the model takes {list(shape)}; use --input random")
    from .zoo import preprocess_image

    x = preprocess_image(load_image(spec), shape[2])
    if tuple(x.shape[2:]) != tuple(shape[2:]):
        x = torch.nn.functional.interpolate(x, size=shape[2:], mode="bilinear", align_corners=False)
    return x
