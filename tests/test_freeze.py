from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, assert_user_error
from torch import nn

import zoo
from zoo.cli import cli
from zoo.config import recipe as recipes
from zoo.config.model_section import FreezeConfig, FreezeStage, ModelConfig
from zoo.errors import ZooError
from zoo.models import freeze
from zoo.models.build import Classifier, build_model
from zoo.plugins import _registry as registry
from zoo.runs.folder import RunFolder
from zoo.training.runner import run


def small_model() -> Classifier:
    backbone = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten())
    backbone.num_features = 2 * 26 * 26
    return Classifier(backbone, nn.Sequential(nn.Linear(backbone.num_features, 3)))


def trainable(model: nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_patterns_match_with_or_without_the_backbone_prefix() -> None:
    model = small_model()
    freeze.apply(model, FreezeConfig(freeze=["0.*"]))
    assert trainable(model) == {"backbone.1.weight", "backbone.1.bias", "head.0.weight", "head.0.bias"}
    freeze.apply(model, FreezeConfig(freeze=["backbone"], unfreeze=["backbone.1.*"]))
    assert trainable(model) == {"backbone.1.weight", "backbone.1.bias", "head.0.weight", "head.0.bias"}
    freeze.apply(model, FreezeConfig(freeze=["backbone"]))
    assert trainable(model) == {"head.0.weight", "head.0.bias"}


def test_stage_parameters_start_frozen_and_come_back_with_their_rate() -> None:
    model = small_model()
    stage = FreezeStage(epoch=2, unfreeze=["0.*"], lr_mult=0.1)
    freeze.apply(model, FreezeConfig(stages=[stage]))
    assert "backbone.0.weight" not in trainable(model)
    [group] = freeze.unfreeze_stage(model, stage, lr=0.5)
    assert group["lr"] == pytest.approx(0.05) and len(group["params"]) == 2
    assert "backbone.0.weight" in trainable(model)
    assert freeze.unfreeze_stage(model, stage, lr=0.5) == []


def test_released_parameters_keep_the_backbone_rate_and_layer_decay_their_group_would_have(mnist_dir: Path) -> None:
    model = small_model()
    stage = FreezeStage(epoch=2, unfreeze=["backbone"], lr_mult=0.5)
    freeze.apply(model, FreezeConfig(freeze=["backbone"], stages=[stage]))
    [group] = freeze.unfreeze_stage(model, stage, lr=0.4, backbone_lr_mult=0.1)
    assert group["lr"] == pytest.approx(0.4 * 0.1 * 0.5) and len(group["params"]) == 4  # conv and norm

    timm_model, _ = build_model(ModelConfig(backbone="timm/test_resnet"), ["a", "b"])
    whole = freeze.param_groups(timm_model, lr=0.1, layer_decay=0.5, weight_decay=0.05)
    freeze.apply(timm_model, FreezeConfig(freeze=["backbone"], stages=[stage]))
    released = freeze.unfreeze_stage(timm_model, stage, lr=0.1, layer_decay=0.5, weight_decay=0.05)
    rate_of = {id(p): (group["lr"], group["weight_decay"]) for group in whole for p in group["params"]}
    assert len({group["lr"] for group in released}) > 1  # a rate per layer, not one flat rate
    for group in released:
        for parameter in group["params"]:
            assert (group["lr"], group["weight_decay"]) == (rate_of[id(parameter)][0] * 0.5, rate_of[id(parameter)][1])
    assert any(group["weight_decay"] == 0 for group in released)  # 1-D parameters: no weight decay


def test_a_pattern_that_matches_nothing_is_a_user_error() -> None:
    with pytest.raises(ZooError, match="model.freeze.unfreeze: pattern 'fc.*' matches no parameter"):
        freeze.apply(small_model(), FreezeConfig(freeze=["backbone"], unfreeze=["fc.*"]))


def test_layer_decay_on_a_model_without_layer_groups_is_a_user_error(mnist_dir: Path) -> None:
    timm_model, _ = build_model(ModelConfig(backbone="timm/test_resnet"), ["a", "b"])
    rates = {group["lr"] for group in freeze.param_groups(timm_model, lr=0.1, layer_decay=0.5)}
    assert len(rates) == 6  # timm's group_matcher: stem, 4 blocks, head
    for model in (small_model(), build_model(ModelConfig(backbone="mnist_cnn"), ["a", "b"])[0]):
        with pytest.raises(ZooError, match="train.layer_decay: this model has no layer groups"):
            freeze.param_groups(model, lr=0.1, layer_decay=0.5)
        assert {group["lr"] for group in freeze.param_groups(model, lr=0.1, layer_decay=1.0)} == {0.1}  # as asked
    dry_run = ["run", str(RECIPES / "mnist.toml"), "train.layer_decay=0.7", "data.classes=[0,1]", "--dry-run"]
    assert_user_error(CliRunner().invoke(cli, dry_run), "train.layer_decay", "set optim.backbone_lr_mult")


def test_frozen_batchnorm_stays_in_eval_unless_train_bn() -> None:
    model = small_model()
    freeze.apply(model, FreezeConfig(freeze=["backbone"]))
    model.train()
    freeze.keep_frozen_bn_in_eval(model, train_bn=False)
    assert not model.backbone[1].training and model.head.training
    model.train()
    freeze.keep_frozen_bn_in_eval(model, train_bn=True)
    assert model.backbone[1].training


@pytest.mark.parametrize(("train_bn", "stats_change"), [(False, False), (True, True)])
def test_batchnorm_statistics_through_a_whole_run(
    train_bn: bool, stats_change: bool, tmp_path: Path, mnist_dir: Path
) -> None:
    @zoo.register_model("bn_net")
    def bn_net() -> nn.Module:
        """A conv + BatchNorm backbone for this test."""
        backbone = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
        backbone.num_features = 4 * 13 * 13
        return backbone

    try:
        common = [
            "model.backbone=bn_net",
            "data.classes=[0,1]",
            "data.per_class=10",
            "train.max_steps=3",
            "data.batch_size=4",
        ]
        source = run(recipes.load(RECIPES / "mnist.toml", [*common, f"output.dir={tmp_path / 'a'}"]), progress=False)
        tuned = run(
            recipes.load(
                RECIPES / "mnist.toml",
                [
                    *common,
                    f"model.pretrained={source.folder}",
                    "model.freeze.freeze=backbone",
                    f"model.freeze.train_bn={str(train_bn).lower()}",
                    f"output.dir={tmp_path / 'b'}",
                ],
            ),
            progress=False,
        )
    finally:
        registry.unregister("model", "bn_net")
    before, after = RunFolder(source.folder).weights(), RunFolder(tuned.folder).weights()
    assert torch.equal(before["backbone.1.weight"], after["backbone.1.weight"])  # frozen either way
    assert torch.equal(before["backbone.1.running_mean"], after["backbone.1.running_mean"]) != stats_change
