"""Teachers: the zoo of teacher architectures, training them, and loading trained ones.

The zoo (:mod:`~n2n_gym.teachers.zoo`) maps a name to a :class:`~n2n_gym.arch.NetworkSpec`
builder. :func:`train_teacher` (:mod:`~n2n_gym.teachers.training`, and its command line,
``python -m n2n_gym.teachers train NAME --dataset D``) trains a zoo network with plain supervised
learning and writes a checkpoint that :func:`load_teacher` (:mod:`~n2n_gym.teachers.loading`) reads
back; :func:`inspect_teacher` checks a teacher the same way without loading its weights. The
default MNIST teacher ships with the package (``n2n_gym/weights/small_vgg_mnist.pt``); users may
also bring a state dict plus a zoo name, or (opt-in, since unpickling runs code) a whole pickled
``nn.Module``.

Checkpoints are plain dicts of tensors and Python values, so they load with
``torch.load(weights_only=True)``. Accuracies are fractions in [0, 1]; the validation accuracy is
measured on the split :func:`n2n_gym.data.load_dataset` holds out of the training set with its
default seed, which is also the split the teacher was not trained on.
"""

from __future__ import annotations

from n2n_gym.teachers.errors import TeacherError
from n2n_gym.teachers.loading import (
    Teacher,
    TeacherInfo,
    inspect_teacher,
    load_teacher,
    weights_fingerprint,
)
from n2n_gym.teachers.training import CHECKPOINT_FORMAT, sidecar_path, train_teacher
from n2n_gym.teachers.zoo import (
    BUNDLED_DEFAULTS,
    BUNDLED_TEACHERS,
    ZOO,
    narrow_resnet,
    resnet,
    small_vgg,
    vgg,
    zoo_spec,
)

__all__ = [
    "BUNDLED_DEFAULTS",
    "BUNDLED_TEACHERS",
    "CHECKPOINT_FORMAT",
    "ZOO",
    "Teacher",
    "TeacherError",
    "TeacherInfo",
    "inspect_teacher",
    "load_teacher",
    "narrow_resnet",
    "resnet",
    "sidecar_path",
    "small_vgg",
    "train_teacher",
    "vgg",
    "weights_fingerprint",
    "zoo_spec",
]
