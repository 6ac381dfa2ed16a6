"""The recipe runner: builds everything a recipe declares, trains it (with the Trainer), evaluates, writes the run folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, artifacts, checkpoint, distributed, freeze
from . import recipe as recipes
from .card import model_card
from .data import Batches, Splits, configure_images, load_splits
from .device import autocast_dtype, resolve_device
from .distributed import log
from .errors import ZooError
from .evaluate import build_loss, evaluate
from .model import Classifier, build_model, exchange_config
from .optim import build_optimizer, default_weight_decay
from .plots import write_plots
from .recipe import Recipe
from .trainer import Trainer, seed_everything


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


def pretrained_source(recipe: Recipe, progress: bool, dry_run: bool) -> Path | str | None:
    """Where the recipe's weights come from: a folder (running a ``recipe:`` source if needed) or ``hf-hub:``."""
    source = recipe.model.pretrained
    if isinstance(source, bool):
        return None
    if source.startswith(recipes.RECIPE_SCHEME):
        return _cached_recipe_run(Path(source.removeprefix(recipes.RECIPE_SCHEME)), progress, dry_run)
    if source.startswith(recipes.REMOTE_SCHEMES):
        return source  # build_model fetches it
    folder = Path(source)
    if not folder.is_dir():
        raise ZooError(f"model.pretrained: folder not found: {folder}")
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
    # A resumed run is rebuilt as it started (a source can set architecture arguments, e.g. in_chans).
    source = pretrained_source(recipe, progress, dry_run)
    splits = load_splits(recipe.data, recipe.train.seed)
    num_classes = recipe.model.head.num_classes or len(splits.label_names)
    if num_classes != len(splits.label_names):
        raise ZooError(
            f"model.head.num_classes = {num_classes}, but data.classes selects {len(splits.label_names)} "
            "classes; make them agree or leave num_classes out"
        )

    seed_everything(recipe.train.seed)  # the same initial weights whatever ran before
    model, loaded = build_model(recipe.model, splits.label_names, source)
    if loaded:
        log(loaded)
    configure_images(splits, recipe.data, model)
    freeze.apply(model, recipe.model.freeze)
    memory_format = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    groups = freeze.param_groups(
        model,
        recipe.optim.lr,
        recipe.optim.backbone_lr_mult,
        recipe.train.layer_decay,
        default_weight_decay(recipe.optim),
    )
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
    artifacts.write_json(
        folder / artifacts.RESULTS, {"state": state, "reason": reason, "recipe_hash": recipe.hash, **extra}
    )


RESUMABLE_KEYS = {"train.epochs", "train.max_steps", "output.dir"}


def check_resumable(folder: Path, recipe: Recipe) -> Path:
    """The newest checkpoint of the run in ``folder``, if ``recipe`` may continue it."""
    try:
        saved = recipes.from_dict(
            tomllib.loads((folder / artifacts.RECIPE).read_text()), str(folder / artifacts.RECIPE)
        )
    except FileNotFoundError:
        raise ZooError(f"--resume: {folder} is not a zoo run folder (no {artifacts.RECIPE})") from None
    differing = [
        key for key in recipes.differing_keys([saved.to_dict(), recipe.to_dict()]) if key not in RESUMABLE_KEYS
    ]
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
    config = exchange_config(model, recipe.model.backbone, splits.label_names, splits.data_config)
    config["zoo"] = {"version": __version__, "recipe_hash": recipe_hash, "recipe": recipe.to_dict()}
    artifacts.write_json(folder / artifacts.CONFIG, config)
    plots = write_plots(folder, trainer.history, trainer.learning_rates(), results.get("test"))
    timm_architecture = None if isinstance(model, Classifier) else config["architecture"]
    card = model_card(recipe, results, plots, base_model(recipe, model), timm_architecture)
    artifacts.write_text(folder / artifacts.MODEL_CARD, card)
    artifacts.write_json(folder / artifacts.RESULTS, results)  # last: its state marks the folder complete


def base_model(recipe: Recipe, model: nn.Module) -> str | None:
    """The Hub repo the weights started from, for the model card (None when not from the Hub)."""
    source = recipe.model.pretrained
    if isinstance(source, str) and source.startswith(recipes.REMOTE_SCHEMES):
        return source.split(":", 1)[1].split("@")[0]
    if source is True:
        return getattr(model, "pretrained_cfg", {}).get("hf_hub_id")
    return None


def _print_setup(
    recipe: Recipe,
    model: nn.Module,
    groups: list[dict],
    splits: Splits,
    device: torch.device,
    dtype: torch.dtype | None,
) -> None:
    val = len(splits.val) if splits.val is not None else 0
    log(
        f"{recipe.name}: {recipe.model.backbone} on {recipe.data.dataset} "
        f"({len(splits.label_names)} classes: {', '.join(splits.label_names)})"
    )
    log(
        f"data: {len(splits.train):,} train, {val:,} val, {len(splits.test):,} test images of {tuple(splits.input_size)}"
    )
    precision = str(dtype).removeprefix("torch.") if dtype else "fp32"
    ranks = distributed.world_size()
    batch = f"batch {recipe.data.batch_size}" + (
        f" per rank x {ranks} ranks = {recipe.data.batch_size * ranks} global" if ranks > 1 else ""
    )
    log(f"device: {device} ({precision}), {batch}, {recipe.optim.name} lr {recipe.optim.lr:g}")
    rows = freeze.summary(model, groups)
    width = max(len(row[0]) for row in rows)
    log(f"{'group':<{width}}  {'tensors':>7}  {'parameters':>12}  lr")
    for name, tensors, count, lr in rows:
        log(f"{name:<{width}}  {tensors:>7}  {count:>12,}  {lr}")


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    line = (
        f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
        f"{record['images_per_second']:.0f} img/s, {record['seconds']:.1f}s"
    )
    if "val_accuracy" in record:
        line += f", val loss {record['val_loss']:.4f}, val acc {100 * record['val_accuracy']:.2f}%"
    return line
