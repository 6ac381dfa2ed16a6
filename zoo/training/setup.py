"""Setting a recipe up for training: seeds, device, data, model (from its pretrained source), loss, optimiser.

``build_run`` turns a recipe into the ``RunSetup`` that ``Trainer`` trains; ``zoo run``,
``--dry-run`` and ``--resume`` all start from it (``print_setup`` says what it built).
"""

from __future__ import annotations

import importlib.util
import math
import random
import sys

import numpy as np
import torch
from torch import nn

from ..config.schema import Recipe
from ..config.sources import WeightSource
from ..data import augment
from ..data.contract import facts
from ..data.preprocessing import Preprocessing
from ..data.splits import Splits, data_input, load_splits, tensor_shape
from ..data.transforms import resolve_preprocessing
from ..errors import ZooError
from ..inference.prepared import RunSetup, prepare_data
from ..models import adapters, freeze
from ..models.build import build_model
from ..parallel import distributed, fsdp
from ..parallel.device import autocast_dtype, resolve_device
from ..parallel.device import configure as configure_backends
from ..parallel.distributed import log
from ..tasks.multi_label import resolve_task
from ..tasks.recipe_loss import build_loss
from .optim import build_optimizer, default_weight_decay


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_run(recipe: Recipe, progress: bool = True, source: WeightSource | None = None) -> RunSetup:
    """Set up ``recipe`` for training, its model's weights from ``source`` (as ``runner.resolve_source``
    resolves the recipe's ``model.pretrained``; by default that setting as it is)."""
    source = recipe.model.pretrained if source is None else source
    _refuse_adapter_settings(recipe)
    seed_everything(recipe.train.seed)
    device = distributed.setup(resolve_device(recipe.train.device))
    configure_backends(device, recipe.train.deterministic)
    splits = distributed.agreed(lambda: load_splits(recipe.data, recipe.train.seed))
    _refuse_stream_settings(recipe, splits)
    _refuse_empty_validation(recipe, splits)
    recipe = pinned(recipe, splits)
    resolve_task(recipe, splits)
    model, preprocessing = distributed.agreed(lambda: _new_model(recipe, splits, source))
    augmentation = augment.resolve(recipe.data, model, splits.train.dataset, on_tensors=not splits.images)
    if recipe.train.sync_bn and distributed.world_size() > 1:
        if device.type != "cuda":
            raise ZooError(
                "train.sync_bn = true needs GPUs (SyncBatchNorm has no CPU kernel); on the CPU the ranks "
                "share rank 0's BatchNorm statistics after every epoch: leave sync_bn out"
            )
        model = distributed.sync_batchnorm(model)
    cache, memory_format = prepare_data(recipe, splits, preprocessing, augmentation, model, device, progress)
    sharded = recipe.train.strategy == "fsdp" and distributed.world_size() > 1
    if sharded:
        fsdp.shard(model)  # before the optimiser, which must hold the sharded parameters
    loss_fn, weights = build_loss(recipe, splits, device)
    dtype = autocast_dtype(recipe.train.precision, device)
    setup = RunSetup(
        recipe, device, dtype, splits, preprocessing, model, loss_fn,
        class_weights=weights, augmentation=augmentation, cache=cache, memory_format=memory_format,
    )  # fmt: skip
    optim = recipe.optim
    weight_decay = default_weight_decay(optim)
    setup.groups = freeze.param_groups(model, optim.lr, optim.backbone_lr_mult, recipe.train.layer_decay, weight_decay)
    if not setup.groups:
        raise ZooError("model.freeze freezes every parameter: nothing would train; unfreeze the head at least")
    setup.optimizer = build_optimizer(optim, setup.groups, device, sharded)
    return setup


def _refuse_adapter_settings(recipe: Recipe) -> None:
    """What an adapter run cannot do yet, said before anything is built."""
    if recipe.model.adapter is None:
        return
    if importlib.util.find_spec("peft") is None:
        raise ZooError("model.adapter needs peft: pip install 'zoo[peft]'")
    if recipe.train.strategy == "fsdp":
        raise ZooError('model.adapter with train.strategy = "fsdp": FSDP of adapters is not supported; use "ddp"')
    if recipe.train.ema:
        raise ZooError("model.adapter with train.ema: an EMA of adapters is not supported; leave train.ema out")


