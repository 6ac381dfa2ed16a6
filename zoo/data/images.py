"""Image files opened safely: for an image dataset, the decoded cache and `zoo predict`."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import ZooError


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
def image_bytes(data: bytes, name: str, decode: bool = True) -> Iterator[Image.Image]:
    """An image held in memory (a Hugging Face dataset's cell), opened as ``image_file`` opens files;
    ``name`` says where it is in the one-line error."""
    with _opened(io.BytesIO(data), name, decode) as image:
        yield image


@contextmanager
def _opened(source: Path | io.BytesIO, name: str, decode: bool) -> Iterator[Image.Image]:
    try:
        with Image.open(source) as image:
            if decode:
                image.load()
            yield image
    except Image.DecompressionBombError as exc:
        raise ZooError(f"{name} is too large to decode safely ({exc})") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ZooError(f"{name} is not a readable image ({type(exc).__name__}: {exc})") from None
