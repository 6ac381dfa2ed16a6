"""Recipes: TOML files that declare a fine-tuning run, validated against one schema.

A recipe is read top to bottom: ``extends`` merges a base recipe underneath, command-line
overrides (``train.epochs=1``) go on top, relative paths are taken relative to the file that
wrote them, and the result is checked against ``Recipe`` (the same schema ``zoo schema`` prints)
before anything runs. Every mistake becomes a one-line ZooError naming the file and the key.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from ..errors import ZooError, did_you_mean
from ..plugins import _registry as registry
from . import sources
from .sources import WeightSource

# model.pretrained: written as a bool or a string, held as a typed WeightSource (zoo/sources.py).
Pretrained = Annotated[
    WeightSource,
    PlainValidator(lambda value: sources.parse(value, Path.cwd())),
    PlainSerializer(sources.text),
    WithJsonSchema({"anyOf": [{"type": "boolean"}, {"type": "string"}]}),
]


class _Section(BaseModel):
    # strict: a string where a number belongs is a mistake, not something to coerce; and TOML's
    # inf and nan are never a setting (an infinite learning rate trains NaN weights to the end).
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# Upper bounds on sizes: beyond them a value is a typo, not a run (they also keep products finite).
MAX_SIZE = 1 << 20
Size = Annotated[int, Field(ge=1, le=MAX_SIZE)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
# A run's name becomes a folder name: letters, digits, '.', '_' and '-', not starting with '.' or '-'.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$"


class HeadConfig(_Section):
    type: Literal["linear", "mlp"] = Field("linear", description="linear, or mlp with hidden layers")
    num_classes: Size | None = Field(None, description="outputs; default: the number of selected classes")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before each linear layer of the head")
    hidden: list[Size] = Field([256], description="hidden widths of an mlp head")
    activation: Literal["relu", "gelu", "tanh", "sigmoid"] = Field("relu", description="activation of an mlp head")


class FreezeStage(_Section):
    epoch: int = Field(ge=1, le=MAX_SIZE, description="first epoch (counting from 1) in which these parameters train")
    unfreeze: list[str] = Field(description="glob patterns over parameter names, or 'backbone'")
    lr_mult: float = Field(1.0, gt=0.0, le=100.0, description="their learning rate as a multiple of optim.lr")


class FreezeConfig(_Section):
    freeze: list[str] = Field(
        [], description="glob patterns over parameter names ('backbone.' may be left out), or 'backbone'"
    )
    unfreeze: list[str] = Field([], description="exceptions to freeze: patterns that stay trainable")
    train_bn: bool = Field(False, description="train frozen BatchNorm layers (by default they stay in eval mode)")
    stages: list[FreezeStage] = Field([], description="staged unfreezing")

    @model_validator(mode="before")
    @classmethod
    def _single_pattern(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("freeze"), str):
            return {**data, "freeze": [data["freeze"]]}
        return data


class ModelConfig(_Section):
    backbone: str = Field(description="a zoo.models plugin name (`zoo list models`)")
    pretrained: Pretrained = Field(
        sources.Scratch(),
        description=(
            "false, true (the plugin's own weights), a run folder, 'recipe:FILE.toml' (that recipe's output), "
            "'registry:NAME' (registry.json's pinned weights), 'hf-hub:ORG/REPO[@REVISION]', or for timm/ "
            "backbones a timm model folder"
        ),
    )
    args: dict[str, Any] = Field({}, description="arguments for the backbone plugin (`zoo info NAME`)")
    head: HeadConfig = HeadConfig()
    freeze: FreezeConfig = FreezeConfig()


class DataConfig(_Section):
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
        return self


class LossConfig(_Section):
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


class OptimConfig(_Section):
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
        for key in ("weight_decay", "momentum", "nesterov", "betas", "eps", "rho"):
            if getattr(self, key) is not None and key not in accepted:
                raise ValueError(f"optim.{key} does not apply to {self.name} (it takes: {', '.join(accepted)})")
        return self


class ScheduleConfig(_Section):
    name: Literal["none", "step", "cosine", "onecycle", "warmup"] = Field("none", description="learning-rate schedule")
    warmup_epochs: float = Field(0.0, ge=0.0, le=MAX_SIZE, description="linear warm-up (cosine, warmup), in epochs")
    step_size: Size = Field(1, description="step: epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step: decay factor")
    min_lr_mult: float = Field(0.0, ge=0.0, le=1.0, description="cosine: final learning rate as a multiple of lr")
    pct_start: float = Field(0.3, gt=0.0, lt=1.0, description="onecycle: fraction of steps spent rising")
    div_factor: float = Field(25.0, ge=1.0, le=1e6, description="onecycle: lr / starting lr")
    final_div_factor: float = Field(1e4, ge=1.0, le=1e9, description="onecycle: starting lr / final lr")


class EarlyStopConfig(_Section):
    patience: Size = Field(description="evaluations in a row without improvement before the run stops")
    min_delta: float = Field(0.0, ge=0.0, le=1e6, description="the least change of train.monitor that counts")


class TrainConfig(_Section):
    epochs: Size = Field(10, description="epochs to train")
    max_steps: int | None = Field(None, ge=1, le=1 << 40, description="stop after this many optimiser steps")
    seed: int = Field(0, ge=0, lt=1 << 32, description="seeds data selection, order and initialisation")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: cuda, then mps, then cpu")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast precision; auto: bf16 on CUDA, fp32 elsewhere"
    )
    compile: bool = Field(False, description="torch.compile the training step's model")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; reduce-overhead uses CUDA graphs on GPUs"
    )
    channels_last: bool = Field(False, description="channels-last memory format")
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
    monitor: Literal["val_accuracy", "val_f1", "val_loss", "train_loss"] | None = Field(
        None, description="picks the best epoch and drives early_stop; default val_accuracy, train_loss without val"
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
    log_every: Size = Field(50, description="optimiser steps between progress-bar loss updates")
    checkpoint_every: Size | None = Field(None, description="also checkpoint every this many optimiser steps")
    keep_checkpoints: int = Field(2, ge=1, le=1000, description="how many checkpoints stay in the run folder")
    tensorboard: bool = Field(False, description="also log to RUN/tensorboard (needs the zoo[tensorboard] extra)")
    layer_decay: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="layer-wise lr decay (timm's param groups): each layer gets this times the rate above",
    )


class OutputConfig(_Section):
    dir: str | None = Field(None, description="the run folder; default runs/<name>-<timestamp>")


class Recipe(_Section):
    """A zoo recipe: backbone + head + freezing policy + data, loss, optimiser, schedule, training."""

    name: str = Field(
        pattern=NAME_PATTERN, description="the run's name, part of its folder's: letters, digits, '.', '_', '-'"
    )
    description: str = Field("", description="what the recipe does, for the model card")
    license: str | None = Field(None, description="the trained weights' license for the model card, e.g. 'apache-2.0'")
    extends: str | None = Field(None, description="a base recipe to merge underneath, relative to this file")
    model: ModelConfig
    data: DataConfig
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    output: OutputConfig = OutputConfig()

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
        no output folder or data root, and a local pretrained source named by its last part only."""
        source = self.model.pretrained
        if isinstance(source, sources.LocalFolder | sources.RecipeOutput):
            source = type(source)(Path(source.path.name))
        return self.model_copy(
            update={
                "output": OutputConfig(),
                "data": self.data.model_copy(update={"root": None}),
                "model": self.model.model_copy(update={"pretrained": source}),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, exclude={"extends"})

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @property
    def hash(self) -> str:
        """sha256 of what determines the trained weights (everything but the output folder)."""
        settings = {key: value for key, value in self.to_dict().items() if key != "output"}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def load(path: str | Path, overrides: Iterable[str] = (), check: bool = True) -> Recipe:
    """Read, merge, override and validate the recipe at ``path``.

    ``check`` also verifies that the plugins it names exist and accept their arguments.
    """
    path = Path(path)
    data = _read_with_bases(path.resolve(), chain=())
    override_keys = apply_overrides(data, overrides)
    data.pop("extends", None)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise ZooError(_explain(exc, path, override_keys)) from None
    if check:
        check_plugins(recipe, path)
    return recipe


def from_dict(data: Mapping[str, Any], source: str = "recipe") -> Recipe:
    """Validate an already-resolved recipe (as stored in a run folder)."""
    _refuse_nul_bytes(data, f"{source}: ")
    try:
        return Recipe.model_validate(dict(data))
    except ValidationError as exc:
        raise ZooError(_explain(exc, Path(source), set())) from None


MAX_RECIPE_BYTES = 1 << 20


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise ZooError(f"{chain[0]}: extends cycle: {cycle}")
    where = f" (extended by {chain[-1]})" if chain else ""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a device or FIFO would block or never end
            raise ZooError(f"recipe {path}{where} is not a regular file")
        if info.st_size > MAX_RECIPE_BYTES:
            raise ZooError(
                f"recipe {path}{where} is {info.st_size:,} bytes: not a recipe (at most {MAX_RECIPE_BYTES:,})"
            )
        with path.open("rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ZooError(f"recipe not found: {path}{where}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ZooError(f"{path}: not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise ZooError(f"{path}: cannot read: {exc}") from None
    _refuse_nul_bytes(data, f"{path}: ")
    _anchor_paths(data, path.parent)
    base_name = data.get("extends")
    if base_name is None:
        return data
    if not isinstance(base_name, str):
        raise ZooError(f"{path}: extends: must be the path of a base recipe, got {base_name!r}")
    base = _read_with_bases(Path(base_name), (*chain, path))
    base.pop("extends", None)
    return merge(base, data)


def merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, everything else in ``update`` replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def differing_keys(tables: list[Mapping[str, Any]], prefix: str = "") -> list[str]:
    """Dotted keys whose values are not the same in every one of ``tables``, sorted."""
    keys = []
    for key in sorted(set().union(*tables)):
        values = [table.get(key) for table in tables]
        if all(isinstance(value, Mapping) for value in values):
            keys += differing_keys(values, f"{prefix}{key}.")
        elif any(value != values[0] for value in values):
            keys.append(f"{prefix}{key}")
    return keys


def _refuse_nul_bytes(value: Any, origin: str, key: str = "") -> None:
    """No string in a recipe holds a NUL byte: TOML allows one (``"\\u0000"``), but no path can hold
    it (output.dir, data.root, extends, a recipe: source, a plugin's argument), and pathlib raises."""
    if isinstance(value, str) and "\0" in value:
        raise ZooError(f"{origin}{key}: {value!r} holds a NUL byte (\\0), which no path or name may hold")
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    for name, item in items:
        child = f"{key}[{name}]" if isinstance(name, int) else f"{key}.{name}" if key else name
        _refuse_nul_bytes(item, origin, child)


def _anchor_paths(data: dict[str, Any], folder: Path) -> None:
    """Make the recipe's relative paths relative to ``folder`` (the file's, or the cwd for overrides)."""

    def anchored(value: Any) -> Any:
        return str((folder / value).resolve()) if isinstance(value, str) and value else value

    if "extends" in data:
        data["extends"] = anchored(data["extends"])
    model, data_section, output = (data.get(key) for key in ("model", "data", "output"))
    if isinstance(model, dict) and "pretrained" in model:
        # A value that does not parse stays as written: the schema reports it, naming the file and the key.
        with contextlib.suppress(ValueError):
            model["pretrained"] = sources.parse(model["pretrained"], folder)
    if isinstance(data_section, dict) and "root" in data_section:
        data_section["root"] = anchored(data_section["root"])
    if isinstance(output, dict) and "dir" in output:
        output["dir"] = anchored(output["dir"])


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> set[str]:
    """Merge ``key.path=value`` overrides into ``data``; values are TOML (bare words are strings).

    A table value replaces the whole table (``loss.args={}`` clears it, when switching
    ``loss.name``); a dotted key changes one entry. Returns the keys overridden. Relative paths
    in overrides are relative to the current folder.
    """
    layer: dict[str, Any] = {}
    keys = set()
    replacing = []  # keys given a whole table
    for override in overrides:
        key, sep, text = override.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
            raise ZooError(f"override {override!r}: write KEY=VALUE, for example train.epochs=3")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare word: optim.name=adam
        *tables, last = key.split(".")
        section = layer
        for table in tables:
            section = section.setdefault(table, {})
            if not isinstance(section, dict):
                raise ZooError(f"override {override!r} conflicts with an earlier override of {table}")
        section[last] = value
        keys.add(key)
        if isinstance(value, dict):
            replacing.append(key)
    _refuse_nul_bytes(layer, "override ")
    _anchor_paths(layer, Path.cwd())
    data.update(merge(data, layer))
    for key in replacing:  # replaced, not merged into what the recipe had
        *parents, last = key.split(".")
        given, target = layer, data
        for part in parents:
            given, target = given[part], target.setdefault(part, {})
        target[last] = copy.deepcopy(given[last])
    return keys


def _explain(exc: ValidationError, path: Path, override_keys: set[str]) -> str:
    """One line for the first problem pydantic found: file, key, what is wrong, what is allowed."""
    error = exc.errors()[0]
    parts = [part for part in error["loc"] if isinstance(part, int) or _is_key(part)]
    key = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in parts).replace(".[", "[")
    origin = f"override {key}" if key in override_keys else str(path)
    if error["type"] == "extra_forbidden":
        parent = _schema_at(parts[:-1])
        siblings = list(parent.model_fields) if parent else []
        parent_key = key.rpartition(".")[0]
        allowed = (
            did_you_mean(str(parts[-1]), siblings, f"{parent_key}." if parent_key else "")
            or f" (allowed here: {', '.join(siblings)})"
        )
        return f"{origin}: unknown key '{key}'{allowed}"
    if error["type"] == "missing":
        return f"{origin}: missing required key '{key}'"
    message = str(error["msg"]).removeprefix("Value error, ")
    if not key:  # a rule across sections names its keys itself
        return f"{origin}: {message}"
    got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
    field = _field_description(parts)
    expected = f"; expected {field}" if field else ""
    return f"{origin}: {key}: {message}{got}{expected}"


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _is_key(part: Any) -> bool:
    # pydantic puts union members ("bool", "list[str]", "function-after[...]") into error locations.
    return isinstance(part, str) and re.fullmatch(r"[A-Za-z_]\w*", part) is not None and part not in _TYPE_TAGS


def _schema_at(parts: list[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Recipe
    for part in parts:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _model_in(field.annotation)
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None


def _field_description(parts: list[Any]) -> str:
    if not parts or isinstance(parts[-1], int):
        return ""
    parent = _schema_at(parts[:-1])
    field = parent.model_fields.get(parts[-1]) if parent else None
    return (field.description or "") if field else ""


def check_plugins(recipe: Recipe, path: Path) -> None:
    """The recipe's plugins exist and their args fit their signatures (imports the plugins)."""
    origin = str(path)
    factory = registry.check("model", recipe.model.backbone, recipe.model.args, origin)
    registry.check("dataset", recipe.data.dataset, recipe.data.args, origin, positional=2)  # root, split
    registry.check("loss", recipe.loss.name, recipe.loss.args, origin)
    if isinstance(recipe.model.pretrained, sources.PluginWeights) and not registry.takes(factory, "pretrained"):
        raise ZooError(
            f"{path}: model.pretrained: {recipe.model.backbone} has no weights of its own (its factory takes no "
            "'pretrained' argument); use a run folder or 'recipe:FILE.toml'"
        )


def default_data_dir() -> Path:
    return Path(os.environ.get("ZOO_DATA_DIR") or Path.home() / ".cache" / "zoo" / "data")


def cache_dir() -> Path:
    return Path(os.environ.get("ZOO_CACHE_DIR") or Path.home() / ".cache" / "zoo")
