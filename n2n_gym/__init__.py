"""N2N-Gym: learning to compress neural networks with reinforcement learning.

Importing the package registers the environments (and nothing else, so it stays light):

- ``N2NRemoval-v2`` / ``N2NShrink-v2`` / ``N2NJoint-v1``: the bundled MNIST teacher, CPU-friendly
  fidelity, offline (earlier versions: earlier default fidelities, kept for reproduction).
- ``N2NRemoval-Tab-v0`` / ``N2NShrink-Tab-v0`` / ``N2NJoint-Tab-v0``: the same answered from the
  shipped table of measurements, for benchmarking search algorithms.
- ``N2NRemoval-FashionMNIST-Tab-v0`` / ``N2NShrink-...`` / ``N2NJoint-...``: the bundled
  Fashion-MNIST teacher's table, and ``N2NRemoval-FashionMNIST-v0`` / ... its live twin (the
  images from ``data_dir``).
- ``N2NRemoval-NarrowResNet-MNIST-v0`` / ``N2NShrink-...`` / ``N2NJoint-...``: the larger bundled
  MNIST teacher (a 14-block ResNet, 16 decision units), the harder live task, and
  ``N2N...-NarrowResNet-MNIST-Sur-v0``: the same answered by the shipped surrogate (a model fit on
  measured students: its 3^14 joint students are too many to measure).
- ``N2NRemoval-<Teacher>-<DATA>-v0`` / ``N2NShrink-<Teacher>-<DATA>-v0``: the paper's settings
  (for example ``N2NRemoval-ResNet18-CIFAR10-v0``); they need a trained teacher and the data set.
"""

from gymnasium.envs.registration import register

__version__ = "0.1.0"


def compress(*args, **kwargs):
    """Compress a trained model in one call: see :func:`n2n_gym.pipeline.compress`."""
    from n2n_gym.pipeline import compress as run

    return run(*args, **kwargs)


_REMOVAL = "n2n_gym.envs.removal:LayerRemovalEnv"
_SHRINK = "n2n_gym.envs.shrink:LayerShrinkEnv"

_JOINT = "n2n_gym.envs.joint:LayerJointEnv"

register(id="N2NRemoval-v2", entry_point=_REMOVAL)
register(id="N2NShrink-v2", entry_point=_SHRINK)
register(id="N2NJoint-v1", entry_point=_JOINT)
# Earlier default fidelities (see DistillConfig), kept so results measured with them reproduce:
# the paper's constant 5e-4 (Removal/Shrink v0), then a constant 4e-3 (Removal/Shrink v1, Joint v0).
_PAPER_RATE = {"fidelity": {"lr": 5e-4, "lr_schedule": "constant"}}
_CONSTANT_RATE = {"fidelity": {"lr": 4e-3, "lr_schedule": "constant"}}
register(id="N2NRemoval-v0", entry_point=_REMOVAL, kwargs=_PAPER_RATE)
register(id="N2NShrink-v0", entry_point=_SHRINK, kwargs=_PAPER_RATE)
register(id="N2NRemoval-v1", entry_point=_REMOVAL, kwargs=_CONSTANT_RATE)
register(id="N2NShrink-v1", entry_point=_SHRINK, kwargs=_CONSTANT_RATE)
register(id="N2NJoint-v0", entry_point=_JOINT, kwargs=_CONSTANT_RATE)

# The same tasks answered from the shipped table (n2n_gym/tables): a step costs microseconds and
# info["eval_seconds"] is the live cost the table recorded (the simulated clock).
_TABLE = {"evaluator": "table"}
register(id="N2NRemoval-Tab-v0", entry_point=_REMOVAL, kwargs=_TABLE)
register(id="N2NShrink-Tab-v0", entry_point=_SHRINK, kwargs={**_TABLE, "ratios": (0.5, 1.0)})
register(id="N2NJoint-Tab-v0", entry_point=_JOINT, kwargs=_TABLE)

# Fashion-MNIST with its bundled small VGG: the table (no images needed) and its live twin, which
# reads the images from data_dir (torchvision's layout; download=True fetches them).
_FASHION = {"dataset": "fashion-mnist"}
register(id="N2NRemoval-FashionMNIST-Tab-v0", entry_point=_REMOVAL, kwargs={**_FASHION, **_TABLE})
register(
    id="N2NShrink-FashionMNIST-Tab-v0",
    entry_point=_SHRINK,
    kwargs={**_FASHION, **_TABLE, "ratios": (0.5, 1.0)},
)
register(id="N2NJoint-FashionMNIST-Tab-v0", entry_point=_JOINT, kwargs={**_FASHION, **_TABLE})
register(id="N2NRemoval-FashionMNIST-v0", entry_point=_REMOVAL, kwargs=_FASHION)
register(id="N2NShrink-FashionMNIST-v0", entry_point=_SHRINK, kwargs=_FASHION)
register(id="N2NJoint-FashionMNIST-v0", entry_point=_JOINT, kwargs=_FASHION)

# The larger bundled teacher: 16 decision units (2^14 removal students), still cheap on a CPU.
_NARROW = {"teacher": "bundled:narrow_resnet_mnist"}
register(id="N2NRemoval-NarrowResNet-MNIST-v0", entry_point=_REMOVAL, kwargs=_NARROW)
register(id="N2NShrink-NarrowResNet-MNIST-v0", entry_point=_SHRINK, kwargs=_NARROW)
register(id="N2NJoint-NarrowResNet-MNIST-v0", entry_point=_JOINT, kwargs=_NARROW)
# ... answered by its shipped surrogate (n2n_gym/surrogates; needs the [surrogate] extra).
_SURROGATE = {**_NARROW, "evaluator": "surrogate"}
register(id="N2NRemoval-NarrowResNet-MNIST-Sur-v0", entry_point=_REMOVAL, kwargs=_SURROGATE)
register(
    id="N2NShrink-NarrowResNet-MNIST-Sur-v0",
    entry_point=_SHRINK,
    kwargs={**_SURROGATE, "ratios": (0.5, 1.0)},
)
register(id="N2NJoint-NarrowResNet-MNIST-Sur-v0", entry_point=_JOINT, kwargs=_SURROGATE)

# The paper's teacher/data pairs. They ship without weights: make() says how to train one.
_PAPER_SETTINGS = {
    "ResNet18-CIFAR10": ("resnet18", "cifar10"),
    "ResNet18-CIFAR100": ("resnet18", "cifar100"),
    "ResNet18-SVHN": ("resnet18", "svhn"),
    "ResNet34-CIFAR10": ("resnet34", "cifar10"),
    "ResNet34-CIFAR100": ("resnet34", "cifar100"),
    "VGG19-CIFAR100": ("vgg19", "cifar100"),
}
for _name, (_arch, _dataset) in _PAPER_SETTINGS.items():
    _kwargs = {
        "teacher": None,
        "teacher_arch": _arch,
        "dataset": _dataset,
        "fidelity": "paper",
        "train_hint": f"python -m n2n_gym.teachers train {_arch} --dataset {_dataset} --data-dir DIR",
    }
    register(id=f"N2NRemoval-{_name}-v0", entry_point=_REMOVAL, kwargs=_kwargs)
    register(id=f"N2NShrink-{_name}-v0", entry_point=_SHRINK, kwargs=_kwargs)
