"""Inputs for runs and verification: a seeded random tensor, a sample image or an image file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "cat")


class InputError(ValueError):
    pass


def random_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def load_image(spec: str) -> np.ndarray:
    """HWC uint8 RGB from a skimage sample name (``chelsea``...) or an image file."""
    if spec in SAMPLES:
        from skimage import data

        return getattr(data, spec)()
    p = Path(spec)
    if not p.is_file():
        raise InputError(f"--input {spec!r}: no such file; give an image path, one of {', '.join(SAMPLES)}, or random")
    from skimage import io

    try:
        img = io.imread(str(p))
    except Exception as e:  # noqa: BLE001 - any decoder failure is a user error
        raise InputError(f"--input {spec!r} is not a readable image: {e}") from None
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return img[..., :3].astype(np.uint8)


def make_input(spec: str | None, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """The tensor for ``--input``: None/'random' -> seeded noise, else an image resized and normalised."""
    if spec in (None, "", "random"):
        return random_input(shape, seed)
    if len(shape) != 4 or shape[1] != 3:
        raise InputError(f"--input {spec!r} is an image but the model takes {list(shape)}; use --input random")
    from .zoo import preprocess_image

    x = preprocess_image(load_image(spec), shape[2])
    if tuple(x.shape[2:]) != tuple(shape[2:]):
        x = torch.nn.functional.interpolate(x, size=shape[2:], mode="bilinear", align_corners=False)
    return x
