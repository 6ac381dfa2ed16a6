"""Which epoch's weights a run keeps, and when it stops early: one monitored metric, watched per evaluation.

``train.monitor`` names a value of an epoch's record (``val_accuracy``, ``val_f1``, ``val_loss``,
``train_loss``); the epoch where it was best is the one ``train.keep = "best"`` keeps, and
``train.early_stop`` stops the run once it has not improved by more than ``min_delta`` for
``patience`` evaluations in a row. An accuracy or F1 that ties the best is better when its
validation loss is lower: a small validation split ties often, and the first of equals is the
least trained. Everything here is a function of the records, so every rank of
a distributed run (whose records are all-reduced) decides alike, and a checkpoint restores it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Metrics where lower is better; the rest rise as the model improves.
LOWER_IS_BETTER = ("val_loss", "train_loss")


@dataclass
class Best:
    epoch: int
    step: int
    value: float
    tiebreak: float | None = None  # the validation loss, for a metric that rises


@dataclass
class Monitor:
    metric: str
    min_delta: float = 0.0
    patience: int | None = None  # None: never stop early
    best: Best | None = None
    stale: int = 0  # evaluations since the last improvement by more than min_delta
    # The value of that improvement: steady gains each smaller than min_delta add up against it, and
    # count once their sum is more than min_delta (as Keras's and Lightning's early stopping).
    reference: float | None = None

    def improves(self, value: float, on: float, by: float) -> bool:
        return value < on - by if self.metric in LOWER_IS_BETTER else value > on + by

    def update(self, record: dict[str, Any]) -> bool:
        """Take an epoch's record into account; whether it holds a new best (False when not evaluated)."""
        value = record.get(self.metric)
        if value is None:
            return False
        if self.reference is None or self.improves(value, self.reference, self.min_delta):
            self.reference, self.stale = value, 0
        else:
            self.stale += 1
        tiebreak = None if self.metric in LOWER_IS_BETTER else record.get("val_loss")
        best = self.best
        if best is not None and not self.improves(value, best.value, 0.0) and not _breaks_tie(value, tiebreak, best):
            return False
        self.best = Best(record["epoch"], record["step"], value, tiebreak)
        return True

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.stale >= self.patience

    def stop_reason(self) -> str:
        assert self.best is not None, "a run stops early only after an evaluation"
        by = f" by more than {self.min_delta:g}" if self.min_delta else ""
        return (
            f"stopped early: {self.metric} did not improve{by} in {self.stale} evaluation(s); "
            f"best {self.best.value:.4f} at epoch {self.best.epoch}"
        )

    def state(self) -> dict[str, Any]:
        return {"best": asdict(self.best) if self.best else None, "stale": self.stale, "reference": self.reference}

    def restore(self, state: dict[str, Any]) -> None:
        """The state ``state()`` gave; a ValueError when a checkpoint's copy of it is damaged."""
        best, stale = state.get("best"), state.get("stale", 0)
        number = (int, float)
        # An older zoo's checkpoint kept no reference: its best was one.
        reference = state.get("reference", best.get("value") if isinstance(best, dict) else None)
        valid = type(stale) is int and stale >= 0 and (reference is None or isinstance(reference, number)) and (
            best is None or (
                isinstance(best, dict) and set(best) == {"epoch", "step", "value", "tiebreak"}
                and type(best["epoch"]) is int and type(best["step"]) is int and isinstance(best["value"], number)
                and (best["tiebreak"] is None or isinstance(best["tiebreak"], number))
            )
        )  # fmt: skip
        if not valid:
            raise ValueError("its monitor state is damaged")
        self.best = Best(**best) if best else None
        self.stale, self.reference = stale, reference


def _breaks_tie(value: float, tiebreak: float | None, best: Best) -> bool:
    return value == best.value and tiebreak is not None and best.tiebreak is not None and tiebreak < best.tiebreak
