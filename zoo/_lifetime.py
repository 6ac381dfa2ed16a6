"""A child process that ends when its parent does, even when the parent is killed with ``kill -9``.

Shared by a rank of torchrun (it ends with its launcher) and a trial of `zoo tune` (it ends with its study):
neither may go on as an orphan, holding a GPU and its run folder's claim.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>: the signal a process gets when its parent dies
WATCH_SECONDS = 0.5  # elsewhere, how often the watching thread looks at the parent


def end_with_parent(parent: int, signum: int, *, libc: ctypes.CDLL | None = None, watch: bool = True) -> None:
    """Have this process get ``signum`` when ``parent``, its parent, dies, and at once if it died already.

    On Linux the kernel sends it (``PR_SET_PDEATHSIG``); elsewhere a thread watching the parent does, with
    ``watch`` (not in a Popen preexec_fn: exec ends the thread). A preexec_fn passes ``libc``, looked up
    before the fork, so that the child only calls it.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True) if libc is None else libc
        if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    elif watch:
        threading.Thread(target=_watch_parent, args=(parent, signum), daemon=True, name="zoo-parent-watch").start()
    if os.getppid() != parent or parent == 1:  # the parent died before the lines above took hold
        os.kill(os.getpid(), signum)


def _watch_parent(parent: int, signum: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os.kill(os.getpid(), signum)
