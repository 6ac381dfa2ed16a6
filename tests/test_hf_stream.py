"""The `hf` dataset streamed (data.args.streaming = true): the training split read in order, each rank
its own share, its position checkpointed per rank; what needs the whole split up front refused."""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path
from unittest.mock import patch

import datasets
import numpy as np
import pytest
import torch
import yaml
from conftest import assert_user_error, kill_then_resume, zoo_command
from hub_server import FakeHub
from test_hf_dataset import COLOURS, TINY_RUN, make_dataset, png

from zoo.config.schema import DataConfig
from zoo.data import hf_source
from zoo.data.hf import HuggingFaceStream, hf_dataset
from zoo.data.preprocessing import Preprocessing
from zoo.data.splits import Splits, class_weights, load_splits
from zoo.data.stream_batches import StreamBatches
from zoo.data.streams import StreamSplit
from zoo.errors import ZooError
from zoo.parallel import distributed

PREPROCESSING = Preprocessing((3, 8, 8), (0.5,) * 3, (0.25,) * 3, "bilinear", 1.0, "center")
STREAM_RUN = [*TINY_RUN, "data.val_split=0", "train.precision=fp32"]


def parquet_files(dataset: datasets.DatasetDict, train_shards: int = 2) -> dict[str, bytes]:
    """``dataset`` as a Hub repo holds it: parquet files under data/, the training split in ``train_shards``
    (shards to stream)."""
    files = {}
    for split, part in dataset.items():
        shards = train_shards if split == "train" else 1
        for index in range(shards):
            buffer = io.BytesIO()
            part.shard(shards, index, contiguous=True).to_parquet(buffer)
            files[f"data/{split}-{index:05d}-of-{shards:05d}.parquet"] = buffer.getvalue()
    return files


def parquet_folder(folder: Path, dataset: datasets.DatasetDict, train_shards: int = 2) -> Path:
    for name, data in parquet_files(dataset, train_shards).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def stream_of(folder: Path, **args: object) -> HuggingFaceStream:
    stream = hf_dataset(folder, "train", str(folder), streaming=True, **args)
    assert isinstance(stream, HuggingFaceStream)
    return stream


def noisy(image: object) -> torch.Tensor:
    """A transform that draws from the global RNG, as random augmentation does: seeded per sample."""
    pixels = torch.as_tensor(np.array(image), dtype=torch.float32).permute(2, 0, 1)[:, :8, :8]
    return pixels + torch.rand(())


def stream_batches(stream: HuggingFaceStream, per_epoch: int, workers: int = 0) -> StreamBatches:
    split = StreamSplit(stream, torch.arange(len(stream.classes)))
    split.transform = noisy
    return StreamBatches(split, per_epoch, 4, torch.device("cpu"), PREPROCESSING, seed=3, num_workers=workers)


def stored_images(batches: StreamBatches, count: int) -> list[bytes]:
    """The images of the next ``count`` rows of ``batches``'s share, as stored."""
    keys = batches._keys(epoch=1, first=0, count=count)
    return [row[0]["bytes"] for row, _ in keys]


# ------------------------------------------------------------------ the stream, in process


@pytest.mark.parametrize("labels", ["class", "int", "str"])
def test_a_stream_gives_its_rows_in_order_with_the_labels_of_the_whole_path(tmp_path: Path, labels: str) -> None:
    dataset = make_dataset(labels, names=["red", "blue", "green"], splits={"train": 4, "test": 2})
    stream = stream_of(parquet_folder(tmp_path / "pq", dataset))
    expected = {"class": ["red", "blue", "green"], "int": ["0", "1", "2"], "str": ["blue", "green", "red"]}[labels]
    assert stream.classes == expected  # a ClassLabel's names; else from the test split, read whole
    split = StreamSplit(stream, torch.arange(3))
    rows = list(split.rows(stream.shard(0, 1), 0, 0, 1))
    assert [number for _, number in rows] == list(range(12))
    names = ["red", "blue", "green"]  # make_dataset's rows cycle through them
    for (stored, label, where), number in rows:
        colour = names[number % 3]
        assert stream.classes[label] == (str(names.index(colour)) if labels == "int" else colour)
        assert where.endswith(f"split 'train', row {number}")
        image, same = split[stored, label, where]
        assert same == label and np.asarray(image)[..., list(COLOURS).index(colour)].mean() > 150


