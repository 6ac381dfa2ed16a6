"""The freezing policy: which parameters train, when they start, and at what learning rate.

Patterns are globs over parameter names as ``zoo run --dry-run`` prints them
(``backbone.conv1.weight``, ``head.0.bias``); the ``backbone.`` prefix may be left out, and
``backbone`` alone means every parameter but the head's. Frozen parameters get no gradient
and are not given to the optimiser.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ZooError
from .recipe import FreezeConfig, FreezeStage

BACKBONE = "backbone"


def matches(name: str, patterns: Iterable[str]) -> bool:
    short = name.removeprefix(f"{BACKBONE}.")
    for pattern in patterns:
        if pattern == BACKBONE:
            pattern = f"{BACKBONE}.*"
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(short, pattern):
            return True
    return False


def _check_patterns(model: nn.Module, patterns: Iterable[str], key: str) -> None:
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(matches(name, [pattern]) for name in names):
            example = ", ".join(names[:4])
            raise ZooError(f"{key}: pattern '{pattern}' matches no parameter (names look like: {example}, ...)")


def apply(model: nn.Module, config: FreezeConfig) -> None:
    """Freeze what ``config`` says (``freeze`` minus ``unfreeze``, plus every later stage)."""
    _check_patterns(model, config.freeze, "model.freeze.freeze")
    _check_patterns(model, config.unfreeze, "model.freeze.unfreeze")
    for position, stage in enumerate(config.stages):
        _check_patterns(model, stage.unfreeze, f"model.freeze.stages[{position}].unfreeze")
    later = [pattern for stage in config.stages for pattern in stage.unfreeze]
    for name, parameter in model.named_parameters():
        frozen = (matches(name, config.freeze) and not matches(name, config.unfreeze)) or matches(name, later)
        parameter.requires_grad_(not frozen)


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float) -> list[dict]:
    """Trainable parameters in two groups, head and backbone, each with its learning rate."""
    groups = {"head": [], BACKBONE: []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups["head" if name.startswith("head.") else BACKBONE].append(parameter)
    rates = {"head": lr, BACKBONE: lr * backbone_lr_mult}
    return [{"name": name, "params": params, "base_lr": rates[name], "lr": rates[name]} for name, params in groups.items() if params]


def unfreeze_stage(model: nn.Module, stage: FreezeStage, lr: float) -> dict | None:
    """Unfreeze a stage's parameters; the optimiser group for them, or None if none were frozen."""
    released = []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad and matches(name, stage.unfreeze):
            parameter.requires_grad_(True)
            released.append(parameter)
    if not released:
        return None
    rate = lr * stage.lr_mult
    return {"name": f"stage@{stage.epoch}", "params": released, "base_lr": rate, "lr": rate}


def keep_frozen_bn_in_eval(model: nn.Module, train_bn: bool) -> None:
    """Call after ``model.train()``: frozen BatchNorm layers keep their running statistics."""
    if train_bn:
        return
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


def summary(model: nn.Module, groups: list[dict]) -> list[tuple[str, int, int, str]]:
    """(group, tensors, parameters, learning rate) rows, the frozen ones last."""
    rows = [(g["name"], len(g["params"]), sum(p.numel() for p in g["params"]), f"{g['lr']:.3g}") for g in groups]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    rows.append(("frozen", len(frozen), sum(p.numel() for p in frozen), "-"))
    return rows
