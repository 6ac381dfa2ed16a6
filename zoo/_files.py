"""Files as zoo reads and writes them: bounded reads of regular files, staged writes that never follow a link.

Every file zoo writes goes through ``atomic_write`` (or ``staged_folder`` for a folder): it is
written under a temporary name in the same folder, flushed to disk and renamed, so a crash never
leaves half a file, and nothing is written through a symbolic link.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ZooError

MAX_METADATA_BYTES = 64 << 20  # config.json, results.json, recipe.toml, hub.json: far below this


def read_file(path: Path, limit: int | None = MAX_METADATA_BYTES, follow_symlinks: bool = True) -> bytes | None:
    """The bytes of a file zoo wrote (run folder, checkpoint, registry.json); None when it does not exist.

    Only regular files are read (see ``open_regular``), metadata files only up to ``limit`` bytes,
    and with ``follow_symlinks=False`` (what `zoo push` uploads) never through a symbolic link.
    """
    descriptor = open_regular(path, os.O_RDONLY, follow_symlinks)
    if descriptor is None:
        return None
    size = os.fstat(descriptor).st_size
    if limit is not None and size > limit:  # a huge (or sparse) file would fill the memory
        os.close(descriptor)
        raise ZooError(f"{path} is {size:,} bytes: too large to be what zoo wrote there")
    with os.fdopen(descriptor, "rb") as file:
        try:
            data = file.read() if limit is None else file.read(limit + 1)  # bounded, even if it grows meanwhile
        except OSError as exc:
            raise ZooError(f"cannot read {path}: {exc.strerror}") from None
    if limit is not None and len(data) > limit:
        raise ZooError(f"{path} is over {limit:,} bytes: too large to be what zoo wrote there")
    return data


def open_regular(
    path: Path, flags: int, follow_symlinks: bool = True, fix: str = "put the file itself there"
) -> int | None:
    """A descriptor on the regular file at ``path``, opened with ``flags``; None when it does not exist.

    Opened non-blocking (a FIFO would block forever) and checked on the descriptor, so what is
    checked is what is then read or written: a folder, FIFO or device is a ZooError. With
    ``follow_symlinks=False`` a symbolic link is one too, and never followed, not even to create
    the file it points at (``O_NOFOLLOW``). ``fix`` tells the user what to do about a link.
    """
    try:
        descriptor = os.open(path, flags | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW), 0o644)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ZooError(f"{path} is a symbolic link, which zoo does not follow here; {fix}") from None
        if exc.errno == errno.EISDIR:
            raise ZooError(f"{path} is a folder; it should be a file") from None
        raise ZooError(f"cannot open {path}: {exc.strerror}") from None
    kind = stat.S_IFMT(os.fstat(descriptor).st_mode)
    if kind != stat.S_IFREG:
        os.close(descriptor)
        raise ZooError(f"{path} is {_KINDS.get(kind, 'not a regular file')}; it should be a file")
    return descriptor


_KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}  # fmt: skip


@contextmanager
def staged_file(path: Path) -> Iterator[BinaryIO]:
    """A new file that becomes ``path`` once the block ends without an error (flushed to disk first).

    Nothing is written through a symbolic link: the temporary file is new (``mkstemp`` creates it
    with ``O_EXCL``), and the rename replaces whatever ``path`` names, a link included, not the
    file a link points at. On an error the temporary file goes and ``path`` is left as it was.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ZooError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), _mode_for(path))  # mkstemp makes 0600; a plain write would not
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk, a read-only or vanished folder: the user's to fix
            raise ZooError(f"cannot write {path}: {exc.strerror}; {path.name} was left as it was") from exc
        raise


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through ``staged_file``."""
    with staged_file(path) as file:
        file.write(data)


def staging_folder(final: Path) -> Path:
    """A new hidden folder beside ``final`` (the same filesystem, so that the rename is atomic)."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}."))
    except OSError as exc:
        raise ZooError(f"cannot write {final}: {exc.strerror}") from None


def replace_folder(staging: Path, final: Path) -> None:
    """``staging`` becomes ``final`` whole; what ``final`` was (a folder, a file, a link: never followed) goes."""
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():
        shutil.rmtree(final)
    staging.rename(final)


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A new folder to fill, which becomes ``final`` once the block ends without an error."""
    staging = staging_folder(final)
    try:
        yield staging
        replace_folder(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _mode_for(path: Path) -> int:
    """The mode that writing ``path`` in place would leave: the regular file's own, else the umask's
    default (never the mode of a file that a link at ``path`` points at)."""
    with contextlib.suppress(FileNotFoundError):
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            return stat.S_IMODE(info.st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpinned_sha256(path: Path, pinned: str) -> str | None:
    """The sha256 of the file at ``path`` ("(missing)" when there is none) where it is not ``pinned``;
    None when the file is the one pinned."""
    found = sha256_of(path) if path.is_file() else "(missing)"
    return None if found == pinned else found


def write_json(path: Path, data: Any) -> None:
    """Strict JSON: a NaN or infinity is a bug to surface, never a file other tools cannot read."""
    atomic_write(path, (json.dumps(data, indent=2, allow_nan=False) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode())
