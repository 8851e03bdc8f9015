"""The user's own images: an ImageFolder-layout folder as a data set, a teacher and a search."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image

import n2n_gym  # noqa: F401 (registers the environments)
from n2n_gym.data import DataError, load_dataset
from n2n_gym.task import Task, TaskError
from n2n_gym.teachers import train_teacher

CLASSES = ("cat", "dog", "fox")


def _write_folder(root: Path, per_class: int, *, split: str | None, size=(20, 12), mode="L"):
    """Images whose brightness encodes the class, so a label mix-up shows in the pixels."""
    rng = np.random.default_rng(len(str(root)) + per_class)
    for label, name in enumerate(CLASSES):
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            level = 40 + 80 * label
            pixels = rng.integers(level - 20, level + 20, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    _write_folder(root, 30, split="train")
    _write_folder(root, 8, split="test")
    return root


def test_folder_loads_with_imagefolder_labels_size_and_measured_normalisation(folder):
    data = load_dataset("imagefolder", folder, val_size=9, image_folder={"image_size": 8})
    assert data.input_shape == (1, 8, 8) and data.num_classes == 3
    assert data.train_x.shape == (81, 1, 8, 8) and data.test_x.shape == (24, 1, 8, 8)
    # torchvision's ImageFolder numbers classes by sorted folder name: cat 0, dog 1, fox 2.
    brightness = data.test_x.mean(dim=(1, 2, 3))
    for label in range(3):
        assert label == int(data.test_y[brightness.argsort()][8 * label : 8 * label + 8].min())
    # Measured normalisation: the training pixels come out near mean 0 and std 1.
    pixels = torch.cat([data.train_x, data.val_x])
    assert abs(float(pixels.mean())) < 0.05 and abs(float(pixels.std()) - 1) < 0.05


def test_channels_given_normalisation_and_root_only_layout(tmp_path, folder):
    rgb = load_dataset(
        "imagefolder", folder, val_size=9, image_folder={"channels": 3, "mean": 0.5, "std": 0.25}
    )
    assert rgb.input_shape == (3, 20, 12)
    assert rgb.mean == (0.5, 0.5, 0.5) and rgb.std == (0.25, 0.25, 0.25)
    _write_folder(tmp_path, 10, split=None)
    flat = load_dataset("imagefolder", tmp_path, val_size=3)
    assert len(flat.test_y) == 6 and len(flat.train_y) + len(flat.val_y) == 24


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: (root / "train" / "cat").mkdir(parents=True), "no test/ (or val/) folder"),
        (lambda root: (root / "only").mkdir(), "1 class folder"),
        (
            lambda root: (
                _write_folder(root, 2, split=None) or (root / "cat" / "x.png").write_text("no")
            ),
            "x.png",
        ),
    ],
    ids=["no-test-split", "one-class", "unreadable-image"],
)
def test_bad_folders_get_one_line_naming_the_fix(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_dataset("imagefolder", tmp_path, val_size=1)


def test_bad_options_are_refused_before_reading(folder):
    with pytest.raises(DataError, match="channels=2"):
        load_dataset("imagefolder", folder, image_folder={"channels": 2})
    with pytest.raises(DataError, match="image_folder= applies"):
        load_dataset("mnist", image_folder={"image_size": 8})
    with pytest.raises(TaskError, match="needs data_dir"):
        Task(dataset="imagefolder", measurer="proxy")
    with pytest.raises(TaskError, match="unknown field sise"):
        Task(dataset="imagefolder", data_dir=str(folder), image_folder={"sise": 8})


@pytest.mark.expensive
def test_teacher_records_normalisation_and_a_search_runs_on_the_folder(tmp_path, folder):
    teacher = tmp_path / "teacher.pt"
    train_teacher(
        "small_vgg",
        "imagefolder",
        data_dir=folder,
        image_folder={"image_size": 16, "mean": 0.4, "std": 0.3},
        out=teacher,
        epochs=2,
        device="cpu",
        progress=False,
    )
    kwargs = {"teacher": str(teacher), "dataset": "imagefolder", "data_dir": str(folder)}
    with pytest.raises(TaskError, match=r"image_size \[16, 16\], channels 1"):
        Task(**kwargs)  # the folder's own size is 20 x 12
    task = Task(**kwargs, image_folder={"image_size": 16})
    # Resolved and recorded: the checkpoint's normalisation, a tenth held out, all of it scored.
    recorded = json.loads(json.dumps(task.to_dict()))
    assert recorded["image_folder"] == {
        "image_size": [16, 16],
        "channels": 1,
        "mean": [0.4],
        "std": [0.3],
    }
    assert recorded["val_size"] == 9 and task.fidelity.eval_size is None
    assert Task.from_dict(recorded).fingerprint == task.fingerprint

    env = gym.make(
        "N2NRemoval-v2", **kwargs, image_folder={"image_size": 16}, fidelity={"transfer_size": 64}
    )
    env.reset(seed=0)
    env.action_space.seed(0)  # the same student on every run (an unseeded space draws at random)
    terminated = truncated = False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    env.close()
    assert 0.0 <= reward <= 1.0 and 0.0 <= info["accuracy"] <= 1.0
    assert info["params"] < task.teacher_spec.params
