from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import NotInMemory

from zoo.config.schema import DataConfig
from zoo.data.batches import Batches
from zoo.data.preprocessing import Preprocessing
from zoo.data.splits import class_weights, load_splits, select_classes
from zoo.errors import ZooError

MNIST_INPUT = Preprocessing((1, 28, 28), (0.1307,), (0.3081,))
UNNORMALISED = Preprocessing((1, 28, 28), (0.0,), (1.0,))


def test_select_classes_by_index_or_name_in_the_given_order() -> None:
    names = ["cat", "dog", "eel"]
    assert select_classes(None, names) == [0, 1, 2]
    assert select_classes([2, "cat"], names) == [2, 0]
    with pytest.raises(ZooError, match="did you mean 'dog'"):
        select_classes(["dgo"], names)
    with pytest.raises(ZooError, match="listed twice"):
        select_classes([1, "dog"], names)


def test_an_integer_that_is_one_class_s_index_and_another_s_name_is_refused() -> None:
    digits = [str(d) for d in range(10)]
    assert select_classes([7, "2"], digits) == [7, 2]  # index and name agree
    with pytest.raises(ZooError, match="1 is the index of class '2' but the name of class 0: write \"1\""):
        select_classes([1, 2], ["1", "2", "3"])  # folders named 1, 2, 3: the user likely means the names
    with pytest.raises(ZooError, match="7 is no index here but the name of class 1"):
        select_classes([7], ["3", "7", "8"])
    assert select_classes(["1", "2"], ["1", "2", "3"]) == [0, 1]


def test_splits_relabel_stratify_and_take_per_class(mnist_dir: Path) -> None:
    config = DataConfig(dataset="mnist", classes=[7, 2], per_class=30, val_split=0.1)
    splits = load_splits(config, seed=0)
    assert splits.label_names == ["7", "2"]
    assert torch.bincount(splits.train.labels).tolist() == [30, 30]
    val_counts = torch.bincount(splits.val.labels).tolist()
    assert val_counts == [round(6265 * 0.1), round(5958 * 0.1)]  # digit 7 and 2 training counts
    raw = splits.train.dataset.targets
    assert set(raw[splits.train.indices].tolist()) == {7, 2}
    assert not set(splits.train.indices.tolist()) & set(splits.val.indices.tolist())
    assert len(splits.test) == 1028 + 1032
    again = load_splits(config, seed=0)
    assert torch.equal(again.train.indices, splits.train.indices)
    assert not torch.equal(load_splits(config, seed=1).train.indices, splits.train.indices)


def test_a_val_split_that_holds_out_no_image_loads_empty(mnist_dir: Path) -> None:
    # Training refuses it (training.setup); a saved run's splits still load, to evaluate its test split.
    splits = load_splits(DataConfig(dataset="mnist", classes=[7, 2], val_split=0.00005), seed=0)
    assert len(splits.val) == 0 and len(splits.test) == 1028 + 1032


def test_in_memory_batches_equal_the_datasets_own_items(mnist_dir: Path) -> None:
    splits = load_splits(DataConfig(dataset="mnist", classes=[3], per_class=10, val_split=0.0), seed=0)
    batches = Batches(splits.train, 4, torch.device("cpu"), MNIST_INPUT)
    inputs, labels = next(iter(batches.epoch()))
    expected = torch.stack([splits.train[i][0] for i in range(4)])
    assert torch.allclose(inputs, expected, atol=1e-5)
    assert labels.tolist() == [0, 0, 0, 0]
    assert len(batches) == 3


def test_shuffled_order_depends_on_seed_and_epoch_and_covers_everything(mnist_dir: Path) -> None:
    splits = load_splits(DataConfig(dataset="mnist", classes=[0, 1], per_class=8, val_split=0.0), seed=0)

    def order(seed: int, epoch: int) -> list[float]:
        batches = Batches(splits.train, 5, torch.device("cpu"), UNNORMALISED, shuffle=True, seed=seed)
        return [float(x.sum()) for inputs, _ in batches.epoch(epoch) for x in inputs]

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    # Every image in every epoch; 16 images in batches of 5: the last batch filled up to 5 from the start.
    assert set(order(0, 1)) == set(order(0, 2)) and len(set(order(0, 1))) == 16 and len(order(0, 1)) == 20


