"""The recipe runner: set up what a recipe declares, fit it (``Trainer.fit``), finish the run folder.

``build_run`` turns a recipe into a ``RunSetup`` (device, precision, data, preprocessing, model,
optimiser, loss); ``zoo run``, ``--dry-run``, ``--resume`` and ``zoo eval`` all start from it.
``run`` then claims the run folder, fits and finishes: test metrics, weights, config, plots,
model card, and ``results.json`` last.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from torch import nn

from .. import _files
from .. import _locking as locking
from .._version import __version__
from ..config import recipe as recipes
from ..config.recipe import Recipe
from ..config.sources import HubRepo, LocalFolder, PluginWeights, RecipeOutput, RegistryName, Scratch, WeightSource
from ..data import augment
from ..data.augment import Augmentation
from ..data.batches import Batches, sample_batch
from ..data.contract import facts
from ..data.preprocessing import Preprocessing
from ..data.splits import Split, Splits, class_weights, data_input, load_splits, tensor_shape
from ..data.transforms import attach_cache, attach_transforms, resolve_preprocessing
from ..errors import ZooError
from ..inference.evaluate import evaluate
from ..inference.export import drop_exports
from ..models import freeze
from ..models.build import build_model, check_input, exchange_config, load_run
from ..parallel import distributed, fsdp
from ..parallel.distributed import log
from ..plugins import _registry as registry
from ..runs.card import model_card
from ..runs.folder import RunFolder, RunResults
from ..runs.plots import write_plots
from ..sharing import registry as catalog
from . import checkpoint, launch
from .device import autocast_dtype, resolve_device
from .device import configure as configure_backends
from .loop import Trainer, check_finite_weights, seed_everything
from .optim import build_optimizer, default_weight_decay


@dataclass
class RunSetup:
    """Everything a recipe builds before the first step: what training and evaluation run on."""

    recipe: Recipe
    device: torch.device
    dtype: torch.dtype | None  # autocast precision; None for fp32
    splits: Splits
    preprocessing: Preprocessing
    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer | None = None  # None when only evaluating
    groups: list[dict] | None = None
    class_weights: list[float] | None = None  # the loss's, from loss.class_weights
    augmentation: Augmentation | None = None  # training's, resolved from data.augment and the model
    cache: str = "none"  # the image cache in use (data.cache), in words

    def batches(self, split: Split, training: bool = False) -> Batches:
        data = self.recipe.data
        return Batches(
            split,
            data.batch_size if training else data.eval_batch_size,
            self.device,
            self.preprocessing,
            shuffle=training,
            seed=self.recipe.train.seed,
            num_workers=data_workers(data),
            channels_last=self.recipe.train.channels_last,
            balanced=training and data.sampler == "balanced",
            augmentation=self.augmentation if training else None,
        )


def data_workers(data: recipes.DataConfig) -> int:
    """``data.num_workers``, or when the recipe does not say: this node's CPUs shared by its ranks, at most 8."""
    if data.num_workers is not None:
        return data.num_workers
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // ranks_here))


@dataclass
class RunResult:
    folder: Path
    results: RunResults


