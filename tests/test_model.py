from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from conftest import write_finished_run
from torch import nn

from zoo.config.model_section import HeadConfig, ModelConfig
from zoo.data.splits import DataInput
from zoo.errors import ZooError
from zoo.models.build import build_head, build_model, check_input, load_pretrained, load_run
from zoo.parallel import distributed
from zoo.runs.folder import RunFolder


def test_linear_and_mlp_heads() -> None:
    linear = build_head(HeadConfig(), 128, 5)
    assert [type(m) for m in linear] == [nn.Linear] and linear[0].out_features == 5
    mlp = build_head(HeadConfig(type="mlp", hidden=[64, 32], activation="gelu", dropout=0.2), 128, 3)
    assert [type(m) for m in mlp] == [
        nn.Dropout,
        nn.Linear,
        nn.GELU,
        nn.Dropout,
        nn.Linear,
        nn.GELU,
        nn.Dropout,
        nn.Linear,
    ]
    assert mlp(torch.zeros(2, 128)).shape == (2, 3)


def test_model_is_backbone_then_head() -> None:
    model, _ = build_model(
        ModelConfig(backbone="mnist_cnn", args={"conv1": 4, "conv2": 8, "hidden": 16}), list("abcdefg")
    )
    assert model.num_features == 16
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"backbone", "head"}


def save_as_run(model: nn.Module, folder: Path, labels: list[str], backbone: str = "mnist_cnn") -> None:
    run = RunFolder(folder)
    run.write_weights(model.state_dict(), {})
    run.write_config({"architecture": backbone, "label_names": labels, "zoo": {}})


def test_same_labels_load_the_head_too_and_new_labels_get_a_new_head(tmp_path: Path) -> None:
    config = ModelConfig(backbone="mnist_cnn", args={"conv1": 4, "conv2": 8, "hidden": 16})
    source = build_model(config, ["a", "b"])[0]
    save_as_run(source, tmp_path, ["a", "b"])

    same = build_model(config, ["a", "b"])[0]
    assert "backbone and head" in load_pretrained(same, RunFolder(tmp_path), "mnist_cnn", ["a", "b"])
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), same.state_dict().values()))

    other = build_model(config, ["a", "b"])[0]
    message = load_pretrained(other, RunFolder(tmp_path), "mnist_cnn", ["c", "d"])
    assert "new head for 2 classes (c, d)" in message
    assert torch.equal(other.backbone.fc1.weight, source.backbone.fc1.weight)
    assert not torch.equal(other.head[0].weight, source.head[0].weight)


