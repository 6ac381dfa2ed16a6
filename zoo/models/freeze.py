"""The freezing policy: which parameters train, when they start, and at what learning rate.

A pattern is one of:

- a named group: ``backbone`` (every parameter but the head's), ``head``, and for models with
  timm's ``group_matcher`` its coarse groups: ``stem``, ``blocks`` and ``blocks.0``, ``blocks.1``, ...
  in input-to-output order;
- a module name (``layer1``, ``stages.0``): every parameter inside it;
- a glob over parameter names as ``zoo run --dry-run`` prints them (``backbone.conv1.weight``,
  ``head.0.bias``); the ``backbone.`` prefix of zoo's own models may be left out.

Frozen parameters get no gradient and are not given to the optimiser. timm is imported only
where a model's group_matcher or layer decay needs it: importing it costs 1.5 s of every run's
start-up.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..config.model_section import FreezeConfig, FreezeStage
from ..errors import ZooError

BACKBONE = "backbone"
HEAD = "head"


def head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module-name prefixes of the classifier: ``head.`` for zoo's models, timm's ``get_classifier()`` else."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return (f"{HEAD}.",)
    classifier = get_classifier()
    modules = classifier if isinstance(classifier, tuple) else (classifier,)
    return tuple(f"{name}." for name, module in model.named_modules() if any(module is m for m in modules))


def named_groups(model: nn.Module) -> dict[str, set[str]]:
    """Group name -> its parameter names: backbone, head, and timm's stem/blocks where the model has them."""
    head = head_prefixes(model)
    names = [name for name, _ in model.named_parameters()]
    groups = {HEAD: {n for n in names if n.startswith(head)}, BACKBONE: {n for n in names if not n.startswith(head)}}
    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return groups
    from timm.models import group_parameters

    spec = matcher(coarse=True)
    layer_of = group_parameters(model, spec, reverse=True)  # timm's ordering: parameter -> layer id
    block_layers: dict[int, list[str]] = {}
    for name in groups[BACKBONE]:
        key = _matcher_key(spec, name)
        if key == "stem":
            groups.setdefault("stem", set()).add(name)
        elif key is not None:
            groups.setdefault("blocks", set()).add(name)
            block_layers.setdefault(layer_of[name], []).append(name)
    for position, layer in enumerate(sorted(block_layers)):
        groups[f"blocks.{position}"] = set(block_layers[layer])
    return groups


def _matcher_key(spec: dict, name: str) -> str | None:
    """The key of timm's group_matcher dict (``stem``, ``blocks``) whose pattern matches ``name``."""
    for key, patterns in spec.items():
        if patterns is None:
            continue
        for pattern in patterns if isinstance(patterns, list | tuple) else [patterns]:
            if re.match(pattern[0] if isinstance(pattern, tuple | list) else pattern, name):
                return key
    return None


def matches(name: str, patterns: Iterable[str], groups: dict[str, set[str]]) -> bool:
    short = name.removeprefix(f"{BACKBONE}.")
    for pattern in patterns:
        if pattern in groups:
            if name in groups[pattern]:
                return True
        elif any(fnmatch.fnmatchcase(n, pattern) or n.startswith(f"{pattern}.") for n in (name, short)):
            return True
    return False


def _check_patterns(model: nn.Module, patterns: Iterable[str], key: str, groups: dict[str, set[str]]) -> None:
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(matches(name, [pattern], groups) for name in names):
            example = ", ".join(names[:4])
            raise ZooError(
                f"{key}: pattern '{pattern}' matches no parameter (groups: {', '.join(sorted(groups))}; "
                f"names look like: {example}, ...)"
            )


