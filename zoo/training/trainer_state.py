"""A trainer's checkpointable state: saved whole between optimiser steps, restored on resume, and
never saved once a NaN has reached the loss or the weights."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config.schema import Recipe, TrainConfig
from ..data.batches import Batches
from ..errors import ZooError
from ..models import adapters
from ..models.build import nonfinite_tensors, prefixed
from ..parallel import distributed, fsdp
from ..runs.folder import RunFolder
from . import checkpoint
from .monitor import Monitor


class NonFiniteLoss(ZooError):
    """The loss became NaN or infinite."""


def check_finite_weights(model: nn.Module) -> None:
    """A ZooError when a weight or buffer holds NaN or infinity (a loss can stay finite while they do not).

    A sharded model is checked shard by shard, and the ranks agree (a collective), so that all stop.
    """
    bad = nonfinite_tensors({name: fsdp.local(tensor) for name, tensor in model.state_dict().items()})
    count = len(bad)
    if fsdp.is_sharded(model):
        count = int(distributed.max_across_ranks(torch.tensor(count)))
    if count:
        first = f"first '{bad[0]}'" if bad else "on another rank"
        raise NonFiniteLoss(
            f"the weights became NaN or infinite ({count} tensor(s), {first}): lower optim.lr, "
            "set train.grad_clip, or use train.precision=fp32"
        )


class TrainerState:
    """The part of ``Trainer`` that checkpoints hold: weights (the EMA's too), optimiser, grad scaler,
    RNGs, position in the run, history and monitor, partial sums of the epoch under way.

    ``Trainer`` sets every attribute below; a DDP rank saves and restores its own RNG and sums, and
    under FSDP its own shards.
    """

    recipe: Recipe
    config: TrainConfig
    folder: RunFolder
    model: nn.Module
    batches: Batches  # training's: a stream's hold where the stream is
    ema: Any  # timm's ModelEmaV3, or None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    monitor: Monitor
    keep: str
    sharded: bool
    step: int
    epoch: int
    position: int
    seen: int
    history: list[dict[str, Any]]
    applied_stages: list[int]
    loss_sum: torch.Tensor
    correct: torch.Tensor
    first_nonfinite: torch.Tensor
    earlier_seconds: float  # the sessions' before this one, up to the checkpoint it resumed from
    fit_started: float  # when this session's ``fit`` began (time.perf_counter)

    def seconds(self) -> float:
        """The time this run has trained, over every session: what a kill discarded after the last
        checkpoint is not counted, as its steps are not."""
        return self.earlier_seconds + time.perf_counter() - self.fit_started

    def _apply_stage(self, index: int) -> None:
        """Unfreeze the model's stage ``index`` (the trainer's: it also rewraps the model)."""
        raise NotImplementedError

    def check_finite(self) -> None:
        """A ``NonFiniteLoss`` once any rank's loss was NaN or infinite (a collective: the ranks agree)."""
        bad_step = int(distributed.max_across_ranks(self.first_nonfinite))
        if bad_step >= 0:
            last = self.folder.checkpoints
            kept = f"; the last good checkpoint is {last[-1]}" if last else ""
            raise NonFiniteLoss(
                f"the loss became NaN or infinite at step {bad_step} (epoch {self.epoch}): lower optim.lr, "
                f"set train.grad_clip, or use train.precision=fp32{kept}"
            )

    def save_checkpoint(self) -> None:
        """Checkpoint, written by rank 0 with every rank's own part (every rank checks the loss first:
        a collective)."""
        self.check_finite()  # never save weights a NaN has already reached
        check_finite_weights(self.model)
        # Each rank's own RNG and partial sums, so that a resumed DDP run repeats every rank exactly;
        # under FSDP also its own shards of the weights and the optimiser state.
        rng_tensors, rng = checkpoint.rng_state()
        own = {**rng_tensors, "loss_sum": self.loss_sum, "correct": self.correct}
        optim_tensors, optim_state = checkpoint.optimizer_state(self.optimizer)
        weights = self._model_and_optimizer_tensors(optim_tensors)
        state = {
            "recipe_hash": self.recipe.hash,
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "applied_stages": self.applied_stages,
            "history": self.history,
            "seconds": self.seconds(),
            "optimizer": optim_state,
            "scaler": self.scaler.state_dict(),
            "world_size": distributed.world_size(),
            "monitor": self.monitor.state(),
            "adapter_base": adapters.config_record(self.model).get(adapters.BASE_KEY),  # the base it started from
        }
        best = self.monitor.best.step if self.keep == "best" and self.monitor.best else None
        shared, own = ({}, own | weights) if self.sharded else (weights, own)
        own_state = {"rng": rng, "seen": self.seen, **self.batches.state()}
        checkpoint.save(
            self.folder.checkpoint_root,
            self.step,
            (shared, state),
            (own, own_state),
            self.config.keep_checkpoints,
            best,
            each_rank_writes=self.sharded,
        )

    def _model_and_optimizer_tensors(self, optim_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's and optimiser's tensors as a checkpoint keeps them (this rank's shards when sharded)."""
        tensors = {f"model.{name}": fsdp.local(value) for name, value in self.model.state_dict().items()}
        if self.ema is not None:
            tensors |= {f"ema.{name}": value for name, value in self.ema.module.state_dict().items()}
        return tensors | {name: fsdp.local(value) for name, value in optim_tensors.items()}

    def load_checkpoint(self, path: Path) -> None:
        """Restore the run from ``path``, each rank its own part (``checkpoint.load_own``)."""
        tensors, state = checkpoint.load_own(path, each_rank_reads=self.sharded)
        try:
            for index in state["applied_stages"]:
                self._apply_stage(index)
            self._load_weights(tensors)
            if self.sharded:
                tensors = fsdp.sharded_optimizer_tensors(self.optimizer, tensors)
            checkpoint.load_optimizer_state(self.optimizer, tensors, state["optimizer"])
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            checkpoint.set_rng_state(tensors, state["rng"])
            self.batches.load_state(state)
            self.loss_sum.copy_(tensors["loss_sum"])
            self.correct.copy_(tensors["correct"])
            self.monitor.restore(state.get("monitor", {}))
            if "adapter_base" in state:
                adapters.restore_base(self.model, state["adapter_base"])
            seconds = state.get("seconds", 0.0)  # older zoo's checkpoints kept no time
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < 1e12:
                raise ValueError(f"its seconds trained, {seconds!r}, is no time")
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ZooError(
                f"checkpoint {path} does not fit this run ({detail}); remove it to resume from the one before"
            ) from exc
        self.step, self.epoch, self.position = (state[k] for k in ("step", "epoch", "position"))
        self.seen = state["seen"]
        self.history = state["history"]
        self.earlier_seconds = float(seconds)

    def _load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """The model's (and the EMA's) weights from a checkpoint's tensors."""
        model_state = prefixed(tensors, "model.")
        if self.sharded:
            fsdp.load_local_state(self.model, model_state)
        else:
            self.model.load_state_dict(model_state)
        if self.ema is not None:
            self.ema.module.load_state_dict(prefixed(tensors, "ema."))

    def keep_best(self) -> str:
        """With ``train.keep = "best"``, bring back the best epoch's weights from its checkpoint; what
        the run keeps, in words (for the log, results.json and the model card)."""
        best = self.monitor.best
        if self.keep == "last" or best is None:
            return "the last epoch's weights"
        kept = f"the best epoch's weights (epoch {best.epoch}, {self.monitor.metric} {best.value:.4f})"
        if best.step != self.step:
            path = self.folder.checkpoint_root / f"step-{best.step:08d}"
            tensors, _ = checkpoint.load_own(path, each_rank_reads=self.sharded)
            self._load_weights(tensors)
        return kept
