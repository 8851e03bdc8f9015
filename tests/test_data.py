"""Tests for the dataset registry: bundled MNIST, torchvision layouts from tiny fake files, errors."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import scipy.io
import torch

from n2n_gym.data import (
    DATASETS,
    DataError,
    DatasetSplits,
    available_datasets,
    load_dataset,
)

NUM_TRAIN = 30
NUM_TEST = 10
VAL_SIZE = 8


class FakeData(NamedTuple):
    """What a fake writer put on disk, as NCHW uint8 images and int64 labels."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def _random_images(rng: np.random.Generator, name: str, n: int) -> np.ndarray:
    # Random pixels make every image unique, so images can be traced through the split.
    return rng.integers(0, 256, size=(n, *DATASETS[name].input_shape), dtype=np.uint8)


def _random_data(rng: np.random.Generator, name: str) -> FakeData:
    num_classes = DATASETS[name].num_classes
    return FakeData(
        _random_images(rng, name, NUM_TRAIN),
        rng.integers(0, num_classes, size=NUM_TRAIN),
        _random_images(rng, name, NUM_TEST),
        rng.integers(0, num_classes, size=NUM_TEST),
    )


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write the big-endian idx format of the MNIST files (magic 0x0000 08 ndim for uint8)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(size).to_bytes(4, "big") for size in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist_layout(folder: str, name: str, root: Path, rng: np.random.Generator) -> FakeData:
    data = _random_data(rng, name)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for split, x, y in (("train", data.train_x, data.train_y), ("t10k", data.test_x, data.test_y)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", x[:, 0])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    return data


def _pickle(path: Path, obj: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f)


def _write_cifar10(root: Path, rng: np.random.Generator) -> FakeData:
    data = _random_data(rng, "cifar10")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    # The real rows are the R, G and B planes one after the other: a flattened CHW image.
    for i, rows in enumerate(np.array_split(np.arange(NUM_TRAIN), 5), start=1):
        _pickle(
            folder / f"data_batch_{i}",
            {
                "data": data.train_x[rows].reshape(len(rows), -1),
                "labels": data.train_y[rows].tolist(),
            },
        )
    _pickle(
        folder / "test_batch",
        {"data": data.test_x.reshape(NUM_TEST, -1), "labels": data.test_y.tolist()},
    )
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return data


def _write_cifar100(root: Path, rng: np.random.Generator) -> FakeData:
    data = _random_data(rng, "cifar100")
    folder = root / "cifar-100-python"
    folder.mkdir()
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        _pickle(
            folder / split,
            {
                "data": x.reshape(len(x), -1),
                "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist(),
            },
        )
    _pickle(folder / "meta", {"fine_label_names": [f"class{i}" for i in range(100)]})
    return data


def _write_svhn(root: Path, rng: np.random.Generator) -> FakeData:
    data = _random_data(rng, "svhn")
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        # The .mat files store images as (H, W, C, N) and the digit 0 as label 10.
        scipy.io.savemat(
            root / f"{split}_32x32.mat",
            {
                "X": x.transpose(2, 3, 1, 0),
                "y": np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8),
            },
        )
    return data


FAKE_WRITERS: dict[str, Callable[[Path, np.random.Generator], FakeData]] = {
    "mnist": lambda root, rng: _write_mnist_layout("MNIST", "mnist", root, rng),
    "fashion-mnist": lambda root, rng: _write_mnist_layout(
        "FashionMNIST", "fashion-mnist", root, rng
    ),
    "cifar10": _write_cifar10,
    "cifar100": _write_cifar100,
    "svhn": _write_svhn,
}

# A file each dataset's "missing files" message must name.
EXPECTED_FILE = {
    "mnist": "MNIST/raw/train-images-idx3-ubyte",
    "fashion-mnist": "FashionMNIST/raw/train-images-idx3-ubyte",
    "cifar10": "cifar-10-batches-py/data_batch_1",
    "cifar100": "cifar-100-python/train",
    "svhn": "train_32x32.mat",
}


def _to_uint8(x: torch.Tensor, name: str) -> np.ndarray:
    """Undo the normalisation, back to the pixels that were written."""
    info = DATASETS[name]
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8).numpy()


def _image_ids(images: np.ndarray, written: np.ndarray) -> list[int]:
    """Index in ``written`` of each image in ``images`` (raises KeyError if one is foreign)."""
    index = {image.tobytes(): i for i, image in enumerate(written)}
    return [index[image.tobytes()] for image in images]


@pytest.fixture(scope="module")
def mnist() -> DatasetSplits:
    return load_dataset()


@pytest.fixture
def fake_mnist_dir(tmp_path: Path) -> tuple[Path, FakeData]:
    return tmp_path, FAKE_WRITERS["mnist"](tmp_path, np.random.default_rng(0))


