"""Batches of a split on the device, the same for a given (seed, epoch) and after a resume.

Two paths to the model. A dataset that holds its samples in memory as one uint8 tensor
(``images``: N x C x H x W, ``targets``: N, as the built-in ``mnist`` does), or an image folder
with a decoded cache, is batched straight from that tensor, on the device, normalised per batch
with no per-item Python work. Any other dataset goes through a DataLoader with workers (and
pinned memory on CUDA), each sample's random transform seeded from (seed, epoch, position, rank)
alone, so that a resumed run repeats it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import ZooError, from_worker
from ..parallel import distributed
from .augment import Augmentation, BatchAugment
from .cache import centre
from .contract import facts
from .preprocessing import Preprocessing
from .splits import Split


def sample_batch(
    split: Split,
    preprocessing: Preprocessing,
    device: torch.device,
    augmentation: Augmentation | None,
    channels_last: bool,
    size: int = 2,
) -> torch.Tensor:
    """``size`` inputs of ``split`` as its training batches give them: to check that the model takes them."""
    sample = Split(split.dataset, split.indices[:size], split.labels[:size])
    sample.transform, sample.decoded = split.transform, split.decoded
    batches = Batches(sample, size, device, preprocessing, shuffle=True, channels_last=channels_last,
                      augmentation=augmentation)  # fmt: skip
    inputs, _ = next(batches.epoch())
    return inputs


def resized(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A batch (N x C x H x W) resized whole to ``size``: bilinear, antialiased when shrinking, as
    ``Preprocessing``'s default resizes an image file for `zoo predict`."""
    return F.interpolate(images.float(), size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


class EpochOrder(Sampler[tuple[Any, int]]):
    """The samples of the current epoch, in order, each with the seed of its random transform; set
    before each pass over a persistent DataLoader."""

    def __init__(self) -> None:
        self.keys: Iterable[tuple[Any, int]] = []  # a stream's are read as the DataLoader asks for them

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class SeededSamples(Dataset):
    """A split as a DataLoader reads it, by (position, seed): each sample's transform draws from its
    own seed, so augmentation depends on (seed, epoch, position, rank) alone, not on which worker
    reads the sample, what that worker read before (workers persist), or where a resumed run began."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[Any, int]) -> tuple[torch.Tensor, int]:
        position, seed = key  # a stream's position is the row itself
        with seeded_rngs(seed):
            return self.split[position]


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """The global RNGs that transforms draw from (torch's CPU generator, Python's, numpy's) seeded
    with ``seed`` for the block, and restored after it: in the main process (``num_workers = 0``)
    dropout and MixUp go on drawing from the checkpointed states."""
    saved = torch.random.get_rng_state(), random.getstate(), np.random.get_state()
    torch.random.default_generator.manual_seed(seed)  # not torch.manual_seed: that reseeds CUDA too
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    try:
        yield
    finally:
        torch.random.set_rng_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


class Batches:
    """``(inputs, labels)`` batches of one split on ``device``; shuffled batches depend on (seed, epoch).

    In-memory uint8 datasets are normalised here with ``preprocessing``'s mean and std; image
    datasets arrive normalised by their transforms (``attach_transforms``).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        device: torch.device,
        preprocessing: Preprocessing,
        shuffle: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        channels_last: bool = False,
        balanced: bool = False,
        augmentation: Augmentation | None = None,
    ) -> None:
        self.split = split
        self.balanced = balanced
        self.batch_size = batch_size
        self.device = device
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.input_size = preprocessing.input_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # Tensors batched in this process: an in-memory dataset, or an image folder's decoded cache.
        self.in_memory = facts(split.dataset).in_memory or split.decoded is not None
        self.decoded = split.decoded if split.decoded is not None and split.decoded.memory is None else None
        # uint8 batches (in memory, or from image workers) become (x / 255 - mean) / std on the
        # device: one multiply and one subtract per batch.
        std_t = torch.tensor(preprocessing.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(preprocessing.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = mean_t / std_t
        self.order = EpochOrder()
        self.loader: DataLoader | None = None
        # Image datasets are augmented by their transforms, in the workers; tensors here, on the device.
        self.augment = BatchAugment(augmentation) if augmentation is not None and self.in_memory else None
        if self.in_memory:
            self.labels = split.labels.to(device)
        if self.in_memory and self.decoded is None:  # the split's images on the device, whole
            images = split.decoded.memory if split.decoded is not None else facts(split.dataset).images
            whole = len(split.indices) == len(images) and bool((split.indices == torch.arange(len(images))).all())
            # A split of the whole dataset in order (MNIST's test split) is used as it is, not copied.
            self.images = (images if whole else images[split.indices]).to(device)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return -(-self.shard_size // self.batch_size)

    @property
    def images_per_epoch(self) -> int:
        """Images this rank's batches hold per epoch: training fills its last batch up (``epoch``)."""
        return len(self) * self.batch_size if self.shuffle else self.shard_size

    @property
    def shard_size(self) -> int:
        """Samples per epoch on this rank: training shards are padded to the same size on every rank."""
        ranks, size = distributed.world_size(), len(self.split)
        return -(-size // ranks) if self.shuffle else len(range(distributed.rank(), size, ranks))

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``, from batch number ``start`` (to resume inside an epoch)."""
        order = torch.arange(len(self.split))
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            if self.balanced:  # each class as often as any other: rare images repeat, common ones are skipped
                per_image = (1.0 / torch.bincount(self.split.labels).double())[self.split.labels]
                order = torch.multinomial(per_image, len(self.split), replacement=True, generator=generator)
            else:
                order = torch.randperm(len(self.split), generator=generator)
        # Every rank draws the same order and takes its own share of it.
        order = distributed.shard(order, pad=self.shuffle)
        if self.shuffle and len(order) % self.batch_size:
            # The last training batch is filled up from the start of the order: every step sees a full
            # batch (BatchNorm cannot train on one sample, and torch.compile keeps one shape).
            order = order.repeat(-(-self.batch_size // len(order)) + 1)[: len(self) * self.batch_size]
        order = order[start * self.batch_size :]
        if self.in_memory:
            yield from self._from_memory(order, epoch, start)
        else:
            yield from self._from_loader(order, epoch, start * self.batch_size)

    def _seed(self, epoch: int, number: int) -> int:
        """The seed of batch or sample ``number`` of ``epoch`` on this rank: a resumed run draws the same."""
        return (((self.seed * 100_003 + epoch) * 1_000_003 + number) * 1_009 + distributed.rank()) % (1 << 63)

    def _from_memory(self, order: torch.Tensor, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sequential = not self.shuffle and len(order) == len(self.split) and self.decoded is None
        order = order.to(self.device) if self.decoded is None else order
        size = tuple(self.input_size[1:])
        starts = range(0, len(order), self.batch_size)
        if self.decoded is not None:  # read from the cache file, a few batches ahead: only those in memory
            chunks = [self.split.indices[order[start : start + self.batch_size]] for start in starts]
            read = self.decoded.read_ahead(chunks, pin=self.device.type == "cuda")
        for number, start in enumerate(starts, start=first):
            if sequential:  # slices, no gather
                images = self.images[start : start + self.batch_size]
                labels = self.labels[start : start + self.batch_size]
            elif self.decoded is not None:
                images = next(read).to(self.device, non_blocking=True)
                labels = self.labels[order[start : start + self.batch_size].to(self.device)]
            else:
                chosen = order[start : start + self.batch_size]
                images, labels = self.images[chosen], self.labels[chosen]
            if self.augment is None and tuple(images.shape[-2:]) != size:
                # A cache's squares: the centre crop; a dataset's own tensors: resized whole.
                images = centre(images, size[0]) if self.split.decoded is not None else resized(images, size)
            inputs = images.float()
            if self.augment is not None:  # drawn from (seed, epoch, batch, rank): resumes exactly, differs per rank
                generator = torch.Generator(self.device).manual_seed(self._seed(epoch, number))
                inputs = self.augment(inputs, generator, size)
            inputs = inputs.mul_(self.scale).sub_(self.shift)
            yield inputs.contiguous(memory_format=self.memory_format), labels

    def state(self) -> dict[str, Any]:
        """What a checkpoint must hold to go on with these batches: nothing, the order being a
        function of (seed, epoch) (a stream's batches hold where the stream is)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Go on from a checkpoint's ``state`` (what ``state`` gave)."""

    def _from_loader(self, order: torch.Tensor, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches read by the DataLoader's workers; ``first``: the position of ``order[0]`` in the epoch."""
        yield from self._loaded([(index, self._seed(epoch, first + i)) for i, index in enumerate(order.tolist())])

    def _loaded(self, keys: Iterable[tuple[Any, int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``keys`` (what ``self.split[key]`` reads, and its transform's seed), read by the
        DataLoader's workers."""
        self.order.keys = keys
        if self.loader is None:  # one loader for the whole run: its workers persist from epoch to epoch
            self.loader = DataLoader(
                SeededSamples(self.split),
                batch_size=self.batch_size,
                sampler=self.order,
                num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda",  # page-locked batches: the copies below overlap compute
                prefetch_factor=4 if self.num_workers else None,
                persistent_workers=self.num_workers > 0,
                # Its own generator for the workers' base seeds: starting an epoch draws nothing from
                # the global RNG, whose state the checkpoints hold.
                generator=torch.Generator(),
            )
        try:
            for inputs, labels in self.loader:
                inputs = inputs.to(self.device, non_blocking=True)
                if inputs.dtype == torch.uint8:
                    inputs = inputs.float().mul_(self.scale).sub_(self.shift)
                if tuple(inputs.shape[-2:]) != tuple(self.input_size[1:]):  # a tensor dataset's own size
                    inputs = resized(inputs, self.input_size[1:])
                yield inputs.contiguous(memory_format=self.memory_format), labels.to(self.device, non_blocking=True)
        except ZooError as exc:
            raise from_worker(exc) from None