def build_run(
    recipe: Recipe, progress: bool = True, dry_run: bool = False, trained: RunFolder | None = None
) -> RunSetup:
    """Set up ``recipe``: a model to train (from its pretrained source), or the model of the ``trained`` run."""
    seed_everything(recipe.train.seed)
    device = distributed.setup(resolve_device(recipe.train.device))
    configure_backends(device, recipe.train.deterministic)
    # A resumed run is rebuilt as it started (a source can set architecture arguments, e.g. in_chans).
    source = None if trained else resolve_source(recipe.model.pretrained, progress, dry_run)
    splits = distributed.agreed(lambda: load_splits(recipe.data, recipe.train.seed))
    if trained is None:
        model, preprocessing = distributed.agreed(lambda: _new_model(recipe, splits, source))
    else:
        model, preprocessing = load_run(trained), trained.preprocessing
        if splits.label_names != model.label_names:
            raise ZooError(f"data.classes select {splits.label_names}, but the run was trained on {model.label_names}")
    augmentation = (
        augment.resolve(recipe.data, model, splits.train.dataset, on_tensors=not splits.images)
        if trained is None
        else None
    )
    attach_transforms(splits, preprocessing, augmentation)
    memory_format = torch.channels_last if recipe.train.channels_last else torch.contiguous_format
    if recipe.train.sync_bn and distributed.world_size() > 1 and trained is None:
        if device.type != "cuda":
            raise ZooError(
                "train.sync_bn = true needs GPUs (SyncBatchNorm has no CPU kernel); on the CPU the ranks "
                "share rank 0's BatchNorm statistics after every epoch: leave sync_bn out"
            )
        model = distributed.sync_batchnorm(model)
    model.to(device, memory_format=memory_format)
    # Before an image cache is built, and before the first step: a model that cannot take the data is one line.
    inputs = sample_batch(splits.train, preprocessing, device, augmentation, recipe.train.channels_last)
    check_input(model, inputs, len(splits.label_names), recipe.model.backbone, recipe.data.dataset)
    workers = data_workers(recipe.data)
    cache = attach_cache(splits, preprocessing, recipe.data, augmentation, workers, progress and distributed.is_main())
    if recipe.train.strategy == "fsdp" and distributed.world_size() > 1 and trained is None:
        fsdp.shard(model)  # before the optimiser, which must hold the sharded parameters
    weights = class_weights(recipe.loss.class_weights, splits) if recipe.loss.class_weights else None
    loss_fn = _loss(recipe, weights).to(device)
    dtype = autocast_dtype(recipe.train.precision, device)
    setup = RunSetup(
        recipe, device, dtype, splits, preprocessing, model, loss_fn,
        class_weights=weights, augmentation=augmentation, cache=cache,
    )  # fmt: skip
    if trained is None:
        optim = recipe.optim
        weight_decay = default_weight_decay(optim)
        setup.groups = freeze.param_groups(
            model, optim.lr, optim.backbone_lr_mult, recipe.train.layer_decay, weight_decay
        )
        if not setup.groups:
            raise ZooError("model.freeze freezes every parameter: nothing would train; unfreeze the head at least")
        setup.optimizer = build_optimizer(optim, setup.groups, device)
    return setup


def _loss(recipe: Recipe, weights: list[float] | None) -> nn.Module:
    """The recipe's loss, given its class weights; refused where it cannot take what training gives it."""
    name, args = recipe.loss.name, recipe.loss.args
    supplied = {}
    if weights is not None:
        if not registry.takes(registry.check("loss", name, args), "weight"):
            raise ZooError(f"loss.class_weights: loss '{name}' takes no class weights (it has no `weight` "
                           "parameter); use cross_entropy or nll, or remove loss.class_weights")  # fmt: skip
        supplied["weight"] = torch.tensor(weights, dtype=torch.float32)
    loss_fn = registry.instantiate("loss", name, args, **supplied)
    if (recipe.data.mixup or recipe.data.cutmix) and not takes_soft_targets(loss_fn):
        raise ZooError(
            f"data.mixup and data.cutmix mix the labels too, but loss '{name}' takes class indices only; "
            "use cross_entropy (or a loss plugin that sets `soft_targets = True`)"
        )
    return loss_fn


def takes_soft_targets(loss_fn: nn.Module) -> bool:
    """Whether ``loss_fn`` takes class probabilities as targets: torch's cross-entropy does; a
    plugin's loss says so with ``soft_targets = True``."""
    return bool(getattr(loss_fn, "soft_targets", isinstance(loss_fn, nn.CrossEntropyLoss)))


def _new_model(recipe: Recipe, splits: Splits, source: WeightSource) -> tuple[nn.Module, Preprocessing]:
    num_classes = recipe.model.head.num_classes or len(splits.label_names)
    if num_classes != len(splits.label_names):
        raise ZooError(
            f"model.head.num_classes = {num_classes}, but data.classes selects {len(splits.label_names)} "
            "classes; make them agree or leave num_classes out"
        )
    seed_everything(recipe.train.seed)  # the same initial weights whatever ran before
    model, loaded = build_model(
        recipe.model.model_copy(update={"pretrained": source}), splits.label_names, data_input(recipe.data, splits)
    )
    if loaded:
        log(loaded)
    preprocessing = resolve_preprocessing(recipe.data, model, splits)
    freeze.apply(model, recipe.model.freeze)
    return model, preprocessing


