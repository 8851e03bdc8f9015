"""The user's own images: a folder in ``torchvision.datasets.ImageFolder`` layout.

Two layouts are read, class folders named by their label (classes sorted by name, as
``ImageFolder`` numbers them):

- ``ROOT/train/<class>/*.png`` and ``ROOT/test/<class>/*.png`` (or ``ROOT/val/``, the usual name
  of the held-out split of published image sets): the test split as given;
- ``ROOT/<class>/*.png``: a seeded fifth of the images is held out as the test split.

Every image is converted to ``channels`` (grey or RGB) and resized to ``image_size``, then the
data set is normalised with ``mean`` / ``std``. Whatever is not given is resolved once, when a
search is configured, and recorded in its task (so a rerun reads the same data the same way):
the size and channels of the first training image, the normalisation recorded in the teacher's
checkpoint or measured on a seeded sample of the training images.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from n2n_gym.dataset_info import IMAGE_FOLDER, DataError, DatasetInfo

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_FOLDER",
    "FolderLayout",
    "ImageFolderConfig",
    "folder_info",
    "read_images",
    "resolve_config",
    "resolve_normalisation",
    "resolve_shape",
    "scan_folder",
]

TEST_FOLDERS = ("test", "val")
HELD_OUT_TEST = 5  # one image in this many is the test split of a folder without test/
_STATS_SAMPLE = 2048  # images the normalisation is measured on (seeded; all when fewer)


@dataclass(frozen=True)
class ImageFolderConfig:
    """How the images of a folder become tensors; ``None`` fields are resolved from the data.

    Attributes:
        image_size: ``[height, width]`` (or one number for square images) every image is
            resized to; ``None``: the first training image's size.
        channels: 1 (grey) or 3 (RGB) the images are converted to; ``None``: the first training
            image's (grey stays grey, anything else becomes RGB).
        mean: per-channel mean in [0, 1] units subtracted from the images (one value: the same
            for every channel); ``None``: the one recorded in the teacher's checkpoint, else
            measured on the training images.
        std: per-channel standard deviation, given or resolved with ``mean``.
    """

    image_size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        size = self.image_size
        if size is not None:
            size = (size, size) if _is_int(size) else tuple(size)
            if len(size) != 2 or not all(_is_int(s) and s >= 1 for s in size):
                raise DataError(
                    f"image_size={self.image_size!r}: pass one positive integer or [height, width]"
                )
            object.__setattr__(self, "image_size", size)
        if self.channels is not None and self.channels not in (1, 3):
            raise DataError(f"channels={self.channels!r}: use 1 (grey) or 3 (RGB)")
        if (self.mean is None) != (self.std is None):
            raise DataError("pass mean and std together (or neither, to take them from data)")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(float(v) for v in ([value] if isinstance(value, int | float) else value))
            if self.channels is not None and len(value) == 1:
                value *= self.channels  # one value for every channel
            if self.channels is not None and len(value) != self.channels:
                raise DataError(
                    f"{name}={list(value)} has {len(value)} values for {self.channels} channels"
                )
            if name == "std" and any(v <= 0 for v in value):
                raise DataError(f"std={list(value)} must be positive")
            object.__setattr__(self, name, value)

    @property
    def resolved(self) -> bool:
        """Every field is set: the images can be read without looking at them first."""
        return all(getattr(self, f.name) is not None for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_value(cls, value: ImageFolderConfig | dict[str, Any] | None) -> ImageFolderConfig:
        """A config from a dict of its fields (as in ``gymnasium.make`` keywords)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise DataError(f"image_folder={value!r}: pass a dict of ImageFolderConfig fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise DataError(
                f"image_folder: unknown field {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**value)


@dataclass(frozen=True)
class FolderLayout:
    """What a folder holds, found by listing it (no image is opened).

    Attributes:
        root: the folder.
        classes: class names in label order.
        train: ``(path, label)`` of the training images.
        test: ``(path, label)`` of the test images.
        test_origin: where the test split comes from: a folder name, or a held-out share.
    """

    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]
    test_origin: str


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _images(folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    try:
        return make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as error:  # a class folder without images
        raise DataError(f"{error}; remove the empty class folder") from None


@lru_cache(maxsize=8)
def _scan(root: str, stamp: tuple) -> FolderLayout:
    path = Path(root)
    train_dir = path / "train"
    if train_dir.is_dir():
        classes = _class_folders(train_dir)
        test_dir = next((path / n for n in TEST_FOLDERS if (path / n).is_dir()), None)
        if test_dir is None:
            raise DataError(
                f"data_dir={root!r} has train/ but no test/ (or val/) folder; add one with the "
                "same class folders, or put the class folders directly in data_dir"
            )
    else:
        classes, test_dir = _class_folders(path), None
    if len(classes) < 2:
        raise DataError(
            f"data_dir={root!r} holds {len(classes)} class folder(s); an image folder has one "
            "folder of images per class (ROOT/<class>/x.png, or ROOT/train/<class>/x.png and "
            "ROOT/test/<class>/x.png)"
        )
    class_to_idx = {name: i for i, name in enumerate(classes)}
    if test_dir is None:
        images = _images(path, class_to_idx)
        order = np.random.default_rng(0).permutation(len(images))
        held = set(order[: max(1, len(images) // HELD_OUT_TEST)].tolist())
        train = [item for i, item in enumerate(images) if i not in held]
        test = [item for i, item in enumerate(images) if i in held]
        origin = f"a seeded 1/{HELD_OUT_TEST} of the images"
    else:
        extra = sorted(set(_class_folders(test_dir)) - set(classes))
        if extra:
            raise DataError(
                f"data_dir={root!r}: {test_dir.name}/ has class folders that train/ lacks "
                f"({', '.join(extra)}); both need the same classes"
            )
        train = _images(train_dir, class_to_idx)
        test = _images(test_dir, class_to_idx)
        origin = f"{test_dir.name}/"
    return FolderLayout(path, tuple(classes), tuple(train), tuple(test), origin)


def scan_folder(root: str | Path) -> FolderLayout:
    """List an image folder's classes and images (cached until the folder changes).

    Raises:
        DataError: not a folder, fewer than two classes, an empty class, or test classes that
            the training split lacks.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data_dir={str(root)!r} is not a folder; pass the root of an image folder "
            "(ROOT/<class>/x.png or ROOT/train/<class>/x.png)"
        )
    return _scan(str(path.resolve()), _folder_stamp(path))


def _folder_stamp(root: Path) -> tuple:
    """Modification times of the folders down to the class folders: adding or removing an image
    changes one of them, so a changed folder is listed again."""
    folders, stamp = [root], []
    for depth in range(3):  # ROOT, ROOT/train, ROOT/train/<class>
        stamp += [(str(f), f.stat().st_mtime_ns) for f in folders]
        if depth < 2:
            folders = [c for f in folders for c in f.iterdir() if c.is_dir()]
    return tuple(stamp)


def _open(path: str, channels: int | None, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        if channels is None:
            channels = 1 if image.mode in ("1", "L", "I", "I;16", "F") else 3
        image = image.convert("L" if channels == 1 else "RGB")
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def _open_checked(path: str, config: ImageFolderConfig) -> np.ndarray:
    from PIL import UnidentifiedImageError

    try:
        return _open(path, config.channels, config.image_size)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DataError(f"could not read image {path} ({error}); remove or replace it") from None


def resolve_shape(layout: FolderLayout, config: ImageFolderConfig) -> ImageFolderConfig:
    """``config`` with ``image_size`` and ``channels`` set, from the first training image."""
    if config.image_size is not None and config.channels is not None:
        return config
    first = _open_checked(layout.train[0][0], replace(config, image_size=None))
    return replace(
        config,
        channels=config.channels or int(first.shape[0]),
        image_size=config.image_size or tuple(int(s) for s in first.shape[1:]),
    )


def resolve_normalisation(
    layout: FolderLayout,
    config: ImageFolderConfig,
    recorded: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> ImageFolderConfig:
    """``config`` (shape resolved) with ``mean`` and ``std`` set: ``recorded`` (the teacher
    checkpoint's) when it fits the channels, else measured on a seeded sample of training images.
    """
    if config.mean is not None:
        return config
    if recorded is not None:
        mean, std = recorded
        if len(mean) == config.channels:
            return replace(config, mean=tuple(mean), std=tuple(std))
        logger.warning(
            "the teacher's checkpoint records a %d-channel normalisation for %d-channel images; "
            "measuring it on the images instead",
            len(mean),
            config.channels,
        )
    rng = np.random.default_rng(0)
    count = min(_STATS_SAMPLE, len(layout.train))
    picks = sorted(rng.choice(len(layout.train), count, replace=False).tolist())
    sample = np.stack([_open_checked(layout.train[i][0], config) for i in picks])
    pixels = sample.transpose(1, 0, 2, 3).reshape(config.channels, -1) / 255.0
    config = replace(
        config,
        mean=tuple(round(float(m), 4) for m in pixels.mean(axis=1)),
        std=tuple(round(max(float(s), 1e-3), 4) for s in pixels.std(axis=1)),
    )
    logger.info(
        "image folder %s: normalisation measured on %d training images: mean %s, std %s",
        layout.root,
        count,
        list(config.mean),
        list(config.std),
    )
    return config


def resolve_config(
    layout: FolderLayout,
    config: ImageFolderConfig,
    recorded: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> ImageFolderConfig:
    """``config`` with every field set (see :func:`resolve_shape`, :func:`resolve_normalisation`)."""
    return resolve_normalisation(layout, resolve_shape(layout, config), recorded)


def read_images(
    layout: FolderLayout, config: ImageFolderConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode every image: ``(train_x, train_y, test_x, test_y)``, uint8 NCHW and int64.

    Raises:
        DataError: an image that cannot be read (naming the file).
    """

    def stack(items: tuple[tuple[str, int], ...]) -> tuple[torch.Tensor, torch.Tensor]:
        images = np.stack([_open_checked(path, config) for path, _ in items])
        labels = torch.tensor([label for _, label in items], dtype=torch.int64)
        return torch.from_numpy(images), labels

    return (*stack(layout.train), *stack(layout.test))


def folder_info(layout: FolderLayout, config: ImageFolderConfig) -> DatasetInfo:
    """The registry's facts for an image folder read with ``config`` (its shape resolved)."""
    return DatasetInfo(
        name=IMAGE_FOLDER,
        num_classes=len(layout.classes),
        input_shape=(config.channels, *config.image_size),
        mean=config.mean or (),
        std=config.std or (),
        description=f"image folder {layout.root} ({len(layout.classes)} classes, test split: "
        f"{layout.test_origin})",
        train_size=len(layout.train),
    )
