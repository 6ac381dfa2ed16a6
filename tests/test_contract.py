"""Every installed model plugin trains on every installed dataset plugin, or is refused in one line.

The cross of ``registry.plugins()``: zoo's own (mnist_cnn, a timm CNN and a timm ViT, mnist,
image_folder), the example zoo-shapes (tiny_mlp, shapes) and any third party's. Each pair runs
two steps on a few images per class, then its run folder is loaded and fed inputs of the size
its preprocessing records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, assert_user_error, dataset_root
from torch import nn

import zoo
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.data.contract import facts
from zoo.data.splits import tensor_shape
from zoo.plugins import _registry as registry
from zoo.training.runner import run

pytestmark = pytest.mark.slow  # sixteen short runs and their evaluations: 45 s to 3 min on a shared machine

# A namespace is crossed through small members: a CNN that takes any size, a ViT built for one.
NAMESPACE_MEMBERS = {"timm/*": ["timm/test_resnet", "timm/test_vit"]}
# The ViT is built for 32 x 32 here (the data is resized to it); at its own 160 x 160 MNIST's test
# split takes long to evaluate (test_a_vit_takes_tensors_resized_to_its_own_size checks that size).
MODEL_OPTIONS = {"timm/test_vit": ["model.args.img_size=32"]}
DATASET_ARGS = {"shapes": {"samples": 60}}  # 48 training and 12 test images
# A few images of a few classes; image_folder reads MNIST's digits as PNG files (conftest's mnist_png).
CLASSES = {"mnist": "[0,1,2]", "image_folder": "[0,1,2]", "hf": "[0,1,2]"}


def installed(kind: registry.Kind) -> list[str]:
    plugins = registry.plugins(kind)
    return sorted(m for p in plugins if p.provider != registry.LOCAL for m in NAMESPACE_MEMBERS.get(p.name, [p.name]))


def small_run(folder: Path, model: str, dataset: str, mnist_png: Path, *overrides: str) -> list[str]:
    """Overrides of recipes/mnist.toml for two steps of ``model`` on a few images of ``dataset``."""
    root = [f"data.root={dataset_root(dataset, mnist_png, folder.parent)}"]
    args = [f"data.args.{key}={value}" for key, value in DATASET_ARGS.get(dataset, {}).items()]
    classes = [f"data.classes={CLASSES[dataset]}"] if dataset in CLASSES else []
    return [
        f"model.backbone={model}", "model.pretrained=false", f"data.dataset={dataset}", *root, *args, *classes,
        "data.per_class=8", "data.batch_size=8", "data.num_workers=0", "train.max_steps=2", "train.precision=fp32",
        f"output.dir={folder}", *overrides,
    ]  # fmt: skip


def trained(folder: Path, overrides: list[str]) -> dict:
    """Run ``overrides`` of mnist.toml; the run's config.json, once its folder loads and takes its own input."""
    result = run(recipes.load(RECIPES / "mnist.toml", overrides), progress=False)
    assert result.results.state == "finished" and result.results.steps == 2
    config = json.loads((folder / "config.json").read_text())
    model = zoo.load(folder)
    with torch.no_grad():
        logits = model(torch.randn(3, *config["pretrained_cfg"]["input_size"]))
    assert logits.shape == (3, len(config["label_names"])) and logits.isfinite().all()
    return config


@pytest.mark.parametrize("dataset", installed("dataset"))
@pytest.mark.parametrize("model", installed("model"))
def test_every_model_trains_on_every_dataset(model: str, dataset: str, mnist_png: Path, tmp_path: Path) -> None:
    folder = tmp_path / "run"
    config = trained(folder, small_run(folder, model, dataset, mnist_png, *MODEL_OPTIONS.get(model, [])))
    test_split = registry.instantiate("dataset", dataset, DATASET_ARGS.get(dataset, {}), "",
                                      dataset_root(dataset, mnist_png, tmp_path), "test")  # fmt: skip
    if not facts(test_split).gives_images:  # tensors: the model is built for their channels (image files are converted)
        channels = tensor_shape(test_split)[0]
        assert config["pretrained_cfg"]["input_size"][0] == channels
        if model.startswith("timm/"):  # timm's stem built for one channel (MNIST, shapes), not its default three
            assert config["model_args"]["in_chans"] == channels == 1