def apply(model: nn.Module, config: FreezeConfig) -> None:
    """Freeze what ``config`` says (``freeze`` minus ``unfreeze``, plus every later stage)."""
    groups = named_groups(model)
    _check_patterns(model, config.freeze, "model.freeze.freeze", groups)
    _check_patterns(model, config.unfreeze, "model.freeze.unfreeze", groups)
    for position, stage in enumerate(config.stages):
        _check_patterns(model, stage.unfreeze, f"model.freeze.stages[{position}].unfreeze", groups)
    later = [pattern for stage in config.stages for pattern in stage.unfreeze]
    for name, parameter in model.named_parameters():
        frozen = (matches(name, config.freeze, groups) and not matches(name, config.unfreeze, groups)) or matches(
            name, later, groups
        )
        parameter.requires_grad_(not frozen)


def param_groups(
    model: nn.Module,
    lr: float,
    backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Trainable parameters in optimiser groups, each with its learning rate (``base_lr``).

    Without ``layer_decay``: two groups, head and backbone (at ``lr * backbone_lr_mult``). With
    it: timm's layer-wise groups (``param_groups_layer_decay``), the last layer at ``lr`` and each
    layer below at ``layer_decay`` times the one above, 1-D parameters without weight decay.
    """
    if layer_decay is not None:
        from timm.optim import param_groups_layer_decay

        if layer_decay < 1.0:  # 1.0 asks for one rate throughout, which a model of one layer gets
            _refuse_one_layer(model)
        groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
        scales = sorted({group["lr_scale"] for group in groups})  # one per layer, rising to the head's 1.0
        for group in groups:
            scale = group.pop("lr_scale")
            no_decay = " (no weight decay)" if group["weight_decay"] == 0 and weight_decay else ""
            group.update(name=f"layer {scales.index(scale)}{no_decay}", base_lr=lr * scale, lr=lr * scale)
        return sorted(groups, key=lambda group: -group["base_lr"])
    head = head_prefixes(model)
    split: dict[str, list[nn.Parameter]] = {HEAD: [], BACKBONE: []}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            split[HEAD if name.startswith(head) else BACKBONE].append(parameter)
    rates = {HEAD: lr, BACKBONE: lr * backbone_lr_mult}
    return [
        {"name": name, "params": params, "base_lr": rates[name], "lr": rates[name]}
        for name, params in split.items()
        if params
    ]


def _refuse_one_layer(model: nn.Module) -> None:
    """Layer decay where timm finds the layers it does (``param_groups_layer_decay``): by the model's
    ``group_matcher``, else in runs of parameters below its ``pretrained_cfg`` classifier; a model
    with neither is one layer, which layer decay would leave at ``lr`` entirely."""
    from timm.models import group_parameters
    from timm.optim import auto_group_layers

    matcher = getattr(model, "group_matcher", None)
    layers = group_parameters(model, matcher(coarse=False), reverse=True) if matcher else auto_group_layers(model)
    if len(set(layers.values())) < 2:
        raise ZooError(
            "train.layer_decay: this model has no layer groups (no timm group_matcher), so every parameter would "
            "train at optim.lr: leave it out (or set it to 1.0) and set optim.backbone_lr_mult for a lower backbone "
            "rate"
        )


def unfreeze_stage(
    model: nn.Module,
    stage: FreezeStage,
    lr: float,
    backbone_lr_mult: float = 1.0,
    layer_decay: float | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Unfreeze a stage's parameters; their optimiser groups (none when none were frozen): each the
    rate and weight decay ``param_groups`` gives it (the backbone's rate, its layer's), times the
    stage's ``lr_mult``."""
    groups = named_groups(model)
    released = set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad and matches(name, stage.unfreeze, groups):
            parameter.requires_grad_(True)
            released.add(id(parameter))
    stage_groups = []
    for group in param_groups(model, lr, backbone_lr_mult, layer_decay, weight_decay) if released else []:
        params = [parameter for parameter in group["params"] if id(parameter) in released]
        if params:
            rate = group["base_lr"] * stage.lr_mult
            stage_groups.append(group | {"name": f"stage@{stage.epoch} {group['name']}", "params": params,
                                         "base_lr": rate, "lr": rate})  # fmt: skip
    return stage_groups


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