def resolve_source(source: WeightSource, progress: bool, dry_run: bool) -> WeightSource:
    """``source`` with a ``recipe:`` source replaced by the folder it trains (trained first if not
    cached), and a ``registry:`` name by its pinned files, pulled and checked (or by its recipe)."""
    if isinstance(source, RegistryName):
        found = catalog.find(source.name)
        if found.entry.sources.hub is not None:
            from ..sharing.hub import pull

            return LocalFolder(distributed.agreed(lambda: pull(source)))  # each node pulls and checks
        assert found.recipe is not None, "a registry entry has a hub source, a recipe or both"
        source = RecipeOutput(found.recipe)
    if not isinstance(source, RecipeOutput):
        return source
    cached = _cached_recipe_run(source.path, progress, dry_run)
    return LocalFolder(cached.path) if cached else Scratch()  # a dry run does not train the source


def _cached_recipe_run(path: Path, progress: bool, dry_run: bool) -> RunFolder | None:
    """The output of the recipe at ``path``, cached by the hash of the resolved recipe (None on a dry run).

    Rank 0 decides and builds, holding a lock on the cache entry: a second zoo process that
    needs the same source waits for it instead of training it again.
    """
    source = recipes.load(path)
    cached = RunFolder(recipes.cache_dir() / "runs" / f"{source.name}-{source.hash[:12]}")
    main = distributed.is_main()
    with locking.locked(cached.path) if main else contextlib.nullcontext():
        if main:  # under the lock, any staging folder of this entry was left by a dead process
            for abandoned in cached.path.parent.glob(f".{cached.path.name}.*"):
                shutil.rmtree(abandoned, ignore_errors=True)
        if distributed.decided_by_main(lambda: cached.state == "finished"):
            log(f"pretrained: {path.name} (cached in {cached})")
            _share_with_every_node(cached)
            return cached
        if dry_run:
            log(f"pretrained: {path.name} is not cached yet; `zoo run` trains it first")
            return None
        log(f"pretrained: running {path.name} first (cached afterwards in {cached})")
        staging = _files.staging_folder(cached.path) if main else None
        staging = distributed.from_main(staging)
        try:
            result = run(
                source.model_copy(update={"output": recipes.OutputConfig(dir=str(staging))}), progress=progress
            )
            if result.results.state != "finished":
                raise ZooError(f"pretraining recipe {path} did not finish ({result.results.state})")
            if main:
                _files.replace_folder(staging, cached.path)
        finally:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
    _share_with_every_node(cached)
    return cached


def _share_with_every_node(cached: RunFolder) -> None:
    """Rank 0's cached run folder, copied into each node's own cache where that node lacks it.

    Nodes need not share a filesystem: a source is built once, on rank 0, and sent to the rest.
    """
    if distributed.world_size() == 1:
        return
    missing = distributed.all_gathered(distributed.local_rank() == 0 and cached.state != "finished")
    files = None
    if distributed.is_main() and any(missing):
        files = {name: cached.file(name).read_bytes() for name in RunFolder.SHARED if cached.file(name).is_file()}
    files = distributed.from_main(files)
    if missing[distributed.rank()]:
        with _files.staged_folder(cached.path) as staging:  # replaces an unfinished copy, if any
            for name, data in files.items():
                _files.atomic_write(staging / name, data)
    distributed.barrier()  # every node now holds the source


def run(recipe: Recipe, progress: bool = True, dry_run: bool = False, resume: Path | None = None) -> RunResult | None:
    """Train and evaluate ``recipe``; returns the run folder and results (None for a dry run).

    ``resume`` continues the run in that folder from its newest checkpoint. The folder is claimed
    first, before any data, model or pretrained source is read, and released at the end.
    """
    distributed.setup(resolve_device(recipe.train.device))
    folder = RunFolder(resume) if resume else output_folder(recipe, create=not dry_run and distributed.is_main())
    folder = RunFolder(distributed.from_main(folder.path))  # the folder rank 0 chose and created
    new = not resume and not folder.path.exists()
    claim = locking.claim(folder.path) if distributed.is_main() and not dry_run else None
    new = new or (claim is not None and not resume and recipe.output.dir is None)  # output_folder created it
    try:
        if claim and claim.took_over:
            owner = claim.took_over
            log(
                f"{folder}: taking over from process {owner.get('pid')} (started {owner.get('started')}), which is gone"
            )
        latest = distributed.decided_by_main(lambda: check_resumable(folder, recipe)) if resume else None
        setup = build_run(recipe, progress, dry_run)
        _print_setup(setup)
        if dry_run:
            return None
        return _train(setup, folder, latest, progress)
    finally:
        if claim:
            claim.release()
            if new:
                _remove_if_empty(folder.path)


