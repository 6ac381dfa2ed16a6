"""Models: a plugin's backbone plus the head zoo adds, or a plugin that builds its own head (timm's).

Two kinds of model plugin. A backbone (``mnist_cnn``) returns features with an int
``num_features``, and zoo adds the head: ``Classifier``, whose parameter names start with
``backbone.`` or ``head.``. A plugin whose factory takes ``num_classes`` (every ``timm/`` model)
builds the whole classifier the timm way, with ``get_classifier()`` and ``reset_classifier()``;
its weights keep the plugin's own names, so a run folder of a timm model is a timm model folder.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import artifacts, registry
from .errors import ZooError
from .recipe import HeadConfig, ModelConfig, check_args, from_dict

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class Classifier(nn.Module):
    """``head(backbone(x))``: parameter names start with ``backbone.`` or ``head.``."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    @property
    def num_features(self) -> int:
        return int(self.backbone.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_head(config: HeadConfig, num_features: int, num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = num_features
    for hidden in config.hidden if config.type == "mlp" else []:
        if config.dropout:
            layers.append(nn.Dropout(config.dropout))
        layers += [nn.Linear(width, hidden), ACTIVATIONS[config.activation]()]
        width = hidden
    if config.dropout:
        layers.append(nn.Dropout(config.dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def builds_own_head(factory: object) -> bool:
    """Whether a model plugin builds the whole classifier (its factory takes ``num_classes``)."""
    return "num_classes" in inspect.signature(factory).parameters  # type: ignore[arg-type]


def _create(factory: object, config: ModelConfig, args: dict) -> nn.Module:
    check_args(factory, config.args, "model.args")
    try:
        return factory(**args)  # type: ignore[operator]
    except ValueError as exc:
        raise ZooError(f"model.args: {config.backbone} rejected its arguments: {exc}") from exc


def build_backbone(config: ModelConfig) -> nn.Module:
    plugin = registry.get("model", config.backbone)
    factory = plugin.load()
    args = dict(config.args)
    if "pretrained" in inspect.signature(factory).parameters:
        args["pretrained"] = config.pretrained is True
    backbone = _create(factory, config, args)
    if not isinstance(getattr(backbone, "num_features", None), int):
        raise ZooError(
            f"model plugin {plugin.qualified_name} returned a module without an int `num_features`; "
            "a zoo backbone must have one (see 'Writing a plugin' in the README)"
        )
    return backbone


def build_model(
    config: ModelConfig, label_names: list[str], source: Path | str | None = None
) -> tuple[nn.Module, str | None]:
    """The recipe's model for ``label_names``, from the pretrained ``source`` (a folder or ``hf-hub:``).

    Returns the model and a line for the log saying what was loaded (None when nothing was).
    """
    factory = registry.get("model", config.backbone).load()
    if not builds_own_head(factory):
        if isinstance(source, str):  # hf-hub:ORG/NAME[@REV]: timm loads those itself, zoo's own backbones pull
            from .hub import pull

            source = pull(source.split(":", 1)[1])
        backbone = build_backbone(config)
        model = Classifier(backbone, build_head(config.head, backbone.num_features, len(label_names)))
        if source is None:
            return model, f"{config.backbone}'s own pretrained weights" if config.pretrained is True else None
        return model, load_pretrained(model, source, config.backbone, label_names)
    if config.head.type != "linear":
        raise ZooError(
            f"model.head.type = '{config.head.type}': {config.backbone} keeps its own linear classifier; "
            "set its options through model.args"
        )
    pretrained: bool | str = f"local-dir:{source}" if isinstance(source, Path) else source or config.pretrained is True
    args = {**config.args, "num_classes": len(label_names), "pretrained": pretrained}
    if config.head.dropout:
        args["drop_rate"] = config.head.dropout
    model = _create(factory, config, args)
    if not pretrained:
        return model, None
    return model, adopt_head(
        model, label_names, source or f"{config.backbone}'s weights ({model.pretrained_cfg.get('hf_hub_id')})"
    )


def adopt_head(model: nn.Module, label_names: list[str], source: object) -> str:
    """Keep a pretrained timm-style head only if it was trained on the same labels; else a new one."""
    loaded = model.pretrained_cfg
    if loaded.get("num_classes") == len(label_names) and loaded.get("label_names") in (None, label_names):
        return f"loaded backbone and head from {source}"
    model.reset_classifier(len(label_names))
    return f"loaded backbone from {source}; new head for {len(label_names)} classes ({', '.join(label_names)})"


def exchange_config(
    model: nn.Module, backbone: str, label_names: list[str], data_config: dict[str, Any]
) -> dict[str, Any]:
    """config.json in timm's layout: for a timm model timm's own export, which ``local-dir:`` loads."""
    if not isinstance(model, Classifier):
        from timm.models._hub import save_config_for_hf  # exported from timm.models._hub only

        with tempfile.TemporaryDirectory() as scratch:  # timm writes a file; the run folder gets it atomically
            path = Path(scratch) / artifacts.CONFIG
            save_config_for_hf(
                model, str(path), model_config={"label_names": label_names}, data_config=dict(data_config)
            )
            config = json.loads(path.read_text())
        pretrained_cfg = config["pretrained_cfg"]
        pretrained_cfg.pop("tag", None)  # the tag named the weights this model started from, not these
        if "label_names" in pretrained_cfg:  # the source's labels, if it had as many classes
            pretrained_cfg["label_names"] = label_names
        return config
    return {
        "architecture": backbone,
        "num_classes": len(label_names),
        "num_features": model.num_features,
        "label_names": label_names,
        "pretrained_cfg": {**_listed(data_config), "num_classes": len(label_names)},
    }


def _listed(config: dict[str, Any]) -> dict[str, Any]:
    return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}


def load_pretrained(model: Classifier, folder: Path, backbone_name: str, label_names: list[str]) -> str:
    """Load a run folder's weights into ``model``; returns what was loaded, for the log.

    The backbone must match exactly; the head is loaded only when it has the same shape and
    the same label names, and is freshly initialised otherwise.
    """
    config = artifacts.read_config(folder)
    source_backbone = config.get("architecture")
    if source_backbone != backbone_name:
        raise ZooError(
            f"model.pretrained: {folder} holds a '{source_backbone}' backbone, but the recipe builds '{backbone_name}'"
        )
    state = artifacts.read_weights(folder)
    backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    _check_same_tensors(model.backbone.state_dict(), backbone_state, folder)
    model.backbone.load_state_dict(backbone_state)
    head_state = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    own_head = model.head.state_dict()
    same_head = head_state.keys() == own_head.keys() and all(head_state[k].shape == own_head[k].shape for k in own_head)
    if same_head and config.get("label_names") == label_names:
        model.head.load_state_dict(head_state)
        return f"loaded backbone and head from {folder}"
    return f"loaded backbone from {folder}; new head for {len(label_names)} classes ({', '.join(label_names)})"


def _check_same_tensors(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], folder: Path) -> None:
    for key in expected.keys() | found.keys():
        if key not in found:
            raise ZooError(f"model.pretrained: {folder} lacks backbone tensor '{key}': is it the same architecture?")
        if key not in expected:
            raise ZooError(f"model.pretrained: {folder} has backbone tensor '{key}', which this backbone lacks")
    for key in sorted(expected):
        if expected[key].shape != found[key].shape:
            raise ZooError(
                f"model.pretrained: backbone tensor '{key}' is {list(found[key].shape)} in {folder} but "
                f"{list(expected[key].shape)} here: model.args differ from the pretrained run's"
            )


def load_run(folder: Path) -> tuple[nn.Module, list[str]]:
    """The model of a run folder in eval mode, and its label names."""
    config = artifacts.read_config(folder)
    recipe = from_dict(config["zoo"]["recipe"], source=str(folder / artifacts.CONFIG))
    # timm records the arguments the weights were built with, including any its source set (in_chans).
    built_with = {key: value for key, value in config.get("model_args", {}).items() if key != "num_classes"}
    model_config = recipe.model.model_copy(update={"pretrained": False, "args": {**built_with, **recipe.model.args}})
    label_names = list(config["label_names"])
    model, _ = build_model(model_config, label_names)
    model.load_state_dict(artifacts.read_weights(folder))
    return model.eval(), label_names
