"""The `hf` dataset plugin: Hugging Face datasets from the Hub (tests/hub_server.py), save_to_disk and
parquet folders; columns, labels and splits found and checked; pinned commits, offline re-runs, the cache."""

from __future__ import annotations

import io
import json
import os
import tomllib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import RECIPES, assert_user_error, zoo_command
from PIL import Image

from zoo.config.schema import DataConfig
from zoo.data.batches import Batches
from zoo.data.cache import Layout, decoded
from zoo.data.contract import check_dataset
from zoo.data.hf import HuggingFaceDataset
from zoo.data.preprocessing import Preprocessing
from zoo.data.splits import load_splits
from zoo.data.transforms import attach_transforms
from zoo.errors import ZooError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def png(colour: tuple[int, int, int], seed: int, size: tuple[int, int] = (20, 16)) -> bytes:
    """A picture of ``colour`` with some noise, PNG-encoded: classes that a small model tells apart."""
    noise = np.random.default_rng(seed).integers(-25, 25, (size[1], size[0], 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def split_rows(count: int, offset: int, labels: str, names: list[str]) -> dict[str, list]:
    """``count`` rows a class: images, and labels as a ClassLabel ("class"), integers ("int") or strings ("str")."""
    rows: dict[str, list] = {"image": [], "label": []}
    for index in range(count * len(names)):
        name = names[index % len(names)]
        rows["image"].append({"bytes": png(COLOURS[name], offset + index), "path": None})
        rows["label"].append(name if labels == "str" else names.index(name))
    return rows


def make_dataset(
    labels: str = "class", names: list[str] | None = None, splits: dict[str, int] | None = None
) -> datasets.DatasetDict:
    names = names or ["red", "green", "blue"]
    label = {
        "class": datasets.ClassLabel(names=names),
        "int": datasets.Value("int64"),
        "str": datasets.Value("string"),
    }[labels]
    features = datasets.Features({"image": datasets.Image(), "label": label})
    splits = splits or {"train": 8, "test": 4}
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(split_rows(count, 1000 * number, labels, names), features=features)
            for number, (split, count) in enumerate(splits.items())
        }
    )


def parquet_files(dataset: datasets.DatasetDict) -> dict[str, bytes]:
    """The dataset as a Hub repo holds it: one parquet file per split under data/."""
    files = {}
    for split, part in dataset.items():
        buffer = io.BytesIO()
        part.to_parquet(buffer)
        files[f"data/{split}-00000-of-00001.parquet"] = buffer.getvalue()
    return files


def saved(dataset: datasets.DatasetDict, folder: Path) -> Path:
    dataset.save_to_disk(str(folder))
    return folder


# ------------------------------------------------------------------ the plugin, in process


@pytest.mark.parametrize("labels", ["class", "int", "str"])
def test_a_saved_dataset_gives_pil_images_and_its_labels(tmp_path: Path, labels: str) -> None:
    folder = saved(make_dataset(labels, names=["red", "blue", "green"]), tmp_path / "saved")
    train = HuggingFaceDataset(tmp_path, "train", str(folder))
    test = HuggingFaceDataset(tmp_path, "test", str(folder))
    check_dataset("hf", train)
    expected = {"class": ["red", "blue", "green"], "int": ["0", "1", "2"], "str": ["blue", "green", "red"]}[labels]
    assert train.classes == test.classes == expected
    assert len(train) == 24 and len(test) == 12
    image, label = train[1]
    assert isinstance(image, Image.Image) and image.size == (20, 16)
    assert train.classes[label] == ("blue" if labels != "int" else "1")  # row 1 is blue, whatever the label form
    assert np.asarray(image)[..., 2].mean() > 150  # and the image is blue
    assert train.targets == [train.classes.index(train.classes[t]) for t in train.targets]
    assert train.hub_dataset is None and not hasattr(train, "pinned_args")  # a local folder pins nothing


def test_a_parquet_folder_is_read_through_load_dataset(tmp_path: Path) -> None:
    folder = tmp_path / "parquet"
    for name, data in parquet_files(make_dataset()).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    splits = load_splits(DataConfig(dataset="hf", args={"path": str(folder)}, val_split=0.25), seed=0)
    assert splits.label_names == ["red", "green", "blue"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 12)
    assert splits.images  # PIL images, through transforms


def test_classes_per_class_and_named_splits(tmp_path: Path) -> None:
    folder = saved(make_dataset(splits={"fit": 10, "holdout": 3}), tmp_path / "saved")
    args = {"path": str(folder), "train_split": "fit", "test_split": "holdout"}
    config = DataConfig(dataset="hf", args=args, classes=["blue", "red"], per_class=4, val_split=0.2)
    splits = load_splits(config, seed=0)
    assert splits.label_names == ["blue", "red"]
    assert torch.bincount(splits.train.labels).tolist() == [4, 4]
    assert len(splits.val) == 4 and len(splits.test) == 6


def test_the_cache_equals_the_transform_and_follows_the_data(tmp_path: Path) -> None:
    """Evaluation batches from the decoded cache equal the uncached transform; other data (another
    fingerprint) gets its own cache, the same data reuses it."""
    folder = saved(make_dataset(), tmp_path / "saved")
    config = DataConfig(dataset="hf", args={"path": str(folder)}, val_split=0.0)
    preprocessing = Preprocessing((3, 12, 12), (0.5,) * 3, (0.25,) * 3, "bicubic", 0.875, "center")
    uncached = load_splits(config, seed=0)
    attach_transforms(uncached, preprocessing, None)
    expected = torch.cat([x for x, _ in Batches(uncached.test, 5, torch.device("cpu"), preprocessing).epoch()])
    cached = load_splits(config, seed=0)
    layout = Layout.of(preprocessing)
    cached.test.decoded = decoded(cached.test.dataset, layout, in_memory=False, workers=0, progress=False)
    assert cached.test.decoded.built is not None
    got = torch.cat([x for x, _ in Batches(cached.test, 5, torch.device("cpu"), preprocessing).epoch()])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    again = decoded(load_splits(config, seed=0).test.dataset, layout, in_memory=False, workers=0, progress=False)
    assert again.built is None and again.path == cached.test.decoded.path
    other = saved(make_dataset(splits={"train": 8, "test": 5}), tmp_path / "other")
    changed = load_splits(DataConfig(dataset="hf", args={"path": str(other)}, val_split=0.0), seed=0)
    rebuilt = decoded(changed.test.dataset, layout, in_memory=False, workers=0, progress=False)
    assert rebuilt.path != again.path and len(rebuilt) == 15
