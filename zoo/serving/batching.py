"""Micro-batching: images of requests that arrive together go through the model as one batch.

Requests queue their images; one task collects them until ``max_batch`` images are waiting or the
first has waited ``max_wait`` seconds, and runs the model in a worker thread, so the event loop
keeps accepting and decoding requests while the model computes. A request's images always stay
together; one larger than ``max_batch`` goes through alone, in chunks of ``max_batch``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

Classify = Callable[[torch.Tensor], torch.Tensor]  # a batch of images to logits


@dataclass
class _Waiting:
    images: torch.Tensor
    logits: asyncio.Future[torch.Tensor]


class MicroBatcher:
    """``await batcher.logits(images)`` gives the model's logits for ``images``, batched with other requests'."""

    def __init__(self, classify: Classify, max_batch: int, max_wait: float) -> None:
        self.classify = classify
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.calls = 0  # model calls, and the images and largest batch they took: /metadata shows them
        self.images = 0
        self.largest_batch = 0
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        self._held: _Waiting | None = None  # taken from the queue, but it did not fit the last batch
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zoo-model")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self) -> None:
        """Once no request waits any more (uvicorn drains them first)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._model_thread.shutdown(wait=True)

    async def logits(self, images: torch.Tensor) -> torch.Tensor:
        waiting = _Waiting(images, asyncio.get_running_loop().create_future())
        await self._queue.put(waiting)
        return await waiting.logits

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect(loop)
            try:
                logits = await loop.run_in_executor(
                    self._model_thread, self._forward, torch.cat([waiting.images for waiting in batch])
                )
            except Exception as exc:  # the model's failure is each waiting request's, not the server's
                for waiting in batch:
                    if not waiting.logits.done():
                        waiting.logits.set_exception(exc)
                continue
            start = 0
            for waiting in batch:
                if not waiting.logits.done():  # a client that went away cancelled its future
                    waiting.logits.set_result(logits[start : start + len(waiting.images)])
                start += len(waiting.images)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Waiting]:
        """The next batch: the first request waiting, then those that fit until max_batch or max_wait."""
        first = self._held or await self._queue.get()
        self._held = None
        batch, size = [first], len(first.images)
        deadline = loop.time() + self.max_wait
        while size < self.max_batch:
            try:
                waiting = await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
            if size + len(waiting.images) > self.max_batch:
                self._held = waiting  # the first of the next batch
                break
            batch.append(waiting)
            size += len(waiting.images)
        return batch

    @torch.no_grad()
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += len(images)
        self.largest_batch = max(self.largest_batch, len(images))
        chunks = [self.classify(chunk) for chunk in images.split(self.max_batch)]
        return torch.cat(chunks).float()
