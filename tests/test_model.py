from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_finished_run
from torch import nn

from zoo.artifacts import RunFolder
from zoo.errors import ZooError
from zoo.model import build_head, build_model, load_pretrained, load_run
from zoo.recipe import HeadConfig, ModelConfig


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
