"""The run folder: every file name in it and typed access to what it holds.

A run folder holds ``model.safetensors`` (label names and recipe hash in its metadata),
``config.json`` (timm's layout: architecture, num_classes, num_features, label_names,
``pretrained_cfg`` with the preprocessing, plus a ``zoo`` section), ``recipe.toml`` (the resolved
recipe: the one source of truth for how the run was made), ``metrics.jsonl``, ``results.json``,
a model card ``README.md``, plots, ``checkpoints/``, exported models (`zoo export`) and, once
pushed, ``hub.json``. Every reader
and writer of a run folder goes through ``RunFolder``, which writes through ``zoo._files``.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import _locking as locking
from .._files import atomic_write, read_file, write_json, write_text
from .._safetensors import safetensors_bytes, tensors_of
from ..config import recipe as recipes
from ..config.schema import Recipe
from ..data.preprocessing import Preprocessing
from ..errors import ZooError

State = Literal["running", "finished", "interrupted", "failed"]
CHECKPOINT_STATE = "state.json"  # written last into a checkpoint's folder: a checkpoint without it is incomplete


class RunResults(BaseModel):
    """results.json: the run's state from its first moment, and its final metrics once finished."""

    model_config = ConfigDict(extra="forbid")

    state: State
    reason: str = ""
    recipe_hash: str = ""
    epochs: int | None = None
    steps: int | None = None
    failed_at_step: int | None = None
    train_seconds: float | None = None
    best_val_accuracy: float | None = None
    monitor: str | None = None  # train.monitor
    kept: Literal["best", "last"] | None = None  # which epoch's weights the run folder holds
    kept_epoch: int | None = None
    kept_value: float | None = None  # the monitor's value in that epoch
    stopped_early: bool | None = None
    class_weights: list[float] | None = None  # the loss's per-class weights (loss.class_weights)
    augmentation: str | None = None  # the training augmentation, in words ("none" when off)
    dataset: dict[str, str] | None = None  # a Hub dataset's repo ("hub") and the args that pin it ("revision")
    world_size: int | None = None
    ranks_agree: bool | None = None
    calibration: dict[str, float] | None = None  # train.calibrate: temperature, ECE before and after
    test: dict[str, Any] | None = None  # evaluate()'s metrics: accuracy, precision, recall, f1, per_class, ...


