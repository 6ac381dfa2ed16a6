"""The `hf` dataset plugin: Hugging Face datasets from the Hub (tests/hub_server.py), save_to_disk and
parquet folders; columns, labels and splits found and checked; pinned commits, offline re-runs, the cache."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from conftest import RECIPES, TOKEN, assert_user_error, zoo_command
from hub_server import FakeHub
from multilabel_data import SHAPES, shapes_canvas
from PIL import Image

from zoo.config.schema import DataConfig
from zoo.data.batches import Batches
from zoo.data.cache import Layout, decoded
from zoo.data.contract import check_dataset
from zoo.data.hf import hf_dataset
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
    train = hf_dataset(tmp_path, "train", str(folder))
    test = hf_dataset(tmp_path, "test", str(folder))
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


@pytest.mark.parametrize("hostile", ["fifo", "dangling link"])
def test_a_shard_that_is_not_a_regular_file_is_one_line_not_rows_lost(tmp_path: Path, hostile: str) -> None:
    folder = tmp_path / "parquet"
    for name, data in parquet_files(make_dataset()).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    shard = next(folder.rglob("train*.parquet"))
    stray = shard.with_name(shard.stem + "-1" + shard.suffix)
    os.mkfifo(stray) if hostile == "fifo" else stray.symlink_to(tmp_path / "gone.parquet")
    with pytest.raises(ZooError, match=f"{stray.name} is not a regular file .*which datasets would skip"):
        load_splits(DataConfig(dataset="hf", args={"path": str(folder)}, val_split=0.25), seed=0)


def test_classes_per_class_and_named_splits(tmp_path: Path) -> None:
    folder = saved(make_dataset(splits={"fit": 10, "holdout": 3}), tmp_path / "saved")
    args = {"path": str(folder), "train_split": "fit", "test_split": "holdout"}
    config = DataConfig(dataset="hf", args=args, classes=["blue", "red"], per_class=4, val_split=0.2)
    splits = load_splits(config, seed=0)
    assert splits.label_names == ["blue", "red"]
    assert torch.bincount(splits.train.labels).tolist() == [4, 4]
    assert len(splits.val) == 4 and len(splits.test) == 6


def gapped(dataset: datasets.DatasetDict) -> datasets.DatasetDict:
    """Integer labels 0, 2 and 5: classes 0..5, of which 1, 3 and 4 have no rows."""
    return dataset.map(lambda row: {"label": [0, 2, 5][row["label"]]})


def test_integer_labels_that_skip_a_value_name_the_empty_classes_and_the_fix(tmp_path: Path) -> None:
    folder = saved(gapped(make_dataset("int")), tmp_path / "gaps")
    config = DataConfig(dataset="hf", args={"path": str(folder)}, root=str(tmp_path / "elsewhere"))
    with pytest.raises(ZooError) as refused:
        load_splits(config, seed=0)
    assert str(refused.value) == (
        f"dataset 'hf' ({folder}): classes '1', '3', '4' have no training examples; select the classes that do "
        'with data.classes = ["0", "2", "5"]'
    )  # no data.classes named, which the recipe did not set, nor data.root, which the data did not come from
    chosen = load_splits(config.model_copy(update={"classes": ["0", "2", "5"]}), seed=0)  # the fix works
    assert chosen.label_names == ["0", "2", "5"] and len(chosen.test) == 12
    with pytest.raises(ZooError, match=rf"^data.classes: class '3' has no training examples in dataset 'hf' "
                       rf"\({folder}\): remove it from data.classes$"):  # fmt: skip
        load_splits(config.model_copy(update={"classes": [0, 3]}), seed=0)
    one_each = saved(make_dataset(splits={"train": 1, "test": 1}), tmp_path / "one_each")
    with pytest.raises(ZooError, match=r"class 'red' \(1\) are all held out for validation by data.val_split = 0.6"):
        load_splits(DataConfig(dataset="hf", args={"path": str(one_each)}, val_split=0.6), seed=0)


def test_a_validation_split_is_validated_on_instead_of_a_held_out_part(tmp_path: Path) -> None:
    folder = saved(make_dataset(splits={"train": 6, "test": 4, "validation": 2, "dev": 3}), tmp_path / "saved")
    own = load_splits(DataConfig(dataset="hf", args={"path": str(folder)}), seed=0)
    assert (len(own.train), len(own.val), len(own.test)) == (18, 6, 12)  # all of train; validation's 6
    assert own.val.dataset.split == "validation" and own.val.labels.tolist() == [0, 1, 2] * 2
    named = load_splits(DataConfig(dataset="hf", args={"path": str(folder), "val_split": "dev"}), seed=0)
    assert len(named.val) == 9 and named.val.dataset.split == "dev"
    none = load_splits(DataConfig(dataset="hf", args={"path": str(folder)}, val_split=0.0), seed=0)
    assert none.val is None and len(none.train) == 18
    held_out = saved(make_dataset(splits={"train": 10, "test": 4}), tmp_path / "held_out")
    assert len(load_splits(DataConfig(dataset="hf", args={"path": str(held_out)}, val_split=0.2), seed=0).val) == 6
    with pytest.raises(ZooError, match="data.args.val_split = 'valid': .* no such split; its splits: train, test"):
        load_splits(DataConfig(dataset="hf", args={"path": str(held_out), "val_split": "valid"}), seed=0)


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


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written


@pytest.mark.parametrize("cache", ["disk", "none"])
def test_a_local_dataset_trains_through_zoo_run_and_its_path_stays_here(tmp_path: Path, cache: str) -> None:
    """The cached path and the DataLoader path; the shared files (card, config.json) name the folder by its
    last part only, and a local dataset pins nothing."""
    folder = saved(make_dataset(), tmp_path / "my-colours")
    result = zoo_run_hf({"path": str(folder)}, f"output.dir={tmp_path / 'run'}", f"data.cache={cache}")
    assert result.exit_code == 0, result.output + result.stderr
    assert ("image cache: disk" if cache == "disk" else "image cache: none") in result.output
    assert "test: accuracy" in result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["state"] == "finished" and "dataset" not in results
    assert tomllib.loads((tmp_path / "run" / "recipe.toml").read_text())["data"]["args"] == {"path": str(folder)}
    for shared in ("README.md", "config.json"):
        text = (tmp_path / "run" / shared).read_text()
        assert str(tmp_path) not in text and "my-colours" in text, shared
    assert "datasets:" not in (tmp_path / "run" / "README.md").read_text()  # a local folder is no Hub dataset


def zoo_run_hf(args: dict[str, object], *overrides: str) -> object:
    """`zoo run` in process on a tiny timm model reading the `hf` dataset with ``args``."""
    from click.testing import CliRunner

    from zoo.cli import cli

    written = ", ".join(f"{key} = {json.dumps(value)}" for key, value in args.items())
    return CliRunner().invoke(cli, ["run", *TINY_RUN, f"data.args={{{written}}}", *overrides, "--no-progress"])


TINY_RUN = [
    str(RECIPES / "timm_finetune.toml"), "model.backbone=timm/test_resnet", "model.pretrained=false",
    "model.freeze.freeze=[]", "data.dataset=hf", "data.image_size=16", "train.epochs=1", "data.num_workers=0",
    "train.precision=fp32",  # oneDNN's AMX bf16 kernels return NaN gradients now and then for 16-px test_resnet
]  # fmt: skip


def cells(part: datasets.Dataset) -> list[dict]:
    """A split's image cells undecoded: {"bytes", "path"}."""
    return [dict(cell) for cell in part.cast_column("image", datasets.Image(decode=False))["image"]]


