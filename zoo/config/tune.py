"""The recipe's ``[tune]`` table: what `zoo tune` searches (its keys are checked against the recipe by zoo/tuning)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ._section import Monitored, Section

Number = int | float
Choice = str | int | float | bool


class Range(Section):
    """A number between ``low`` and ``high``: integers when both are, floats otherwise."""

    low: Number = Field(description="the least value tried")
    high: Number = Field(description="the largest value tried")
    log: bool = Field(False, description="sample on a log scale (low > 0)")
    step: Number | None = Field(None, gt=0, description="a grid: low, low + step, ... (not with log)")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low must be less than high, got {self.low} and {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log = true needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step do not go together: keep one")
        return self

    @property
    def integers(self) -> bool:
        return all(type(value) is int for value in (self.low, self.high, self.step or 1))


class TuneConfig(Section):
    metric: Monitored = Field("val_accuracy", description="what the study optimises: one of train.monitor's values")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="default: minimize for a loss, maximize for the rest"
    )
    trials: Annotated[int, Field(ge=1, le=100_000)] = Field(20, description="trials in the study (zoo tune --trials)")
    pruner: Literal["median", "none"] = Field(
        "median", description="median: stop a trial whose epoch is worse than the median of earlier trials' there"
    )
    space: dict[str, Range | Annotated[list[Choice], Field(min_length=1)]] = Field(
        min_length=1,
        description="dotted recipe keys to search: a range {low, high, log, step} or a list of choices, e.g. "
        '{ "optim.lr" = { low = 1e-4, high = 1e-1, log = true }, "data.batch_size" = [64, 128] }',
    )