def test_registry_lists_every_dataset_with_consistent_stats() -> None:
    assert available_datasets() == sorted([*DATASETS, "imagefolder"])
    assert {"mnist", "fashion-mnist", "cifar10", "cifar100", "svhn"} <= set(DATASETS)
    for name, info in DATASETS.items():
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.input_shape[0]
        assert all(s > 0 for s in info.std)


def test_every_registered_dataset_has_a_fake_writer() -> None:
    assert set(FAKE_WRITERS) == set(DATASETS)  # imagefolder: tests/test_image_folder.py


def test_bundled_mnist_is_the_full_dataset(mnist: DatasetSplits) -> None:
    assert mnist.name == "mnist"
    assert mnist.num_classes == 10
    assert mnist.input_shape == (1, 28, 28)
    assert mnist.train_x.shape == (55_000, 1, 28, 28)
    assert mnist.val_x.shape == (5_000, 1, 28, 28)
    assert mnist.test_x.shape == (10_000, 1, 28, 28)
    for x, y in (mnist.split("train"), mnist.split("val"), mnist.split("test")):
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert len(x) == len(y)
        assert set(y.unique().tolist()) == set(range(10))


def test_bundled_mnist_is_normalised(mnist: DatasetSplits) -> None:
    assert abs(mnist.train_x.mean().item()) < 0.02
    assert abs(mnist.train_x.std().item() - 1.0) < 0.02
    # A blank background pixel must map to -mean/std, i.e. the scale is [0, 1] before normalising.
    assert mnist.train_x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-5)


def test_bundled_mnist_train_limit_and_val_size() -> None:
    splits = load_dataset(val_size=100, train_limit=1_000, seed=3)
    assert len(splits.train_y) == 1_000
    assert len(splits.val_y) == 100
    assert len(splits.test_y) == 10_000


@pytest.mark.parametrize("name", sorted(FAKE_WRITERS))
def test_loads_torchvision_layout(name: str, tmp_path: Path) -> None:
    written = FAKE_WRITERS[name](tmp_path, np.random.default_rng(1))
    splits = load_dataset(name, tmp_path, val_size=VAL_SIZE)
    info = DATASETS[name]

    assert splits.name == name
    assert splits.num_classes == info.num_classes
    assert splits.input_shape == info.input_shape
    assert splits.train_x.shape == (NUM_TRAIN - VAL_SIZE, *info.input_shape)
    assert splits.val_x.shape == (VAL_SIZE, *info.input_shape)
    assert splits.test_x.shape == (NUM_TEST, *info.input_shape)
    assert splits.train_x.dtype == splits.test_x.dtype == torch.float32
    assert splits.train_y.dtype == splits.test_y.dtype == torch.int64
    # The test split keeps file order, so pixels (channel order included) and labels must match.
    np.testing.assert_array_equal(_to_uint8(splits.test_x, name), written.test_x)
    np.testing.assert_array_equal(splits.test_y.numpy(), written.test_y)
    # Train + val are the written training set, each image keeping its own label.
    ids = _image_ids(_to_uint8(torch.cat([splits.train_x, splits.val_x]), name), written.train_x)
    assert sorted(ids) == list(range(NUM_TRAIN))
    np.testing.assert_array_equal(
        torch.cat([splits.train_y, splits.val_y]).numpy(), written.train_y[ids]
    )


def test_val_is_held_out_of_train_and_seeded(fake_mnist_dir: tuple[Path, FakeData]) -> None:
    root, written = fake_mnist_dir
    first = load_dataset("mnist", root, val_size=VAL_SIZE, seed=7)
    again = load_dataset("mnist", root, val_size=VAL_SIZE, seed=7)
    other = load_dataset("mnist", root, val_size=VAL_SIZE, seed=8)

    val_ids = set(_image_ids(_to_uint8(first.val_x, "mnist"), written.train_x))
    train_ids = set(_image_ids(_to_uint8(first.train_x, "mnist"), written.train_x))
    assert len(val_ids) == VAL_SIZE
    assert val_ids.isdisjoint(train_ids)
    assert val_ids | train_ids == set(range(NUM_TRAIN))

    assert torch.equal(first.val_x, again.val_x)
    assert torch.equal(first.train_y, again.train_y)
    other_val_ids = set(_image_ids(_to_uint8(other.val_x, "mnist"), written.train_x))
    assert other_val_ids != val_ids
    assert torch.equal(first.test_x, other.test_x)


