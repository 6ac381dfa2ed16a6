"""The training loop: one epoch at a time, checkpointed whole between optimiser steps."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .._output import Progress, library_logs_to_root
from ..inference.evaluate import evaluate
from ..inference.prepared import RunSetup
from ..models import freeze
from ..parallel import distributed, fsdp
from ..parallel.distributed import log
from ..runs.folder import RunFolder, State
from ..tasks.multi_label import exact_matches
from .loggers.fan_out import Loggers, create_loggers
from .monitor import Monitor
from .optim import default_weight_decay, lr_factor, set_lr
from .stopping import StopRequests, stopping_on_signals
from .trainer_state import TrainerState, check_finite_weights

if TYPE_CHECKING:
    from ..config.schema import DataConfig


class Trainer(TrainerState):
    """The training loop, epoch after epoch; its state, which a checkpoint saves and restores whole,
    in ``TrainerState``.

    Checkpoints are taken only between optimiser steps; with the data order a function of
    (seed, epoch) and every RNG saved, a resumed run repeats the uninterrupted one exactly.
    """

    def __init__(self, setup: RunSetup, folder: RunFolder) -> None:
        assert setup.optimizer is not None, "a RunSetup built for training has an optimiser"
        self.recipe = setup.recipe
        self.config = setup.recipe.train
        self.model = setup.model
        self.optimizer = setup.optimizer
        self.loss_fn = setup.loss_fn
        self.label_names = setup.splits.label_names
        self.batches = setup.batches(setup.splits.train, training=True)
        self.val_batches = setup.batches(setup.splits.val) if setup.splits.val is not None else None
        self.device = setup.device
        self.dtype = setup.dtype
        self.folder = folder
        # Rank 0 alone logs: the other ranks talk to no logger at all.
        names, arguments = self.recipe.logger_names(), self.recipe.log.arguments()
        self.loggers = create_loggers(names, arguments) if distributed.is_main() else Loggers({})
        self.sharded = fsdp.is_sharded(self.model)  # sharded by build_run (train.strategy = "fsdp")
        self.forward = self._wrap(self.model)
        self.ema = _ema(self.model, self.config.ema, self.config.ema_warmup) if self.config.ema else None
        # What is evaluated and kept: the EMA's weights when there is one. Evaluation calls the model
        # itself: DDP's forward is a collective (each rank evaluates its own share alone), and a
        # compiled forward would recompile for evaluation's batch shapes. (A sharded model's forward
        # is always a collective: evaluate pads the ranks instead.)
        self.evaluator = self.ema.module if self.ema is not None else self.model
        validating = self.val_batches is not None
        self.multi_label = setup.splits.multi_label  # multi-hot labels: sigmoid scores, mAP
        early_stop = self.config.early_stop
        self.monitor = Monitor(
            self.config.monitor
            or (("val_mAP" if self.multi_label else "val_accuracy") if validating else "train_loss"),
            early_stop.min_delta if early_stop else 0.0,
            early_stop.patience if early_stop else None,
        )
        self.keep = self.config.keep or ("best" if validating else "last")
        self.mix = _mixing(setup.recipe.data, len(self.label_names), self.multi_label)
        self.stopped_early = False
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype is torch.float16)
        self.steps_per_epoch = math.ceil(len(self.batches) / self.config.grad_accum)
        self.total_steps = self.config.epochs * self.steps_per_epoch
        if self.config.max_steps:
            self.total_steps = min(self.total_steps, self.config.max_steps)
        self.step = 0
        self.epoch = 1
        self.position = 0  # batches of self.epoch already trained
        self.history: list[dict[str, Any]] = []
        self.applied_stages: list[int] = []
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.seen = 0
        self.earlier_seconds, self.fit_started = 0.0, time.perf_counter()
        # The first step whose loss was not finite, kept on the device: checking costs no sync.
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.device)
        self.stops = StopRequests()

    def _wrap(self, model: nn.Module) -> nn.Module:
        """What the training step calls: the model, under DDP when launched by torchrun (unless it is
        sharded, which synchronises by itself), compiled if asked."""
        self.ddp = None
        if distributed.world_size() > 1 and not self.sharded:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            # gradient_as_bucket_view: gradients live in DDP's buckets, one copy fewer each step.
            model = self.ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=device_ids, gradient_as_bucket_view=True
            )
        if not self.config.compile:
            return model
        if "TORCH_LOGS" not in os.environ:  # unasked, what compiling logs ("No CUDA runtime is found") is --verbose's
            library_logs_to_root("torch._dynamo", "torch._inductor", "torch.utils.cpp_extension")
        return torch.compile(model, mode=self.config.compile_mode)

    def _synchronising(self, last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """DDP all-reduces (FSDP reduce-scatters) gradients on the last micro-batch of an optimiser step only."""
        if self.sharded:
            self.model.set_requires_gradient_sync(last_micro_batch)
            return contextlib.nullcontext()
        return self.ddp.no_sync() if self.ddp is not None and not last_micro_batch else contextlib.nullcontext()

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def unfreeze_stages(self, epoch: int) -> None:
        """Apply the freezing stages due by ``epoch`` that are not applied yet."""
        for index, stage in enumerate(self.recipe.model.freeze.stages):
            if stage.epoch <= epoch and index not in self.applied_stages:
                self._apply_stage(index)

    def _apply_stage(self, index: int) -> None:
        stage, optim = self.recipe.model.freeze.stages[index], self.recipe.optim
        groups = freeze.unfreeze_stage(self.model, stage, optim.lr, optim.backbone_lr_mult, self.config.layer_decay,
                                       default_weight_decay(optim))  # fmt: skip
        self.applied_stages.append(index)
        for group in groups:
            self.optimizer.add_param_group(group)
        if groups:
            self.forward = self._wrap(self.model)  # DDP must learn of the newly trainable parameters
            released = sum(p.numel() for group in groups for p in group["params"])
            log(f"epoch {stage.epoch}: unfroze {released:,} parameters")

    def fit(self, progress: bool) -> tuple[State, str]:
        """Train epoch after epoch to the end (or ``max_steps``, or an early stop): validate, log and
        checkpoint each.

        Returns the run's state and why: ("finished", "" or the early stop) or ("interrupted", reason)
        after Ctrl-C.
        """
        self.fit_started = time.perf_counter()
        self.loggers.start(self.recipe.to_dict(), self.folder.path, self.step, self.history)
        try:
            with stopping_on_signals(self.stops):
                self._epochs(progress)
        except KeyboardInterrupt:
            how = "Ctrl-C" if self.stops.signal in (None, signal.SIGINT) else signal.Signals(self.stops.signal).name
            reason = f"stopped by {how} in epoch {self.epoch}, after step {self.step}"
            log(f"\n{reason}: saving the run folder")
            return "interrupted", reason
        return "finished", self.monitor.stop_reason() if self.stopped_early else ""

    def _epochs(self, progress: bool) -> None:
        """Train, validate, log and checkpoint each epoch that is left."""
        while self.epoch <= self.config.epochs and not self.done:
            record = self.train_epoch(progress)
            distributed.broadcast_buffers(self.model)  # rank 0's BatchNorm statistics everywhere
            if self.ema is not None:
                distributed.broadcast_buffers(self.ema.module)
            last = self.epoch > self.config.epochs or self.done
            if self.val_batches is not None and (record["epoch"] % self.config.eval_every == 0 or last):
                record |= self.validate()
            best = self.monitor.update(record)
            self.history.append(record)
            # Logged before the checkpoint: a resumed run's metrics.jsonl holds every epoch its checkpoint has.
            self.loggers.log({key: value for key, value in record.items() if key not in ("epoch", "step")},
                             record["step"], record["epoch"])  # fmt: skip
            self.save_checkpoint()
            log(_epoch_line(record, self.config.epochs) + (f" (best {self.monitor.metric})" if best else ""),
                "epoch", **record, best=best)  # fmt: skip
            if self.monitor.should_stop and not last:
                self.stopped_early = True
                log(self.monitor.stop_reason())
                return

    def validate(self) -> dict[str, float]:
        """The kept weights' loss, accuracy and F1 (top-5 accuracy too, with enough classes) on the
        validation split, as the epoch's record names them."""
        assert self.val_batches is not None, "validate only with a validation split"
        self.stops.restart()
        val = evaluate(self.evaluator, self.val_batches, self.loss_fn, self.label_names, self.dtype,
                       between_batches=self.stops.batch_done)  # fmt: skip
        record = {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_f1": val["f1"]}
        if "mAP" in val:
            record["val_mAP"] = val["mAP"]
        if "top5_accuracy" in val:
            record["val_top5_accuracy"] = val["top5_accuracy"]
        return record

    def train_epoch(self, progress: bool) -> dict[str, Any]:
        """Train the rest of ``self.epoch`` (or up to the last step); the epoch's record."""
        epoch = self.epoch
        self.unfreeze_stages(epoch)
        self.model.train()
        freeze.keep_frozen_bn_in_eval(self.model, self.recipe.model.freeze.train_bn)
        started = time.perf_counter()
        seen_before = self.seen
        self.stops.restart()
        bar = Progress(self.batches.images_per_epoch, f"epoch {epoch}/{self.config.epochs}", initial=self.seen,
                       enabled=progress and distributed.is_main())  # fmt: skip
        for inputs, labels in self.batches.epoch(epoch, start=self.position):
            stepping = (self.position + 1) % self.config.grad_accum == 0 or self.position + 1 == len(self.batches)
            group_start = self.position - self.position % self.config.grad_accum
            group_size = min(self.config.grad_accum, len(self.batches) - group_start)
            targets = labels
            if self.mix is not None:  # images and labels mixed in pairs: soft targets (numpy's RNG, checkpointed)
                inputs, targets = self.mix(inputs, labels)
            with self._synchronising(stepping):
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    logits = self.forward(inputs)
                    loss = self.loss_fn(logits, targets)
                # The epoch's last group can be short: its gradient is the mean over its own micro-batches.
                self.scaler.scale(loss / group_size if group_size > 1 else loss).backward()
            self.correct += (
                exact_matches(logits.detach(), labels)
                if self.multi_label
                else (logits.detach().argmax(1) == labels).sum()
            )
            loss = loss.detach()
            self.first_nonfinite = torch.where(
                (self.first_nonfinite < 0) & ~torch.isfinite(loss), self.step + 1, self.first_nonfinite
            )
            self.loss_sum.add_(loss, alpha=len(labels))
            self.seen += len(labels)
            self.position += 1
            bar.update(len(labels))
            self.stops.batch_done()
            if self.position % self.config.grad_accum and self.position < len(self.batches):
                continue
            self._optimizer_step()
            if self.step % self.config.log_every == 0:  # the loop's only host sync
                self.check_finite()
                running = float(self.loss_sum) / self.seen  # this rank's, since the epoch began
                bar.set_fields(step=self.step, loss=running)
                self.loggers.log({"train_loss": running, "lr": self.optimizer.param_groups[0]["lr"],
                                  "images_per_second": bar.rate()}, self.step)  # fmt: skip
            every = self.config.checkpoint_every
            if every and self.step % every == 0 and self.position < len(self.batches) and not self.done:
                self.save_checkpoint()
            if self.done:
                break
        bar.close()
        self.check_finite()
        self.stops.check()
        check_finite_weights(self.model)  # before validation: NaN weights give NaN metrics, not a run
        seconds = time.perf_counter() - started
        totals = distributed.sum_across_ranks(torch.stack([self.loss_sum, self.correct.double(), torch.tensor(
            float(self.seen - seen_before), device=self.device), torch.tensor(float(self.seen), device=self.device)]))  # fmt: skip
        loss_sum, correct, seen_now, seen = totals.tolist()
        record = {
            "epoch": epoch,
            "step": self.step,
            "train_loss": loss_sum / max(1, seen),
            "train_accuracy": correct / max(1, seen),
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_second": seen_now / seconds,
        }
        self.epoch, self.position, self.seen = epoch + 1, 0, 0
        self.loss_sum.zero_()
        self.correct.zero_()
        return record

    def _optimizer_step(self) -> None:
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        set_lr(self.optimizer, lr_factor(self.recipe.schedule, self.step, self.total_steps, self.steps_per_epoch))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)

    def learning_rates(self) -> list[float]:
        """The head's learning rate at every step of the run, from the schedule."""
        schedule, total, per_epoch = self.recipe.schedule, self.total_steps, self.steps_per_epoch
        return [self.recipe.optim.lr * lr_factor(schedule, step, total, per_epoch) for step in range(total)]


def _mixing(
    data: DataConfig, num_classes: int, multi_hot: bool
) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """timm's MixUp/CutMix for ``data.mixup``/``data.cutmix`` (None when both are off).

    No label smoothing here: the loss's own ``label_smoothing`` applies to the mixed targets.
    """
    if not (data.mixup or data.cutmix):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=data.mixup,
        cutmix_alpha=data.cutmix,
        prob=data.mix_prob,
        switch_prob=data.mix_switch_prob,
        label_smoothing=0.0,
        num_classes=num_classes,
        multi_label=multi_hot,
    )


def _ema(model: nn.Module, decay: float, warmup: bool) -> nn.Module:
    from timm.utils import ModelEmaV3  # timm only when asked for: it costs 1.5 s of start-up

    return ModelEmaV3(model, decay=decay, use_warmup=warmup)


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    line = (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
        f"{record['images_per_second']:.0f} img/s, {record['seconds']:.1f}s"
    )
    if "val_accuracy" in record:
        line += f", val loss {record['val_loss']:.4f}, val acc {100 * record['val_accuracy']:.2f}%"
    if "val_mAP" in record:
        line += f", val mAP {100 * record['val_mAP']:.2f}%"
    return line
