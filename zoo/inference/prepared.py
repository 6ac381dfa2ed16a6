"""A recipe's model and data made ready for each other: the ``RunSetup`` that training and evaluation run on.

Training (``zoo.training.setup.build_run``) and the evaluation of a saved run
(``zoo.inference.evaluate.run_setup``) both finish their setup with ``prepare_data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..config.schema import DataConfig, Recipe, TrainConfig
from ..data.augment import Augmentation
from ..data.batches import Batches, sample_batch
from ..data.preprocessing import Preprocessing
from ..data.splits import Split, Splits
from ..data.stream_batches import StreamBatches
from ..data.streams import StreamSplit
from ..data.transforms import attach_cache, attach_transforms
from ..errors import ZooError
from ..models.build import check_input
from ..parallel import distributed


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
    memory_format: torch.memory_format = torch.contiguous_format  # the model's and its batches' (``channels_last``)

    def batches(self, split: Split | StreamSplit, training: bool = False) -> Batches:
        data = self.recipe.data
        if isinstance(split, StreamSplit):  # an "epoch" of a stream: train.max_steps cut into train.epochs
            train = self.recipe.train
            assert train.max_steps is not None, "build_run refuses a stream without train.max_steps"
            per_epoch = -(-train.max_steps // train.epochs) * train.grad_accum
            return StreamBatches(split, per_epoch, data.batch_size, self.device, self.preprocessing,
                                 seed=train.seed, num_workers=data_workers(data),
                                 channels_last=self.memory_format == torch.channels_last)  # fmt: skip
        return Batches(
            split,
            data.batch_size if training else data.eval_batch_size,
            self.device,
            self.preprocessing,
            shuffle=training,
            seed=self.recipe.train.seed,
            num_workers=data_workers(data),
            channels_last=self.memory_format == torch.channels_last,
            balanced=training and data.sampler == "balanced",
            augmentation=self.augmentation if training else None,
        )


def data_workers(data: DataConfig) -> int:
    """``data.num_workers``, or when the recipe does not say: this node's CPUs shared by its ranks, at most 8."""
    if data.num_workers is not None:
        return data.num_workers
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // ranks_here))


def channels_last(train: TrainConfig, device: torch.device, model: nn.Module) -> bool:
    """Whether ``model`` and its batches are to be in channels-last memory format: ``train.channels_last``.

    auto is yes on the CPU, where oneDNN's convolutions and pooling are faster in it (the MNIST CNN's
    steps 1.0x-1.15x, its test pass 1.3x-1.6x; ``bench/step_bench.py --memory-format``); no on GPUs
    (not measured there yet), under FSDP, which shards contiguous parameters only, and for a model
    with a 5-d tensor (a 3-d convolution's weight), which has no channels-last format.
    """
    five_d = next((name for name, tensor in model.state_dict().items() if tensor.dim() == 5), None)
    if train.channels_last is True and five_d is not None:
        raise ZooError(f"train.channels_last = true, but the model's {five_d} is 5-d, which has no channels-last "
                       "format: leave channels_last out")  # fmt: skip
    if train.channels_last != "auto":
        return train.channels_last
    sharded = train.strategy == "fsdp" and distributed.world_size() > 1
    return device.type == "cpu" and not sharded and five_d is None


def prepare_data(
    recipe: Recipe,
    splits: Splits,
    preprocessing: Preprocessing,
    augmentation: Augmentation | None,
    model: nn.Module,
    device: torch.device,
    progress: bool,
) -> tuple[str, torch.memory_format]:
    """Ready ``splits`` for ``model`` (moved to ``device`` here, in its memory format): their transforms
    attached, a sample batch through the model, the image cache built; the cache in words, and the
    memory format of the model and its batches."""
    attach_transforms(splits, preprocessing, augmentation)
    # Before an image cache is built, and before the first step: a model that cannot take the data is one line.
    sampled = splits.test if splits.streaming else splits.train  # a stream has no samples to pick: the test split's

    def check(in_channels_last: bool) -> torch.memory_format:
        memory_format = torch.channels_last if in_channels_last else torch.contiguous_format
        model.to(device, memory_format=memory_format)
        inputs = sample_batch(sampled, preprocessing, device, augmentation, in_channels_last)
        check_input(model, inputs, len(splits.label_names), recipe.model.backbone, recipe.data.dataset)
        return memory_format

    in_channels_last = channels_last(recipe.train, device, model)
    try:
        memory_format, failed = check(in_channels_last), None
    except (ZooError, RuntimeError, AssertionError, ValueError) as exc:  # what check_input lets through
        if not in_channels_last:
            raise
        memory_format, failed = torch.contiguous_format, exc
    if failed is not None:
        # Some models view a convolution's output as contiguous (x.view(len(x), -1); peft's DoRA views
        # its convolutions' weights): contiguous, such a model runs, which auto then keeps; any other
        # model fails again, once, with its own error (tried here, outside the handler: not chained).
        check(False)
        if recipe.train.channels_last is True:
            cause = failed.__cause__ if isinstance(failed, ZooError) and failed.__cause__ is not None else failed
            adapted = " with its model.adapter" if recipe.model.adapter is not None else ""
            raise ZooError(
                f"train.channels_last = true, but model {recipe.model.backbone}{adapted} runs only in the contiguous "
                f"memory format ({type(cause).__name__}: {' '.join(str(cause).split())[:300]}): leave channels_last out"
            ) from failed
    workers = data_workers(recipe.data)
    cache = attach_cache(splits, preprocessing, recipe.data, augmentation, workers, progress and distributed.is_main())
    return cache, memory_format
