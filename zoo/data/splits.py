"""Data: the recipe's class subset, training/validation/test splits, and batches on the device.

Two paths to the model. A dataset that holds its samples in memory as one uint8 tensor
(``images``: N x C x H x W, ``targets``: N, as the built-in ``mnist`` does) is batched straight
from that tensor, on the device, normalised per batch with no per-item Python work. Any other
dataset goes through a DataLoader with workers (and pinned memory on CUDA), each sample's random
transform seeded from (seed, epoch, position, rank) alone, so that a resumed run repeats it.

An image dataset (one with torchvision's ``transform`` attribute, like ``image_folder``) gives
PIL images; its transforms come from timm: the model's pretrained config resolved by
``timm.data.resolve_data_config`` (input size, mean/std, interpolation, crop), the ``[data]``
keys on top, ``timm.data.create_transform`` for training (augmented unless ``data.augment =
false``) and evaluation. Images are converted to the model's input channels first. timm is
imported there only, not for tensor datasets: it costs 1.5 s of start-up.

The model is built for the data (``DataInput``): a tensor dataset fixes its channels, and its
size unless ``data.image_size`` resizes it; image files are converted and resized to the model.
A tensor dataset meets a model built for one size (a ViT) resized to that size.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config.recipe import default_data_dir
from ..config.schema import DataConfig
from ..errors import ZooError, did_you_mean, from_worker
from ..parallel import distributed
from ..plugins import _registry as registry
from .augment import Augmentation, BatchAugment
from .cache import DecodedImages, Layout, centre, choose, decoded
from .preprocessing import Preprocessing

# data.image_size applies to every dataset (a tensor dataset is resized on the device); these to image files only.
IMAGE_KEYS = ("mean", "std", "interpolation", "crop_pct", "crop_mode", "auto_augment")


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
    try:
        with Image.open(path) as image:
            if decode:
                image.load()
            yield image
    except Image.DecompressionBombError as exc:
        raise ZooError(f"{path} is too large to decode safely ({exc})") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ZooError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from None


def class_weights(setting: str | list[float], splits: Splits) -> list[float]:
    """``loss.class_weights``: as listed, or for "balanced" n / (classes x n_c) over the training
    split (rarer classes weigh more; an image's weight averages 1)."""
    names, labels = splits.label_names, splits.train.labels
    if setting != "balanced":
        if len(setting) != len(names):
            raise ZooError(f"loss.class_weights lists {len(setting)} weights for {len(names)} classes "
                           f"({', '.join(names)}); give one per class, in data.classes order")  # fmt: skip
        return list(setting)
    counts = torch.bincount(labels, minlength=len(names))
    if not counts.all():
        missing = names[int((counts == 0).nonzero()[0])]
        raise ZooError(f"loss.class_weights = balanced: class {missing} has no training image")
    return (len(labels) / (len(names) * counts.double())).tolist()


def data_root(config: DataConfig) -> Path:
    """``data.root``, else $ZOO_DATA_DIR, else ~/.cache/zoo/data."""
    return Path(config.root) if config.root else default_data_dir()


def is_in_memory(dataset: Dataset) -> bool:
    images = getattr(dataset, "images", None)
    return isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4


def is_image_dataset(dataset: Dataset) -> bool:
    """A dataset of PIL images that takes a torchvision-style ``transform``."""
    return hasattr(dataset, "transform") and not is_in_memory(dataset)


class Split(Dataset):
    """The samples ``indices`` of ``dataset``, labels renumbered to ``labels``, through ``transform``."""

    def __init__(self, dataset: Dataset, indices: torch.Tensor, labels: torch.Tensor) -> None:
        self.dataset = dataset
        self.indices = indices
        self.labels = labels
        self.transform: Callable[[Any], torch.Tensor] | None = None
        self.decoded: DecodedImages | None = None  # the dataset's decoded cache, when data.cache uses one

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        sample, _ = self.dataset[int(self.indices[position])]
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, int(self.labels[position])


@dataclass
class Splits:
    train: Split
    val: Split | None
    test: Split
    label_names: list[str]

    @property
    def splits(self) -> list[Split]:
        return [split for split in (self.train, self.val, self.test) if split is not None]

    @property
    def images(self) -> bool:
        """Whether the splits hold PIL images, which need transforms (else tensors of their own size)."""
        return is_image_dataset(self.train.dataset)


def load_splits(config: DataConfig, seed: int) -> Splits:
    """The recipe's data: its classes relabelled 0..n-1, a stratified validation split, per_class."""
    root = data_root(config)
    # Built once per node (one download, one scan of an image folder) and sent to the node's other ranks.
    train_set, test_set = distributed.from_node_main(
        lambda: tuple(registry.instantiate("dataset", config.dataset, config.args, "", root, split)
                      for split in ("train", "test"))
    )  # fmt: skip
    if is_image_dataset(train_set):
        train_set.transform = test_set.transform = None  # each split gets its own (attach_transforms)
    else:
        misplaced = [key for key in IMAGE_KEYS if getattr(config, key) is not None]
        if misplaced:
            raise ZooError(
                f"data.{misplaced[0]} applies to image datasets (image_folder); '{config.dataset}' gives tensors "
                f"normalised its own way: remove data.{misplaced[0]}"
            )
    names = [str(name) for name in getattr(train_set, "classes", [])]
    if not names:
        raise ZooError(f"dataset '{config.dataset}' has no .classes: a dataset plugin must list its label names")
    selected = select_classes(config.classes, names)
    relabel = torch.full((len(names),), -1, dtype=torch.long)
    relabel[torch.tensor(selected)] = torch.arange(len(selected))

    generator = torch.Generator().manual_seed(seed)
    train_targets = targets_of(train_set)
    train_parts, val_parts = [], []
    per_class = config.per_class if isinstance(config.per_class, list) else [config.per_class] * len(selected)
    if len(per_class) != len(selected):
        raise ZooError(f"data.per_class lists {len(per_class)} counts for {len(selected)} classes; give one per "
                       "class, in data.classes order, or a single number")  # fmt: skip
    for class_index, wanted in zip(selected, per_class, strict=True):
        members = (train_targets == class_index).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = round(len(members) * config.val_split)
        val_parts.append(members[:n_val])
        rest = members[n_val:]
        if wanted is not None:
            if wanted > len(rest):
                raise ZooError(
                    f"data.per_class = {wanted}, but class '{names[class_index]}' has only "
                    f"{len(rest)} training examples (after the validation split); lower data.per_class"
                )
            rest = rest[:wanted]
        if len(rest) == 0:
            raise ZooError(f"data.classes: class '{names[class_index]}' has no training examples in {root}")
        train_parts.append(rest)

    def split_of(dataset: Dataset, parts: Sequence[torch.Tensor] | None, targets: torch.Tensor) -> Split:
        indices = torch.cat(list(parts)).sort().values if parts else (relabel[targets] >= 0).nonzero().flatten()
        return Split(dataset, indices, relabel[targets[indices]])

    train = split_of(train_set, train_parts, train_targets)
    val = split_of(train_set, val_parts, train_targets) if config.val_split > 0 else None
    test = split_of(test_set, None, targets_of(test_set))
    if len(test) == 0:
        raise ZooError(f"dataset '{config.dataset}' has no test examples of the selected classes")
    return Splits(train, val, test, [names[i] for i in selected])


@dataclass(frozen=True)
class DataInput:
    """What the data fixes of the model's input; ``model.build_model`` builds the model for it."""

    channels: int | None  # a tensor dataset's; image files are converted to the model's channels
    size: tuple[int, int] | None  # data.image_size, else a tensor dataset's own; image files follow the model
    chosen: bool  # the size is data.image_size: a model built for one size (a ViT) is built for it too


def data_input(config: DataConfig, splits: Splits) -> DataInput:
    chosen = _image_size(config.image_size)
    if splits.images:
        return DataInput(None, chosen, chosen is not None)
    channels, height, width = tensor_shape(splits.train.dataset)
    return DataInput(channels, chosen or (height, width), chosen is not None)


def tensor_shape(dataset: Dataset) -> tuple[int, int, int]:
    """C x H x W of a tensor dataset's samples."""
    shape = tuple(dataset.images.shape[1:] if is_in_memory(dataset) else dataset[0][0].shape)
    if len(shape) != 3:
        raise ZooError(f"the dataset's samples are tensors of shape {list(shape)}; zoo takes images, C x H x W")
    return shape


def built_for_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size ``model`` is built for (a ViT's ``img_size``, a zoo backbone's ``image_size``);
    None for a model that takes any size (a CNN with global pooling)."""
    size = getattr(model, "built_with", {}).get("image_size")  # zoo's Classifier
    if size is None and hasattr(model, "pretrained_cfg"):
        from timm.models import get_model_traits

        size = get_model_traits(model).get("img_size")
    return _image_size(list(size) if isinstance(size, tuple) else size)


def resolve_preprocessing(config: DataConfig, model: nn.Module, splits: Splits) -> Preprocessing:
    """The run's preprocessing: for image datasets timm's, following the model and ``[data]``; else the
    dataset's, at ``data.image_size`` or the size the model is built for (its tensors are resized to it)."""
    if splits.images:
        return Preprocessing.from_config(image_config(config, model, splits.train), "data")
    dataset = splits.train.dataset
    channels, *own_size = tensor_shape(dataset)
    height, width = _image_size(config.image_size) or built_for_size(model) or own_size
    return Preprocessing(
        input_size=(channels, height, width),
        mean=tuple(getattr(dataset, "mean", (0.0,) * channels)),
        std=tuple(getattr(dataset, "std", (1.0,) * channels)),
    )


def attach_cache(
    splits: Splits,
    preprocessing: Preprocessing,
    config: DataConfig,
    augmentation: Augmentation | None,
    workers: int,
    progress: bool,
) -> str:
    """Give an image dataset's splits their decoded cache (``data.cache``); the mode chosen, in words."""
    if not splits.images:
        return "none"
    layout = Layout.of(preprocessing)
    mode = choose(config.cache, splits.train.dataset, layout, bool(augmentation and augmentation.auto_augment))
    if mode == "none":
        return mode
    assert layout is not None, "choose() picks a cache only where there is a layout"
    caches: dict[int, DecodedImages] = {}
    for split in splits.splits:
        if id(split.dataset) not in caches:
            caches[id(split.dataset)] = decoded(
                split.dataset, layout, mode == "memory", workers, progress, config.cache_verify or "stat"
            )
        split.decoded = caches[id(split.dataset)]
    built = [cache.built for cache in caches.values() if cache.built is not None]
    how = (
        f"decoded {sum(len(cache) for cache in caches.values()):,} images in {sum(built):.1f} s" if built else "reused"
    )
    return f"{mode}, {layout.size} px squares ({how}) in {caches[id(splits.train.dataset)].path.parent}"


def attach_transforms(splits: Splits, preprocessing: Preprocessing, augmentation: Augmentation | None) -> None:
    """Give an image dataset's splits their transforms: training's augmented, the others' not."""
    if not splits.images:
        return
    train_transform = build_transform(preprocessing, training=True, augmentation=augmentation, uint8=True)
    eval_transform = build_transform(preprocessing, uint8=True)
    for split in splits.splits:
        split.transform = train_transform if split is splits.train else eval_transform


def image_config(config: DataConfig, model: nn.Module, sample_split: Split) -> dict[str, Any]:
    """timm's data config for ``model`` (its pretrained_cfg, or the preprocessing of the run its weights
    came from, else the images' own size), at the size the model is built for, ``[data]`` keys on top."""
    from timm.data import resolve_data_config

    channels = input_channels(model)
    defaults = getattr(model, "pretrained_cfg", None)
    inherited = getattr(model, "pretrained_preprocessing", None)  # zoo's own backbone, loaded from a run
    if not defaults and inherited is not None:
        defaults = inherited.to_config()
    if not defaults:  # zoo's own backbones from scratch: the images' size, mid-grey normalisation, no crop
        sample, _ = sample_split.dataset[int(sample_split.indices[0])]
        defaults = {"input_size": (channels, sample.height, sample.width), "crop_pct": 1.0,
                    "mean": (0.5,) * channels, "std": (0.5,) * channels}  # fmt: skip
    height, width = _image_size(config.image_size) or built_for_size(model) or tuple(defaults["input_size"][1:])
    args: dict[str, Any] = {
        "input_size": (channels, height, width),
        "mean": _per_channel(config.mean, defaults.get("mean"), channels, "mean"),
        "std": _per_channel(config.std, defaults.get("std"), channels, "std"),
        "interpolation": config.interpolation,
        "crop_pct": config.crop_pct,
        "crop_mode": config.crop_mode,
    }
    resolved = resolve_data_config(args, pretrained_cfg=dict(defaults))
    return {key: tuple(value) if isinstance(value, list | tuple) else value for key, value in resolved.items()}


def _image_size(size: int | list[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    sizes = [size] * 2 if isinstance(size, int) else list(size)
    if len(sizes) != 2 or min(sizes) < 1:
        raise ZooError(f"data.image_size = {size!r}: write N or [HEIGHT, WIDTH] with positive numbers")
    return sizes[0], sizes[1]


def _per_channel(
    given: list[float] | None, default: Sequence[float] | None, channels: int, key: str
) -> tuple[float, ...] | None:
    """``given`` (or the model's default) with one value per input channel."""
    if given is not None:
        if len(given) not in (1, channels):
            raise ZooError(f"data.{key} has {len(given)} values, but the model takes {channels} input channel(s)")
        return tuple(given) * (channels // len(given))
    if default is None or len(default) == channels:
        return tuple(default) if default is not None else None
    # A 3-channel model's statistics for grayscale input (timm's in_chans=1 sums the RGB filters).
    return (sum(default) / len(default),) * channels


def input_channels(model: nn.Module) -> int:
    """The channels the model takes: its backbone's ``in_chans``, else its first convolution's, else 3."""
    built_with = getattr(model, "built_with", {}).get("in_chans")  # zoo's Classifier
    if built_with is not None:
        return int(built_with)
    first_conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    if first_conv:
        try:
            return int(model.get_submodule(first_conv).in_channels)
        except AttributeError:
            pass  # some timm models name a wrapper as first_conv: fall through to the first Conv2d
    convolution = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return int(convolution.in_channels) if convolution is not None else 3


def build_transform(
    preprocessing: Preprocessing,
    training: bool = False,
    augmentation: Augmentation | None = None,
    uint8: bool = False,
) -> Callable[[Any], Any]:
    """timm's evaluation transform for ``preprocessing`` (its training one with ``augmentation``,
    none when None), after converting each image to the model's channels.

    ``uint8``: stop before normalising (timm's prefetcher form, a C x H x W uint8 array): workers
    then send a quarter of the bytes, and ``Batches`` normalises on the device.
    """
    from timm.data import create_transform

    options: dict[str, Any] = dict(preprocessing.to_config(), use_prefetcher=uint8)
    if training:
        options |= {"is_training": True, "no_aug": augmentation is None}
    if training and augmentation is not None:
        options |= {key: getattr(augmentation, key) for key in ("scale", "ratio", "hflip", "color_jitter")}
        options["auto_augment"] = augmentation.auto_augment
    transform = create_transform(**options)
    if training and augmentation is not None and (augmentation.degrees or augmentation.translate):
        from torchvision.transforms import Compose, RandomAffine

        shift = (augmentation.translate, augmentation.translate)
        transform = Compose([RandomAffine(augmentation.degrees, translate=shift), transform])
    return ConvertThen("L" if preprocessing.channels == 1 else "RGB", transform)


class ConvertThen:
    """Convert a PIL image to ``mode``, then apply ``transform`` (a class, so workers can pickle it)."""

    def __init__(self, mode: str, transform: Callable[[Any], torch.Tensor]) -> None:
        self.mode = mode
        self.transform = transform

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image.convert(self.mode))

    def __repr__(self) -> str:
        return f"ConvertThen({self.mode!r}, {self.transform!r})"


def select_classes(wanted: Sequence[int | str] | None, names: list[str]) -> list[int]:
    """Indices of the wanted classes (given as indices or names), in the order given."""
    if wanted is None:
        return list(range(len(names)))
    if not wanted:
        raise ZooError("data.classes is empty: it selects nothing; list some classes or remove the key")
    indices = []
    for item in wanted:
        if isinstance(item, int):
            if not 0 <= item < len(names):
                raise ZooError(f"data.classes: {item} is out of range (the dataset has classes 0..{len(names) - 1})")
            index = item
        elif item in names:
            index = names.index(item)
        else:
            raise ZooError(f"data.classes: no class named {item!r}{did_you_mean(item, names)}; classes: {names}")
        if index in indices:
            raise ZooError(f"data.classes: {item!r} is listed twice")
        indices.append(index)
    return indices


def targets_of(dataset: Dataset) -> torch.Tensor:
    """Every sample's label, from ``.targets`` when the dataset has it (no images are read then)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [label for _, label in dataset]
    return torch.as_tensor(targets, dtype=torch.long)


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


class EpochOrder(Sampler[tuple[int, int]]):
    """The samples of the current epoch, in order, each with the seed of its random transform; set
    before each pass over a persistent DataLoader."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []

    def __iter__(self) -> Iterator[tuple[int, int]]:
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

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        position, seed = key
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
        self.in_memory = is_in_memory(split.dataset) or split.decoded is not None
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
            images = split.decoded.memory if split.decoded is not None else split.dataset.images
            self.images = images[split.indices].to(device)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return -(-self.shard_size // self.batch_size)

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

    def _from_loader(self, order: torch.Tensor, epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches read by the DataLoader's workers; ``first``: the position of ``order[0]`` in the epoch."""
        self.order.keys = [(index, self._seed(epoch, first + i)) for i, index in enumerate(order.tolist())]
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