def _remove_if_empty(path: Path) -> None:
    """Leave nothing behind when a new run stopped before writing anything (a mistake found early)."""
    with contextlib.suppress(OSError):  # not empty: the run wrote something worth keeping
        path.rmdir()
        if path.parent.name == "runs":
            path.parent.rmdir()


def _train(setup: RunSetup, folder: RunFolder, latest: Path | None, progress: bool) -> RunResult:
    recipe = setup.recipe
    # Same initial weights on every rank, but each its own dropout; and training's random numbers
    # never depend on what setting up drew (a cache built or found, a download, a pretraining run).
    seed_everything(recipe.train.seed + distributed.rank())
    trainer = Trainer(setup, folder)
    if latest is not None:
        trainer.load_checkpoint(latest)
        log(f"resuming {folder} from {latest.name} (epoch {trainer.epoch}, step {trainer.step})")
    if distributed.is_main():
        folder.write_results(RunResults(state="running", recipe_hash=recipe.hash))
        folder.write_recipe(recipe)
        if latest is not None:  # the weights will change: exports of the old ones would answer for the new
            for name in drop_exports(folder):
                log(f"removed {name}, exported from the weights this run now trains on (`zoo export` it again)")
        launch.leave_note(launch.RUN_FOLDER, str(folder.path.resolve()))  # for `zoo run --nproc`, after Ctrl-C
    log(f"run folder: {folder}")
    try:
        started = time.perf_counter()
        state, reason = trainer.fit(progress)
        results = _finish(setup, trainer, folder, state, reason, time.perf_counter() - started)
    except BaseException as exc:
        _record_failure(folder, recipe, exc, trainer.step)
        raise
    return RunResult(folder.path, results)


def _finish(
    setup: RunSetup, trainer: Trainer, folder: RunFolder, state: str, reason: str, seconds: float
) -> RunResults:
    """The run's results (test metrics once finished), and on rank 0 the run folder's final files."""
    kept = trainer.keep_best()
    log(f"keeping {kept}")
    model = trainer.evaluator  # the weights the run keeps (the EMA's, if there is one)
    check_finite_weights(model)  # never finished with NaN weights, whatever the loss said
    history, monitor = trainer.history, trainer.monitor
    best = monitor.best if trainer.keep == "best" else None
    results = RunResults(
        state=state,
        reason=reason,
        recipe_hash=setup.recipe.hash,
        epochs=len(history),
        steps=trainer.step,
        train_seconds=seconds,
        monitor=monitor.metric,
        kept=trainer.keep,
        kept_epoch=best.epoch if best else (history[-1]["epoch"] if history else None),
        kept_value=best.value if best else (history[-1].get(monitor.metric) if history else None),
        stopped_early=trainer.stopped_early,
        class_weights=setup.class_weights,
        augmentation=describe_augmentation(setup),
    )
    if any("val_accuracy" in record for record in history):
        results.best_val_accuracy = max(record["val_accuracy"] for record in history if "val_accuracy" in record)
    if distributed.world_size() > 1:
        results.world_size = distributed.world_size()
        results.ranks_agree = distributed.ranks_agree(model)
        if not results.ranks_agree:
            raise RuntimeError("the ranks ended with different weights: DDP did not keep them in step")
    if state == "finished":
        test = setup.batches(setup.splits.test)
        results.test = evaluate(model, test, setup.loss_fn, setup.splits.label_names, setup.dtype)
    weights = fsdp.full_state_dict(model)  # a collective when sharded
    if distributed.is_main():
        _write_run(folder, setup, results, trainer, weights)
    return results


