"""Image helpers for demos: sample images and ImageNet preprocessing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: ImageNet channel statistics (RGB), as used by torchvision and most ImageNet models.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_image(img: np.ndarray, size: int) -> torch.Tensor:
    """HWC image (uint8, or float in [0, 1]) -> ``1x3xSIZExSIZE`` float tensor.

    Resizes bilinearly (``align_corners=False``) to ``size x size`` and
    normalises with the ImageNet mean / std. Grey (HxW or HxWx1) images are
    replicated to 3 channels; a 4th (alpha) channel is dropped.
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        x = torch.tensor(arr, dtype=torch.float32) / 255.0
    elif np.issubdtype(arr.dtype, np.floating):
        x = torch.tensor(arr, dtype=torch.float32)
    else:
        raise ValueError(f"expected a uint8 or float image, got dtype {arr.dtype}")
    x = x.permute(2, 0, 1).unsqueeze(0)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def sample_image(name: str = "chelsea") -> np.ndarray:
    """``skimage.data.<name>()``, e.g. ``"chelsea"`` (a tabby cat, 300x451x3 uint8)."""
    import skimage.data

    usable = name in skimage.data.__all__ and not name.startswith("download")
    loader = getattr(skimage.data, name, None) if usable else None
    if loader is None or not callable(loader):
        raise ValueError(
            f"unknown sample image {name!r}; try one of: chelsea, astronaut, coffee, rocket"
        )
    img = loader()
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        raise ValueError(f"skimage.data.{name}() is not a 2-D image")
    return img