def test_other_architecture_and_corrupted_weights_are_refused(tmp_path: Path) -> None:
    config = ModelConfig(backbone="mnist_cnn", args={"conv1": 4, "conv2": 8, "hidden": 16})
    save_as_run(build_model(config, ["a", "b"])[0], tmp_path, ["a", "b"], backbone="resnet18")
    with pytest.raises(ZooError, match="holds a 'resnet18' backbone, but the recipe builds 'mnist_cnn'"):
        load_pretrained(build_model(config, ["a", "b"])[0], RunFolder(tmp_path), "mnist_cnn", ["a", "b"])
    save_as_run(build_model(config, ["a", "b"])[0], tmp_path, ["a", "b"])
    (tmp_path / RunFolder.WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header")
    with pytest.raises(ZooError, match="model.safetensors is corrupted"):
        load_pretrained(build_model(config, ["a", "b"])[0], RunFolder(tmp_path), "mnist_cnn", ["a", "b"])


def test_a_pickle_is_never_loaded_and_the_error_says_how_to_convert(tmp_path: Path) -> None:
    config = ModelConfig(backbone="mnist_cnn", args={"conv1": 4, "conv2": 8, "hidden": 16})
    source = build_model(config, ["a", "b"])[0]
    save_as_run(source, tmp_path / "run", ["a", "b"])
    (tmp_path / "run" / RunFolder.WEIGHTS).rename(tmp_path / "run" / "pytorch_model.bin")
    for backbone in ("mnist_cnn", "timm/test_resnet"):
        with pytest.raises(ZooError, match=r"pytorch_model.bin is a pickle, and zoo loads safetensors only.*save_file"):
            build_model(ModelConfig(backbone=backbone, pretrained=str(tmp_path / "run")), ["a", "b"])


def test_run_folders_set_only_architecture_arguments(tmp_path: Path) -> None:
    run = write_finished_run(tmp_path / "run")
    model = build_model(run.recipe.model, run.label_names)[0]
    run.write_weights(model.state_dict(), {})
    assert load_run(run).label_names == ["0", "1"]
    config = run.config | {"model_args": {"in_chans": 1, "checkpoint_path": "/etc/passwd"}}
    run.write_config(config)
    with pytest.raises(ZooError, match="model_args.checkpoint_path is not an architecture argument"):
        load_run(RunFolder(run.path))


@pytest.mark.parametrize("keyword", ["checkpoint_path", "pretrained_cfg_overlay"])
def test_timm_keywords_that_read_files_are_refused(keyword: str) -> None:
    with pytest.raises(ZooError, match=f"model.args.{keyword}: zoo loads weights only through model.pretrained"):
        build_model(ModelConfig(backbone="timm/test_resnet", args={keyword: "/tmp/x.pth"}), ["a", "b"])


def test_weights_that_do_not_fit_the_described_model_are_one_line(tmp_path: Path) -> None:
    run = write_finished_run(tmp_path / "run")
    model = build_model(run.recipe.model, ["0", "1", "2"])[0]  # a head for three labels, not two
    run.write_weights(model.state_dict(), {})
    with pytest.raises(ZooError, match=r"tensor 'head.0.bias' is \[3\] in .*model.safetensors but \[2\] here"):
        load_run(run)


def test_a_model_is_built_for_the_data_unless_model_args_say_otherwise() -> None:
    grey_28 = DataInput(channels=1, size=(28, 28), chosen=False)
    cnn, _ = build_model(ModelConfig(backbone="mnist_cnn"), ["a", "b"], DataInput(3, (40, 40), chosen=False))
    assert cnn.built_with == {"in_chans": 3, "image_size": 40} and cnn(torch.zeros(2, 3, 40, 40)).shape == (2, 2)
    kept, _ = build_model(ModelConfig(backbone="mnist_cnn", args={"image_size": 32}), ["a", "b"], grey_28)
    assert kept.built_with == {"in_chans": 1, "image_size": 32}  # model.args win; the data is resized to 32
    oblong, _ = build_model(ModelConfig(backbone="mnist_cnn"), ["a", "b"], DataInput(1, (28, 36), chosen=False))
    assert oblong.built_with == {"in_chans": 1, "image_size": 28}  # an int image_size cannot be 28 x 36: check_input

    resnet, _ = build_model(ModelConfig(backbone="timm/test_resnet"), ["a", "b"], grey_28)
    assert resnet.conv1[0].in_channels == 1 and resnet(torch.zeros(2, 1, 28, 28)).shape == (2, 2)
    vit, _ = build_model(ModelConfig(backbone="timm/test_vit"), ["a", "b"], grey_28)
    assert vit.patch_embed.img_size == (
        160,
        160,
    )  # a size of the data's own: resized to the ViT's (resolve_preprocessing)
    vit, _ = build_model(ModelConfig(backbone="timm/test_vit"), ["a", "b"], DataInput(1, (48, 48), chosen=True))
    assert vit.patch_embed.img_size == (48, 48) and vit.patch_embed.proj.in_channels == 1  # data.image_size
    image_files, _ = build_model(ModelConfig(backbone="timm/test_resnet"), ["a", "b"], DataInput(None, None, False))
    assert image_files.conv1[0].in_channels == 3  # image files are converted to the model's channels


def test_check_input_names_the_model_the_dataset_and_the_shape() -> None:
    model, _ = build_model(ModelConfig(backbone="mnist_cnn"), ["a", "b"])
    model.train()
    check_input(model, torch.zeros(2, 1, 28, 28), 2, "mnist_cnn", "mnist")
    assert model.training  # left in the mode it was in
    with pytest.raises(ZooError, match=r"model mnist_cnn cannot take dataset 'shapes''s 3x28x28 inputs \(RuntimeError"):
        check_input(model, torch.zeros(2, 3, 28, 28), 2, "mnist_cnn", "shapes")
    assert model.training
    with pytest.raises(ZooError, match=r"gives \[2, 2\] for a batch of 2 1x28x28 inputs from 'mnist', not \[2, 5\]"):
        check_input(model, torch.zeros(2, 1, 28, 28), 5, "mnist_cnn", "mnist")


class Buggy(nn.Module):
    """A model whose forward fails for a reason of its own, not the input's shape."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("INDICES element is out of DATA bounds"),
        ValueError("internal plugin bug"),
        AssertionError("internal invariant violated"),
        RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000 bytes"),
    ],
)
def test_a_models_own_bug_in_the_input_check_keeps_its_traceback(error: Exception) -> None:
    """Only an input the model refuses for its shape is the user's one line; anything else is a bug to see."""
    with pytest.raises(type(error)) as raised:
        check_input(Buggy(error), torch.zeros(2, 1, 28, 28), 2, "buggy", "mnist")
    assert not isinstance(raised.value, ZooError)
    assert "checking that model buggy takes a batch of 1x28x28 inputs from 'mnist'" in raised.value.__notes__[0]


class Doubled(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


class Renamed(nn.BatchNorm2d):
    """A BatchNorm subclass with the plain forward: SyncBatchNorm computes the same."""


@pytest.mark.parametrize(
    ("model", "inputs"),
    [
        (lambda: timm.create_model("test_efficientnet", num_classes=3), torch.randn(4, 3, 32, 32)),  # BatchNormAct2d
        (lambda: timm.create_model("test_resnet", num_classes=3), torch.randn(4, 3, 32, 32)),  # nn.BatchNorm2d
        (
            lambda: nn.Sequential(nn.Conv2d(1, 4, 3), Renamed(4), nn.Flatten(), nn.LazyLinear(3)),
            torch.randn(4, 1, 8, 8),
        ),
    ],
)
def test_sync_bn_keeps_every_module_forward(model, inputs: torch.Tensor) -> None:
    model = model()
    with torch.no_grad():
        for _ in range(3):  # running statistics of its own, not the initial zeros and ones
            model(torch.randn_like(inputs) * 3 + 1)
        before = model.eval()(inputs)
    synced = distributed.sync_batchnorm(model)
    norms = [m for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    with torch.no_grad():
        assert torch.equal(synced.eval()(inputs), before)


def test_sync_bn_refuses_a_batchnorm_whose_forward_it_would_drop() -> None:
    with pytest.raises(ZooError, match="train.sync_bn: 1 is a Doubled, a BatchNorm with a forward of its own"):
        distributed.sync_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), Doubled(4)))