def test_dataloader_path_for_datasets_not_in_memory(mnist_dir: Path) -> None:
    splits = load_splits(DataConfig(dataset="mnist", classes=[4, 9], per_class=6, val_split=0.0), seed=0)
    memory = Batches(splits.train, 5, torch.device("cpu"), MNIST_INPUT, shuffle=True, seed=3)
    splits.train.dataset = NotInMemory(splits.train.dataset)
    loader = Batches(splits.train, 5, torch.device("cpu"), MNIST_INPUT, shuffle=True, seed=3, num_workers=0)
    assert not loader.in_memory and memory.in_memory
    for (a, la), (b, lb) in zip(memory.epoch(2), loader.epoch(2), strict=True):
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(la, lb)


def test_image_workers_send_uint8_normalised_on_the_device_as_the_float_transform_would(mnist_png: Path) -> None:
    from PIL import Image

    from zoo.data.transforms import attach_transforms, build_transform

    config = DataConfig(dataset="image_folder", root=str(mnist_png), classes=[0, 1], val_split=0.0)
    splits = load_splits(config, seed=0)
    preprocessing = Preprocessing((1, 32, 32), (0.5,), (0.25,), interpolation="bilinear", crop_pct=1.0)
    attach_transforms(splits, preprocessing, None)
    sample, _ = splits.test[0]
    assert sample.dtype == torch.uint8 and sample.shape == (1, 32, 32)  # a quarter of float32's bytes
    batches = Batches(splits.test, 8, torch.device("cpu"), preprocessing, num_workers=1)
    inputs, _ = next(batches.epoch())
    as_predict_reads_them = build_transform(preprocessing)  # the float path: ToTensor, Normalize
    paths = [splits.test.dataset.samples[int(i)][0] for i in splits.test.indices[:8]]
    expected = torch.stack([as_predict_reads_them(Image.open(path)) for path in paths])
    torch.testing.assert_close(inputs, expected, rtol=0, atol=1e-5)
    loader = batches.loader
    assert len(list(batches.epoch())) == 8 and batches.loader is loader  # 60 images; one loader, its workers persist


UNBALANCED = DataConfig(dataset="mnist", classes=[3, 7, 9], per_class=[200, 10, 90], val_split=0.0)


def test_per_class_counts_and_balanced_class_weights(mnist_dir: Path) -> None:
    splits = load_splits(UNBALANCED, seed=0)
    assert torch.bincount(splits.train.labels).tolist() == [200, 10, 90]
    weights = class_weights("balanced", splits)
    assert weights == pytest.approx([300 / (3 * 200), 300 / (3 * 10), 300 / (3 * 90)])
    assert sum(w * n for w, n in zip(weights, [200, 10, 90], strict=True)) == pytest.approx(300)  # averages 1
    assert class_weights([1.0, 2.0, 3.0], splits) == [1.0, 2.0, 3.0]
    with pytest.raises(ZooError, match="lists 2 weights for 3 classes"):
        class_weights([1.0, 2.0], splits)
    with pytest.raises(ZooError, match="lists 2 counts for 3 classes"):
        load_splits(UNBALANCED.model_copy(update={"per_class": [5, 5]}), seed=0)


def test_the_balanced_sampler_draws_classes_equally_in_a_seeded_order(mnist_dir: Path) -> None:
    splits = load_splits(UNBALANCED, seed=0)
    preprocessing = Preprocessing((1, 28, 28), (0.5,), (0.5,))

    def drawn(epoch: int, start: int = 0) -> torch.Tensor:
        batches = Batches(splits.train, 30, torch.device("cpu"), preprocessing, shuffle=True, balanced=True)
        return torch.cat([labels for _, labels in batches.epoch(epoch, start)])

    counts = torch.bincount(torch.cat([drawn(epoch) for epoch in range(1, 11)]), minlength=3)
    assert counts.sum() == 3000 and (counts - 1000).abs().max() < 120  # 1,000 +- 4 sigma each
    assert torch.equal(drawn(1)[60:], drawn(1, start=2)) and not torch.equal(drawn(1), drawn(2))