def test_train_limit_truncates_train_only(fake_mnist_dir: tuple[Path, FakeData]) -> None:
    root, _ = fake_mnist_dir
    full = load_dataset("mnist", root, val_size=VAL_SIZE)
    limited = load_dataset("mnist", root, val_size=VAL_SIZE, train_limit=5)
    assert len(limited.train_y) == 5
    assert torch.equal(limited.train_x, full.train_x[:5])
    assert torch.equal(limited.val_x, full.val_x)


def test_to_moves_every_tensor_and_keeps_the_original(
    fake_mnist_dir: tuple[Path, FakeData],
) -> None:
    root, _ = fake_mnist_dir
    splits = load_dataset("mnist", root, val_size=VAL_SIZE)
    moved = splits.to("meta")
    for split in ("train", "val", "test"):
        x, y = moved.split(split)
        assert x.device.type == y.device.type == "meta"
        assert x.shape == splits.split(split)[0].shape
        assert splits.split(split)[0].device.type == "cpu"
    assert (moved.name, moved.num_classes, moved.input_shape) == (
        splits.name,
        splits.num_classes,
        splits.input_shape,
    )


def test_unknown_split_name(fake_mnist_dir: tuple[Path, FakeData]) -> None:
    root, _ = fake_mnist_dir
    splits = load_dataset("mnist", root, val_size=VAL_SIZE)
    with pytest.raises(DataError, match=r"'validation'.*train, val, test"):
        splits.split("validation")  # type: ignore[arg-type]


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(DataError, match="'imagenet'") as info:
        load_dataset("imagenet")
    assert all(name in str(info.value) for name in available_datasets())


@pytest.mark.parametrize("name", sorted(set(DATASETS) - {"mnist"}))
def test_dataset_without_bundle_needs_data_dir(name: str) -> None:
    with pytest.raises(DataError, match=f"'{name}' needs data_dir.*download=True"):
        load_dataset(name)


def test_missing_data_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError, match="does not exist") as info:
        load_dataset("cifar10", missing)
    assert str(missing) in str(info.value)
    assert "download=True" in str(info.value)
    assert not missing.exists()


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="is a file") as info:
        load_dataset("svhn", path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", sorted(FAKE_WRITERS))
def test_data_dir_without_the_files_names_them(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download=True") as info:
        load_dataset(name, tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert message.count(EXPECTED_FILE[name]) == 1  # named once
    assert "--download" in message  # the command line's spelling too


def test_one_missing_file_is_named(tmp_path: Path) -> None:
    FAKE_WRITERS["cifar10"](tmp_path, np.random.default_rng(0))
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"missing cifar-10-batches-py/data_batch_4\)") as info:
        load_dataset("cifar10", tmp_path, val_size=VAL_SIZE)
    assert str(info.value).count("data_batch_4") == 1 and "data_batch_3" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "corrupt"),
    [
        ("cifar10", "cifar-10-batches-py/data_batch_3"),
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("svhn", "test_32x32.mat"),
    ],
)
def test_corrupt_file_is_a_data_error(name: str, corrupt: str, tmp_path: Path) -> None:
    FAKE_WRITERS[name](tmp_path, np.random.default_rng(0))
    (tmp_path / corrupt).write_bytes(b"\x00\x01 not a real file")
    with pytest.raises(DataError, match="could not read") as info:
        load_dataset(name, tmp_path, val_size=VAL_SIZE)
    assert str(tmp_path) in str(info.value)
    assert info.value.__cause__ is not None


def test_labels_outside_the_dataset_are_rejected(tmp_path: Path) -> None:
    # CIFAR-100-style labels in CIFAR-10 files: the wrong dataset in the folder.
    data = FAKE_WRITERS["cifar10"](tmp_path, np.random.default_rng(0))
    _pickle(
        tmp_path / "cifar-10-batches-py" / "test_batch",
        {"data": data.test_x.reshape(NUM_TEST, -1), "labels": [99] * NUM_TEST},
    )
    with pytest.raises(DataError, match=r"labels in \[.*99\].*\[0, 9\]"):
        load_dataset("cifar10", tmp_path, val_size=VAL_SIZE)


@pytest.mark.parametrize("val_size", [NUM_TRAIN, NUM_TRAIN + 1])
def test_val_size_must_leave_training_images(
    val_size: int, fake_mnist_dir: tuple[Path, FakeData]
) -> None:
    root, _ = fake_mnist_dir
    with pytest.raises(
        DataError, match=f"val_size={val_size} must be smaller than the {NUM_TRAIN}"
    ):
        load_dataset("mnist", root, val_size=val_size)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"val_size": 0}, "val_size=0"),
        ({"val_size": -5}, "val_size=-5"),
        ({"train_limit": 0}, "train_limit=0"),
    ],
)
def test_bad_sizes_are_rejected_before_reading(kwargs: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_dataset("mnist", **kwargs)
