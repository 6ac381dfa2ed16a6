"""The training loop: one epoch at a time, checkpointed whole between optimiser steps."""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..errors import ZooError
from ..inference.evaluate import evaluate
from ..models import freeze
from ..models.build import nonfinite_tensors, prefixed
from ..parallel import distributed, fsdp
from ..parallel.distributed import log
from ..runs.folder import RunFolder, State
from . import checkpoint
from .monitor import Monitor
from .optim import lr_factor, set_lr

if TYPE_CHECKING:
    from ..config.schema import DataConfig
    from .runner import RunSetup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Under DDP the ranks agree on Ctrl-C at least this often (torchrun kills them 30 s after SIGINT).
STOP_CHECK_SECONDS = 2.0


class StopRequests:
    """Ctrl-C under DDP: torchrun passes SIGINT to every rank, which only sets ``flag``; the ranks
    agree on it at a check (a collective) and stop after the same batch.

    No rank's clock decides alone when to check, or the ranks would wait in different
    collectives: they count batches, and at each check agree on how many to count until the next
    from the slowest rank's pace, so that checks come every ``STOP_CHECK_SECONDS`` or so, however
    slow a batch is. A new phase (an epoch's training, a validation) starts with a check after
    its first batch, as batches of another phase take another time.
    """

    def __init__(self) -> None:
        self.flag = torch.zeros((), dtype=torch.long)
        self.signal: int | None = None  # the signal that asked to stop (SIGINT or SIGTERM)
        self.restart()

    def restart(self) -> None:
        self.countdown, self.counted, self.since = 1, 0, time.monotonic()

    def batch_done(self) -> None:
        self.counted += 1
        if self.counted >= self.countdown:
            self.check()

    def check(self) -> None:
        """KeyboardInterrupt on every rank once any rank was asked to stop (a collective under DDP)."""
        if distributed.world_size() == 1:
            return
        now = time.monotonic()
        pace = (now - self.since) / max(1, self.counted)
        batches = max(1, int(STOP_CHECK_SECONDS / max(pace, 1e-6)))
        stop, fewest = distributed.max_across_ranks(torch.stack([self.flag, torch.tensor(-batches)])).tolist()
        self.countdown, self.counted, self.since = -fewest, 0, now
        if stop:
            raise KeyboardInterrupt


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


