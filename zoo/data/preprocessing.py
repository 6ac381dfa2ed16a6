"""How an image becomes the model's input: one frozen record, computed once per run.

Modelled on timm's ``PretrainedCfg``: input size, mean, std, interpolation and crop. The runner
computes it once the model exists (timm's ``resolve_data_config`` for image datasets, the
dataset's own size and statistics for tensor datasets), passes it to the batches and the
transforms, writes it into ``config.json``'s ``pretrained_cfg``, and ``zoo eval``, ``zoo predict``
and exports read it back from there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from ..errors import ZooError

Interpolation = Literal["bilinear", "bicubic", "nearest"]
CropMode = Literal["center", "squash", "border"]
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
CROP_MODES = ("center", "squash", "border")
MAX_SIDE = 8192  # pixels: larger inputs are a damaged file, not a model


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[int, int, int]  # channels, height, width
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Defaults for tensor datasets, which arrive at their size: a file is resized whole, not cropped.
    interpolation: Interpolation = "bilinear"
    crop_pct: float = 1.0
    crop_mode: CropMode = "center"

    def __post_init__(self) -> None:
        channels, height, width = self.input_size
        if min(self.input_size) < 1 or max(height, width) > MAX_SIDE or channels > 4:
            raise ValueError(
                f"input_size {list(self.input_size)} is not (channels 1-4, height, width up to {MAX_SIDE})"
            )
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need {channels} value(s) each, got {list(self.mean)} and {list(self.std)}")
        if not all(math.isfinite(v) for v in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(
                f"mean must be finite and std finite and positive, got {list(self.mean)} and {list(self.std)}"
            )
        if self.interpolation not in INTERPOLATIONS or self.crop_mode not in CROP_MODES:
            raise ValueError(f"interpolation {self.interpolation!r} or crop_mode {self.crop_mode!r} is unknown")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @classmethod
    def from_config(cls, config: Mapping[str, Any], where: str) -> Preprocessing:
        """Read timm's data-config keys (as ``resolve_data_config`` or config.json's ``pretrained_cfg`` hold them)."""
        try:
            values = {key: config[key] for key in ("input_size", "mean", "std")}
            values |= {key: config[key] for key in ("interpolation", "crop_pct", "crop_mode") if config.get(key)}
            size = values["input_size"]
            values["input_size"] = tuple(int(_number(v)) for v in size)
            values["mean"] = tuple(float(_number(v)) for v in values["mean"])
            values["std"] = tuple(float(_number(v)) for v in values["std"])
            if "crop_pct" in values:
                values["crop_pct"] = float(_number(values["crop_pct"]))
            if len(values["input_size"]) != 3:
                raise ValueError(f"input_size must be [channels, height, width], got {size!r}")
            return cls(**values)
        except KeyError as exc:
            raise ZooError(f"{where}: the preprocessing lacks {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ZooError(f"{where}: the preprocessing is not usable: {exc}") from None

    def to_config(self) -> dict[str, Any]:
        """timm's data-config keys, with lists for JSON."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def _number(value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return value
