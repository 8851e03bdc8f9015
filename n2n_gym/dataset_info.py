"""What a data set is to the rest of the package: its facts, its errors, the image-folder name.

Kept apart from :mod:`n2n_gym.data` (which reads the registered data sets) so that
:mod:`n2n_gym.image_folder` (which reads a user's folder) can use them without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["IMAGE_FOLDER", "DataError", "DatasetInfo"]

IMAGE_FOLDER = "imagefolder"  # the data set name of a user's folder of images (image_folder.py)


class DataError(ValueError):
    """A data problem the user can fix: bad dataset name, missing or unreadable files, bad sizes."""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a registered dataset.

    Attributes:
        name: Registry key, e.g. ``"cifar10"``.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``.
        input_shape: Image shape ``(C, H, W)``.
        mean: Per-channel mean of the training images in [0, 1] units.
        std: Per-channel standard deviation of the training images in [0, 1] units.
        description: One line for people: what it is and where it comes from.
        train_size: images in the official training split (before the validation hold-out).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    train_size: int