class Trainer:
    """The training loop and all of its state, which a checkpoint saves and restores whole.

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
        self.val_batches = setup.batches(setup.splits.val) if setup.splits.val else None
        self.device = setup.device
        self.dtype = setup.dtype
        self.folder = folder
        self.sharded = fsdp.is_sharded(self.model)  # sharded by build_run (train.strategy = "fsdp")
        self.forward = self._wrap(self.model)
        self.ema = _ema(self.model, self.config.ema, self.config.ema_warmup) if self.config.ema else None
        # What is evaluated and kept: the EMA's weights when there is one. Evaluation calls the model
        # itself: DDP's forward is a collective (each rank evaluates its own share alone), and a
        # compiled forward would recompile for evaluation's batch shapes. (A sharded model's forward
        # is always a collective: evaluate pads the ranks instead.)
        self.evaluator = self.ema.module if self.ema is not None else self.model
        validating = self.val_batches is not None
        early_stop = self.config.early_stop
        self.monitor = Monitor(
            self.config.monitor or ("val_accuracy" if validating else "train_loss"),
            early_stop.min_delta if early_stop else 0.0,
            early_stop.patience if early_stop else None,
        )
        self.keep = self.config.keep or ("best" if validating else "last")
        self.mix = _mixing(setup.recipe.data, len(self.label_names))
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
        return torch.compile(model, mode=self.config.compile_mode) if self.config.compile else model

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
        stage = self.recipe.model.freeze.stages[index]
        group = freeze.unfreeze_stage(self.model, stage, self.recipe.optim.lr)
        self.applied_stages.append(index)
        if group:
            self.optimizer.add_param_group(group)
            self.forward = self._wrap(self.model)  # DDP must learn of the newly trainable parameters
            log(f"epoch {stage.epoch}: unfroze {sum(p.numel() for p in group['params']):,} parameters")

    def fit(self, progress: bool) -> tuple[State, str]:
        """Train epoch after epoch to the end (or ``max_steps``, or an early stop): validate, log and
        checkpoint each.

        Returns the run's state and why: ("finished", "" or the early stop) or ("interrupted", reason)
        after Ctrl-C.
        """
        tensorboard = self._tensorboard() if self.config.tensorboard and distributed.is_main() else None
        try:
            with self._stopping_on_signals():
                self._epochs(progress, tensorboard)
        except KeyboardInterrupt:
            how = "Ctrl-C" if self.stops.signal in (None, signal.SIGINT) else signal.Signals(self.stops.signal).name
            reason = f"stopped by {how} in epoch {self.epoch}, after step {self.step}"
            log(f"\n{reason}: saving the run folder")
            return "interrupted", reason
        finally:
            if tensorboard:
                tensorboard.close()
        return "finished", self.monitor.stop_reason() if self.stopped_early else ""

    @contextlib.contextmanager
    def _stopping_on_signals(self) -> Iterator[None]:
        """Ctrl-C, and SIGTERM (a scheduler's time limit or preemption; torchrun passes either on to
        every rank), stop training with the run folder saved, as ``interrupted``.

        Under DDP a signal only asks to stop; the ranks agree at the next check (``StopRequests``:
        within seconds, in training and in validation) and stop after the same batch, so that no rank
        is left in a collective the others have abandoned. A single process stops at once.
        """
        if threading.current_thread() is not threading.main_thread():  # only there can signals be handled
            yield
            return
        ranks = distributed.world_size()

        def asked_to_stop(signum: int, frame: Any) -> None:
            self.stops.signal = signum
            if ranks > 1:
                self.stops.flag.fill_(1)
            else:
                raise KeyboardInterrupt

        stopping = (signal.SIGINT, signal.SIGTERM) if ranks > 1 else (signal.SIGTERM,)
        previous = {signum: signal.signal(signum, asked_to_stop) for signum in stopping}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _epochs(self, progress: bool, tensorboard: Any) -> None:
        """Train, validate, log and checkpoint each epoch that is left."""
        while self.epoch <= self.config.epochs and not self.done:
            record = self.train_epoch(progress)
            distributed.broadcast_buffers(self.model)  # rank 0's BatchNorm statistics everywhere
            if self.ema is not None:
                distributed.broadcast_buffers(self.ema.module)
            last = self.epoch > self.config.epochs or self.done
            if self.val_batches is not None and (record["epoch"] % self.config.eval_every == 0 or last):
                self.stops.restart()
                val = evaluate(self.evaluator, self.val_batches, self.loss_fn, self.label_names, self.dtype,
                               between_batches=self.stops.batch_done)  # fmt: skip
                record |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_f1": val["f1"]}
                if "top5_accuracy" in val:
                    record["val_top5_accuracy"] = val["top5_accuracy"]
            best = self.monitor.update(record)
            self.history.append(record)
            if distributed.is_main():
                self.folder.write_metrics(self.history)
            self.save_checkpoint()
            log(_epoch_line(record, self.config.epochs) + (f" (best {self.monitor.metric})" if best else ""))
            if tensorboard:
                for key, value in record.items():
                    if key not in ("epoch", "step"):
                        tensorboard.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
            if self.monitor.should_stop and not last:
                self.stopped_early = True
                log(self.monitor.stop_reason())
                return

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ModuleNotFoundError:
            raise ZooError("train.tensorboard = true needs TensorBoard: pip install 'zoo[tensorboard]'") from None
        return SummaryWriter(str(self.folder.file(RunFolder.TENSORBOARD)))

    def train_epoch(self, progress: bool) -> dict[str, Any]:
        """Train the rest of ``self.epoch`` (or up to the last step); the epoch's record."""
        epoch = self.epoch
        self.unfreeze_stages(epoch)
        self.model.train()
        freeze.keep_frozen_bn_in_eval(self.model, self.recipe.model.freeze.train_bn)
        started = time.perf_counter()
        seen_before = self.seen
        self.stops.restart()
        bar = tqdm(total=self.batches.shard_size, initial=self.seen, desc=f"epoch {epoch}/{self.config.epochs}",
                   unit="img", unit_scale=True, disable=not (progress and distributed.is_main()),
                   leave=False, dynamic_ncols=True)  # fmt: skip
        for inputs, labels in self.batches.epoch(epoch, start=self.position):
            stepping = (self.position + 1) % self.config.grad_accum == 0 or self.position + 1 == len(self.batches)
            # The epoch's last group can be short: its gradient is the mean over its own micro-batches.
            group_start = self.position - self.position % self.config.grad_accum
            group_size = min(self.config.grad_accum, len(self.batches) - group_start)
            targets = labels
            if self.mix is not None:  # images and labels mixed in pairs: soft targets (numpy's RNG, checkpointed)
                inputs, targets = self.mix(inputs, labels)
            with self._synchronising(stepping):
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    logits = self.forward(inputs)
                    loss = self.loss_fn(logits, targets)
                self.scaler.scale(loss / group_size).backward()
            self.correct += (logits.detach().argmax(1) == labels).sum()
            loss = loss.detach()
            self.first_nonfinite = torch.where(
                (self.first_nonfinite < 0) & ~torch.isfinite(loss), self.step + 1, self.first_nonfinite
            )
            self.loss_sum += loss * len(labels)
            self.seen += len(labels)
            self.position += 1
            bar.update(len(labels))
            self.stops.batch_done()
            if self.position % self.config.grad_accum and self.position < len(self.batches):
                continue
            self._optimizer_step()
            if self.step % self.config.log_every == 0:  # the loop's only host sync
                self.check_finite()
                bar.set_postfix(loss=f"{float(self.loss_sum) / self.seen:.4f}")
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

    def check_finite(self) -> None:
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
            "optimizer": optim_state,
            "scaler": self.scaler.state_dict(),
            "world_size": distributed.world_size(),
            "monitor": self.monitor.state(),
        }
        best = self.monitor.best.step if self.keep == "best" and self.monitor.best else None
        shared, own = ({}, own | weights) if self.sharded else (weights, own)
        own_state = {"rng": rng, "seen": self.seen}
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
            self.loss_sum.copy_(tensors["loss_sum"])
            self.correct.copy_(tensors["correct"])
            self.monitor.restore(state.get("monitor", {}))
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ZooError(
                f"checkpoint {path} does not fit this run ({detail}); remove it to resume from the one before"
            ) from exc
        self.step, self.epoch, self.position = (state[k] for k in ("step", "epoch", "position"))
        self.seen = state["seen"]
        self.history = state["history"]

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


def _mixing(data: DataConfig, num_classes: int) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
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
    return line