class FilePin(BaseModel):
    """A file's sha256 and size: what `zoo push` uploaded, what registry.json pins and a pull checks."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class HubRecord(BaseModel):
    """hub.json: where `zoo push` put the run, and the hash of every file it uploaded."""

    model_config = ConfigDict(extra="forbid")

    repo: str
    revision: str
    commit: str
    url: str
    files: dict[str, FilePin] = {}


class RunFolder:
    """A run folder on disk; nothing is read until asked for."""

    WEIGHTS = "model.safetensors"
    CONFIG = "config.json"
    RECIPE = "recipe.toml"
    METRICS = "metrics.jsonl"
    RESULTS = "results.json"
    MODEL_CARD = "README.md"
    HUB_RECORD = "hub.json"
    ADAPTER_CONFIG = "adapter_config.json"  # peft's own files, for a run with model.adapter
    ADAPTER_WEIGHTS = "adapter_model.safetensors"
    TENSORBOARD = "tensorboard"
    TRACKING = "tracking.json"  # each tracker's run id (MLflow, W&B): --resume continues the same run
    WANDB = "wandb"  # W&B's own files for the run
    CHECKPOINTS = "checkpoints"
    PLOTS = ("loss.png", "accuracy.png", "lr.png", "confusion_matrix.png")
    EXPORTS = ("model.onnx", "model.pt2", "model.torchscript")  # `zoo export`: ONNX, torch.export, TorchScript
    # What a run shares on the Hub. Exact names, no wildcards: a pull fetches nothing else.
    SHARED = (WEIGHTS, CONFIG, MODEL_CARD, RECIPE, RESULTS, ADAPTER_CONFIG, ADAPTER_WEIGHTS, *PLOTS, *EXPORTS)
    # What only the run (or `zoo push`, its hub.json) writes: no other command's output goes there.
    OWN = (WEIGHTS, CONFIG, RECIPE, METRICS, RESULTS, MODEL_CARD, HUB_RECORD, TENSORBOARD, TRACKING, WANDB,
           ADAPTER_CONFIG, ADAPTER_WEIGHTS, CHECKPOINTS, *PLOTS, locking.LOCK_NAME)  # fmt: skip

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def file(self, name: str) -> Path:
        return self.path / name

    @classmethod
    def existing(cls, path: str | Path) -> RunFolder:
        """The run folder at ``path``, which must exist and hold a run that got as far as its weights; a
        ZooError otherwise."""
        run = cls(path)
        if not run.path.is_dir():
            raise ZooError(f"run folder not found: {run.path}")
        if not run.is_run:
            raise ZooError(f"{run.path} is not a zoo run folder: it has no {cls.CONFIG}, {cls.RESULTS} or {cls.RECIPE}")
        results = None if os.path.lexists(run.file(cls.CONFIG)) else run.results
        state = run.state_of(results) if results is not None else "finished"
        if state != "finished":  # it has not got as far as its weights
            why = f": {results.reason}" if results.reason else ""
            raise ZooError(f"{run.path} has no weights yet: its run is {state}{why} "
                           f"(`zoo run RECIPE --resume {run.path}` goes on from its last checkpoint)")  # fmt: skip
        return run

    @classmethod
    def holding(cls, path: Path) -> RunFolder | None:
        """The run folder that ``path`` (a resolved folder) is or lies inside, if any: one with the
        results.json a run writes first, beside its config.json or recipe.toml (a project's own
        config.json makes no run folder)."""
        return next((run for run in map(cls, (path, *path.parents)) if run._has_run_files), None)

    @property
    def _has_run_files(self) -> bool:
        return self.file(self.RESULTS).is_file() and any(
            self.file(name).is_file() for name in (self.CONFIG, self.RECIPE)
        )

    @property
    def is_run(self) -> bool:
        """Whether this folder holds a zoo run's files."""
        return any(self.file(name).exists() for name in (self.CONFIG, self.RESULTS, self.RECIPE))

    @property
    def holds_run(self) -> bool:
        """Whether a run has started writing here."""
        return self.file(self.WEIGHTS).exists() or self.file(self.RESULTS).exists()

    # Reading

    @cached_property
    def recipe(self) -> Recipe:
        path = self.file(self.RECIPE)
        text = read_file(path)
        if text is None:
            raise ZooError(f"{self.path} is not a zoo run folder (no {self.RECIPE})")
        try:
            data = tomllib.loads(text.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
            raise ZooError(f"{path} is damaged: {exc}") from None
        return recipes.from_dict(data, str(path))

    @cached_property
    def config(self) -> dict[str, Any]:
        """config.json, checked for what zoo reads from it."""
        path = self.file(self.CONFIG)
        config = _read_json(path, required=True)
        if not isinstance(config, dict) or not isinstance(config.get("zoo"), dict):
            raise ZooError(f"{path} was not written by zoo (no 'zoo' section)")
        labels = config.get("label_names")
        if not isinstance(labels, list) or not labels or not all(isinstance(label, str) for label in labels):
            raise ZooError(f"{path}: label_names must be a non-empty list of strings")
        if not isinstance(config.get("model_args", {}), dict):
            raise ZooError(f"{path}: model_args must be a table")
        check_thresholds(config.get("thresholds"), len(labels), str(path))
        check_temperature(config.get("temperature", 1.0), str(path))
        return config

    @property
    def thresholds(self) -> list[float] | None:
        """A multi-label run's score threshold per label (config.json's ``thresholds``); None for single-label."""
        thresholds = self.config.get("thresholds")
        return [float(t) for t in thresholds] if thresholds is not None else None

    @property
    def temperature(self) -> float:
        """What the logits are divided by before softmax (train.calibrate; 1 when not calibrated)."""
        return float(self.config.get("temperature", 1.0))

    @property
    def label_names(self) -> list[str]:
        return list(self.config["label_names"])

    @property
    def preprocessing(self) -> Preprocessing:
        where = f"{self.file(self.CONFIG)}: pretrained_cfg"
        pretrained_cfg = self.config.get("pretrained_cfg")
        if not isinstance(pretrained_cfg, dict):
            raise ZooError(f"{where} must be a table of the preprocessing (input_size, mean, std, ...)")
        return Preprocessing.from_config(pretrained_cfg, where)

    @property
    def model_args(self) -> dict[str, Any]:
        """The architecture arguments timm recorded (those a pretrained source set too, such as in_chans)."""
        return dict(self.config.get("model_args", {}))

    @property
    def results(self) -> RunResults | None:
        """results.json, or None when the run has not written one."""
        return _read_record(self.file(self.RESULTS), RunResults)

    @property
    def state(self) -> str:
        return self.state_of(self.results)

    def state_of(self, results: RunResults | None) -> str:
        """The state of ``results`` (this folder's, read already), but "killed" for a run "running" whose
        process is provably gone (``kill -9``, or its machine restarted): ``zoo run --resume`` goes on with it."""
        if results is None:
            return "unknown"
        if results.state == "running" and locking.is_abandoned(self.path, older_than=math.inf):
            return "killed"
        return results.state

    @property
    def hub_record(self) -> HubRecord | None:
        """hub.json, or None when the run was never pushed."""
        return _read_record(self.file(self.HUB_RECORD), HubRecord)

    def tracker_run(self, tracker: str) -> str | None:
        """The id of ``tracker``'s run for this run folder, if it has one (tracking.json)."""
        runs = _read_json(self.file(self.TRACKING), required=False) or {}
        run_id = runs.get(tracker) if isinstance(runs, dict) else None
        if run_id is not None and not isinstance(run_id, str):
            raise ZooError(f"{self.file(self.TRACKING)}: {tracker} must be a run id (a string)")
        return run_id

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors of model.safetensors; only safetensors are ever loaded."""
        path = self.file(self.WEIGHTS)
        data = read_file(path, limit=None)
        if data is None:
            raise ZooError(f"{self.path} has no {self.WEIGHTS}")
        return tensors_of(data, path)

    @property
    def checkpoint_root(self) -> Path:
        return self.file(self.CHECKPOINTS)

    @property
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        return all_checkpoints(self.checkpoint_root)

    # Writing

    def create(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ZooError(f"cannot create the run folder {self.path}: {exc.strerror}") from None

    def write_recipe(self, recipe: Recipe) -> None:
        write_text(self.file(self.RECIPE), recipe.to_toml())
        self.__dict__.pop("recipe", None)

    def write_results(self, results: RunResults) -> None:
        write_json(self.file(self.RESULTS), results.model_dump(exclude_none=True))

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        write_text(self.file(self.METRICS), "".join(json.dumps(record, allow_nan=False) + "\n" for record in history))

    def write_weights(self, state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state_dict.items()}
        atomic_write(self.file(self.WEIGHTS), safetensors_bytes(tensors, metadata))

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.file(self.CONFIG), config)
        self.__dict__.pop("config", None)

    def write_model_card(self, text: str) -> None:
        write_text(self.file(self.MODEL_CARD), text)

    def write_tracker_run(self, tracker: str, run_id: str) -> None:
        try:
            runs = _read_json(self.file(self.TRACKING), required=False)
        except ZooError:  # damaged: replaced (tracker_run said so when the tracker started)
            runs = None
        write_json(self.file(self.TRACKING), {**(runs if isinstance(runs, dict) else {}), tracker: run_id})

    def write_hub_record(self, record: HubRecord) -> None:
        write_json(self.file(self.HUB_RECORD), record.model_dump())


def check_thresholds(thresholds: object, classes: int, where: str) -> None:
    """A multi-label model's ``thresholds`` (None for single-label) as a file holds them: one per label, in [0, 1]."""
    if thresholds is not None and (
        not isinstance(thresholds, list)
        or len(thresholds) != classes
        or not all(isinstance(t, int | float) and not isinstance(t, bool) and 0.0 <= t <= 1.0 for t in thresholds)
    ):
        raise ZooError(f"{where}: `thresholds` must list {classes} numbers in [0, 1], one per label; the file is "
                       "damaged: write it again from the run (or train it again)")  # fmt: skip


def check_temperature(temperature: object, where: str) -> None:
    """A calibrated model's ``temperature`` as a file holds it: a positive finite number."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature < 1e6:
        raise ZooError(f"{where}: `temperature` must be a positive number, not {temperature!r}; the file is "
                       "damaged: write it again from the run (or train it again)")  # fmt: skip


def _read_json(path: Path, required: bool) -> Any:
    """The JSON in ``path``; None for a missing optional file, a one-line ZooError for a damaged one."""
    data = read_file(path)
    if data is None:
        if required:
            raise ZooError(f"{path.parent} is not a zoo run folder: it has no {path.name}")
        return None
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ZooError(f"{path} is corrupted: {str(exc).splitlines()[0]}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


Record = TypeVar("Record", bound=BaseModel)


def _read_record(path: Path, schema: type[Record]) -> Record | None:
    """The JSON file at ``path`` checked against ``schema``; None when it does not exist."""
    data = _read_json(path, required=False)
    if data is None:
        return None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ZooError(f"{path} is damaged: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    return f"{key}: {error['msg']}" if key else str(error["msg"])


def all_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoints in ``root``, oldest first (a link named like one is none of the run's)."""
    if not root.is_dir() or root.is_symlink():
        return []
    return sorted(p for p in root.glob("step-*") if not p.is_symlink() and (p / CHECKPOINT_STATE).is_file())
