"""Stopping a run cleanly on Ctrl-C or SIGTERM, with every rank of a DDP run stopping after the same batch."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..parallel import distributed

# Under DDP the ranks agree on Ctrl-C at least this often (torchrun kills them 30 s after SIGINT).
STOP_CHECK_SECONDS = 2.0


class StopRequests:
    """Ctrl-C under DDP: torchrun passes SIGINT to every rank, which only sets ``flag``; the ranks
    agree on it at a check (a collective) and stop after the same batch.

    No rank's clock decides alone when to check, or the ranks would wait in different
    collectives: they count batches, and at each check agree on how many to count until the next
    from the slowest rank's pace, so that checks come every ``STOP_CHECK_SECONDS`` or so, however
    slow a batch is. A new phase (an epoch's training, a validation) starts with a check after
    its first batch, as batches of another phase take another time.
    """

    def __init__(self) -> None:
        self.flag = torch.zeros((), dtype=torch.long)
        self.signal: int | None = None  # the signal that asked to stop (SIGINT or SIGTERM)
        self.restart()

    def restart(self) -> None:
        self.countdown, self.counted, self.since = 1, 0, time.monotonic()

    def batch_done(self) -> None:
        self.counted += 1
        if self.counted >= self.countdown:
            self.check()

    def check(self) -> None:
        """KeyboardInterrupt on every rank once any rank was asked to stop (a collective under DDP)."""
        if distributed.world_size() == 1:
            return
        now = time.monotonic()
        pace = (now - self.since) / max(1, self.counted)
        batches = max(1, int(STOP_CHECK_SECONDS / max(pace, 1e-6)))
        stop, fewest = distributed.max_across_ranks(torch.stack([self.flag, torch.tensor(-batches)])).tolist()
        self.countdown, self.counted, self.since = -fewest, 0, now
        if stop:
            raise KeyboardInterrupt


@contextlib.contextmanager
def stopping_on_signals(stops: StopRequests) -> Iterator[None]:
    """Ctrl-C, and SIGTERM (a scheduler's time limit or preemption; torchrun passes either on to
    every rank), stop training with the run folder saved, as ``interrupted``.

    Under DDP a signal only asks to stop; the ranks agree at the next check (``StopRequests``:
    within seconds, in training and in validation) and stop after the same batch, so that no rank
    is left in a collective the others have abandoned. A single process stops at once.
    """
    if threading.current_thread() is not threading.main_thread():  # only there can signals be handled
        yield
        return
    ranks = distributed.world_size()

    def asked_to_stop(signum: int, frame: Any) -> None:
        stops.signal = signum
        if ranks > 1:
            stops.flag.fill_(1)
        else:
            raise KeyboardInterrupt

    stopping = (signal.SIGINT, signal.SIGTERM) if ranks > 1 else (signal.SIGTERM,)
    previous = {signum: signal.signal(signum, asked_to_stop) for signum in stopping}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