def _refuse_stream_settings(recipe: Recipe, splits: Splits) -> None:
    """What training on a stream needs, and cannot do (the data settings: ``data.streams``)."""
    if not splits.streaming:
        return
    if recipe.train.max_steps is None:
        raise ZooError("data.args.streaming: a stream has no length to count epochs by; set train.max_steps (the "
                       "run's length; train.epochs cuts it into epochs)")  # fmt: skip
    steps, epochs = recipe.train.max_steps, recipe.train.epochs
    per_epoch = math.ceil(steps / epochs)  # as StreamBatches cuts them (inference.prepared)
    if math.ceil(steps / per_epoch) < epochs:
        raise ZooError(f"data.args.streaming: train.max_steps = {steps} makes fewer than train.epochs = {epochs} "
                       f"epochs of {per_epoch} steps (a stream's epochs are equal parts of the run); set "
                       f"train.max_steps to a multiple of {epochs}, or fewer train.epochs")  # fmt: skip
    if recipe.task == "multi_label" and not splits.multi_label:
        raise ZooError('task = "multi_label" on single-label data turns every label into a set up front, which a '
                       "stream (data.args.streaming) cannot: remove task, or data.args.streaming")  # fmt: skip


def _refuse_empty_validation(recipe: Recipe, splits: Splits) -> None:
    """A validation split holds images: an empty one would leave the monitor, calibration and
    thresholds nothing to be measured on. Said when training only: a saved run's splits still load."""
    if splits.val is None or len(splits.val) > 0:
        return
    data = recipe.data
    if splits.val.dataset is splits.train.dataset:  # held out of the training split
        raise ZooError(f"data.val_split = {data.val_split} holds out 0 images; raise it or set 0")
    raise ZooError(f"dataset '{data.dataset}': its own validation split holds no image of data.classes; "
                   "select classes it holds, or set data.val_split = 0")  # fmt: skip


def pinned(recipe: Recipe, splits: Splits) -> Recipe:
    """``recipe`` with the data.args its dataset pins (a Hub dataset's commit as ``revision``): the run
    records that recipe, so that --resume and a re-run of it read the data this run read."""
    args = facts(splits.train.dataset).pinned_args
    if not args:
        return recipe
    return recipe.model_copy(update={"data": recipe.data.model_copy(update={"args": {**recipe.data.args, **args}})})


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
    if recipe.model.adapter is not None:
        model = adapters.attach(model, recipe.model.adapter, recipe.model.backbone, base=source)
    return model, preprocessing


def describe_augmentation(setup: RunSetup) -> str:
    augmentation = setup.augmentation
    if augmentation is None:
        turned_off = augment.ignored(setup.recipe.data)
        return "none" + (f" ({', '.join(turned_off)} ignored: none turns every augmentation off)" if turned_off else "")
    on_device = not setup.splits.images or setup.splits.train.decoded is not None
    return augmentation.describe(on_device)


def print_setup(setup: RunSetup) -> None:
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
    if splits.multi_label:
        why = "as the recipe's task says" if recipe.task else f"dataset '{recipe.data.dataset}' yields label sets"
        log(f"task: multi_label ({why}): a sigmoid score and a threshold per class")
    train = "streamed" if splits.streaming else f"{len(splits.train):,}"
    log(f"data: {train} train, {val:,} val, {len(splits.test):,} test images of {size}{resized}")
    precision = str(setup.dtype).removeprefix("torch.") if setup.dtype else "fp32"
    layout = ", channels-last" if setup.memory_format == torch.channels_last else ""
    ranks = distributed.world_size()
    batch = f"batch {recipe.data.batch_size}" + (
        f" per rank x {ranks} ranks = {recipe.data.batch_size * ranks} global ({recipe.train.strategy})"
        if ranks > 1
        else ""
    )
    log(f"device: {setup.device} ({precision}{layout}), {batch}, {recipe.optim.name} lr {recipe.optim.lr:g}")
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
    if recipe.model.adapter is not None:
        log(adapters.describe(setup.model, recipe.model.adapter))
    rows = freeze.summary(setup.model, setup.groups or [])
    width = max(len(row[0]) for row in rows)
    log(f"{'group':<{width}}  {'tensors':>7}  {'parameters':>12}  lr")
    for name, tensors, count, lr in rows:
        log(f"{name:<{width}}  {tensors:>7}  {count:>12,}  {lr}")