@pytest.mark.parametrize("train_shards", [2, 3])
def test_two_ranks_read_disjoint_shares_that_cover_the_split(tmp_path: Path, train_shards: int) -> None:
    """Two shards: one each; three: every rank reads all and keeps every other row (``split_dataset_by_node``)."""
    stream = stream_of(parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 6, "test": 2}), train_shards))
    seen = []
    for rank in (0, 1):
        with patch.object(distributed, "rank", lambda r=rank: r), patch.object(distributed, "world_size", lambda: 2):
            seen.append(stored_images(stream_batches(stream, per_epoch=1), 9))  # one share: 18 rows / 2
    everything = [cell["bytes"] for cell in make_dataset(splits={"train": 6, "test": 2})["train"].cast_column(
        "image", datasets.Image(decode=False))["image"]]  # fmt: skip
    assert len(set(everything)) == 18  # every image differs: a row is known by its bytes
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(everything)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_resumed_from_their_state_go_on_exactly(tmp_path: Path, workers: int) -> None:
    """Past the end of the share (12 rows, 4 a batch, 5 batches an epoch), and with DataLoader workers
    sent ahead: the state is where the share was after the batches the trainer took."""
    stream = stream_of(parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 4, "test": 2})))
    whole = stream_batches(stream, per_epoch=5, workers=workers)
    epochs = [list(whole.epoch(1)), list(whole.epoch(2))]
    killed = stream_batches(stream, per_epoch=5, workers=workers)
    taken = []
    for batch in killed.epoch(1):
        taken.append(batch)
        if len(taken) == 2:
            break
    state = json.loads(json.dumps(killed.state()))  # as a checkpoint holds it
    resumed = stream_batches(stream, per_epoch=5, workers=workers)
    resumed.load_state(state)
    rest = [*list(resumed.epoch(1, start=2)), *list(resumed.epoch(2))]
    for (inputs, labels), (again, labels_again) in zip(epochs[0] + epochs[1], taken + rest, strict=True):
        assert torch.equal(inputs, again) and torch.equal(labels, labels_again)
    assert not torch.equal(epochs[0][0][0], epochs[0][3][0])  # the 4th batch reads the first rows again, drawn anew
    assert torch.equal(epochs[0][0][1], epochs[0][3][1])


@pytest.mark.parametrize("damage", ["junk", "a list", "no shard state"])
def test_a_damaged_or_foreign_stream_position_does_not_fit(tmp_path: Path, damage: str) -> None:
    """Refused when the checkpoint is read (one line there), never a traceback or a silent restart mid-run."""
    stream = stream_of(parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 4, "test": 2})))
    batches = stream_batches(stream, per_epoch=5)
    next(iter(batches.epoch(1)))
    state = json.loads(json.dumps(batches.state()))
    stream_batches(stream, per_epoch=5).load_state(state)  # as saved, it fits
    state["stream"]["shard"] = (
        {"junk": {"examples_iterable": 1}} if damage == "junk" else [1, 2] if damage == "a list" else None
    )
    with pytest.raises(ValueError, match="not one of this dataset's shards"):
        stream_batches(stream, per_epoch=5).load_state(state)


@pytest.mark.parametrize("change", ["a shard added", "a shard rewritten", "a shard removed"])
def test_a_local_stream_whose_files_changed_does_not_resume(tmp_path: Path, change: str) -> None:
    """A saved position names a shard by number: over other files it would name other rows, without a word."""
    folder = parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 4, "test": 2}))
    batches = stream_batches(stream_of(folder), per_epoch=5)
    next(iter(batches.epoch(1)))
    state = json.loads(json.dumps(batches.state()))
    stream_batches(stream_of(folder), per_epoch=5).load_state(state)  # the same files: it resumes
    first, second = sorted((folder / "data").glob("train-*"))
    if change == "a shard added":
        (folder / "data" / "train-00002-of-00002.parquet").write_bytes(first.read_bytes())
    elif change == "a shard rewritten":
        other = parquet_files(make_dataset(splits={"train": 6, "test": 2}))
        first.write_bytes(other[f"data/{first.name}"])
    else:
        second.unlink()
    hf_source.load.cache_clear()  # as a resume, in a new process, reads the folder again
    with pytest.raises(ZooError, match="the stream's files changed since this checkpoint"):
        stream_batches(stream_of(folder), per_epoch=5).load_state(state)


