"""The recipe schema: the sections of a recipe as pydantic models, and ``Recipe``, which holds them.

Every key a recipe may set is declared here, with its type, bounds and a description (the
descriptions are what ``zoo schema`` prints and what an error message quotes). Reading a file,
``extends`` and overrides are zoo/config/recipe.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import ConfigDict, Field, model_validator

from . import sources
from ._section import MAX_SIZE, NAME_PATTERN, Fraction, Monitored, Section, Size
from .model_section import ModelConfig
from .tune import TuneConfig


class DataConfig(Section):
    dataset: str = Field(description="a zoo.datasets plugin name (`zoo list datasets`)")
    root: str | None = Field(None, description="data folder; default: $ZOO_DATA_DIR, else ~/.cache/zoo/data")
    args: dict[str, Any] = Field({}, description="arguments for the dataset plugin")
    classes: list[int | str] | None = Field(
        None, description="subset of the dataset's classes (indices or names), relabelled 0..n-1 in this order"
    )
    per_class: Size | list[Size] | None = Field(
        None, description="labelled training examples per class, or a list of counts in data.classes order"
    )
    val_split: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of the training split held out for validation")
    batch_size: Size = Field(64, description="training batch size")
    eval_batch_size: Size = Field(512, description="batch size for evaluation")
    num_workers: int | None = Field(
        None,
        ge=0,
        le=256,
        description="DataLoader workers for datasets not held in memory; default: the CPUs per local rank, at most 8",
    )
    # Image datasets (image_folder) are read through timm's transforms, configured from the
    # model's pretrained config (timm.data.resolve_data_config); these keys override it.
    image_size: Annotated[int, Field(ge=1, le=8192)] | list[Annotated[int, Field(ge=1, le=8192)]] | None = Field(
        None, description="input size, N or [H, W] (tensor datasets are resized to it); default: the model's"
    )
    mean: list[float] | None = Field(
        None, description="image datasets: normalisation mean per channel; default: the model's"
    )
    std: list[Annotated[float, Field(gt=0.0)]] | None = Field(
        None, description="image datasets: normalisation std per channel; default: the model's"
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = Field(
        None, description="image datasets: resize interpolation; default: the model's"
    )
    crop_pct: float | None = Field(None, gt=0.0, le=1.0, description="image datasets: evaluation centre-crop fraction")
    crop_mode: Literal["center", "squash", "border"] | None = Field(
        None, description="image datasets: evaluation crop mode"
    )
    augment: Literal["none", "light", "default", "strong"] = Field(
        "default",
        description="training augmentation preset: none, light (crops of 80%+, no jitter), default (timm's, or "
        "what the model declares), strong (+ RandAugment); the keys below change single settings",
    )
    hflip: float | None = Field(None, ge=0.0, le=1.0, description="horizontal flip probability when augmenting")
    scale: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = Field(
        None, min_length=2, max_length=2, description="random-resized-crop area range"
    )
    color_jitter: float | None = Field(
        None, ge=0.0, le=10.0, description="image datasets: colour jitter strength when augmenting"
    )
    auto_augment: str | None = Field(
        None, description="image datasets: timm auto-augment policy, e.g. 'rand-m9-mstd0.5'"
    )
    degrees: float | None = Field(None, ge=0.0, le=180.0, description="random rotation within +-degrees")
    translate: float | None = Field(None, ge=0.0, le=0.5, description="random shift, as a fraction of the size")

    @model_validator(mode="before")
    @classmethod
    def _augment_as_switch(cls, data: Any) -> Any:
        """``augment = true/false``, as recipes and run folders of earlier versions say it."""
        if isinstance(data, dict) and isinstance(data.get("augment"), bool):
            return {**data, "augment": "default" if data["augment"] else "none"}
        return data

    cache: Literal["none", "memory", "disk"] | None = Field(
        None,
        description="image datasets: decode every image once into a uint8 cache under $ZOO_CACHE_DIR (disk: read "
        "per batch; memory: held whole); default disk up to 8 GiB of decoded images, else none",
    )
    cache_verify: Literal["stat", "content"] | None = Field(
        None,
        description="image datasets: how the decoded cache knows its files unchanged: stat (each file's size, "
        "modification time, inode and change time; default) or content (the sha256 of every file's bytes, read at "
        "each start; a copied folder keeps its cache)",
    )
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="training order: shuffle, or balanced (every class drawn equally often)"
    )
    mixup: float = Field(0.0, ge=0.0, le=10.0, description="MixUp alpha (0: off); mixes images and labels")
    cutmix: float = Field(0.0, ge=0.0, le=10.0, description="CutMix alpha (0: off)")
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="probability that a batch is mixed")
    mix_switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="with both on: probability of CutMix")

    @model_validator(mode="after")
    def _mixing_pairs_a_batch(self) -> DataConfig:
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ValueError(f"mixup and cutmix pair the images of a batch: batch_size must be even "
                             f"(got {self.batch_size})")  # fmt: skip
        if not (self.mixup and self.cutmix):
            self.refuse_ignored("data", ["mix_switch_prob"], "without both data.mixup and data.cutmix")
        if not (self.mixup or self.cutmix):
            self.refuse_ignored("data", ["mix_prob"], "without data.mixup or data.cutmix")
        return self


class LossConfig(Section):
    name: str = Field("cross_entropy", description="a zoo.losses plugin name (`zoo list losses`)")
    args: dict[str, Any] = Field({}, description="arguments for the loss plugin")
    class_weights: Literal["balanced"] | list[Annotated[float, Field(gt=0.0, le=1e6)]] | None = Field(
        None,
        description="per-class loss weights: balanced (inverse class frequency in the training split) or a "
        "list in data.classes order, for losses that take a `weight`",
    )


# What each optimiser accepts beyond lr; a key set for an optimiser that ignores it is an error.
OPTIMIZER_KEYS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "nesterov", "weight_decay"),
    "adam": ("betas", "eps", "weight_decay"),
    "adamw": ("betas", "eps", "weight_decay"),
    "adadelta": ("rho", "eps", "weight_decay"),
}


class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw", "adadelta"] = Field("adamw", description="optimiser")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="learning rate (of the head; see backbone_lr_mult)")
    backbone_lr_mult: float = Field(1.0, gt=0.0, le=100.0, description="backbone learning rate as a multiple of lr")
    weight_decay: float | None = Field(None, ge=0.0, le=10.0, description="weight decay")
    momentum: float | None = Field(None, ge=0.0, lt=1.0, description="sgd momentum")
    nesterov: bool | None = Field(None, description="sgd Nesterov momentum")
    betas: list[Fraction] | None = Field(None, min_length=2, max_length=2, description="adam/adamw betas")
    eps: float | None = Field(None, gt=0.0, le=1.0, description="numerical epsilon")
    rho: float | None = Field(None, ge=0.0, le=1.0, description="adadelta rho")

    @model_validator(mode="after")
    def _keys_fit_optimizer(self) -> OptimConfig:
        accepted = OPTIMIZER_KEYS[self.name]
        ignored = [key for keys in OPTIMIZER_KEYS.values() for key in keys if key not in accepted]
        self.refuse_ignored("optim", dict.fromkeys(ignored), f"to {self.name} (it takes: {', '.join(accepted)})")
        return self


# What each schedule reads (zoo/training/optim.py lr_factor); a key set for one that ignores it is an error.
SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {
    "none": (),
    "step": ("step_size", "gamma"),
    "cosine": ("warmup_epochs", "min_lr_mult"),
    "onecycle": ("pct_start", "div_factor", "final_div_factor"),
    "warmup": ("warmup_epochs",),
}


class ScheduleConfig(Section):
    name: Literal["none", "step", "cosine", "onecycle", "warmup"] = Field("none", description="learning-rate schedule")
    warmup_epochs: float = Field(0.0, ge=0.0, le=MAX_SIZE, description="linear warm-up (cosine, warmup), in epochs")
    step_size: Size = Field(1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")
    min_lr_mult: float = Field(0.0, ge=0.0, le=1.0, description="cosine: final learning rate as a multiple of lr")
    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="onecycle: fraction of steps spent rising")
    div_factor: float = Field(25.0, ge=1.0, le=1e6, description="onecycle: lr / starting lr")
    final_div_factor: float = Field(1e4, ge=1.0, le=1e9, description="onecycle: starting lr / final lr")

    @model_validator(mode="after")
    def _keys_fit_schedule(self) -> ScheduleConfig:
        accepted = SCHEDULE_KEYS[self.name]
        ignored = [key for keys in SCHEDULE_KEYS.values() for key in keys if key not in accepted]
        takes = f"it takes: {', '.join(accepted)}" if accepted else "it takes no other key"
        self.refuse_ignored("schedule", dict.fromkeys(ignored), f"to {self.name} ({takes})")
        return self


class EarlyStopConfig(Section):
    patience: Size = Field(description="evaluations in a row without improvement before the run stops")
    min_delta: float = Field(0.0, ge=0.0, le=1e6, description="the least change of train.monitor that counts")


class TrainConfig(Section):
    epochs: Size = Field(10, description="epochs to train")
    max_steps: int | None = Field(None, ge=1, le=1 << 40, description="stop after this many optimiser steps")
    seed: int = Field(0, ge=0, lt=1 << 32, description="seeds data selection, order and initialisation")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: cuda, then mps, then cpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast precision; auto: bf16 where native (CUDA Ampere+, CPUs with AVX512-BF16 or AMX), else fp16 on CUDA, fp32 elsewhere",
    )
    compile: bool = Field(False, description="torch.compile the training step's model")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; reduce-overhead uses CUDA graphs on GPUs"
    )
    channels_last: bool | Literal["auto"] = Field(
        "auto",
        description='true, false or "auto": the model and its batches in channels-last memory format; auto: on '
        "the CPU (oneDNN's convolutions and pooling run faster in it), except under FSDP, which shards contiguous "
        "parameters only",
    )
    grad_clip: float | None = Field(None, gt=0.0, le=1e6, description="clip gradients to this global norm")
    grad_accum: Size = Field(1, description="batches per optimiser step")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms")
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="with several processes: ddp (a whole model on each rank) or fsdp (FSDP2: weights, gradients "
        "and optimiser state sharded across the ranks, for models that do not fit one GPU)",
    )
    sync_bn: bool = Field(
        False,
        description="under DDP on GPUs, BatchNorm statistics across all ranks (SyncBatchNorm): for small per-GPU batches",
    )
    monitor: Monitored | None = Field(
        None, description="picks the best epoch, drives early_stop; default val_accuracy (val_mAP), else train_loss"
    )
    keep: Literal["best", "last"] | None = Field(
        None, description="the weights the run keeps: the best epoch's by monitor, or the last; default best with val"
    )
    early_stop: EarlyStopConfig | None = Field(None, description="stop when the monitor stops improving")
    eval_every: Size = Field(1, description="epochs between validations (the last epoch is always validated)")
    ema: float | None = Field(
        None, gt=0.0, lt=1.0, description="keep an exponential moving average of the weights with this decay "
        "(e.g. 0.999): it is what validation, the best epoch and the run folder use",
    )  # fmt: skip
    ema_warmup: bool = Field(False, description="ramp the EMA decay up over the first steps (timm's warmup)")
    log_every: Size = Field(
        50, description="optimiser steps between the progress bar's loss updates and the loggers' training records"
    )
    checkpoint_every: Size | None = Field(None, description="also checkpoint every this many optimiser steps")
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="how many checkpoints stay in the run folder")
    tensorboard: bool = Field(
        False, description="also log to RUN/tensorboard, as log.to = ['tensorboard'] (needs zoo[tensorboard])"
    )
    calibrate: bool = Field(False, description="fit a temperature on val: probabilities as sure as the model is right")
    layer_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="layer-wise lr decay (timm's param groups): each layer gets this times the rate above",
    )

    @model_validator(mode="after")
    def _refuse_settings_that_do_not_apply(self) -> TrainConfig:
        if not self.compile:
            self.refuse_ignored("train", ["compile_mode"], "without train.compile = true")
        if self.channels_last is True and self.strategy == "fsdp":
            raise ValueError('train.channels_last = true does not apply with train.strategy = "fsdp" (FSDP2 shards '
                             'contiguous parameters only): leave channels_last out')  # fmt: skip
        return self


class OutputConfig(Section):
    dir: str | None = Field(None, description="the run folder; default runs/<name>-<timestamp>")


class LogConfig(Section):
    """Where metrics go besides the terminal and RUN/metrics.jsonl, which is always written.

    ``[log.NAME]`` tables hold each logger's arguments (``[log.csv] filename = "..."``).
    """

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    to: list[str] = Field(
        [],
        description="loggers besides metrics.jsonl: 'tensorboard', 'mlflow', 'wandb' or any zoo.loggers plugin "
        "(zoo list loggers)",
    )
    weights: bool = Field(False, description="also give the trackers model.safetensors, beside results and plots")

    @model_validator(mode="after")
    def _tables_name_loggers(self) -> LogConfig:
        for name, table in self.arguments().items():
            if not isinstance(table, dict):
                raise ValueError(f"log.{name} must be a table of the {name} logger's arguments")
            if name not in self.to:
                raise ValueError(f"[log.{name}] sets arguments of a logger that log.to does not name: add {name!r}")
        return self

    def arguments(self) -> dict[str, Any]:
        """Each named logger's ``[log.NAME]`` table."""
        return dict(self.model_extra or {})


