"""``--input``: image files of any common layout and dtype become HxWx3 uint8; bad ones are one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coinfer.inputs import InputError, load_image, make_input

iio = pytest.importorskip("imageio.v3")


def _grey(h: int = 24, w: int = 32) -> np.ndarray:
    return (np.arange(h * w, dtype=np.int64).reshape(h, w) * 7 % 256).astype(np.uint8)


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    g = _grey(h, w)
    return np.dstack([g, 255 - g, g // 2])


def test_grey_alpha_png_becomes_rgb_without_alpha(tmp_path: Path) -> None:
    g = _grey()
    f = tmp_path / "la.png"
    iio.imwrite(f, np.dstack([g, np.full_like(g, 128)]))
    img = load_image(str(f))
    assert img.shape == (*g.shape, 3) and img.dtype == np.uint8
    assert all((img[..., c] == g).all() for c in range(3))


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    first = np.zeros((16, 16, 3), np.uint8)
    first[..., 0] = 255
    second = np.zeros((16, 16, 3), np.uint8)
    second[..., 2] = 255
    f = tmp_path / "anim.gif"
    iio.imwrite(f, np.stack([first, second]))
    img = load_image(str(f))
    assert img.shape == (16, 16, 3)
    assert img[..., 0].min() > 200 and img[..., 2].max() < 50  # red, not blue


def test_float_and_16_bit_images_are_rescaled_not_wrapped(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    rgb = _rgb()
    tifffile.imwrite(tmp_path / "f.tif", rgb.astype(np.float32) / 255, photometric="rgb")
    tifffile.imwrite(tmp_path / "c16.tif", rgb.astype(np.uint16) * 257, photometric="rgb")
    tifffile.imwrite(tmp_path / "b.tif", _grey() > 100)
    assert (load_image(str(tmp_path / "f.tif")) == rgb).all()
    assert (load_image(str(tmp_path / "c16.tif")) == rgb).all()
    b = load_image(str(tmp_path / "b.tif"))
    assert b.dtype == np.uint8 and set(np.unique(b)) == {0, 255}


def test_float_image_outside_0_1_is_refused(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "f255.tif", _rgb().astype(np.float32), photometric="rgb")
    with pytest.raises(InputError, match=r"float pixels in \[0, 2\d\d\], not \[0, 1\]"):
        load_image(str(tmp_path / "f255.tif"))


def test_directory_is_named_as_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory; give an image file"):
        load_image(str(tmp_path))


def test_non_image_file_message_names_the_fix_without_stray_backticks(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(InputError) as e:
        load_image(str(f))
    msg = str(e.value)
    assert "is not an image imageio can read (" in msg and msg.endswith("; give a PNG/JPEG file")
    assert "`" not in msg and "\n" not in msg


def test_empty_input_is_refused_not_random() -> None:
    with pytest.raises(InputError, match="--input is empty"):
        make_input("", (1, 3, 8, 8))
    assert make_input(None, (1, 3, 8, 8)).shape == (1, 3, 8, 8)
    assert make_input("random", (1, 3, 8, 8)).shape == (1, 3, 8, 8)
