"""What the model is fed: the run's preprocessing, an image dataset's transforms and decoded cache.

An image dataset (one that takes torchvision's ``transform``, like ``image_folder``) gives PIL
images; its transforms come from timm: the model's pretrained config resolved by
``timm.data.resolve_data_config`` (input size, mean/std, interpolation, crop), the ``[data]``
keys on top, ``timm.data.create_transform`` for training (augmented unless ``data.augment =
false``) and evaluation. Images are converted to the model's input channels first. timm is
imported there only, not for tensor datasets: it costs 1.5 s of start-up. A tensor dataset is
normalised with its own ``mean`` and ``std``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..config.schema import DataConfig
from ..errors import ZooError
from .augment import Augmentation
from .cache import DecodedImages, Layout, choose, decoded
from .contract import facts
from .images import converted
from .preprocessing import Preprocessing
from .splits import Split, Splits, parse_image_size, tensor_shape


def resolve_preprocessing(config: DataConfig, model: nn.Module, splits: Splits) -> Preprocessing:
    """The run's preprocessing: for image datasets timm's, following the model and ``[data]``; else the
    dataset's, at ``data.image_size`` or the size the model is built for (its tensors are resized to it)."""
    if splits.images:
        # A model without a pretrained config takes the images' own size: a stream's, from its test split.
        sized_by = splits.test if splits.streaming else splits.train
        return Preprocessing.from_config(image_config(config, model, sized_by), "data")
    dataset = splits.train.dataset
    channels, *own_size = tensor_shape(dataset)
    height, width = parse_image_size(config.image_size) or built_for_size(model) or own_size
    found = facts(dataset)
    return Preprocessing(
        input_size=(channels, height, width), mean=found.mean or (0.0,) * channels, std=found.std or (1.0,) * channels
    )


def built_for_size(model: nn.Module) -> tuple[int, int] | None:
    """The one input size ``model`` is built for (a ViT's ``img_size``, a zoo backbone's ``image_size``);
    None for a model that takes any size (a CNN with global pooling)."""
    size = getattr(model, "built_with", {}).get("image_size")  # zoo's Classifier
    if size is None and hasattr(model, "pretrained_cfg"):
        from timm.models import get_model_traits

        size = get_model_traits(model).get("img_size")
    return parse_image_size(list(size) if isinstance(size, tuple) else size)


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
    height, width = parse_image_size(config.image_size) or built_for_size(model) or tuple(defaults["input_size"][1:])
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


def attach_transforms(splits: Splits, preprocessing: Preprocessing, augmentation: Augmentation | None) -> None:
    """Give an image dataset's splits their transforms: training's augmented, the others' not."""
    if not splits.images:
        return
    train_transform = build_transform(preprocessing, training=True, augmentation=augmentation, uint8=True)
    eval_transform = build_transform(preprocessing, uint8=True)
    for split in splits.splits:
        split.transform = train_transform if split is splits.train else eval_transform


def build_transform(
    preprocessing: Preprocessing,
    training: bool = False,
    augmentation: Augmentation | None = None,
    uint8: bool = False,
) -> Callable[[Any], Any]:
    """timm's evaluation transform for ``preprocessing`` (its training one with ``augmentation``),
    after converting each image to the model's channels. Training without augmentation takes the
    evaluation's centre crop, as the decoded image cache does: both paths train on the same pixels.

    ``uint8``: stop before normalising (timm's prefetcher form, a C x H x W uint8 array): workers
    then send a quarter of the bytes, and ``Batches`` normalises on the device.
    """
    from timm.data import create_transform

    options: dict[str, Any] = dict(preprocessing.to_config(), use_prefetcher=uint8)
    if training and augmentation is not None:
        options["is_training"] = True
        options |= {key: getattr(augmentation, key) for key in ("scale", "ratio", "hflip", "color_jitter")}
        options["auto_augment"] = augmentation.auto_augment
    transform = create_transform(**options)
    if training and augmentation is not None and (augmentation.degrees or augmentation.translate):
        from torchvision.transforms import Compose, RandomAffine

        shift = (augmentation.translate, augmentation.translate)
        transform = Compose([RandomAffine(augmentation.degrees, translate=shift), transform])
    return ConvertThen("L" if preprocessing.channels == 1 else "RGB", transform)


# Pixels an image may have once resized for the model: the evaluation transform scales the shorter
# side to the model's size, so a 1 x 2,000,000 strip (a 2 KB PNG) would become 28 x 56,000,000.
MAX_RESIZED_PIXELS = 24_000_000


def check_resizable(size: tuple[int, int], preprocessing: Preprocessing, name: str) -> None:
    """Refuse, in one line, an image of ``size`` (width, height) whose shape would blow up in the resize."""
    short, long = sorted(size)
    target = math.ceil(max(preprocessing.input_size[1:]) / preprocessing.crop_pct)  # the shorter side, resized
    if short < 1 or target * target * long / short > MAX_RESIZED_PIXELS:
        raise ZooError(
            f"{name} is {size[0]}x{size[1]} pixels: too elongated to resize to the model's "
            f"{preprocessing.input_size[2]}x{preprocessing.input_size[1]} (at most {MAX_RESIZED_PIXELS:,} pixels "
            "after scaling its shorter side); crop it first"
        )


class ConvertThen:
    """Convert a PIL image to ``mode``, then apply ``transform`` (a class, so workers can pickle it)."""

    def __init__(self, mode: str, transform: Callable[[Any], torch.Tensor]) -> None:
        self.mode = mode
        self.transform = transform

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(converted(image, self.mode))

    def __repr__(self) -> str:
        return f"ConvertThen({self.mode!r}, {self.transform!r})"


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