# The settings that never change the trained weights, left out of Recipe.hash (a `recipe:` source
# is not retrained for them); train.tensorboard is log.to = ["tensorboard"].
UNHASHED: dict[str, Any] = {
    **dict.fromkeys(("extends", "description", "license", "output", "log", "tune"), True),
    "train": {"tensorboard": True, "log_every": True},
}


class Recipe(Section):
    """A zoo recipe: backbone + head + freezing policy + data, loss, optimiser, schedule, training."""

    name: str = Field(
        pattern=NAME_PATTERN, description="the run's name, part of its folder's: letters, digits, '.', '_', '-'"
    )
    description: str = Field("", description="what the recipe does, for the model card")
    license: str | None = Field(None, description="the trained weights' license for the model card, e.g. 'apache-2.0'")
    extends: str | None = Field(None, description="a base recipe to merge underneath, relative to this file")
    task: Literal["single_label", "multi_label"] | None = Field(None, description="default: multi_label for label sets")
    model: ModelConfig
    data: DataConfig
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig = OutputConfig()
    log: LogConfig = LogConfig()
    tune: TuneConfig | None = Field(None, description="what `zoo tune` searches; `zoo run` leaves it aside")

    @model_validator(mode="after")
    def _settings_agree(self) -> Recipe:
        if self.train.layer_decay is not None and self.optim.backbone_lr_mult != 1.0:
            raise ValueError("train.layer_decay and optim.backbone_lr_mult both set the backbone's rate: keep one")
        if self.data.val_split == 0 and (self.train.monitor or "train_loss").startswith("val_"):
            raise ValueError(
                f"train.monitor = {self.train.monitor} needs a validation split: set data.val_split or "
                "train.monitor = train_loss"
            )
        if self.train.ema is not None and self.train.strategy == "fsdp":
            raise ValueError(
                "train.ema keeps a whole copy of the weights on every rank: not with train.strategy = fsdp"
            )
        return self

    def shareable(self) -> Recipe:
        """This recipe without this machine's paths, for what leaves it (a Hub push, the model card):
        no output folder or data root, and a local pretrained source, or a data.args value that is a
        path here (the ``hf`` dataset's folder), named by its last part only."""
        source = self.model.pretrained
        if isinstance(source, sources.LocalFolder | sources.RecipeOutput):
            source = type(source)(Path(source.path.name))
        args = self.data.args.items()
        paths = {
            k: Path(v).name for k, v in args if isinstance(v, str) and v and (os.path.isabs(v) or os.path.exists(v))
        }
        return self.model_copy(
            update={
                "output": OutputConfig(),
                "log": LogConfig(),  # tracking servers and projects are this machine's or this team's
                "data": self.data.model_copy(update={"root": None, "args": {**self.data.args, **paths}}),
                "model": self.model.model_copy(update={"pretrained": source}),
            }
        )

    def logger_names(self) -> list[str]:
        """The loggers besides metrics.jsonl's: ``log.to``, and TensorBoard for ``train.tensorboard``."""
        return list(dict.fromkeys([*self.log.to, *(["tensorboard"] if self.train.tensorboard else [])]))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"extends"})

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @property
    def hash(self) -> str:
        """sha256 of what determines the trained weights: all but the output folder, the loggers, the
        search and what only the log or the model card shows."""
        settings = self.model_dump(exclude_none=True, exclude=UNHASHED)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
