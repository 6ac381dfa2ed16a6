"""Who may write where: a run folder claimed by one process, and short locks around shared files.

A run claims its folder before it reads data, builds a model or pretrains a ``recipe:`` source:
``RUN/.zoo.lock`` is created with ``O_CREAT | O_EXCL`` and holds the owner's host, pid and start
time. A second run or a ``--resume`` of a folder in use is refused with one line. A later run
takes the folder over when its owner is provably dead (the same host, and the pid gone, a zombie,
or reused by a process begun after the claim) and says so. The claim also holds an advisory
``flock`` on the lock file, so that two processes cannot both take over from the same dead owner;
a child the run forks (a DataLoader worker) lets go of it at once.

``locked(path)`` serialises read-modify-write of a shared file (registry.json, a cache entry)
with ``flock`` on a sidecar file; the kernel releases it when a holder dies.

Lock files are zoo's own: a symbolic link in their place is never followed (it could point at a
file of the user's, outside the run), and a folder, FIFO or device there is refused. Either is
one line naming the file (``_files.open_regular``).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from . import _files
from .errors import ZooError

LOCK_NAME = ".zoo.lock"
NOT_FOLLOWED = "remove it: zoo keeps its own lock file there"


class Claim:
    """This process's claim on a run folder; ``release`` gives it up (the lock file goes)."""

    def __init__(self, path: Path, descriptor: int, took_over: dict | None) -> None:
        self.path = path
        self.descriptor = descriptor
        self.took_over = took_over  # the dead owner's record, when the folder was taken over
        _HELD.add(self)

    def release(self) -> None:
        if self.descriptor < 0:
            return
        self.path.unlink(missing_ok=True)
        os.close(self.descriptor)
        self.descriptor = -1
        _HELD.discard(self)


# The claims this process holds. A forked child (a DataLoader worker) shares the lock file's open file
# description and with it the flock: it lets go of its copy at once, so that a killed run's folder is
# free when the run is gone, not when its last worker has noticed, and never unlinks its parent's lock.
_HELD: set[Claim] = set()


def _let_go_in_child() -> None:
    for claim in list(_HELD):
        os.close(claim.descriptor)
        claim.descriptor = -1
    _HELD.clear()


os.register_at_fork(after_in_child=_let_go_in_child)


def _record() -> bytes:
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}).encode()


def _alive(owner: dict) -> bool:
    """False only when the owner is provably dead: on this host, and its pid gone or not the owner's."""
    if owner.get("host") != socket.gethostname() or not isinstance(owner.get("pid"), int):
        return True
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive unless it cannot be the owner
        pass
    return not _not_the_owner(owner["pid"], owner.get("started"))


def _not_the_owner(pid: int, started: object) -> bool:
    """Whether the process ``pid`` provably is not the owner that claimed at ``started``: a zombie (it has
    exited; an orphan waits for init, which in a container may never collect it), or a process begun
    after the claim (the dead owner's pid reused: containers reuse their small pids soon)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(") ")[2].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))  # fmt: skip
    except OSError:  # no /proc (macOS), or gone meanwhile: os.kill's answer stands
        return False
    if fields[0] == "Z":
        return True
    try:
        claimed = datetime.fromisoformat(started).timestamp() if isinstance(started, str) else None
    except ValueError:
        claimed = None
    # /proc's field 22: the start in clock ticks after boot. Both clocks are whole seconds at best: a margin.
    begun = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return claimed is not None and begun > claimed + 2


def _owner(descriptor: int) -> dict:
    os.lseek(descriptor, 0, os.SEEK_SET)
    try:
        owner = json.loads(os.read(descriptor, 4096) or b"{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def claim(folder: Path) -> Claim:
    """Claim ``folder`` (created if needed) for this process; a ZooError when another process holds it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(f"cannot create the run folder {folder}: {exc.strerror}") from None
    path = folder / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:  # a claim, a stale one, or something else in its place: _take_over tells
        return _take_over(folder, path)
    except OSError as exc:
        raise ZooError(f"cannot claim the run folder {folder}: {exc.strerror}") from None
    fcntl.flock(descriptor, fcntl.LOCK_EX)  # at once: the file is new and ours
    os.write(descriptor, _record())
    return Claim(path, descriptor, None)


def _take_over(folder: Path, path: Path) -> Claim:
    descriptor = _files.open_regular(path, os.O_RDWR, follow_symlinks=False, fix=NOT_FOLLOWED)
    if descriptor is None:  # released between our two calls: try again from the start
        return claim(folder)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        owner = _owner(descriptor)
        being_written = not owner and time.time() - os.fstat(descriptor).st_mtime < 60
        if being_written or (owner and _alive(owner)):
            raise BlockingIOError
    except BlockingIOError:
        owner = _owner(descriptor)
        os.close(descriptor)
        who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('started', '?')}"
        raise ZooError(
            f"{folder} is in use by {who}: wait for that run to end or stop it (its lock is {path})"
        ) from None
    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.write(descriptor, _record())
    return Claim(path, descriptor, owner)


def _read(path: Path) -> dict:
    """The owner a lock file names; {} when it names none (empty, damaged, or not a regular file)."""
    try:
        owner = json.loads(_files.read_file(path, limit=4096, follow_symlinks=False) or b"{}")
    except (ZooError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def is_abandoned(folder: Path, older_than: float) -> bool:
    """Whether ``folder`` was left by a dead process: its claim's owner is gone, or it was never claimed
    and has not changed for ``older_than`` seconds."""
    path = folder / LOCK_NAME
    if not os.path.lexists(path):
        try:
            return time.time() - folder.stat().st_mtime > older_than
        except FileNotFoundError:
            return False
    owner = _read(path)
    return bool(owner) and not _alive(owner)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (through the sidecar ``.NAME.lock``) while the block runs."""
    sidecar = path.parent / f".{path.name}.lock"
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(f"cannot lock {path}: {exc.strerror}") from None
    descriptor = _files.open_regular(sidecar, os.O_RDWR | os.O_CREAT, follow_symlinks=False, fix=NOT_FOLLOWED)
    if descriptor is None:
        raise ZooError(f"cannot lock {path}: its folder {path.parent} was removed meanwhile")
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)
