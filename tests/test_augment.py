"""Training augmentation: presets, a model's declared settings, recipe keys, and batches on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from zoo.cli import cli
from zoo.config.schema import DataConfig
from zoo.data.augment import Augmentation, BatchAugment, ignored, resolve
from zoo.data.batches import Batches
from zoo.data.preprocessing import Preprocessing
from zoo.data.splits import load_splits
from zoo.data.transforms import build_transform
from zoo.errors import ZooError
from zoo.models.mnist_cnn import MnistCNN

TIMM = Augmentation()  # timm's ImageNet training defaults


def data(**keys: object) -> DataConfig:
    return DataConfig(dataset="image_folder", **keys)


def test_presets_change_timm_defaults_for_a_model_that_declares_nothing() -> None:
    plain = nn.Linear(2, 2)
    assert resolve(data(augment="none"), plain, None, on_tensors=False) is None
    assert resolve(data(), plain, None, on_tensors=False) == TIMM
    light = resolve(data(augment="light"), plain, None, on_tensors=False)
    assert (light.scale, light.color_jitter, light.hflip) == ((0.8, 1.0), 0.0, 0.5)
    assert resolve(data(augment="strong"), plain, None, on_tensors=False).auto_augment.startswith("rand-m9")
    keyed = resolve(data(augment="light", hflip=0.25, scale=[0.5, 1.0], degrees=5.0), plain, None, on_tensors=False)
    assert (keyed.hflip, keyed.scale, keyed.degrees, keyed.color_jitter) == (0.25, (0.5, 1.0), 5.0, 0.0)
    assert (
        resolve(DataConfig.model_validate({"dataset": "x", "augment": False}), plain, None, False) is None
    )  # old recipes


def test_none_turns_every_augmentation_off_and_the_run_names_the_keys_it_ignores(mnist_dir: Path) -> None:
    for model in (plain_model(), MnistCNN()):
        assert resolve(data(augment="none", hflip=0.5, degrees=30.0), model, None, on_tensors=True) is None
    assert ignored(data(augment="none", hflip=0.5, degrees=30.0)) == ["data.hflip", "data.degrees"]
    assert ignored(data(augment="default", hflip=0.5)) == ignored(data(augment="none")) == []
    asked = ["data.augment=none", "data.hflip=0.5", "data.degrees=30", "data.classes=[0,1]", "--dry-run"]
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "mnist.toml"), *asked])
    assert result.exit_code == 0, result.output
    said = "augmentation (none): none (data.hflip, data.degrees ignored: none turns every augmentation off)"
    assert said in result.output


def test_the_data_has_the_last_word_over_the_model() -> None:
    from zoo.data.mnist import MNIST

    class Flipper(nn.Linear):
        augmentation = {"hflip": 0.9, "degrees": 40.0}

    chosen = resolve(data(), Flipper(2, 2), MNIST, on_tensors=True)  # digits: never flipped
    assert (chosen.hflip, chosen.degrees, chosen.scale) == (0.0, 15.0, (0.85, 1.0))
    assert resolve(data(), Flipper(2, 2), None, on_tensors=True).hflip == 0.9

    class Broken:
        augmentation = {"flip": 1.0}

    with pytest.raises(ZooError, match="the dataset plugin's `augmentation` must be a dict with keys among"):
        resolve(data(), plain_model(), Broken(), on_tensors=True)


def plain_model() -> nn.Module:
    return nn.Linear(2, 2)


def test_the_digit_cnn_declares_no_flips_and_no_small_crops() -> None:
    model = MnistCNN()
    for preset in ("light", "default"):
        chosen = resolve(data(augment=preset), model, None, on_tensors=True)
        assert chosen.hflip == 0.0 and chosen.scale[0] >= 0.8 and chosen.degrees > 0 and chosen.translate > 0
    assert resolve(data(degrees=0.0), model, None, on_tensors=True).degrees == 0.0  # the recipe's key wins
    with pytest.raises(ZooError, match="auto-augment needs PIL images"):
        resolve(DataConfig(dataset="mnist", augment="strong"), model, None, on_tensors=True)


def test_image_transforms_follow_the_resolved_settings() -> None:
    preprocessing = Preprocessing((3, 32, 32), (0.5,) * 3, (0.5,) * 3, interpolation="bilinear", crop_pct=1.0)
    chosen = Augmentation(scale=(0.5, 1.0), hflip=0.25, degrees=10.0, translate=0.1)
    augmented = repr(build_transform(preprocessing, training=True, augmentation=chosen))
    assert "RandomResizedCrop" in augmented and "RandomHorizontalFlip(p=0.25)" in augmented
    assert "scale=(0.5, 1.0)" in augmented and "RandomAffine(degrees=[-10.0, 10.0], translate=(0.1, 0.1))" in augmented
    plain = repr(build_transform(preprocessing, training=True, augmentation=None))
    assert "Random" not in plain and "ColorJitter" not in plain and "Resize" in plain


def test_training_without_augmentation_sees_the_evaluation_crop_as_the_image_cache_does() -> None:
    """timm's no_aug transform resizes to the size and crops, without crop_pct: a non-square image then
    gave the DataLoader path other pixels than the decoded cache (the evaluation's centre crop)."""
    from PIL import Image

    preprocessing = Preprocessing((3, 32, 32), (0.5,) * 3, (0.5,) * 3, interpolation="bilinear", crop_pct=0.875)
    image = Image.fromarray(torch.randint(0, 256, (50, 28, 3), dtype=torch.uint8).numpy())
    unaugmented = build_transform(preprocessing, training=True, augmentation=None, uint8=True)(image)
    assert (unaugmented == build_transform(preprocessing, uint8=True)(image)).all()
    assert repr(build_transform(preprocessing)).startswith("ConvertThen('RGB'")


IDENTITY = Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    low=st.floats(0.1, 1.0),
    degrees=st.floats(0.0, 45.0),
    translate=st.floats(0.0, 0.3),
    hflip=st.floats(0.0, 1.0),
)
def test_batch_augmentation_is_a_function_of_its_generator(
    seed: int, low: float, degrees: float, translate: float, hflip: float
) -> None:
    images = torch.rand(6, 1, 12, 12) * 255
    augment = BatchAugment(Augmentation(scale=(low, 1.0), degrees=degrees, translate=translate, hflip=hflip))
    first = augment(images.clone(), torch.Generator().manual_seed(seed))
    again = augment(images.clone(), torch.Generator().manual_seed(seed))
    assert first.shape == images.shape and torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 255.001  # a resampling, never a new brightness


