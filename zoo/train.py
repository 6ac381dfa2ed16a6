"""The recipe runner: builds everything a recipe declares, trains, evaluates, writes the run folder."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import __version__, artifacts, checkpoint, distributed, freeze
from . import recipe as recipes
from .data import Batches, Splits, load_splits
from .device import autocast_dtype, resolve_device
from .distributed import log
from .errors import ZooError
from .evaluate import build_loss, evaluate
from .model import build_model, load_pretrained
from .optim import build_optimizer, lr_factor, set_lr
from .plots import write_plots
from .recipe import Recipe


@dataclass
class RunResult:
    folder: Path
    results: dict[str, Any]


def output_folder(recipe: Recipe) -> Path:
    """``output.dir``, which must not hold another run, else a new ``runs/<name>-<timestamp>``."""
    if recipe.output.dir:
        folder = Path(recipe.output.dir)
        if artifacts.is_run_folder(folder):
            raise ZooError(f"output.dir {folder} already holds a run; choose another folder or remove that one")
        return folder
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path("runs") / f"{recipe.name}-{stamp}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = Path("runs") / f"{recipe.name}-{stamp}-{suffix}"
    return folder


def pretrained_folder(recipe: Recipe, progress: bool, dry_run: bool) -> Path | None:
    """The run folder whose weights the recipe starts from, running a ``recipe:`` source if needed."""
    source = recipe.model.pretrained
    if isinstance(source, bool):
        return None
    if source.startswith(recipes.RECIPE_SCHEME):
        return _cached_recipe_run(Path(source.removeprefix(recipes.RECIPE_SCHEME)), progress, dry_run)
    if source.startswith(recipes.REMOTE_SCHEMES):
        raise ZooError(f"model.pretrained = '{source}': Hub sources are not supported yet; use a run folder")
    folder = Path(source)
    if not folder.is_dir():
        raise ZooError(f"model.pretrained: run folder not found: {folder}")
    return folder


def _cached_recipe_run(path: Path, progress: bool, dry_run: bool) -> Path | None:
    """The output of the recipe at ``path``, cached by the hash of the resolved recipe."""
    source = recipes.load(path)
    cached = recipes.cache_dir() / "runs" / f"{source.name}-{source.hash[:12]}"
    results = artifacts.read_results(cached)
    if results and results.get("state") == "finished":
        log(f"pretrained: {path.name} (cached in {cached})")
        return cached
    if dry_run:
        log(f"pretrained: {path.name} is not cached yet; `zoo run` trains it first")
        return None
    log(f"pretrained: running {path.name} first (cached afterwards in {cached})")
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{cached.name}."))
    try:
        source = source.model_copy(update={"output": recipes.OutputConfig(dir=str(staging))})
        result = run(source, progress=progress)
        if result.results["state"] != "finished":
            raise ZooError(f"pretraining recipe {path} did not finish ({result.results['state']})")
        if distributed.is_main():
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(staging, cached)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    distributed.barrier()  # the other ranks read what rank 0 just put in place
    return cached


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class NonFiniteLoss(ZooError):
    """The loss became NaN or infinite."""


class Trainer:
    """The training loop and all of its state, which a checkpoint saves and restores whole.

    Checkpoints are taken only between optimiser steps; with the data order a function of
    (seed, epoch) and every RNG saved, a resumed run repeats the uninterrupted one exactly.
    """

    def __init__(
        self,
        recipe: Recipe,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: nn.Module,
        batches: Batches,
        dtype: torch.dtype | None,
        folder: Path,
    ) -> None:
        self.recipe = recipe
        self.config = recipe.train
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.batches = batches
        self.device = batches.device
        self.dtype = dtype
        self.folder = folder
        self.forward = self._wrap(model)
        # DDP's forward is a collective; each rank evaluates its own share of a split alone.
        self.evaluator = self.forward if distributed.world_size() == 1 else model
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=dtype is torch.float16)
        self.steps_per_epoch = math.ceil(len(batches) / self.config.grad_accum)
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

    def _wrap(self, model: nn.Module) -> nn.Module:
        """What the training step calls: the model, under DDP when launched by torchrun, compiled if asked."""
        if distributed.world_size() > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return torch.compile(model) if self.config.compile else model

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

    def train_epoch(self, progress: bool) -> dict[str, Any]:
        """Train the rest of ``self.epoch`` (or up to the last step); the epoch's record."""
        epoch = self.epoch
        self.unfreeze_stages(epoch)
        self.model.train()
        freeze.keep_frozen_bn_in_eval(self.model, self.recipe.model.freeze.train_bn)
        started = time.perf_counter()
        seen_before = self.seen
        bar = tqdm(total=self.batches.shard_size, initial=self.seen, desc=f"epoch {epoch}/{self.config.epochs}",
                   unit="img", unit_scale=True, disable=not (progress and distributed.is_main()),
                   leave=False, dynamic_ncols=True)  # fmt: skip
        for inputs, labels in self.batches.epoch(epoch, start=self.position):
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.forward(inputs)
                loss = self.loss_fn(logits, labels)
            self.correct += (logits.detach().argmax(1) == labels).sum()
            self.scaler.scale(loss / self.config.grad_accum).backward()
            loss = loss.detach()
            self.first_nonfinite = torch.where(
                (self.first_nonfinite < 0) & ~torch.isfinite(loss), self.step + 1, self.first_nonfinite
            )
            self.loss_sum += loss * len(labels)
            self.seen += len(labels)
            self.position += 1
            bar.update(len(labels))
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

    def learning_rates(self) -> list[float]:
        """The head's learning rate at every step of the run, from the schedule."""
        schedule, total, per_epoch = self.recipe.schedule, self.total_steps, self.steps_per_epoch
        return [self.recipe.optim.lr * lr_factor(schedule, step, total, per_epoch) for step in range(total)]

    def check_finite(self) -> None:
        bad_step = int(distributed.max_across_ranks(self.first_nonfinite))
        if bad_step >= 0:
            last = checkpoint.all_checkpoints(self.folder)
            kept = f"; the last good checkpoint is {last[-1]}" if last else ""
            raise NonFiniteLoss(
                f"the loss became NaN or infinite at step {bad_step} (epoch {self.epoch}): lower optim.lr, "
                f"set train.grad_clip, or use train.precision=fp32{kept}"
            )

    def save_checkpoint(self) -> None:
        """Checkpoint on rank 0 (every rank checks the loss first: a collective)."""
        self.check_finite()  # never save weights a NaN has already reached
        if not distributed.is_main():
            return
        tensors = {f"model.{name}": value for name, value in self.model.state_dict().items()}
        optim_tensors, optim_state = checkpoint.optimizer_state(self.optimizer)
        rng_tensors, rng = checkpoint.rng_state()
        tensors |= optim_tensors | rng_tensors | {"loss_sum": self.loss_sum, "correct": self.correct}
        state = {
            "recipe_hash": self.recipe.hash,
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "seen": self.seen,
            "applied_stages": self.applied_stages,
            "history": self.history,
            "optimizer": optim_state,
            "scaler": self.scaler.state_dict(),
            "world_size": distributed.world_size(),
            "rng": rng,
        }
        checkpoint.save(self.folder, self.step, tensors, state, self.config.keep_checkpoints)

    def load_checkpoint(self, path: Path) -> None:
        tensors, state = checkpoint.load(path)
        if state["world_size"] != distributed.world_size():
            raise ZooError(f"{path} was written by {state['world_size']} processes; resume it with as many")
        for index in state["applied_stages"]:
            self._apply_stage(index)
        model_state = {name.removeprefix("model."): t for name, t in tensors.items() if name.startswith("model.")}
        self.model.load_state_dict(model_state)
        checkpoint.load_optimizer_state(self.optimizer, tensors, state["optimizer"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        checkpoint.set_rng_state(tensors, state["rng"])
        if distributed.rank():  # rank 0's RNG state is saved; the others restart theirs from the seed
            seed_everything(self.recipe.train.seed + distributed.rank() + self.step)
        self.loss_sum.copy_(tensors["loss_sum"])
        self.correct.copy_(tensors["correct"])
        self.step, self.epoch, self.position, self.seen = state["step"], state["epoch"], state["position"], state["seen"]
        self.history = state["history"]


def run(recipe: Recipe, progress: bool = True, dry_run: bool = False, resume: Path | None = None) -> RunResult | None:
    """Train and evaluate ``recipe``; returns the run folder and results (None for a dry run).

    ``resume`` continues the run in that folder from its newest checkpoint.
    """
    seed_everything(recipe.train.seed)
    device = distributed.setup(resolve_device(recipe.train.device))
    dtype = autocast_dtype(recipe.train.precision, device)
    torch.use_deterministic_algorithms(recipe.train.deterministic)
    latest = check_resumable(resume, recipe) if resume else None
    folder = resume or output_folder(recipe)
    source = None if latest else pretrained_folder(recipe, progress, dry_run)
    splits = load_splits(recipe.data, recipe.train.seed)
    num_classes = recipe.model.head.num_classes or len(splits.label_names)
    if num_classes != len(splits.label_names):
        raise ZooError(
            f"model.head.num_classes = {num_classes}, but data.classes selects {len(splits.label_names)} "
            "classes; make them agree or leave num_classes out"
        )

    seed_everything(recipe.train.seed)  # the same initial weights whatever ran before
    model = build_model(recipe.model, num_classes)
    if source is not None:
        log(load_pretrained(model, source, recipe.model.backbone, splits.label_names))
    freeze.apply(model, recipe.model.freeze)
    memory_format = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    groups = freeze.param_groups(model, recipe.optim.lr, recipe.optim.backbone_lr_mult)
    if not groups:
        raise ZooError("model.freeze freezes every parameter: nothing would train; unfreeze the head at least")
    optimizer = build_optimizer(recipe.optim, groups)
    _print_setup(recipe, model, groups, splits, device, dtype)
    if dry_run:
        return None
    if distributed.rank():  # same initial weights on every rank, but each its own dropout
        seed_everything(recipe.train.seed + distributed.rank())
    main = distributed.is_main()

    loss_fn = build_loss(recipe.loss).to(device)
    batch_options = {
        "device": device, "mean": splits.mean, "std": splits.std,
        "channels_last": recipe.train.channels_last, "num_workers": recipe.data.num_workers,
    }  # fmt: skip
    train_batches = Batches(splits.train, recipe.data.batch_size, shuffle=True, seed=recipe.train.seed, **batch_options)
    val_batches = Batches(splits.val, recipe.data.eval_batch_size, **batch_options) if splits.val else None
    trainer = Trainer(recipe, model, optimizer, loss_fn, train_batches, dtype, folder)
    if latest is not None:
        trainer.load_checkpoint(latest)
        log(f"resuming {folder} from {latest.name} (epoch {trainer.epoch}, step {trainer.step})")
    if main:
        _write_state(folder, recipe, "running")
        artifacts.write_text(folder / artifacts.RECIPE, recipe.to_toml())
    log(f"run folder: {folder}")
    tensorboard = _tensorboard_writer(folder) if recipe.train.tensorboard and main else None

    state, reason = "finished", ""
    started = time.perf_counter()
    try:
        while trainer.epoch <= recipe.train.epochs and not trainer.done:
            record = trainer.train_epoch(progress)
            if val_batches is not None:
                val = evaluate(trainer.evaluator, val_batches, loss_fn, splits.label_names, dtype)
                record |= {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "val_f1": val["f1"]}
            trainer.history.append(record)
            if main:
                artifacts.write_text(folder / artifacts.METRICS, "".join(json.dumps(r) + "\n" for r in trainer.history))
            trainer.save_checkpoint()
            log(_epoch_line(record, recipe.train.epochs))
            if tensorboard:
                for key, value in record.items():
                    if key not in ("epoch", "step"):
                        tensorboard.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
    except KeyboardInterrupt:
        state, reason = "interrupted", f"stopped by Ctrl-C in epoch {trainer.epoch}, after step {trainer.step}"
        log(f"\n{reason}: saving the run folder")
    except BaseException as exc:
        try:
            if main:
                _write_state(folder, recipe, "failed", f"{type(exc).__name__}: {exc}", step=trainer.step)
        except ZooError as unrecorded:
            exc.add_note(f"(the failure could not be recorded in the run folder: {unrecorded})")
        raise
    finally:
        if tensorboard:
            tensorboard.close()

    history = trainer.history
    results: dict[str, Any] = {
        "state": state,
        "reason": reason,
        "recipe_hash": recipe.hash,
        "epochs": len(history),
        "steps": trainer.step,
        "train_seconds": time.perf_counter() - started,
    }
    if history and "val_accuracy" in history[-1]:
        results["best_val_accuracy"] = max(r["val_accuracy"] for r in history)
    if distributed.world_size() > 1:
        results["world_size"] = distributed.world_size()
        results["ranks_agree"] = distributed.ranks_agree(model)
        if not results["ranks_agree"]:
            raise RuntimeError("the ranks ended with different weights: DDP did not keep them in step")
    if state == "finished":
        test_batches = Batches(splits.test, recipe.data.eval_batch_size, **batch_options)
        results["test"] = evaluate(trainer.evaluator, test_batches, loss_fn, splits.label_names, dtype)
    if main:
        _write_run(folder, recipe, model, splits, results, trainer)
    return RunResult(folder, results)


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ModuleNotFoundError:
        raise ZooError("train.tensorboard = true needs TensorBoard: pip install 'zoo[tensorboard]'") from None
    return SummaryWriter(str(folder / "tensorboard"))


def _write_state(folder: Path, recipe: Recipe, state: str, reason: str = "", **extra: Any) -> None:
    """Mark the run folder's state in results.json (the final results replace it at the end)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(f"cannot create the run folder {folder}: {exc.strerror}") from None
    artifacts.write_json(folder / artifacts.RESULTS, {"state": state, "reason": reason, "recipe_hash": recipe.hash, **extra})


RESUMABLE_KEYS = {"train.epochs", "train.max_steps", "output.dir"}


def check_resumable(folder: Path, recipe: Recipe) -> Path:
    """The newest checkpoint of the run in ``folder``, if ``recipe`` may continue it."""
    try:
        saved = recipes.from_dict(tomllib.loads((folder / artifacts.RECIPE).read_text()), str(folder / artifacts.RECIPE))
    except FileNotFoundError:
        raise ZooError(f"--resume: {folder} is not a zoo run folder (no {artifacts.RECIPE})") from None
    differing = [key for key in recipes.differing_keys([saved.to_dict(), recipe.to_dict()]) if key not in RESUMABLE_KEYS]
    if differing:
        raise ZooError(
            f"--resume: the recipe differs from the run in {folder} in {', '.join(differing)}; "
            "only train.epochs and train.max_steps may change"
        )
    checkpoints = checkpoint.all_checkpoints(folder)
    if not checkpoints:
        raise ZooError(f"--resume: {folder} has no checkpoint yet; start it again instead")
    return checkpoints[-1]


def latest_run(recipe: Recipe, runs: Path = Path("runs")) -> Path:
    """The newest run folder of ``recipe`` (by name) under ``runs`` that has a checkpoint."""
    candidates = [
        folder
        for folder in runs.glob(f"{recipe.name}-*")
        if (folder / artifacts.RECIPE).is_file() and checkpoint.all_checkpoints(folder)
    ]
    if not candidates:
        raise ZooError(f"--resume: no run of '{recipe.name}' with a checkpoint under {runs}/; name one: --resume RUN")
    return max(candidates, key=lambda folder: checkpoint.all_checkpoints(folder)[-1].stat().st_mtime)


def _write_run(
    folder: Path, recipe: Recipe, model: nn.Module, splits: Splits, results: dict[str, Any], trainer: Trainer
) -> None:
    recipe_hash = recipe.hash
    metadata = {"label_names": json.dumps(splits.label_names), "recipe_hash": recipe_hash, "format": "pt"}
    artifacts.write_weights(folder / artifacts.WEIGHTS, model.state_dict(), metadata)
    config = {
        "architecture": recipe.model.backbone,
        "num_classes": len(splits.label_names),
        "num_features": model.num_features,
        "label_names": splits.label_names,
        "pretrained_cfg": {
            "input_size": list(splits.input_size),
            "mean": list(splits.mean),
            "std": list(splits.std),
            "num_classes": len(splits.label_names),
        },
        "zoo": {"version": __version__, "recipe_hash": recipe_hash, "recipe": recipe.to_dict()},
    }
    artifacts.write_json(folder / artifacts.CONFIG, config)
    plots = write_plots(folder, trainer.history, trainer.learning_rates(), results.get("test"))
    card = artifacts.model_card(
        recipe.name, recipe.description, recipe.model.backbone, recipe.data.dataset, results, recipe.to_toml(), plots
    )
    artifacts.write_text(folder / artifacts.MODEL_CARD, card)
    artifacts.write_json(folder / artifacts.RESULTS, results)  # last: its state marks the folder complete


def _print_setup(
    recipe: Recipe, model: nn.Module, groups: list[dict], splits: Splits, device: torch.device, dtype: torch.dtype | None
) -> None:
    val = len(splits.val) if splits.val is not None else 0
    log(
        f"{recipe.name}: {recipe.model.backbone} on {recipe.data.dataset} "
        f"({len(splits.label_names)} classes: {', '.join(splits.label_names)})"
    )
    log(f"data: {len(splits.train):,} train, {val:,} val, {len(splits.test):,} test images of {tuple(splits.input_size)}")
    precision = str(dtype).removeprefix("torch.") if dtype else "fp32"
    ranks = distributed.world_size()
    batch = f"batch {recipe.data.batch_size}" + (
        f" per rank x {ranks} ranks = {recipe.data.batch_size * ranks} global" if ranks > 1 else ""
    )
    log(f"device: {device} ({precision}), {batch}, {recipe.optim.name} lr {recipe.optim.lr:g}")
    width = max(len(row[0]) for row in freeze.summary(model, groups))
    log(f"{'group':<{width}}  {'tensors':>7}  {'parameters':>12}  lr")
    for name, tensors, count, lr in freeze.summary(model, groups):
        log(f"{name:<{width}}  {tensors:>7}  {count:>12,}  {lr}")


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    line = (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
        f"{record['images_per_second']:.0f} img/s, {record['seconds']:.1f}s"
    )
    if "val_accuracy" in record:
        line += f", val loss {record['val_loss']:.4f}, val acc {100 * record['val_accuracy']:.2f}%"
    return line