def test_a_vit_takes_tensors_resized_to_its_own_size(
    tmp_path: Path, mnist_png: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "vit"
    config = trained(folder, small_run(folder, "timm/test_vit", "shapes", mnist_png))
    assert config["pretrained_cfg"]["input_size"] == [1, 160, 160]  # shapes are 28 x 28; test_vit is built for 160
    assert "images of (1, 160, 160), resized from (1, 28, 28) (the size timm/test_vit is built for)" in (
        capsys.readouterr().out
    )
    evaluated = CliRunner().invoke(cli, ["eval", str(folder), "--json"])  # the test split resized again, the same way
    assert evaluated.exit_code == 0, evaluated.output
    stored = json.loads((folder / "results.json").read_text())["test"]
    assert json.loads(evaluated.stdout)["loss"] == pytest.approx(stored["loss"], rel=1e-5)


@pytest.mark.parametrize(
    ("model", "built_with"),
    [("mnist_cnn", {"in_chans": 1, "image_size": 48}), ("timm/test_vit", {"in_chans": 1, "img_size": [48, 48]})],
)
def test_data_image_size_resizes_tensors_and_builds_the_model_for_them(
    model: str, built_with: dict, tmp_path: Path, mnist_png: Path
) -> None:
    folder = tmp_path / "sized"
    config = trained(folder, small_run(folder, model, "shapes", mnist_png, "data.image_size=48", "data.augment=light"))
    assert config["pretrained_cfg"]["input_size"] == [1, 48, 48]
    assert built_with.items() <= config["model_args"].items()


def test_a_pair_that_cannot_work_is_one_line_before_training(tmp_path: Path, mnist_png: Path) -> None:
    # test_vit cuts 16 x 16 patches: 40 x 40 inputs do not divide.
    folder = tmp_path / "out"
    overrides = small_run(folder, "timm/test_vit", "shapes", mnist_png, "data.image_size=40")
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), *overrides, "--no-progress"])
    assert_user_error(
        result, "model timm/test_vit cannot take dataset 'shapes''s 1x40x40 inputs", "divisible by patch size (16)",
        "data.image_size",
    )  # fmt: skip
    assert not folder.exists()  # refused before the run folder got anything

    # A plugin built for one input only (no in_chans or image_size to build it for the data).
    @zoo.register_model("rgb_only")
    def rgb_only() -> nn.Module:
        """Flattens 3 x 32 x 32 images."""
        backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4))
        backbone.num_features = 4
        return backbone

    try:
        dry = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), "model.backbone=rgb_only",
                                       "data.classes=[0,1]", "data.per_class=4", "--dry-run"])  # fmt: skip
        assert_user_error(dry, "model rgb_only cannot take dataset 'mnist''s 1x28x28 inputs", "784")
    finally:
        registry.unregister("model", "rgb_only")


class ColourNoise(torch.utils.data.Dataset):
    """3 x 20 x 20 float tensors, one by one (no in-memory ``images``): the DataLoader path."""

    classes = ["dim", "bright"]

    def __init__(self, root: Path, split: str) -> None:
        self.targets = [index % 2 for index in range(12)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((3, 20, 20), float(self.targets[index])) + torch.randn(3, 20, 20) * 0.1, self.targets[index]


def test_tensors_from_a_data_loader_are_resized_too(tmp_path: Path, mnist_png: Path) -> None:
    zoo.register_dataset("colour_noise")(ColourNoise)
    try:
        folder = tmp_path / "noise"
        overrides = small_run(folder, "mnist_cnn", "colour_noise", mnist_png, "data.image_size=24", "data.per_class=4")
        config = trained(folder, overrides)
    finally:
        registry.unregister("dataset", "colour_noise")
    assert config["pretrained_cfg"]["input_size"] == [3, 24, 24]
    assert config["model_args"] == {"in_chans": 3, "image_size": 24}  # mnist_cnn built for 3 channels, 24 x 24