def _record_failure(folder: RunFolder, recipe: Recipe, exc: BaseException, step: int) -> None:
    """Mark the run failed in results.json; a failure to do so is noted on the exception, not raised."""
    if not distributed.is_main() or isinstance(exc, KeyboardInterrupt):
        return
    try:
        reason = str(distributed.rank_left(exc) or f"{type(exc).__name__}: {exc}")
        folder.write_results(RunResults(state="failed", reason=reason, recipe_hash=recipe.hash, failed_at_step=step))
    except ZooError as unrecorded:
        exc.add_note(f"(the failure could not be recorded in the run folder: {unrecorded})")


def output_folder(recipe: Recipe, create: bool) -> RunFolder:
    """``output.dir``, which must be new or empty, else a new ``runs/<name>-<timestamp>`` (created if ``create``)."""
    if recipe.output.dir:
        folder = RunFolder(recipe.output.dir)
        if folder.holds_run:
            raise ZooError(f"output.dir {folder} already holds a run; choose another folder or remove that one")
        if folder.path.is_dir() and any(path.name != locking.LOCK_NAME for path in folder.path.iterdir()):
            raise ZooError(f"output.dir {folder} is a folder with other files in it; name a new or empty folder")
        if folder.path.exists() and not folder.path.is_dir():
            raise ZooError(f"output.dir {folder} is a file, not a folder")
        return folder
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in range(1, 1000):
        path = Path("runs") / (f"{recipe.name}-{stamp}" + (f"-{suffix}" if suffix > 1 else ""))
        if not create:
            return RunFolder(path)
        try:
            path.mkdir(parents=True)  # atomic: two runs started in the same second get two folders
        except FileExistsError:
            continue
        except OSError as exc:
            raise ZooError(f"cannot create the run folder {path}: {exc.strerror}") from None
        return RunFolder(path)
    raise ZooError(f"runs/ already holds 999 runs of {recipe.name} started at {stamp}")


RESUMABLE_KEYS = {"train.epochs", "train.max_steps", "output.dir"}


def check_resumable(folder: RunFolder, recipe: Recipe) -> Path:
    """The newest checkpoint of the run in ``folder``, if ``recipe`` may continue it."""
    if not folder.path.is_dir():
        raise ZooError(f"--resume: run folder not found: {folder}")
    try:
        saved = folder.recipe
    except ZooError as exc:
        raise ZooError(f"--resume: {exc}") from None
    differing = [
        key for key in recipes.differing_keys([saved.to_dict(), recipe.to_dict()]) if key not in RESUMABLE_KEYS
    ]
    if differing:
        raise ZooError(
            f"--resume: the recipe differs from the run in {folder} in {', '.join(differing)}; "
            "only train.epochs and train.max_steps may change"
        )
    checkpoints = folder.checkpoints
    if not checkpoints:
        raise ZooError(f"--resume: {folder} has no checkpoint yet; start it again instead")
    state = checkpoint.read_state(checkpoints[-1])
    trained_epochs = state["epoch"] - 1 if state["position"] == 0 else state["epoch"]
    if recipe.train.epochs < trained_epochs or (recipe.train.max_steps or state["step"]) < state["step"]:
        raise ZooError(
            f"--resume: {folder} has already trained {trained_epochs} epoch(s), {state['step']} steps; "
            "train.epochs and train.max_steps can only grow"
        )
    return checkpoints[-1]


def latest_run(recipe: Recipe, runs: Path = Path("runs")) -> Path:
    """The newest run folder of ``recipe`` (by name) under ``runs`` that has a checkpoint."""
    candidates = [RunFolder(path) for path in runs.glob(f"{recipe.name}-*")]
    candidates = [run for run in candidates if run.file(RunFolder.RECIPE).is_file() and run.checkpoints]
    if not candidates:
        raise ZooError(f"--resume: no run of '{recipe.name}' with a checkpoint under {runs}/; name one: --resume RUN")
    return max(candidates, key=lambda run: run.checkpoints[-1].stat().st_mtime).path