def test_a_local_stream_resumes_when_only_a_split_read_whole_changed(tmp_path: Path) -> None:
    """The saved position indexes the training split's files: a test split that gained rows is read anew."""
    folder = parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 4, "test": 2}))
    batches = stream_batches(stream_of(folder), per_epoch=5)
    next(iter(batches.epoch(1)))
    state = json.loads(json.dumps(batches.state()))
    (test_file,) = (folder / "data").glob("test-*")
    test_file.write_bytes(parquet_files(make_dataset(splits={"train": 4, "test": 3}))[f"data/{test_file.name}"])
    hf_source.load.cache_clear()
    stream_batches(stream_of(folder), per_epoch=5).load_state(state)
    assert len(json.dumps(state)) < 2000  # a digest of the files, not their list


@pytest.mark.parametrize("workers", [0, 1])
def test_an_undecodable_image_names_the_split_and_row(tmp_path: Path, workers: int) -> None:
    dataset = make_dataset(splits={"train": 4, "test": 2})
    rows = dataset["train"].cast_column("image", datasets.Image(decode=False)).to_dict()
    rows["image"][6] = {"bytes": b"not a picture", "path": None}
    features = datasets.Features({"image": datasets.Image(), "label": dataset["train"].features["label"]})
    dataset["train"] = datasets.Dataset.from_dict(rows, features=features)
    batches = stream_batches(stream_of(parquet_folder(tmp_path / "pq", dataset)), per_epoch=3, workers=workers)
    with pytest.raises(ZooError, match=r"split 'train', row 6 is not a readable image") as raised:
        list(batches.epoch(1))
    assert "\n" not in str(raised.value)


def test_a_shard_cut_short_is_one_line_naming_the_split(tmp_path: Path) -> None:
    """Read as the stream reaches it: the first shard trains, the second (cut short) stops the run in one line."""
    folder = parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 4, "test": 2}))
    second = folder / "data" / "train-00001-of-00002.parquet"
    second.write_bytes(second.read_bytes()[:-40])
    batches = stream_batches(stream_of(folder), per_epoch=3)
    taken = []
    with pytest.raises(
        ZooError, match=r"split 'train': datasets cannot read it \(ArrowInvalid: .*[Pp]arquet"
    ) as raised:
        for batch in batches.epoch(1):
            taken.append(batch)
    assert len(taken) == 1 and "\n" not in str(raised.value)  # 6 rows in the first shard: one batch of 4


def test_a_label_outside_the_test_splits_classes_names_its_row(tmp_path: Path) -> None:
    """Integer labels of a stream are numbered from its test split (the training split is never read whole)."""
    dataset = make_dataset("int", splits={"train": 4, "test": 2})
    rows = dataset["train"].to_dict()
    rows["label"][5] = 7
    dataset["train"] = datasets.Dataset.from_dict(rows, features=dataset["train"].features)
    batches = stream_batches(stream_of(parquet_folder(tmp_path / "pq", dataset)), per_epoch=3)
    with pytest.raises(ZooError, match=r"split 'train', row 5: label 7 is outside the 3 classes \(0, 1, 2\)"):
        list(batches.epoch(1))


def test_a_row_without_a_label_is_named_and_label_sets_are_not_streamed(tmp_path: Path) -> None:
    dataset = make_dataset(splits={"train": 4, "test": 2})
    rows = dataset["train"].to_dict()
    rows["label"][4] = None
    dataset["train"] = datasets.Dataset.from_dict(rows, features=dataset["train"].features)
    batches = stream_batches(stream_of(parquet_folder(tmp_path / "pq", dataset)), per_epoch=3)
    with pytest.raises(ZooError, match=r"split 'train', row 4: no label in column 'label'"):
        list(batches.epoch(1))
    features = datasets.Features(
        {"image": datasets.Image(), "tags": datasets.Sequence(datasets.ClassLabel(names=["a", "b"]))}
    )
    part = datasets.Dataset.from_dict({"image": [{"bytes": png(COLOURS["red"], 0), "path": None}], "tags": [[0, 1]]},
                                      features=features)  # fmt: skip
    folder = parquet_folder(tmp_path / "sets", datasets.DatasetDict(train=part, test=part), train_shards=1)
    with pytest.raises(ZooError, match="column 'tags' holds label sets"):
        stream_of(folder)


