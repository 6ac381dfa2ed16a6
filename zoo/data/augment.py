"""Training augmentation that fits the data: presets, a model's own safe settings, the recipe's keys.

``data.augment`` picks a preset (``none``, ``light``, ``default``, ``strong``). The settings are
timm's ImageNet training defaults, then the preset's changes, then what the model plugin and then
the dataset plugin declare (an ``augmentation`` dict: the built-in ``mnist`` and ``mnist_cnn`` say
no flips and no small crops, since a mirrored or cropped digit is another digit or none; the data
has the last word, as it knows what keeps its labels), then the recipe's own keys
(``data.hflip``, ``data.scale``, ...). ``none`` turns every setting off, the recipe's own keys too
(``ignored`` names them, for the run to say so). The result is applied in one of two places:

- image datasets (PIL images, e.g. ``image_folder``): timm's ``create_transform`` in the
  DataLoader workers, after a torchvision ``RandomAffine`` when rotation or shifts are asked for,
  seeded per sample (``zoo.data.batches.SeededSamples``);
- in-memory uint8 datasets (e.g. ``mnist``) and image folders read from their decoded cache
  (``zoo/cache.py``): ``BatchAugment``, one random affine per image (crop area and ratio, flip,
  rotation, shift) and colour jitter, batched on the device; auto-augment needs PIL images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch.nn import functional as F

from ..config.schema import DataConfig
from ..errors import ZooError
from .contract import facts


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation settings; the defaults are timm's ImageNet training transform's."""

    scale: tuple[float, float] = (0.08, 1.0)  # random-resized-crop area, as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # its aspect ratio
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str | None = None
    degrees: float = 0.0  # random rotation within +-degrees
    translate: float = 0.0  # random shift, as a fraction of the size

    def describe(self, on_device: bool = False) -> str:
        parts = [f"crop area {self.scale[0]:g}-{self.scale[1]:g} ratio {self.ratio[0]:.2g}-{self.ratio[1]:.2g}"]
        parts.append(f"flip {self.hflip:g}" if self.hflip else "no flip")
        if self.degrees:
            parts.append(f"rotation +-{self.degrees:g} deg")
        if self.translate:
            parts.append(f"shift {self.translate:g}")
        parts.append(f"colour jitter {self.color_jitter:g}" if self.color_jitter else "no colour jitter")
        if self.auto_augment:
            parts.append(f"auto-augment {self.auto_augment}")
        return ", ".join(parts) + (" (on the device)" if on_device else " (in the DataLoader workers)")


# Digits (the built-in mnist and mnist_cnn declare it): a mirrored digit is another digit or none,
# and a small crop cuts strokes off; rotations of up to 15 degrees, 10% shifts and slight zooms
# (the usual MNIST RandomAffine) keep it.
DIGITS = {"hflip": 0.0, "scale": (0.85, 1.0), "ratio": (0.9, 1.1), "color_jitter": 0.0, "degrees": 15.0,
          "translate": 0.1}  # fmt: skip

# What each preset changes in timm's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "light": {"scale": (0.8, 1.0), "color_jitter": 0.0},
    "default": {},
    "strong": {"auto_augment": "rand-m9-mstd0.5-inc1"},
}
RECIPE_KEYS = ("hflip", "scale", "color_jitter", "auto_augment", "degrees", "translate")


def resolve(config: DataConfig, model: object, dataset: object, on_tensors: bool) -> Augmentation | None:
    """The training augmentation for ``config``, ``model`` and ``dataset`` (None for ``data.augment = "none"``)."""
    if config.augment == "none":
        return None
    declared = declared_by(model) | _checked(facts(dataset).augmentation, "dataset")
    given = {key: getattr(config, key) for key in RECIPE_KEYS if getattr(config, key) is not None}
    settings = asdict(Augmentation()) | PRESETS[config.augment] | declared | given
    augmentation = Augmentation(**{key: tuple(v) if isinstance(v, list) else v for key, v in settings.items()})
    if on_tensors and augmentation.auto_augment and ("auto_augment" in given or config.augment == "strong"):
        raise ZooError(
            f"data.augment = {config.augment}: auto-augment needs PIL images, and {config.dataset} holds "
            "tensors; use data.augment = default or light"
        )
    return augmentation


def ignored(config: DataConfig) -> list[str]:
    """The recipe's augmentation keys that ``data.augment = "none"`` turns off (as timm's ``no_aug``)."""
    if config.augment != "none":
        return []
    return [f"data.{key}" for key in RECIPE_KEYS if getattr(config, key) is not None]


def declared_by(model: object) -> dict[str, Any]:
    """The ``augmentation`` a model declares, itself or zoo's backbone inside it."""
    declared = getattr(model, "augmentation", None) or getattr(getattr(model, "backbone", None), "augmentation", None)
    return _checked(declared, "model")


def _checked(declared: object, kind: str) -> dict[str, Any]:
    """The ``augmentation`` a ``kind`` plugin declares, once its keys are Augmentation's."""
    if not declared:
        return {}
    known = {field.name for field in fields(Augmentation)}
    if not isinstance(declared, dict) or not set(declared) <= known:
        raise ZooError(f"the {kind} plugin's `augmentation` must be a dict with keys among {', '.join(sorted(known))}")
    return dict(declared)


class BatchAugment:
    """``Augmentation`` for a batch of images on the device (N x C x H x W floats): one random affine
    per image through ``grid_sample``, drawn from ``generator`` (seeded per batch by ``Batches``)."""

    def __init__(self, augmentation: Augmentation) -> None:
        self.augmentation = augmentation

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """``images`` (0-255 floats) augmented, resampled to ``size`` (default: their own)."""
        settings, count = self.augmentation, len(images)

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(count, generator=generator, device=images.device)

        area = uniform(*settings.scale)
        aspect = uniform(*(math.log(r) for r in settings.ratio)).exp()
        width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
        # The crop's centre, anywhere it fits, plus the shift; grid coordinates run from -1 to 1.
        centre_x = uniform(-1.0, 1.0) * (1 - width) + uniform(-2.0, 2.0) * settings.translate
        centre_y = uniform(-1.0, 1.0) * (1 - height) + uniform(-2.0, 2.0) * settings.translate
        angle = uniform(-settings.degrees, settings.degrees) * (math.pi / 180)
        flip = 1.0 - 2.0 * (torch.rand(count, generator=generator, device=images.device) < settings.hflip).float()
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([width * cos * flip, -height * sin, centre_x], 1),
                torch.stack([width * sin * flip, height * cos, centre_y], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, [count, images.shape[1], *(size or images.shape[-2:])], align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self._jitter(images, uniform) if settings.color_jitter else images

    def _jitter(self, images: torch.Tensor, uniform: Callable[[float, float], torch.Tensor]) -> torch.Tensor:
        """Brightness, contrast and (for colour) saturation, each scaled by a factor in [1 - j, 1 + j]."""
        strength = self.augmentation.color_jitter
        low, high = max(0.0, 1.0 - strength), 1.0 + strength
        images = images * uniform(low, high).view(-1, 1, 1, 1)
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        images = mean + uniform(low, high).view(-1, 1, 1, 1) * (images - mean)
        if images.shape[1] == 3:
            luma = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
            grey = (images * luma).sum(1, keepdim=True)
            images = grey + uniform(low, high).view(-1, 1, 1, 1) * (images - grey)
        return images.clamp_(0.0, 255.0)
