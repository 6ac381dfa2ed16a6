"""What every section of the recipe schema shares: strict validation, sizes and names, ``model.pretrained``'s type."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema

from . import sources
from .sources import WeightSource

# model.pretrained: written as a bool or a string, held as a typed WeightSource (zoo/sources.py).
Pretrained = Annotated[
    WeightSource,
    PlainValidator(lambda value: sources.parse(value, Path.cwd())),
    PlainSerializer(sources.text),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "string"}]}),
]


class Section(BaseModel):
    # strict: a string where a number belongs is a mistake, not something to coerce; and TOML's
    # inf and nan are never a setting (an infinite learning rate trains NaN weights to the end).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def refuse_ignored(self, prefix: str, ignored: Iterable[str], because: str) -> None:
        """A key of ``ignored`` that the recipe set (to other than its default) is one that the section's
        choices leave unused (``because`` says which): an error, not a setting silently dropped."""
        defaults = type(self).model_fields
        for key in ignored:
            if getattr(self, key) != defaults[key].default:
                raise ValueError(f"{prefix}.{key} does not apply {because}")


# Upper bounds on sizes: beyond them a value is a typo, not a run (they also keep products finite).
MAX_SIZE = 1 << 20
Size = Annotated[int, Field(ge=1, le=MAX_SIZE)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
# What train.monitor (and tune.metric) can watch: a value of an epoch's record.
Monitored = Literal["val_accuracy", "val_f1", "val_mAP", "val_loss", "train_loss"]
# A run's name becomes a folder name: letters, digits, '.', '_' and '-', not starting with '.' or '-'.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$"