def test_data_classes_select_rows_of_a_stream(tmp_path: Path) -> None:
    folder = parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 4, "test": 2}))
    config = DataConfig(dataset="hf", args={"path": str(folder), "streaming": True}, classes=["blue", "red"],
                        val_split=0.0)  # fmt: skip
    splits = load_splits(config, seed=0)
    assert splits.streaming and splits.label_names == ["blue", "red"] and splits.images
    assert len(splits.test) == 4 and sorted(splits.test.labels.tolist()) == [0, 0, 1, 1]
    rows = list(splits.train.rows(splits.train.dataset.shard(0, 1), 0, 0, 1))
    assert [number for _, number in rows] == [0, 2, 3, 5, 6, 8, 9, 11]  # green (rows 1, 4, ...) is skipped
    assert [label for (_, label, _), _ in rows] == [1, 0] * 4  # red, blue: renumbered
    assert class_weights([1.0, 2.0], splits) == [1.0, 2.0]
    with pytest.raises(ZooError, match='class_weights = "balanced" counts'):
        class_weights("balanced", splits)


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"per_class": 2, "val_split": 0.0}, "data.per_class counts each class's images"),
        ({"sampler": "balanced", "val_split": 0.0}, 'data.sampler = "balanced"'),
        ({"cache": "disk", "val_split": 0.0}, "data.cache decodes every image up front"),
        ({"val_split": 0.2}, "set data.val_split = 0, or name a validation split"),
    ],
)
def test_what_needs_the_whole_split_is_refused_with_a_stream(tmp_path: Path, setting: dict, fragment: str) -> None:
    folder = parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 2, "test": 1}))
    with pytest.raises(ZooError, match="data.args.streaming") as raised:
        load_splits(DataConfig(dataset="hf", args={"path": str(folder), "streaming": True}, **setting), seed=0)
    assert fragment in str(raised.value)


def test_a_validation_split_of_a_stream_is_read_whole(tmp_path: Path) -> None:
    dataset = make_dataset(splits={"train": 4, "test": 2, "validation": 3})
    folder = parquet_folder(tmp_path / "pq", dataset)
    splits = load_splits(DataConfig(dataset="hf", args={"path": str(folder), "streaming": True}), seed=0)
    assert isinstance(splits, Splits) and len(splits.val) == 9 and len(splits.test) == 6


# ------------------------------------------------------------------ `zoo run`


@pytest.mark.parametrize(
    ("args", "env", "fragments"),
    [
        ([], {}, ["a stream has no length", "set train.max_steps"]),
        (["train.max_steps=3", "train.epochs=5"], {}, ["train.max_steps = 3 makes fewer than train.epochs = 5",
                                                       "a multiple of 5"]),
        (["train.max_steps=7", "train.epochs=5"], {}, ["epochs of 2 steps"]),  # 2, 2, 2, 1: four epochs
        (["train.max_steps=2", "loss.class_weights=balanced"], {}, ['loss.class_weights = "balanced"', "list one weight per class"]),
        (["train.max_steps=2", "data.args={path = 'zoo-test/colours', streaming = true}"], {"HF_HUB_OFFLINE": "1"},
         ["dataset zoo-test/colours", "HF_HUB_OFFLINE is set", "remove data.args.streaming"]),
    ],
)  # fmt: skip
def test_stream_mistakes_are_one_line_and_write_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], fragments: list[str]
) -> None:
    folder = parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 2, "test": 1}))
    result = zoo_command("run", *STREAM_RUN, f"data.args={{path = '{folder}', streaming = true}}",
                         *args, f"output.dir={tmp_path / 'run'}", "--no-progress", env=env)  # fmt: skip
    assert_user_error(result, *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_streamed_hub_dataset_trains_and_records_its_commit(
    hub: tuple[FakeHub, dict[str, str]], tmp_path: Path
) -> None:
    server, env = hub
    dataset = make_dataset(splits={"train": 8, "test": 4, "validation": 2})
    commit = server.add_dataset("zoo-test/colours", parquet_files(dataset))
    run = zoo_command("run", *STREAM_RUN, "data.args={path = 'zoo-test/colours', streaming = true}",
                      "data.val_split=0.1", "train.max_steps=4", "train.epochs=2", "data.batch_size=8",
                      f"output.dir={tmp_path / 'a'}", "--no-progress", env=env)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "data: streamed train, 6 val, 12 test images" in run.stdout  # the dataset's validation split
    epochs = [line for line in run.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("val acc" in line for line in epochs)  # 4 steps cut into 2 epochs
    recipe = tomllib.loads((tmp_path / "a" / "recipe.toml").read_text())
    assert recipe["data"]["args"] == {"path": "zoo-test/colours", "streaming": True, "revision": commit}
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["state"] == "finished" and results["dataset"] == {"hub": "zoo-test/colours", "revision": commit}
    front = yaml.safe_load((tmp_path / "a" / "README.md").read_text().split("---\n")[1])
    assert front["datasets"] == ["zoo-test/colours"]
    checkpoint = json.loads(next((tmp_path / "a" / "checkpoints").glob("*/state.json")).read_text())
    assert checkpoint["stream"]["row"] > 0  # where the stream was, saved with the run
    refused = zoo_command("eval", str(tmp_path / "a"), "--split", "train", env=env)
    assert_user_error(refused, "trained on a stream", "--split test")


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_then_resume_of_a_stream_is_bit_identical(tmp_path: Path, nproc: int) -> None:
    """Mid-epoch, with DataLoader workers (one process) and with two ranks, each with its own share."""
    folder = parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 6, "test": 2}))
    args = [*STREAM_RUN, f"data.args={{path = '{folder}', streaming = true}}", "data.batch_size=4",
            "train.max_steps=8", "train.epochs=2", "train.checkpoint_every=3",
            f"data.num_workers={2 if nproc == 1 else 0}"]  # fmt: skip
    kill_then_resume(tmp_path, args, "step-00000003", nproc=nproc)  # 4 steps an epoch: mid-epoch 1


