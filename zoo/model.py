"""Models: a plugin's backbone plus the head zoo adds, and loading weights from run folders."""

from __future__ import annotations

import inspect
from pathlib import Path

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


def build_backbone(config: ModelConfig) -> nn.Module:
    plugin = registry.get("model", config.backbone)
    factory = plugin.load()
    check_args(factory, config.args, "model.args")
    args = dict(config.args)
    if "pretrained" in inspect.signature(factory).parameters:
        args["pretrained"] = config.pretrained is True
    try:
        backbone = factory(**args)
    except ValueError as exc:
        raise ZooError(f"model.args: {config.backbone} rejected its arguments: {exc}") from exc
    if not isinstance(getattr(backbone, "num_features", None), int):
        raise ZooError(
            f"model plugin {plugin.qualified_name} returned a module without an int `num_features`; "
            "a zoo backbone must have one (see 'Writing a plugin' in the README)"
        )
    return backbone


def build_model(config: ModelConfig, num_classes: int) -> Classifier:
    backbone = build_backbone(config)
    return Classifier(backbone, build_head(config.head, backbone.num_features, num_classes))


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
    same_head = head_state.keys() == own_head.keys() and all(
        head_state[k].shape == own_head[k].shape for k in own_head
    )
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


def load_run(folder: Path) -> tuple[Classifier, list[str]]:
    """The model of a run folder in eval mode, and its label names."""
    config = artifacts.read_config(folder)
    recipe = from_dict(config["zoo"]["recipe"], source=str(folder / artifacts.CONFIG))
    model_config = recipe.model.model_copy(update={"pretrained": False})
    model = build_model(model_config, config["num_classes"])
    model.load_state_dict(artifacts.read_weights(folder))
    return model.eval(), list(config["label_names"])
