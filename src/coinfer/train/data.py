"""Offline datasets for training recipes: scikit-learn's handwritten digits, upscaled.

``sklearn.datasets.load_digits`` ships with scikit-learn (no download): 1,797
greyscale 8x8 images of the digits 0-9 (UCI "Optical Recognition of
Handwritten Digits", 16 grey levels). The early-exit recipe trains the
``*_digits`` zoo models (input ``1x3x64x64``, 10 classes) on them: each image
is scaled to [0, 1] (x / 16), bilinearly upscaled to 64x64, replicated to 3
channels and standardised with the training split's mean and standard
deviation. The train/test split is fixed: stratified, 25% held out, drawn with
``split_seed`` (default 0) — independent of the training seed, so every
checkpoint is evaluated on the same held-out images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: name of the data recipe, recorded in checkpoint file names (bump on any change above)
DATA_NAME = "digits64"
TEST_FRACTION = 0.25


@dataclass(frozen=True)
class Split:
    """A train/test split as tensors: ``x`` is ``N x 3 x size x size`` float32, ``y`` int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.y_train), len(self.y_test)


def upscale(images: np.ndarray, size: int) -> torch.Tensor:
    """``N x 8 x 8`` digit images in [0, 16] -> ``N x 3 x size x size`` in [0, 1] (bilinear)."""
    t = torch.from_numpy(np.asarray(images, dtype=np.float32) / 16.0).unsqueeze(1)
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t.expand(-1, 3, -1, -1).contiguous()


def digits_split(size: int = 64, split_seed: int = 0) -> Split:
    """The fixed, stratified 75/25 split of sklearn digits, upscaled to ``size`` and standardised."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    idx = np.arange(len(d.target))
    tr, te = train_test_split(idx, test_size=TEST_FRACTION, stratify=d.target, random_state=split_seed)
    x = upscale(d.images, size)
    y = torch.from_numpy(d.target.astype(np.int64))
    xtr, xte = x[tr], x[te]
    mean, std = float(xtr.mean()), float(xtr.std())
    return Split((xtr - mean) / std, y[tr], (xte - mean) / std, y[te], mean, std)