SEEN_MODULE = {
    "seen_plugin.py": """
    import os

    import torch
    from torch import nn

    class Seen(nn.Module):
        '''Pools its input; notes a fingerprint of every image it trains on, in a file per rank.'''

        num_features = 4

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            if self.training:
                with open(f"{os.environ['ZOO_TEST_SEEN']}.{os.environ.get('RANK', '0')}", "a") as log:
                    log.writelines(f"{float(image.double().sum()):.6f}\\n" for image in x.detach())
            return self.fc(x.mean((2, 3)))

    def seen():
        return Seen()
    """
}


@pytest.mark.slow
def test_two_ranks_of_zoo_run_train_on_disjoint_rows_that_cover_the_split(tmp_path: Path) -> None:
    """End to end under `--nproc 2`: a model that notes what each rank trains on; 18 rows in 2 shards, 3 steps
    of 3 images a rank: each rank its own 9 rows, none twice, none shared."""
    from conftest import make_distribution

    site = make_distribution(tmp_path / "site", "seen", {"zoo.models": {"seen": "seen_plugin:seen"}}, SEEN_MODULE)
    folder = parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 6, "test": 2}))
    seen = tmp_path / "seen"
    run = zoo_command("run", "--nproc", "2", *STREAM_RUN, "model.backbone=seen", "data.augment=none",
                      "train.layer_decay=1.0",  # timm_finetune.toml's 0.7: seen has no layers to decay over
                      f"data.args={{path = '{folder}', streaming = true}}", "data.batch_size=3", "train.max_steps=3",
                      f"output.dir={tmp_path / 'run'}", "--no-progress",
                      env={"PYTHONPATH": str(site), "ZOO_TEST_SEEN": str(seen)})  # fmt: skip
    assert run.returncode == 0, run.stderr
    ranks = [seen.with_name(f"seen.{rank}").read_text().split() for rank in (0, 1)]
    assert [len(rows) for rows in ranks] == [9, 9] and [len(set(rows)) for rows in ranks] == [9, 9]
    assert not set(ranks[0]) & set(ranks[1])


def test_a_stream_run_resumed_with_other_epochs_or_steps_is_one_line(tmp_path: Path) -> None:
    """Its epochs are cut from train.max_steps: a resume that changed either would stop short of both."""
    folder = parquet_folder(tmp_path / "pq", make_dataset(splits={"train": 6, "test": 2}))
    args = [*STREAM_RUN, f"data.args={{path = '{folder}', streaming = true}}", "data.batch_size=4",
            "train.max_steps=2", f"output.dir={tmp_path / 'run'}", "--no-progress"]  # fmt: skip
    assert zoo_command("run", *args).returncode == 0
    for longer in ("train.max_steps=4", "train.epochs=2"):
        refused = zoo_command("run", *args, longer, "--resume", str(tmp_path / "run"))
        assert_user_error(refused, "reads a stream", "neither may change on resume")