def test_a_backbone_from_a_run_brings_its_normalisation_to_new_image_data(mnist_png: Path, tmp_path: Path) -> None:
    """A digits backbone trained on MNIST's tensors (mean 0.1307, std 0.3081) meets a PNG folder:
    the folder is normalised as the backbone learned, not with image_folder's mid-grey default."""
    from conftest import write_finished_run

    from zoo.config.schema import ModelConfig
    from zoo.data.transforms import resolve_preprocessing
    from zoo.models.build import build_model

    source = write_finished_run(tmp_path / "source")
    source.write_weights(build_model(ModelConfig(backbone="mnist_cnn"), ["0", "1"])[0].state_dict(), {})
    config = DataConfig(dataset="image_folder", root=str(mnist_png), classes=[5, 6], val_split=0.0)
    splits = load_splits(config, seed=0)
    fine_tuned, _ = build_model(ModelConfig(backbone="mnist_cnn", pretrained=str(source.path)), ["5", "6"])
    inherited = resolve_preprocessing(config, fine_tuned, splits)
    assert (inherited.mean, inherited.std, inherited.input_size) == ((0.1307,), (0.3081,), (1, 28, 28))
    from_scratch = resolve_preprocessing(config, build_model(ModelConfig(backbone="mnist_cnn"), ["5", "6"])[0], splits)
    assert (from_scratch.mean, from_scratch.std) == ((0.5,), (0.5,))
    assert resolve_preprocessing(config.model_copy(update={"mean": [0.2]}), fine_tuned, splits).mean == (0.2,)


def test_augmented_loader_batches_depend_on_seed_epoch_and_position_alone(mnist_png: Path) -> None:
    """timm's random transforms in the DataLoader: the same batches with 0 or 2 workers, from a
    persistent loader's second pass, and from the middle of an epoch (a resumed run); the global RNG
    (dropout, MixUp, checkpointed) is left as it was."""
    from zoo.data.augment import Augmentation
    from zoo.data.transforms import attach_transforms

    config = DataConfig(dataset="image_folder", root=str(mnist_png), classes=[0, 1], per_class=12, val_split=0.0)
    splits = load_splits(config, seed=0)
    preprocessing = Preprocessing((1, 24, 24), (0.5,), (0.25,), interpolation="bilinear", crop_pct=1.0)
    attach_transforms(splits, preprocessing, Augmentation(degrees=10.0, translate=0.1))

    def batches(workers: int) -> Batches:
        return Batches(splits.train, 8, torch.device("cpu"), preprocessing, shuffle=True, seed=5, num_workers=workers)

    rng = torch.random.get_rng_state()
    alone = batches(0)
    first = [inputs for inputs, _ in alone.epoch(2)]
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert len(first) == 3 and not torch.equal(first[0], first[1])
    assert all(torch.equal(a, b) for a, b in zip(first, [inputs for inputs, _ in alone.epoch(2)], strict=True))
    workers = batches(2)
    for _ in range(2):  # the workers persist: their second pass draws as their first did
        assert all(torch.equal(a, b) for a, b in zip(first, [inputs for inputs, _ in workers.epoch(2)], strict=True))
    assert torch.equal(torch.random.get_rng_state(), rng)
    resumed = [inputs for inputs, _ in batches(2).epoch(2, start=1)]
    assert all(torch.equal(a, b) for a, b in zip(first[1:], resumed, strict=True)) and len(resumed) == 2
    assert not torch.equal(first[0], next(batches(0).epoch(3))[0])  # another epoch, other draws


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_grayscale_pngs_read_as_their_eight_bit_versions(
    mnist_png: Path, tmp_path: Path, channels: int
) -> None:
    """MNIST test digits saved as 16-bit PNGs (I;16, 257 * v): the same batches as the 8-bit files,
    through the transform and through the decoded cache, not white wherever a pixel is above 255."""
    import numpy as np
    from PIL import Image

    from zoo.data.cache import Layout, decoded
    from zoo.data.transforms import attach_transforms

    for split, digit in [(split, digit) for split in ("train", "test") for digit in "01"]:
        for source in sorted((mnist_png / split / digit).glob("*.png"))[:10]:
            pixels = np.asarray(Image.open(source))
            for name, saved in (("eight", pixels), ("sixteen", pixels.astype(np.uint16) * 257)):
                (tmp_path / name / split / digit).mkdir(parents=True, exist_ok=True)
                Image.fromarray(saved).save(tmp_path / name / split / digit / source.name)
    assert Image.open(next((tmp_path / "sixteen").rglob("*.png"))).mode == "I;16"
    preprocessing = Preprocessing((channels, 24, 24), (0.5,) * channels, (0.25,) * channels, crop_pct=0.9)
    found = {}
    for name in ("eight", "sixteen"):
        config = DataConfig(dataset="image_folder", root=str(tmp_path / name), val_split=0.0)
        for cached in (False, True):
            splits = load_splits(config, seed=0)
            attach_transforms(splits, preprocessing, None)
            if cached:
                splits.test.decoded = decoded(splits.test.dataset, Layout.of(preprocessing), True, 0, False)
            batches = Batches(splits.test, 8, torch.device("cpu"), preprocessing)
            found[name, cached] = torch.cat([inputs for inputs, _ in batches.epoch()])
    for cached in (False, True):
        assert len(found["eight", cached]) == 20
        torch.testing.assert_close(found["sixteen", cached], found["eight", cached], rtol=0, atol=0)
    assert found["eight", False].unique().numel() > 20  # grey levels, not only black and white