def with_images(dataset: datasets.DatasetDict, split: str, images: list[dict]) -> datasets.DatasetDict:
    part = dataset[split].cast_column("image", datasets.Image(decode=False)).remove_columns("image")
    part = part.add_column("image", images, feature=datasets.Image(decode=False)).cast_column("image", datasets.Image())
    return datasets.DatasetDict({**dataset, split: part})


def broken_image(dataset: datasets.DatasetDict, split: str, row: int, kind: str) -> datasets.DatasetDict:
    images = cells(dataset[split])
    if kind == "truncated":  # its header is whole, its pixels are not
        images[row]["bytes"] = images[row]["bytes"][:60]
    else:
        images[row]["bytes"] = b"not an image at all"
    return with_images(dataset, split, images)


def thumbnails(dataset: datasets.DatasetDict) -> datasets.DatasetDict:
    """A second Image column."""
    return datasets.DatasetDict(
        {s: p.add_column("thumb", cells(p), feature=datasets.Image(decode=False)).cast_column("thumb", datasets.Image())
         for s, p in dataset.items()}
    )  # fmt: skip


BAD_INPUT = {
    "two image columns": (
        thumbnails,
        {},
        ["data.args.image_column", "2 Image columns (image, thumb)", "image, label, thumb"],
    ),
    "no image column": (
        lambda d: d.remove_columns("image").map(lambda row: {"pixels": 1}),
        {},
        ["data.args.image_column", "no Image column", "label, pixels"],
    ),
    "an image column that holds numbers": (
        lambda d: d.map(lambda row: {"pixels": 1}),
        {"image_column": "pixels"},
        ["data.args.image_column = 'pixels' holds int64", "image, label, pixels"],
    ),
    "an image column that does not exist": (
        lambda d: d,
        {"image_column": "picture"},
        ["data.args.image_column = 'picture'", "no such column", "image, label"],
    ),
    "a label column of floats": (
        lambda d: d.map(lambda row: {"score": 0.5}),
        {"label_column": "score"},
        ["data.args.label_column = 'score' holds float", "ClassLabel, integers or strings"],
    ),
    "no label column": (
        lambda d: d.rename_column("label", "colour").cast_column("colour", datasets.Value("int64")),
        {},
        ["data.args.label_column", "no ClassLabel column", "image, colour"],
    ),
    "a ClassLabel out of range": (
        lambda d: datasets.DatasetDict(
            {
                **d,
                "test": d["test"]
                .cast_column("label", datasets.Value("int64"))
                .map(lambda row, i: {"label": 7 if i == 5 else row["label"]}, with_indices=True)
                .cast_column("label", datasets.ClassLabel(names=["red", "green", "blue", "a", "b", "c", "d", "e"])),
            }
        ),
        {},
        ["split 'test', row 5: label 7 is outside the 3 classes (red, green, blue)"],
    ),
    "a string label the training split lacks": (
        lambda d: datasets.DatasetDict(
            {
                **d,
                "test": d["test"].map(
                    lambda row, i: {"label": "purple" if i == 2 else row["label"]}, with_indices=True
                ),
            }
        ),
        {"label_column": "label"},
        ["split 'test', row 2: label 'purple' is outside the 3 classes (blue, green, red)"],
    ),
    "a missing split": (
        lambda d: d,
        {"test_split": "validation"},
        ["data.args.test_split = 'validation'", "no such split", "train, test"],
    ),
    "an undecodable image": (
        lambda d: broken_image(d, "train", 4, "garbage"),
        {},
        ["split 'train', row 4 is not a readable image", "UnidentifiedImageError"],
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, case: str) -> None:
    change, args, fragments = BAD_INPUT[case]
    labels = "str" if "string" in case else "class"
    folder = saved(change(make_dataset(labels)), tmp_path / "saved")
    result = zoo_run_hf({"path": str(folder), **args}, f"output.dir={tmp_path / 'run'}")
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_a_truncated_image_is_named_by_its_row_when_decoded(tmp_path: Path) -> None:
    """A PNG whose header is whole but whose pixels are cut short passes the check of headers, and is
    named by its split and row when decoded: by the cache's build (in a worker) as well as by a read."""
    folder = saved(broken_image(make_dataset(), "test", 3, "truncated"), tmp_path / "saved")
    dataset = hf_dataset(tmp_path, "test", str(folder))
    assert isinstance(dataset[2][0], Image.Image)
    with pytest.raises(ZooError, match="split 'test', row 3 is not a readable image"):
        dataset[3]
    layout = Layout(size=16, crop=16, channels=3, interpolation="bilinear", crop_mode="center")
    with pytest.raises(ZooError, match="split 'test', row 3 is not a readable image"):
        decoded(dataset, layout, in_memory=False, workers=1, progress=False)
    assert not list((tmp_path / "cache" / "images").glob("*.u8"))  # nothing half-built left to be read


@pytest.mark.parametrize("problem", ["not a folder or id", "a damaged save", "a single split", "revision on a folder"])
def test_a_path_that_cannot_be_read_is_one_line(tmp_path: Path, problem: str) -> None:
    folder = saved(make_dataset(), tmp_path / "saved")
    args: dict[str, object] = {"path": str(folder)}
    if problem == "not a folder or id":
        args["path"], fragments = str(tmp_path / "nowhere" / "x" / "y"), ["neither a folder here nor a Hub dataset id"]
    elif problem == "a damaged save":
        arrow = next((folder / "train").glob("*.arrow"))
        arrow.write_bytes(arrow.read_bytes()[:100])
        fragments = ["datasets cannot read", str(folder)]
    elif problem == "a single split":
        make_dataset()["train"].save_to_disk(str(tmp_path / "one"))
        args["path"], fragments = str(tmp_path / "one"), ["holds one split written by save_to_disk"]
    else:
        args["revision"], fragments = "main", ["data.args.revision applies to Hub datasets"]
    assert_user_error(zoo_run_hf(args, f"output.dir={tmp_path / 'run'}"), *fragments)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ the Hub (tests/hub_server.py), as `zoo run` reads it


def hub_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return zoo_command("run", *TINY_RUN, *args, "--no-progress", env=env)


@pytest.mark.slow
def test_a_hub_dataset_is_pinned_recorded_and_read_again_after_main_moved_and_offline(
    hub: tuple[FakeHub, dict[str, str]], tmp_path: Path
) -> None:
    server, env = hub
    first = server.add_dataset("zoo-test/colours", parquet_files(make_dataset()))
    run = hub_run(env, "data.args={path = 'zoo-test/colours', revision = 'main'}", f"output.dir={tmp_path / 'a'}")
    assert run.returncode == 0, run.stderr
    assert "data: 21 train, 3 val, 12 test" in run.stdout
    recipe = tomllib.loads((tmp_path / "a" / "recipe.toml").read_text())
    assert recipe["data"]["args"] == {"path": "zoo-test/colours", "revision": first}
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["dataset"] == {"hub": "zoo-test/colours", "revision": first}
    card = (tmp_path / "a" / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["datasets"] == ["zoo-test/colours"] and first in card and str(tmp_path) not in card

    moved = server.add_dataset("zoo-test/colours", parquet_files(make_dataset(splits={"train": 4, "test": 5})))
    again = zoo_command("run", str(tmp_path / "a" / "recipe.toml"), f"output.dir={tmp_path / 'b'}", "--no-progress", env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "data: 21 train, 3 val, 12 test" in again.stdout  # the recorded commit, not main's
    assert f"/resolve/{moved}/" not in " ".join(server.state.requests)  # nothing of main's new commit was read

    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}  # and no Hub to reach either
    cached = hub_run(
        offline, "data.args={path = 'zoo-test/colours', revision = 'main'}", f"output.dir={tmp_path / 'c'}"
    )
    assert cached.returncode == 0, cached.stderr
    assert (
        json.loads((tmp_path / "c" / "results.json").read_text())["dataset"]["revision"] == first
    )  # the cached commit
    missing = hub_run(offline, f"data.args={{path = 'zoo-test/colours', revision = '{moved}'}}", f"output.dir={tmp_path / 'd'}")  # fmt: skip
    assert_user_error(missing, f"dataset zoo-test/colours@{moved} is not in the datasets cache", f"holds commit {first}", "HF_HUB_OFFLINE")  # fmt: skip
    unknown = hub_run(offline, "data.args={path = 'zoo-test/never'}", f"output.dir={tmp_path / 'd'}")
    assert_user_error(unknown, "dataset zoo-test/never is not in", "run once online")
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_hub_mistakes_are_one_line(hub: tuple[FakeHub, dict[str, str]], tmp_path: Path) -> None:
    server, env = hub
    server.add_dataset("zoo-test/colours", parquet_files(make_dataset()))
    server.add_dataset("zoo-test/secret", parquet_files(make_dataset()), private=True)
    anonymous = {key: value for key, value in env.items() if key != "HF_TOKEN"}
    cases = [
        (env, "{path = 'zoo-test/nothing'}", ["dataset zoo-test/nothing", "no such repo, or no access"]),
        (env, "{path = 'zoo-test/colours', revision = 'v9'}", ["dataset zoo-test/colours@v9", "no such revision"]),
        (anonymous, "{path = 'zoo-test/secret'}", ["dataset zoo-test/secret", "no access to it (log in"]),
        (env, "{path = 'zoo-test/colours', name = 'nope'}", ["dataset zoo-test/colours", "nope"]),
    ]
    for environment, args, fragments in cases:
        result = hub_run({**environment, "HF_TOKEN": environment.get("HF_TOKEN", "")}, f"data.args={args}",
                         f"output.dir={tmp_path / 'run'}")  # fmt: skip
        assert_user_error(result, *fragments)
        assert not (tmp_path / "run").exists()
    token = hub_run(env, "data.args={path = 'zoo-test/secret'}", "--dry-run")
    assert token.returncode == 0 and "data: 21 train" in token.stdout, token.stderr  # the token opens it
    assert TOKEN not in token.stdout + token.stderr


@pytest.mark.parametrize(
    ("splits", "key"),
    [
        ({"val_split": "train"}, "data.args.val_split = 'train' is data.args.train_split too"),
        ({"val_split": "test"}, "data.args.val_split = 'test' is data.args.test_split too"),
        ({"test_split": "train"}, "data.args.test_split = 'train' is data.args.train_split too"),
        ({"train_split": "test"}, "data.args.test_split = 'test' is data.args.train_split too"),
    ],
)
def test_one_split_read_for_two_purposes_is_refused(tmp_path: Path, splits: dict[str, str], key: str) -> None:
    """Validating on the training images, choosing the best epoch on the test split, testing on training images."""
    folder = saved(make_dataset(), tmp_path / "saved")
    for split in ("train", "test"):
        with pytest.raises(ZooError, match=re.escape(key)):
            hf_dataset(tmp_path, split, str(folder), **splits)


def test_a_hub_dataset_with_an_empty_class_is_named_at_its_commit(hub: tuple[FakeHub, dict[str, str]]) -> None:
    server, env = hub
    commit = server.add_dataset("zoo-test/gaps", parquet_files(gapped(make_dataset("int"))))
    refused = hub_run(env, "data.args={path = 'zoo-test/gaps'}", "--dry-run")
    assert_user_error(refused, f"dataset 'hf' (zoo-test/gaps@{commit}): classes '1', '3', '4' have no training",
                      'data.classes = ["0", "2", "5"]')  # fmt: skip


def test_an_image_path_that_is_a_fifo_is_one_line(tmp_path: Path) -> None:
    """A column of image paths (image_column names it) is read as images, through the same safe opening
    as image folders: a FIFO would block the read forever, and is named instead."""
    files = []
    for index, colour in enumerate(["red", "green", "blue"] * 2):
        files.append(tmp_path / f"{index}.png")
        files[-1].write_bytes(png(COLOURS[colour], index))
    rows = {"file": [str(path) for path in files], "label": [0, 1, 2] * 2}
    features = datasets.Features(
        {"file": datasets.Value("string"), "label": datasets.ClassLabel(names=["r", "g", "b"])}
    )
    part = datasets.Dataset.from_dict(rows, features=features)
    folder = saved(datasets.DatasetDict(train=part, test=part), tmp_path / "saved")
    dataset = hf_dataset(tmp_path, "test", str(folder), image_column="file")
    assert np.asarray(dataset[2][0])[..., 2].mean() > 150
    files[4].unlink()
    os.mkfifo(files[4])
    with pytest.raises(ZooError, match=f"{files[4]} is not a readable image \\(not a regular file\\)"):
        hf_dataset(tmp_path, "test", str(folder), image_column="file")


@pytest.mark.slow
def test_sigkill_then_resume_over_a_cached_hf_dataset_is_bit_identical(tmp_path: Path) -> None:
    from conftest import kill_then_resume

    folder = saved(make_dataset(splits={"train": 12, "test": 4}), tmp_path / "saved")
    args = [*TINY_RUN, f"data.args={{path = '{folder}'}}", "data.batch_size=8", "train.epochs=2",
            "train.checkpoint_every=3", "train.precision=fp32", "data.cache=disk"]  # fmt: skip
    kill_then_resume(tmp_path, args, "step-00000003")  # 5 steps an epoch: mid-epoch 1


@pytest.mark.slow
def test_two_ranks_train_on_an_hf_dataset(tmp_path: Path) -> None:
    """Rank 0 loads the dataset and sends it to the other (pickled, memory-mapped Arrow), and both
    read the same decoded cache."""
    folder = saved(make_dataset(splits={"train": 12, "test": 4}), tmp_path / "saved")
    result = zoo_command("run", "--nproc", "2", *TINY_RUN, f"data.args={{path = '{folder}'}}", "data.batch_size=8",
                         f"output.dir={tmp_path / 'run'}", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["state"] == "finished" and results["world_size"] == 2 and results["ranks_agree"] is True


def label_set_dataset(canvas: Path) -> datasets.DatasetDict:
    """The shapes canvases of tests/multilabel_data.py as a DatasetDict with a Sequence(ClassLabel) column."""
    import csv

    features = datasets.Features(
        {"image": datasets.Image(), "shapes": datasets.Sequence(datasets.ClassLabel(names=list(SHAPES)))}
    )
    parts = {}
    for split in ("train", "test"):
        rows = list(csv.DictReader((canvas / f"{split}.csv").read_text().splitlines()))
        rows = [row for row in rows if row["labels"]]  # a canvas with no shape has no label set
        parts[split] = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": (canvas / row["image"]).read_bytes(), "path": None} for row in rows],
                "shapes": [[SHAPES.index(shape) for shape in row["labels"].split()] for row in rows],
            },
            features=features,
        )
    return datasets.DatasetDict(parts)


def test_a_sequence_of_class_labels_is_multi_label_data(tmp_path: Path) -> None:
    folder = saved(label_set_dataset(shapes_canvas(tmp_path / "canvas", train=120, test=40)), tmp_path / "sets")
    train = hf_dataset(tmp_path, "train", path=str(folder))
    assert train.classes == list(SHAPES) and all(isinstance(labels, tuple) for labels in train.targets)
    assert check_dataset("hf", train).label_sets
    result = zoo_command(
        "run", str(RECIPES / "mnist.toml"), "data.dataset=hf", f"data.args={{path = '{folder}'}}", "data.image_size=28",
        "train.epochs=2", "data.batch_size=16", "train.precision=fp32", "loss.name=bce", "loss.args={}",
        f"output.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "task: multi_label (dataset 'hf' yields label sets)" in result.stdout
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {"mAP", "mAP_micro"} <= results["test"].keys()
    assert len(json.loads((tmp_path / "run" / "config.json").read_text())["thresholds"]) == len(SHAPES)


def test_an_empty_or_out_of_range_label_set_is_named_by_its_row(tmp_path: Path) -> None:
    sets = label_set_dataset(shapes_canvas(tmp_path / "canvas", train=20, test=10))
    damaged = sets["train"].to_dict()
    damaged["shapes"][3] = []
    sets["train"] = datasets.Dataset.from_dict(damaged, features=sets["train"].features)
    folder = saved(sets, tmp_path / "sets")
    with pytest.raises(ZooError, match=r"split 'train', row 3: labels \[\] must be one or more of the 4 classes"):
        hf_dataset(tmp_path, "train", path=str(folder))
