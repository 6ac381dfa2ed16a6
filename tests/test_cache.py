"""The decoded image cache: what it holds, when it is rebuilt, and that nothing half-built is read."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from zoo.config.schema import DataConfig
from zoo.data import cache
from zoo.data.batches import Batches
from zoo.data.cache import DecodedImages, Layout, ahead, choose, decoded
from zoo.data.image_folder import ImageFolder
from zoo.data.preprocessing import Preprocessing
from zoo.data.splits import load_splits
from zoo.data.transforms import attach_transforms
from zoo.errors import ZooError


def photo_folder(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """An image folder of random RGB pictures of the given (width, height), in two classes, the
    same pictures in train/ and test/."""
    generator = np.random.default_rng(0)
    for index, (width, height) in enumerate(sizes):
        pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for split in ("train", "test"):
            folder = root / split / f"class{index % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


SIZES = [(40, 30), (30, 41), (37, 37), (64, 21), (33, 50), (45, 45), (29, 36), (50, 50)]


@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_cached_evaluation_batches_equal_the_uncached_transform(tmp_path: Path, crop_mode: str) -> None:
    """Odd sizes, both aspect ratios, a crop_pct below 1: the evaluation crop cut from the cache is
    timm's evaluation transform, pixel for pixel."""
    root = photo_folder(tmp_path / "photos", SIZES)
    config = DataConfig(dataset="image_folder", root=str(root), val_split=0.0)
    preprocessing = Preprocessing((3, 24, 24), (0.5,) * 3, (0.25,) * 3, "bicubic", 0.875, crop_mode)
    uncached = load_splits(config, seed=0)
    attach_transforms(uncached, preprocessing, None)
    expected = torch.cat(
        [inputs for inputs, _ in Batches(uncached.test, 3, torch.device("cpu"), preprocessing).epoch()]
    )
    cached = load_splits(config, seed=0)
    layout = Layout.of(preprocessing)
    cached.test.decoded = decoded(cached.test.dataset, layout, in_memory=False, workers=0, progress=False)
    assert layout.size == 27 and cached.test.decoded.shape == (3, 27, 27)  # floor(24 / 0.875)
    batches = Batches(cached.test, 3, torch.device("cpu"), preprocessing)
    got = torch.cat([inputs for inputs, _ in batches.epoch()])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_cache_is_reused_until_a_file_changes_appears_or_goes(tmp_path: Path) -> None:
    root = photo_folder(tmp_path / "photos", SIZES)
    layout = Layout(size=16, crop=16, channels=3, interpolation="bilinear", crop_mode="center")

    def build() -> DecodedImages:
        return decoded(ImageFolder(root, "train"), layout, in_memory=True, workers=0, progress=False)

    first = build()
    assert first.built is not None and len(first) == len(SIZES)
    again = build()
    assert again.built is None and again.path == first.path and torch.equal(again.memory, first.memory)
    picture = root / "train" / "class0" / "0.png"
    Image.fromarray(np.full((30, 40, 3), 7, np.uint8)).save(picture)  # changed
    changed = build()
    assert changed.built is not None and changed.path != first.path
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "train" / "class1" / "extra.png")  # added
    added = build()
    assert added.path not in (first.path, changed.path) and len(added) == len(SIZES) + 1
    (root / "train" / "class1" / "extra.png").unlink()  # removed again: the content of "changed"
    assert build().path == changed.path


def test_a_build_that_failed_or_was_killed_is_never_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = photo_folder(tmp_path / "photos", SIZES)
    layout = Layout(size=16, crop=16, channels=3, interpolation="bilinear", crop_mode="center")
    folder = Path(os.environ["ZOO_CACHE_DIR"]) / "images"

    def failing(self: object, index: int) -> torch.Tensor:
        raise ZooError("the disk vanished")

    with monkeypatch.context() as patch:
        patch.setattr(cache._Decoding, "__getitem__", failing)
        with pytest.raises(ZooError, match="the disk vanished"):
            decoded(ImageFolder(root, "train"), layout, in_memory=False, workers=0, progress=False)
    assert not list(folder.glob("*.json")) and not list(folder.glob("*.u8")) and not list(folder.glob(".*.tmp"))

    # What a SIGKILL leaves: a staging file, or the data renamed into place without its description.
    good = decoded(ImageFolder(root, "train"), layout, in_memory=True, workers=0, progress=False)
    expected = good.memory.clone()
    good.path.with_suffix(".json").unlink()
    good.path.write_bytes(b"\0" * 100)
    (folder / f".{good.path.name}.999.tmp").write_bytes(b"half")
    rebuilt = decoded(ImageFolder(root, "train"), layout, in_memory=True, workers=0, progress=False)
    assert rebuilt.built is not None and torch.equal(rebuilt.memory, expected)
    assert not list(folder.glob(".*.tmp"))


