"""The plugin contract, checked on every installed plugin, the way timm tests every registered model.

Parametrised over ``registry.plugins()``: a plugin installed in this environment (zoo's own, the
example zoo-shapes, or a third party's) is checked here without a test of its own.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from zoo.config.recipe import default_data_dir
from zoo.plugins import _registry as registry

# A namespace is checked through one small member.
NAMESPACE_MEMBERS = {"timm/*": "timm/test_resnet"}


def names(kind: registry.Kind) -> list[str]:
    plugins = registry.plugins(kind)
    return sorted(NAMESPACE_MEMBERS.get(p.name, p.name) for p in plugins if p.provider != registry.LOCAL)


def default(factory: object, parameter: str, fallback: int) -> int:
    found = inspect.signature(factory).parameters.get(parameter)
    return found.default if found is not None and isinstance(found.default, int) else fallback


@pytest.mark.parametrize("name", names("model"))
def test_every_model_plugin_keeps_the_model_contract(name: str) -> None:
    factory = registry.get("model", name).load()
    assert registry.get("model", name).description, "the first docstring line is what `zoo list` shows"
    channels, size = default(factory, "in_chans", 3), default(factory, "image_size", 32)
    inputs = torch.randn(2, channels, size, size)
    if registry.takes(factory, "num_classes"):  # builds its own classifier, the timm way
        model = registry.instantiate("model", name, {}, num_classes=3)
        assert model(inputs).shape == (2, 3)
        model.reset_classifier(5)
        assert model(inputs).shape == (2, 5)
    else:
        model = registry.instantiate("model", name, {})
        assert isinstance(model.num_features, int) and model(inputs).shape == (2, model.num_features)


def dataset_root(name: str, mnist_png: Path) -> Path:
    return mnist_png if name == "image_folder" else default_data_dir()


@pytest.mark.parametrize("name", names("dataset"))
def test_every_dataset_plugin_keeps_the_dataset_contract(name: str, mnist_png: Path, mnist_dir: Path) -> None:
    root = dataset_root(name, mnist_png)
    for split in ("train", "test"):
        dataset = registry.instantiate("dataset", name, {}, "", root, split)
        assert len(dataset) > 0 and dataset.classes and all(isinstance(c, str) for c in dataset.classes)
        sample, label = dataset[len(dataset) - 1]
        assert isinstance(label, int) and 0 <= label < len(dataset.classes)
        assert isinstance(sample, torch.Tensor | Image.Image)
        targets = getattr(dataset, "targets", None)
        if targets is not None:
            assert len(targets) == len(dataset) and int(targets[len(dataset) - 1]) == label
        images = getattr(dataset, "images", None)
        if isinstance(images, torch.Tensor):  # the in-memory fast path: uint8 N x C x H x W
            assert images.dtype == torch.uint8 and images.dim() == 4 and len(images) == len(dataset)


@pytest.mark.parametrize("name", names("loss"))
def test_every_loss_plugin_keeps_the_loss_contract(name: str) -> None:
    loss_fn = registry.instantiate("loss", name, {})
    targets = torch.tensor([0, 1, 2, 1])
    logits = torch.randn(4, 3, requires_grad=True)
    loss = loss_fn(logits, targets)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    confident = torch.nn.functional.one_hot(targets, 3).float() * 8
    assert loss_fn(confident, targets) < loss_fn(-confident, targets), "right answers must cost less than wrong ones"