def test_wide_grayscale_modes_scale_to_eight_bits() -> None:
    import numpy as np
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from PIL import Image

    from zoo.data.images import converted

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.integers(0, 255), min_size=4, max_size=4), st.integers(0, 256))
    def scales(values: list[int], low_bits: int) -> None:
        eight = np.array(values, dtype=np.uint8).reshape(2, 2)
        wide = eight.astype(np.int64) * 256 + min(low_bits, 255)  # anything in the low byte: the same 8 bits
        images = [
            Image.fromarray(wide.astype(np.uint16)),
            Image.frombytes("I;16B", (2, 2), wide.astype(">u2").tobytes()),
        ]
        if wide.max() > 255:  # mode I of values up to 255 is 8-bit (the next test)
            images.append(Image.fromarray(wide.astype(np.int32)))
        for image in images:
            assert np.array_equal(np.asarray(converted(image, "L")), eight), image.mode
            assert np.array_equal(np.asarray(converted(image, "RGB")), np.repeat(eight[..., None], 3, 2)), image.mode

    scales()


def test_mode_i_holding_eight_bit_values_keeps_them() -> None:
    """Image.fromarray of int32 pixels 0..255 is mode I: its values are 8-bit, not the top byte of 16."""
    import numpy as np
    from PIL import Image

    from zoo.data.images import converted

    pixels = np.arange(256, dtype=np.int32).reshape(16, 16)
    image = Image.fromarray(pixels)
    assert image.mode == "I"
    assert np.array_equal(np.asarray(converted(image, "L")), pixels.astype(np.uint8))
    assert np.array_equal(np.asarray(converted(image, "RGB")), np.repeat(pixels.astype(np.uint8)[..., None], 3, 2))
    wide = Image.fromarray(pixels * 257)  # 16-bit values in mode I: scaled as ever
    assert np.array_equal(np.asarray(converted(wide, "L")), pixels.astype(np.uint8))
    small = Image.fromarray(pixels.astype(np.uint16))  # I;16 is 16-bit whatever its values: 0..255 is near black
    assert small.mode == "I;16" and not np.asarray(converted(small, "L")).any()