def test_identity_settings_leave_images_and_a_certain_flip_mirrors_them() -> None:
    images = torch.rand(4, 3, 10, 10)
    generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(BatchAugment(IDENTITY)(images, generator), images, atol=1e-5, rtol=0)
    flipped = BatchAugment(Augmentation(**{**IDENTITY.__dict__, "hflip": 1.0}))(images, generator)
    torch.testing.assert_close(flipped, images.flip(-1), atol=1e-5, rtol=0)


def test_in_memory_batches_augment_the_same_way_on_resume(mnist_dir: Path) -> None:
    """Each batch's draw depends on (seed, epoch, batch number): batch 3 onwards is the same when an
    epoch restarts at batch 3, and another epoch draws differently."""
    splits = load_splits(DataConfig(dataset="mnist", per_class=20, classes=[0, 1], val_split=0.0), seed=0)
    preprocessing = Preprocessing((1, 28, 28), (0.5,), (0.5,))
    chosen = resolve(DataConfig(dataset="mnist"), MnistCNN(), None, on_tensors=True)
    batches = Batches(splits.train, 8, torch.device("cpu"), preprocessing, shuffle=True, augmentation=chosen)
    whole = [inputs for inputs, _ in batches.epoch(1)]
    resumed = [inputs for inputs, _ in batches.epoch(1, start=3)]
    assert all(torch.equal(a, b) for a, b in zip(whole[3:], resumed, strict=True))
    plain = Batches(splits.train, 8, torch.device("cpu"), preprocessing, shuffle=True)
    assert not torch.equal(whole[0], next(plain.epoch(1))[0])  # augmented, same images
    assert not torch.equal(whole[0], next(batches.epoch(2))[0])
