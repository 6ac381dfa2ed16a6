"""Images opened safely: files for an image dataset, the decoded cache and `zoo predict`; uploads for `zoo serve`."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import ZooError

# Integer grayscale modes wider than 8 bits: a 16-bit PNG opens as I;16 (as I on older Pillow, where
# only its values tell it from 8-bit pixels in I, what Image.fromarray makes of int32 values).
WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N")


def converted(image: Image.Image, mode: str) -> Image.Image:
    """``image`` in ``mode`` ("L" or "RGB"), 16-bit grayscale scaled to 8 bits first (65535 -> 255,
    257 * v -> v): Pillow's own convert clips it instead, which makes every pixel above 255 white.
    A mode-I image is scaled only when it holds values above 255: one of 0..255 is 8-bit already."""
    if image.mode in WIDE_GRAY or (image.mode == "I" and image.getextrema()[1] > 255):
        import numpy as np  # only for these images; `zoo --help` imports this module

        pixels = np.asarray(image).astype(np.int64) >> 8
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    return image.convert(mode)


@contextmanager
def image_file(path: Path, decode: bool = True) -> Iterator[Image.Image]:
    """An image file opened safely, for a dataset or for `zoo predict`: regular files only (a FIFO
    would block the read forever), PIL's decompression-bomb limit kept, every failure one line."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ZooError(f"{path} is not a readable image ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ZooError(f"{path} is not a readable image (not a regular file); only image files are read")
    with _opened(path, str(path), decode) as image:
        yield image


@contextmanager
def image_bytes(data: bytes, name: str, decode: bool = True, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """An image held in memory (a Hugging Face dataset's cell, an upload to `zoo serve`), opened as
    ``image_file`` opens files; ``name`` says where it is in the one-line error. One of more than
    ``max_pixels`` pixels is refused from its header, before any decoding."""
    with _opened(io.BytesIO(data), name, decode, max_pixels) as image:
        yield image


@contextmanager
def _opened(source: Path | io.BytesIO, name: str, decode: bool, max_pixels: int | None = None) -> Iterator[Image.Image]:
    try:
        with Image.open(source) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ZooError(
                    f"{name} is too large to decode safely ({image.width}x{image.height} pixels, "
                    f"at most {max_pixels:,})"
                )
            if decode:
                image.load()
            yield image
    except Image.DecompressionBombError as exc:
        raise ZooError(f"{name} is too large to decode safely ({exc})") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        detail = str(exc).replace(repr(source), repr(name))  # PIL names an upload's buffer, not its file
        raise ZooError(f"{name} is not a readable image ({type(exc).__name__}: {detail})") from None