def _write_run(
    folder: RunFolder, setup: RunSetup, results: RunResults, trainer: Trainer, weights: dict[str, torch.Tensor]
) -> None:
    recipe, label_names = setup.recipe, setup.splits.label_names
    metadata = {"label_names": json.dumps(label_names), "recipe_hash": recipe.hash, "format": "pt"}
    folder.write_weights(weights, metadata)
    config = exchange_config(setup.model, recipe.model.backbone, label_names, setup.preprocessing)
    # Files that may be shared hold the recipe without this machine's paths; recipe.toml keeps them.
    config["zoo"] = {"version": __version__, "recipe_hash": recipe.hash, "recipe": recipe.shareable().to_dict()}
    folder.write_config(config)
    plots = write_plots(folder, trainer.history, trainer.learning_rates(), results.test)
    timm_architecture = config["architecture"] if hasattr(setup.model, "pretrained_cfg") else None
    hub_dataset = facts(setup.splits.train.dataset).hub_dataset
    card = model_card(
        recipe.shareable(), results, plots, base_model(recipe.model.pretrained, setup.model), timm_architecture,
        hub_dataset,
    )  # fmt: skip
    folder.write_model_card(card)
    folder.write_results(results)  # last: its state marks the folder complete


def base_model(source: WeightSource, model: nn.Module) -> str | None:
    """The Hub repo the weights started from, for the model card (None when not from the Hub)."""
    if isinstance(source, HubRepo):
        return source.repo
    if isinstance(source, RegistryName):
        pinned = catalog.entry(source.name).sources.hub
        return pinned.repo if pinned else None
    if isinstance(source, PluginWeights):
        return getattr(model, "pretrained_cfg", {}).get("hf_hub_id")
    return None


def describe_augmentation(setup: RunSetup) -> str:
    augmentation = setup.augmentation
    on_device = not setup.splits.images or setup.splits.train.decoded is not None
    return augmentation.describe(on_device) if augmentation else "none"


def _print_setup(setup: RunSetup) -> None:
    recipe, splits = setup.recipe, setup.splits
    val = len(splits.val) if splits.val is not None else 0
    log(
        f"{recipe.name}: {recipe.model.backbone} on {recipe.data.dataset} "
        f"({len(splits.label_names)} classes: {', '.join(splits.label_names)})"
    )
    size = tuple(setup.preprocessing.input_size)
    own = None if splits.images else tensor_shape(splits.train.dataset)
    why = "data.image_size" if recipe.data.image_size else f"the size {recipe.model.backbone} is built for"
    resized = f", resized from {own} ({why})" if own and own != size else ""
    log(f"data: {len(splits.train):,} train, {val:,} val, {len(splits.test):,} test images of {size}{resized}")
    precision = str(setup.dtype).removeprefix("torch.") if setup.dtype else "fp32"
    ranks = distributed.world_size()
    batch = f"batch {recipe.data.batch_size}" + (
        f" per rank x {ranks} ranks = {recipe.data.batch_size * ranks} global ({recipe.train.strategy})"
        if ranks > 1
        else ""
    )
    log(f"device: {setup.device} ({precision}), {batch}, {recipe.optim.name} lr {recipe.optim.lr:g}")
    log(f"augmentation ({recipe.data.augment}): {describe_augmentation(setup)}")
    if splits.images:
        log(f"image cache: {setup.cache}")
    elif recipe.data.cache not in (None, "none") and distributed.is_main():  # a setting that does nothing says so
        why = (
            "are tensors held in memory already" if facts(splits.train.dataset).in_memory else "are tensors, not files"
        )
        print(
            f'zoo: warning: data.cache = "{recipe.data.cache}" does nothing: the images of dataset '
            f"'{recipe.data.dataset}' {why}; remove data.cache",
            file=sys.stderr,
            flush=True,
        )
    if setup.class_weights:
        log(f"class weights: {', '.join(f'{weight:.3g}' for weight in setup.class_weights)}")
    rows = freeze.summary(setup.model, setup.groups or [])
    width = max(len(row[0]) for row in rows)
    log(f"{'group':<{width}}  {'tensors':>7}  {'parameters':>12}  lr")
    for name, tensors, count, lr in rows:
        log(f"{name:<{width}}  {tensors:>7}  {count:>12,}  {lr}")
