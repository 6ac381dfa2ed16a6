"""The plugin contracts (``zoo.plugins.contracts``), checked on every installed plugin, the way timm
tests every registered model.

Parametrised over ``registry.plugins()``: a plugin installed in this environment (zoo's own, the
example zoo-shapes, or a third party's) is checked here without a test of its own; a namespace
through a few small members. Then zoo's own check, ``zoo.data.contract.check_dataset``: a dataset
plugin that breaks its contract is named in one line when zoo loads it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, assert_user_error, dataset_root
from PIL import Image
from torch import nn

import zoo
from zoo.cli import cli
from zoo.data.contract import DatasetFacts, check_dataset, facts
from zoo.plugins import _registry as registry
from zoo.plugins.contracts import Backbone, ContractError, DatasetOptions, DatasetPlugin, Loss, OwnHeadModel

# A namespace is checked through a few small members: a CNN, an EfficientNet, a ViT built for one size.
NAMESPACE_MEMBERS = {"timm/*": ["timm/test_resnet", "timm/test_efficientnet", "timm/test_vit"]}

# Where the reader puts each optional attribute of the dataset contract: one entry per attribute.
FACT_OF: dict[str, Callable[[DatasetFacts], Any]] = {
    "targets": lambda found: found.targets,
    "images": lambda found: found.images,
    "mean": lambda found: found.mean,
    "std": lambda found: found.std,
    "transform": lambda found: found.takes_transform or None,
    "samples": lambda found: found.samples,
    "augmentation": lambda found: found.augmentation,
    "hub_dataset": lambda found: found.hub_dataset,
    "fingerprint": lambda found: found.fingerprint,
    "validation": lambda found: found.validation,
    "pinned_args": lambda found: found.pinned_args,
}


def names(kind: registry.Kind) -> list[str]:
    plugins = registry.plugins(kind)
    return sorted(m for p in plugins if p.provider != registry.LOCAL for m in NAMESPACE_MEMBERS.get(p.name, [p.name]))


def default(factory: object, parameter: str, fallback: int) -> int:
    found = inspect.signature(factory).parameters.get(parameter)
    return found.default if found is not None and isinstance(found.default, int) else fallback


def test_the_installed_plugins_include_the_example_package() -> None:
    assert {"tiny_mlp", "timm/test_resnet", "mnist_cnn"} <= set(names("model"))
    assert {"shapes", "mnist", "image_folder"} <= set(names("dataset"))
    assert {"poly1", "cross_entropy"} <= set(names("loss"))


@pytest.mark.parametrize("name", names("model"))
def test_every_model_plugin_keeps_the_model_contract(name: str) -> None:
    factory = registry.get("model", name).load()
    assert registry.get("model", name).description, "the first docstring line is what `zoo list` shows"
    if registry.takes(factory, "num_classes"):  # builds its own classifier, the timm way
        model = registry.instantiate("model", name, {}, num_classes=3)
        assert isinstance(model, OwnHeadModel) and isinstance(model.num_features, int)
        inputs = torch.randn(2, *model.pretrained_cfg["input_size"])
        assert model(inputs).shape == (2, 3)
        model.reset_classifier(5)
        assert model(inputs).shape == (2, 5) and isinstance(model.get_classifier(), nn.Module)
    else:
        channels, size = default(factory, "in_chans", 3), default(factory, "image_size", 32)
        model = registry.instantiate("model", name, {})
        assert isinstance(model, Backbone) and isinstance(model.num_features, int)
        assert model(torch.randn(2, channels, size, size)).shape == (2, model.num_features)


def test_the_reader_covers_every_optional_part_of_the_dataset_contract() -> None:
    assert set(FACT_OF) == set(DatasetOptions.__annotations__)


@pytest.mark.parametrize("name", names("dataset"))
def test_every_dataset_plugin_keeps_the_dataset_contract(
    name: str, mnist_png: Path, mnist_dir: Path, tmp_path: Path
) -> None:
    root = dataset_root(name, mnist_png, tmp_path)
    for split in ("train", "test"):
        dataset = registry.instantiate("dataset", name, {}, "", root, split)
        found = check_dataset(name, dataset)
        assert isinstance(dataset, DatasetPlugin)
        assert len(dataset) > 0 and dataset.classes and all(isinstance(c, str) for c in dataset.classes)
        sample, label = dataset[len(dataset) - 1]
        labels = set(label) if found.label_sets else {label}  # multi-label data: a set of class indices
        assert all(isinstance(one, int) and 0 <= one < len(dataset.classes) for one in labels)
        if found.gives_images:
            assert isinstance(sample, Image.Image)
        else:
            assert isinstance(sample, torch.Tensor) and sample.dim() == 3 and sample.is_floating_point()
            for statistics in (found.mean, found.std):
                assert statistics is None or len(statistics) == sample.shape[0]
        if found.targets is not None:
            last = found.targets[len(dataset) - 1]
            assert len(found.targets) == len(dataset) and (set(last) if found.label_sets else {int(last)}) == labels
        if found.images is not None:  # the in-memory fast path: uint8 N x C x H x W, the samples before normalising
            assert found.images.dtype == torch.uint8 and found.images.dim() == 4 and len(found.images) == len(dataset)
            assert found.images.shape[1:] == sample.shape
        if found.samples is not None:
            assert Path(found.samples[-1][0]).is_file() and found.samples[-1][1] == label
        for part, fact in FACT_OF.items():  # a transform is declared by the attribute, None until zoo sets one
            declared = hasattr(dataset, part) if part == "transform" else getattr(dataset, part, None) is not None
            assert declared == (fact(found) is not None), part


@pytest.mark.parametrize("name", names("loss"))
def test_every_loss_plugin_keeps_the_loss_contract(name: str) -> None:
    loss_fn = registry.instantiate("loss", name, {})
    assert isinstance(loss_fn, Loss) and isinstance(getattr(loss_fn, "soft_targets", False), bool)
    assert isinstance(getattr(loss_fn, "multi_label", False), bool)
    classes = torch.tensor([0, 1, 2, 1])
    hot = torch.nn.functional.one_hot(classes, 3).float()
    targets = hot if getattr(loss_fn, "multi_label", False) else classes  # multi-hot rows, or class indices
    logits = torch.randn(4, 3, requires_grad=True)
    loss = loss_fn(logits, targets)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    confident = (2 * hot - 1) * 8  # the right classes high, the others low
    assert loss_fn(confident, targets) < loss_fn(-confident, targets), "right answers must cost less than wrong ones"
    if getattr(loss_fn, "soft_targets", False):  # class probabilities as targets, as MixUp gives them
        soft = loss_fn(logits.detach(), hot * 0.8 + 0.1)
        assert soft.dim() == 0 and math.isfinite(soft.item())


class Tiny(torch.utils.data.Dataset):
    """A dataset that keeps the contract: 4 in-memory 1 x 2 x 2 images of two classes."""

    classes = ["a", "b"]
    mean, std = (0.5,), (0.25,)

    def __init__(self, root: Path | None = None, split: str = "train") -> None:
        self.images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
        self.targets = [0, 1, 0, 1]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return (self.images[index].float() / 255 - 0.5) / 0.25, self.targets[index]


def test_a_dataset_that_keeps_the_contract_passes() -> None:
    dataset = Tiny()
    found = check_dataset("tiny", dataset)
    assert found.images is dataset.images and found.targets is dataset.targets and found.in_memory
    assert (found.mean, found.std, found.samples, found.takes_transform) == ((0.5,), (0.25,), None, False)


def broken(**parts: Any) -> Tiny:
    dataset = Tiny()
    for name, value in parts.items():
        setattr(dataset, name, value)
    return dataset


@pytest.mark.parametrize(
    ("dataset", "part"),
    [
        (broken(classes=[]), "`classes` must list its label names"),
        (broken(classes="ab"), "`classes` must list its label names"),
        (broken(classes=["a", "a"]), "`classes` names a class twice"),
        (broken(targets=[0, 1, 0, 2]), "`targets` must hold one label in 0..1 per sample (4)"),
        (broken(targets=[0, 1, 0]), "`targets` must hold one label in 0..1 per sample (4)"),
        (broken(targets=3), "`targets` must be a sequence or tensor of int labels"),
        (broken(targets=["a", "b", "a", "b"]), "`targets` must be int labels, one per sample"),
        (broken(targets=[[0, 2]] * 4), "`targets` must hold one set of labels in 0..1 per sample (4)"),  # label sets
        (broken(targets=[[0.5, 1]] * 4), "`targets` must hold one set of labels in 0..1 per sample (4)"),
        (broken(targets=[0.0, 1.0, 0.0, 1.0]), "`targets` must hold one label in 0..1 per sample (4)"),
        (broken(images=torch.zeros(4, 1, 2, 2)), "`images` must be a uint8 N x C x H x W tensor, not a torch.float32"),
        (broken(images=torch.zeros(3, 1, 2, 2, dtype=torch.uint8)), "`images` holds 3 images for 4 samples"),
        (broken(mean=(0.5, 0.5)), "`mean` has 2 values for images of 1 channel(s)"),
        (broken(std="0.25"), "`std` must be finite numbers, one per channel"),
        (broken(std=[0.0]), "`std` must be positive"),
        (broken(mean=[float("nan")]), "`mean` must be finite numbers, one per channel"),
        (broken(samples=[("a.png", 0)] * 3), "`samples` must list (path, label) for each of its 4 samples"),
        (broken(augmentation=["hflip"]), "`augmentation` must be a mapping"),
        (broken(hub_dataset=7), "`hub_dataset` must be a non-empty str"),
        (broken(hub_dataset=""), "`hub_dataset` must be a non-empty str"),
    ],
)
def test_a_dataset_that_breaks_the_contract_is_named_with_the_broken_part(dataset: Tiny, part: str) -> None:
    with pytest.raises(ContractError) as raised:
        check_dataset("tiny", dataset)
    assert str(raised.value).startswith("dataset plugin 'tiny' breaks the dataset contract: ")
    assert part in str(raised.value)


class NumpyFlavoured(Tiny):
    """What torchvision-style plugins commonly give: numpy targets and labels, int class names,
    tensor and numpy statistics. zoo took all of it before the contract was written down."""

    classes = [3, 7]
    mean, std = torch.tensor([0.5]), np.array([0.25])

    def __init__(self, root: Path | None = None, split: str = "train") -> None:
        super().__init__(root, split)
        self.targets = np.array([0, 1, 0, 1])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.images[index].float(), self.targets[index]  # a numpy integer label


class NegativeLength(Tiny):
    def __len__(self) -> int:
        return -1


def test_a_negative_length_is_named() -> None:
    with pytest.raises(ContractError, match="its len\\(\\) is not a count of samples"):
        check_dataset("tiny", NegativeLength())


def test_numpy_flavoured_datasets_keep_the_contract() -> None:
    found = check_dataset("tiny", NumpyFlavoured())
    assert (found.mean, found.std) == ((0.5,), (0.25,))


class WrongSamples(Tiny):
    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.images[index].float(), torch.tensor(self.targets[index])  # a tensor label, not an int


class PilWithoutTransform(Tiny):
    transform = None

    def __init__(self, root: Path | None = None, split: str = "train") -> None:
        self.targets = [0, 1, 0, 1]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return torch.zeros(1, 2, 2), self.targets[index]  # takes a transform, so must give PIL images


def test_the_first_sample_is_checked_for_its_form() -> None:
    with pytest.raises(ContractError, match=r"dataset\[0\]'s label must be an int in 0..1"):
        check_dataset("tiny", WrongSamples())
    with pytest.raises(ContractError, match=r"dataset\[0\]'s sample must be a PIL image \(it takes a `transform`\)"):
        check_dataset("tiny", PilWithoutTransform())


def test_facts_of_no_dataset_are_empty() -> None:
    assert facts(None) == DatasetFacts(None, None, None, None, False, None, None, None)


class LabelOutOfRange(Tiny):
    """Breaks the contract: a target beyond its two classes (which zoo would index its relabelling with)."""

    def __init__(self, root: Path, split: str) -> None:
        super().__init__(root, split)
        self.targets = [0, 1, 0, 5]


def test_a_broken_third_party_dataset_is_one_line_from_the_cli() -> None:
    zoo.register_dataset("label_out_of_range")(LabelOutOfRange)
    try:
        result = CliRunner().invoke(
            cli,
            ["run", str(RECIPES / "mnist.toml"), "data.dataset=label_out_of_range", "data.val_split=0", "--dry-run"],
        )
    finally:
        registry.unregister("dataset", "label_out_of_range")
    assert_user_error(result, "dataset plugin 'label_out_of_range' breaks the dataset contract", "`targets` must hold")


def test_a_loss_plugin_that_returns_no_module_is_one_line_naming_it() -> None:
    zoo.register_loss("function_loss")(lambda label_smoothing=0.0: nn.functional.cross_entropy)
    try:
        result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), "loss.name=function_loss", "--dry-run"])
    finally:
        registry.unregister("loss", "function_loss")
    assert_user_error(result, "loss.name = 'function_loss'", "returned a function", "must return an nn.Module")