def test_an_image_rewritten_with_its_size_and_modification_time_kept_is_decoded_again(tmp_path: Path) -> None:
    """What `cp -p`, `rsync -t` and tar do: other pixels, the same size and modification time."""
    picture = tmp_path / "photos" / "train" / "class0" / "0.png"
    picture.parent.mkdir(parents=True)

    def write(path: Path, grey: int) -> None:
        Image.fromarray(np.full((16, 16, 3), grey, np.uint8)).save(path, compress_level=0)  # stored: one size

    def build() -> DecodedImages:
        folder = ImageFolder(tmp_path / "photos", "train")
        return decoded(folder, layout, in_memory=True, workers=0, progress=False)

    layout = Layout(size=16, crop=16, channels=3, interpolation="bilinear", crop_mode="center")
    write(picture, 10)
    first, before = build(), picture.stat()
    write(picture, 200)  # in place: the same inode
    os.utime(picture, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (picture.stat().st_size, picture.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    in_place = build()
    assert in_place.path != first.path and int(in_place.memory.float().mean()) == 200
    write(tmp_path / "copy.png", 90)  # a copy renamed over it: another inode
    os.utime(tmp_path / "copy.png", ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(tmp_path / "copy.png", picture)
    assert (picture.stat().st_size, picture.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    replaced = build()
    assert replaced.path not in (first.path, in_place.path) and int(replaced.memory.float().mean()) == 90


def test_a_moved_folder_keeps_its_cache_and_content_verification_keeps_a_copied_one(tmp_path: Path) -> None:
    layout = Layout(size=16, crop=16, channels=3, interpolation="bilinear", crop_mode="center")

    def build(root: Path, verify: str) -> DecodedImages:
        return decoded(ImageFolder(root, "train"), layout, in_memory=True, workers=0, progress=False, verify=verify)

    root = photo_folder(tmp_path / "photos", SIZES)
    by_stat, by_content = build(root, "stat"), build(root, "content")
    assert by_content.path != by_stat.path and torch.equal(by_content.memory, by_stat.memory)
    moved = tmp_path / "elsewhere" / "photos"
    moved.parent.mkdir()
    root.rename(moved)  # the same files (inodes), under another path
    assert build(moved, "stat").built is None and build(moved, "content").built is None
    copied = shutil.copytree(moved, tmp_path / "copy")  # new inodes and change times, the same bytes
    assert build(copied, "content").built is None and build(copied, "stat").built is not None
    picture = copied / "train" / "class0" / "0.png"
    pixels = np.array(Image.open(picture))
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(picture)
    assert build(copied, "content").built is not None


def test_the_recipe_key_cache_verify_names_the_cache_by_content(tmp_path: Path) -> None:
    from zoo.data.transforms import attach_cache

    root = photo_folder(tmp_path / "photos", SIZES)
    preprocessing = Preprocessing((3, 16, 16), (0.5,) * 3, (0.5,) * 3, "bilinear", 1.0)
    layout = Layout.of(preprocessing)
    paths = {}
    for verify in ("stat", "content"):
        config = DataConfig(dataset="image_folder", root=str(root), val_split=0.0, cache_verify=verify)
        splits = load_splits(config, seed=0)
        attach_cache(splits, preprocessing, config, None, workers=0, progress=False)
        expected = decoded(splits.train.dataset, layout, False, workers=0, progress=False, verify=verify)
        paths[verify] = splits.train.decoded.path
        assert paths[verify] == expected.path
    assert paths["stat"] != paths["content"]
    with pytest.raises(ValueError, match="cache_verify"):
        DataConfig(dataset="image_folder", cache_verify="mtime")


def test_two_processes_at_once_build_one_cache(tmp_path: Path) -> None:
    """The two builds are made to overlap: inside the build, each waits for the other to arrive and
    then to come in too. Under the lock the second never comes in (it waits, then reads); without it
    both would build."""
    root = photo_folder(tmp_path / "photos", SIZES * 8)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    script = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from zoo.data import cache
        from zoo.data.image_folder import ImageFolder
        from zoo.data.cache import Layout, decoded

        meeting, me = Path({str(meeting)!r}), os.getpid()
        build = cache._build

        def build_together(*args, **kwargs):
            (meeting / f"inside-{{me}}").touch()
            deadline = time.monotonic() + 120
            while len(list(meeting.glob("arrived-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            deadline = time.monotonic() + 5
            while len(list(meeting.glob("inside-*"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            build(*args, **kwargs)

        cache._build = build_together
        layout = Layout(size=16, crop=16, channels=3, interpolation="bilinear", crop_mode="center")
        folder = ImageFolder(Path({str(root)!r}), "train")
        (meeting / f"arrived-{{me}}").touch()
        images = decoded(folder, layout, in_memory=True, workers=0, progress=False)
        print("built" if images.built is not None else "read", int(images.memory.sum()))
    """)  # fmt: skip
    processes = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    words = sorted(output.split()[0] for output, _ in outputs)
    assert words == ["built", "read"] and len({output.split()[1] for output, _ in outputs}) == 1
    assert len(list(meeting.glob("inside-*"))) == 1
    assert len(list((Path(os.environ["ZOO_CACHE_DIR"]) / "images").glob("*.u8"))) == 1


@pytest.mark.slow
def test_one_rank_per_node_stats_the_files_and_sends_the_name(tmp_path: Path) -> None:
    import socket

    root = photo_folder(tmp_path / "photos", SIZES)
    named = tmp_path / "named"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = textwrap.dedent(f"""
        import torch
        from pathlib import Path
        from zoo.data import cache
        from zoo.parallel import distributed
        from zoo.data.image_folder import ImageFolder
        from zoo.data.cache import Layout, decoded

        distributed.setup(torch.device("cpu"))
        name = cache._name

        def noted(*args):
            with open({str(named)!r}, "a") as log:
                log.write(f"{{distributed.rank()}}\\n")
            return name(*args)

        cache._name = noted
        layout = Layout(size=16, crop=16, channels=3, interpolation="bilinear", crop_mode="center")
        images = decoded(ImageFolder(Path({str(root)!r}), "train"), layout, in_memory=True, workers=0, progress=False)
        print(images.path.name, int(images.memory.sum()))
        distributed.teardown()
    """)  # fmt: skip
    environment = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                   "LOCAL_WORLD_SIZE": "2"}  # fmt: skip
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**environment, "RANK": str(rank), "LOCAL_RANK": str(rank)},
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert named.read_text().split() == ["0"]
    assert outputs[0][0] == outputs[1][0]  # the same cache, the same pixels


def test_the_default_is_disk_where_a_cache_can_serve_and_a_request_that_cannot_is_refused(tmp_path: Path) -> None:
    folder = ImageFolder(photo_folder(tmp_path / "photos", SIZES), "train")
    square = Layout.of(Preprocessing((3, 32, 32), (0.5,) * 3, (0.5,) * 3, "bilinear", 0.9))
    assert choose(None, folder, square, pil_only=False) == "disk"
    assert choose("memory", folder, square, pil_only=False) == "memory"
    assert choose(None, folder, square, pil_only=True) == "none"  # auto-augment needs PIL images
    assert Layout.of(Preprocessing((3, 32, 48), (0.5,) * 3, (0.5,) * 3)) is None
    with pytest.raises(ZooError, match="data.cache = disk: auto-augment needs PIL images"):
        choose("disk", folder, square, pil_only=True)
    with pytest.raises(ZooError, match="does not list its image files"):
        choose("disk", torch.utils.data.TensorDataset(torch.zeros(2)), square, pil_only=False)


def test_reading_from_disk_keeps_memory_bounded_by_the_batch(tmp_path: Path) -> None:
    """A 400 MB cache read in batches of 64 raises the peak memory by far less than its size."""
    layout = Layout(size=256, crop=224, channels=3, interpolation="bilinear", crop_mode="center")
    count = 2000  # x 196,608 bytes = 393 MB
    path = tmp_path / "big.u8"
    with open(path, "wb") as file:
        file.truncate(count * layout.image_bytes)
    script = textwrap.dedent(f"""
        import resource, torch
        from pathlib import Path
        from zoo.data.cache import DecodedImages, Layout
        images = DecodedImages(Path({str(path)!r}), {count}, Layout(**{layout.__dict__!r}), in_memory=False)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        order = torch.randperm({count})
        total = 0
        for start in range(0, {count}, 64):
            total += int(images[order[start:start + 64]].sum())
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, total)
    """)  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    grown_mb, total = (int(word) for word in result.stdout.split())
    assert total == 0 and grown_mb < 64, f"peak memory grew by {grown_mb} MB reading a 393 MB cache"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 0


def cached_splits(root: Path, preprocessing: Preprocessing, in_memory: bool) -> tuple:
    """The splits of the folder at ``root``, given their decoded cache (in memory, or read from disk)."""
    splits = load_splits(DataConfig(dataset="image_folder", root=str(root), val_split=0.0), seed=0)
    for split in splits.splits:
        split.decoded = decoded(split.dataset, Layout.of(preprocessing), in_memory, workers=0, progress=False)
    return splits


READ_AHEAD_INPUT = Preprocessing((3, 16, 16), (0.5,) * 3, (0.25,) * 3, "bilinear", 0.8)


def test_disk_batches_read_ahead_are_the_in_memory_batches_in_order(tmp_path: Path) -> None:
    """Shuffled, augmented and from the middle of an epoch: the batches read ahead from the file are
    the ones an in-memory cache gives; the read-ahead thread ends with the epoch."""
    from zoo.data.augment import Augmentation

    root = photo_folder(tmp_path / "photos", SIZES * 4)
    augmentation = Augmentation(degrees=10.0)

    def epoch(in_memory: bool, start: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = Batches(cached_splits(root, READ_AHEAD_INPUT, in_memory).train, 3, torch.device("cpu"),
                          READ_AHEAD_INPUT, shuffle=True, seed=1, augmentation=augmentation)  # fmt: skip
        assert (batches.decoded is None) is in_memory
        return list(batches.epoch(2, start))

    for start in (0, 4):
        from_disk, from_memory = epoch(False, start), epoch(True, start)
        assert len(from_disk) == 11 - start
        for (a, la), (b, lb) in zip(from_disk, from_memory, strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)
    assert not [thread for thread in threading.enumerate() if thread.name == "zoo-read-ahead"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(), max_size=20), st.integers(1, 4), st.integers(0, 21))
def test_ahead_gives_every_item_in_order_and_ends_its_thread_when_dropped(
    items: list[int], depth: int, taken: int
) -> None:
    assert list(ahead(iter(items), depth)) == items
    reading = ahead(iter(items), depth)
    assert [value for _, value in zip(range(taken), reading)] == items[:taken]
    del reading  # mid-way, or before the first item
    assert not [thread for thread in threading.enumerate() if thread.name == "zoo-read-ahead"]


def test_a_read_error_ahead_is_the_same_one_line_at_the_same_batch(tmp_path: Path) -> None:
    root = photo_folder(tmp_path / "photos", SIZES * 2)
    split = cached_splits(root, READ_AHEAD_INPUT, in_memory=False).train
    with open(split.decoded.path, "r+b") as file:  # the file loses its last images after the run began
        file.truncate(5 * split.decoded.layout.image_bytes)
    batches = Batches(split, 2, torch.device("cpu"), READ_AHEAD_INPUT)
    read = []
    with pytest.raises(ZooError) as raised:
        for inputs, _ in batches.epoch():
            read.append(inputs)
    with pytest.raises(ZooError) as directly:
        split.decoded[torch.arange(4, 6)]
    assert str(raised.value) == str(directly.value) and "shorter than its description says" in str(raised.value)
    assert len(read) == 2  # images 0-3; the batch of images 4 and 5 failed
    assert not [thread for thread in threading.enumerate() if thread.name == "zoo-read-ahead"]


def test_dropping_an_epoch_of_disk_batches_ends_the_read_ahead_thread(tmp_path: Path) -> None:
    split = cached_splits(photo_folder(tmp_path / "photos", SIZES * 4), READ_AHEAD_INPUT, in_memory=False).train
    epoch = Batches(split, 2, torch.device("cpu"), READ_AHEAD_INPUT).epoch()
    next(epoch)
    assert [thread for thread in threading.enumerate() if thread.name == "zoo-read-ahead"]
    del epoch  # mid-epoch: the thread had batches queued and was blocked putting the next
    assert not [thread for thread in threading.enumerate() if thread.name == "zoo-read-ahead"]


@pytest.mark.slow
def test_sigkill_then_resume_over_a_cached_image_folder_is_bit_identical(mnist_png: Path, tmp_path: Path) -> None:
    from conftest import RECIPES, kill_then_resume

    args = [
        str(RECIPES / "timm_finetune.toml"), "model.backbone=timm/test_resnet", "model.pretrained=false",
        "model.freeze.freeze=[]", f"data.root={mnist_png}", "data.classes=[0,1,2]", "data.image_size=32",
        "data.batch_size=8", "data.val_split=0.1", "train.epochs=2", "train.checkpoint_every=5",
        "train.precision=fp32", "data.cache=disk",
    ]  # fmt: skip
    kill_then_resume(tmp_path, args, "step-00000015")  # 21 steps an epoch: mid-epoch 1
