"""Training augmentation that fits the data: presets, a model's own safe settings, the recipe's keys.

``data.augment`` picks a preset (``none``, ``light``, ``default``, ``strong``). The settings are
timm's ImageNet training defaults, then the preset's changes, then what the model plugin declares
(an ``augmentation`` dict: the built-in ``mnist_cnn`` says no flips and no small crops, since a
mirrored or cropped digit is another digit or none), then the recipe's own keys (``data.hflip``,
``data.scale``, ...). The result is applied in one of two places:

- image datasets (PIL images, e.g. ``image_folder``): timm's ``create_transform`` in the
  DataLoader workers, after a torchvision ``RandomAffine`` when rotation or shifts are asked for;
- in-memory uint8 datasets (e.g. ``mnist``): ``BatchAugment``, one random affine per image,
  batched on the device (crop area and ratio, flip, rotation, shift; colour jitter and
  auto-augment need PIL images).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .errors import ZooError
from .recipe import DataConfig


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

    def describe(self, on_tensors: bool = False) -> str:
        parts = [f"crop area {self.scale[0]:g}-{self.scale[1]:g} ratio {self.ratio[0]:.2g}-{self.ratio[1]:.2g}"]
        parts.append(f"flip {self.hflip:g}" if self.hflip else "no flip")
        if self.degrees:
            parts.append(f"rotation +-{self.degrees:g} deg")
        if self.translate:
            parts.append(f"shift {self.translate:g}")
        if not on_tensors:
            parts.append(f"colour jitter {self.color_jitter:g}" if self.color_jitter else "no colour jitter")
            if self.auto_augment:
                parts.append(f"auto-augment {self.auto_augment}")
        return ", ".join(parts)


# What each preset changes in timm's defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "light": {"scale": (0.8, 1.0), "color_jitter": 0.0},
    "default": {},
    "strong": {"auto_augment": "rand-m9-mstd0.5-inc1"},
}
RECIPE_KEYS = ("hflip", "scale", "color_jitter", "auto_augment", "degrees", "translate")


def resolve(config: DataConfig, model: nn.Module, on_tensors: bool) -> Augmentation | None:
    """The training augmentation for ``config`` and ``model`` (None for ``data.augment = "none"``)."""
    if config.augment == "none":
        return None
    declared = declared_by(model)
    given = {key: getattr(config, key) for key in RECIPE_KEYS if getattr(config, key) is not None}
    settings = asdict(Augmentation()) | PRESETS[config.augment] | declared | given
    augmentation = Augmentation(**{key: tuple(v) if isinstance(v, list) else v for key, v in settings.items()})
    if on_tensors and augmentation.auto_augment and ("auto_augment" in given or config.augment == "strong"):
        raise ZooError(
            f"data.augment = {config.augment}: auto-augment needs PIL images, and {config.dataset} holds "
            "tensors; use data.augment = default or light"
        )
    return augmentation


def declared_by(model: nn.Module) -> dict[str, Any]:
    """The ``augmentation`` a model plugin declares (on the model, or on zoo's backbone inside it)."""
    declared = getattr(model, "augmentation", None) or getattr(getattr(model, "backbone", None), "augmentation", None)
    if not declared:
        return {}
    known = {field.name for field in fields(Augmentation)}
    if not isinstance(declared, dict) or not set(declared) <= known:
        raise ZooError(f"the model plugin's `augmentation` must be a dict with keys among {', '.join(sorted(known))}")
    return dict(declared)


class BatchAugment:
    """``Augmentation`` for a batch of images on the device (N x C x H x W floats): one random affine
    per image through ``grid_sample``, drawn from ``generator`` (seeded per batch by ``Batches``)."""

    def __init__(self, augmentation: Augmentation) -> None:
        self.augmentation = augmentation

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
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
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
