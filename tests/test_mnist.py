"""zoo/data/mnist.py: MNIST's IDX files read without torchvision, the same arrays as torchvision's reader,
and a damaged or hostile file one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from zoo.data.mnist import FILES, MNIST, read_idx
from zoo.errors import ZooError


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic 0x0008NN (NN dimensions), big-endian sizes, the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.tobytes()


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(0, 5), st.integers(1, 4), st.integers(1, 4))))
def test_an_idx_file_reads_back_as_the_array_written(
    tmp_path_factory: pytest.TempPathFactory, array: np.ndarray
) -> None:
    path = tmp_path_factory.mktemp("idx") / "images-idx3-ubyte"
    path.write_bytes(idx_bytes(array))
    read = read_idx(path, dimensions=3)
    assert read.dtype == torch.uint8 and read.shape == array.shape
    assert np.array_equal(read.numpy(), array)


def test_mnist_reads_the_same_arrays_as_torchvision(mnist_dir: Path) -> None:
    from torchvision.datasets import MNIST as TorchvisionMNIST

    for split in ("train", "test"):
        ours, theirs = MNIST(mnist_dir, split), TorchvisionMNIST(str(mnist_dir), train=split == "train")
        assert torch.equal(ours.images[:, 0], theirs.data) and torch.equal(ours.targets, theirs.targets)
        assert ours.images.shape[1:] == (1, 28, 28) and ours.targets.dtype == torch.long


@pytest.fixture
def raw_copy(mnist_dir: Path, tmp_path: Path) -> Path:
    """A data folder holding the MNIST test files (copies, to damage)."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FILES["test"]:
        shutil.copyfile(mnist_dir / "MNIST" / "raw" / name, raw / name)
    return raw


def test_a_truncated_wrong_or_mismatched_file_is_one_line_naming_it(raw_copy: Path) -> None:
    images, labels = (raw_copy / name for name in FILES["test"])
    whole = images.read_bytes()
    images.write_bytes(whole[:-5])
    with pytest.raises(ZooError, match=r"t10k-images-idx3-ubyte is 7,840,011 bytes, not the 7,840,016 .*truncated"):
        MNIST(raw_copy.parents[1], "test", download=False)
    images.write_bytes(b"\x00\x00\x08\x01" + whole[4:])  # a label file's magic on the images
    with pytest.raises(ZooError, match=r"t10k-images-idx3-ubyte is not an IDX file of 3-dimensional uint8 data"):
        MNIST(raw_copy.parents[1], "test", download=False)
    images.write_bytes(whole)
    labels.write_bytes(idx_bytes(np.zeros(9, dtype=np.uint8)))
    with pytest.raises(ZooError, match=r"holds 10,000 images but .*t10k-labels-idx1-ubyte 9 labels"):
        MNIST(raw_copy.parents[1], "test", download=False)


def test_a_huge_file_is_refused_from_its_size_before_it_is_read(raw_copy: Path) -> None:
    images = raw_copy / FILES["test"][0]
    os.truncate(images, 8 << 30)  # sparse: 8 GiB that would fill the memory if read
    with pytest.raises(ZooError, match=r"is 8,589,934,592 bytes, not the 7,840,016 its header says"):
        MNIST(raw_copy.parents[1], "test", download=False)


def test_a_label_that_is_not_a_digit_names_the_labels_file(raw_copy: Path) -> None:
    labels = raw_copy / FILES["test"][1]
    data = bytearray(labels.read_bytes())
    data[-1] = 11
    labels.write_bytes(bytes(data))
    with pytest.raises(ZooError, match=r"t10k-labels-idx1-ubyte holds the label 11, not a digit"):
        MNIST(raw_copy.parents[1], "test", download=False)


@pytest.mark.parametrize("hostile", ["fifo", "folder"])
def test_a_fifo_or_folder_in_place_of_a_file_is_one_line_and_never_blocks(raw_copy: Path, hostile: str) -> None:
    images = raw_copy / FILES["test"][0]
    images.unlink()
    os.mkfifo(images) if hostile == "fifo" else images.mkdir()
    with pytest.raises(ZooError, match="t10k-images-idx3-ubyte"):
        MNIST(raw_copy.parents[1], "test", download=False)


def test_missing_files_without_download_name_the_folder_and_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ZooError, match=r"MNIST not found in .*MNIST/raw .*set ZOO_DATA_DIR"):
        MNIST(tmp_path, "test", download=False)
