"""zoo: a plugin-based model zoo and fine-tuning registry for PyTorch.

Importing zoo imports no torch: the CLI's start-up stays fast, and plugin modules load on use.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import ZooError
from .plugins import _registry as registry

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import Dataset

    from .training.loggers.base import MetricLogger

register_model = partial(registry.register, "model")
register_dataset = partial(registry.register, "dataset")
register_loss = partial(registry.register, "loss")
register_logger = partial(registry.register, "logger")


def _names(kind: registry.Kind, pattern: str | None) -> list[str]:
    return sorted({plugin.name for plugin in registry.plugins(kind, pattern)})


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the model plugins, optionally filtered by a glob pattern."""
    return _names("model", pattern)


def list_datasets(pattern: str | None = None) -> list[str]:
    """Names of the dataset plugins, optionally filtered by a glob pattern."""
    return _names("dataset", pattern)


def list_losses(pattern: str | None = None) -> list[str]:
    """Names of the loss plugins, optionally filtered by a glob pattern."""
    return _names("loss", pattern)


def list_loggers(pattern: str | None = None) -> list[str]:
    """Names of the logger plugins, optionally filtered by a glob pattern."""
    return _names("logger", pattern)


def create_model(name: str, **args: Any) -> nn.Module:
    """A backbone from the model plugin ``name``: ``forward(x)`` gives ``(B, num_features)``."""
    return registry.get("model", name).load()(**args)


def create_dataset(name: str, root: str | Path, split: str = "train", **args: Any) -> Dataset:
    """The ``split`` ("train" or "test") of the dataset plugin ``name``, with its files under ``root``."""
    return registry.get("dataset", name).load()(Path(root), split, **args)


def create_loss(name: str, **args: Any) -> nn.Module:
    """A loss module from the loss plugin ``name``, called as ``loss(logits, targets)``."""
    return registry.get("loss", name).load()(**args)


def create_logger(name: str, **args: Any) -> MetricLogger:
    """A metric logger from the logger plugin ``name`` (see ``zoo.training.loggers.base.MetricLogger``)."""
    return registry.get("logger", name).load()(**args)


def load(run_folder: str | Path) -> nn.Module:
    """The model saved in a run folder, or in 'registry:NAME' / 'hf-hub:ORG/NAME[@REVISION]' (pulled
    first), in eval mode; its label names are ``model.label_names``."""
    from .models.build import load_run
    from .runs.folder import RunFolder
    from .sharing.resolve import local_run_folder

    return load_run(RunFolder.existing(local_run_folder(run_folder)))


__all__ = [
    "ZooError",
    "__version__",
    "create_dataset",
    "create_logger",
    "create_loss",
    "create_model",
    "list_datasets",
    "list_loggers",
    "list_losses",
    "list_models",
    "load",
    "register_dataset",
    "register_logger",
    "register_loss",
    "register_model",
]
