"""The task: one plain, validated description of a search's world, and the one place that builds it.

A :class:`Task` names the teacher (and its architecture), the data set and its folder, the
validation split, the fidelity of one measurement, the device, the measurement cache and the
reward's constraints. It is a frozen dataclass of JSON-able values: a run's ``config.json`` holds
it, worker processes and Ray actors receive it, and rebuilding it from that file gives the same
world (:attr:`Task.fingerprint`).

Everything is checked when a task is made — unknown or misspelt keywords (with the closest
name), data files present, the device available, sizes positive and within the data set, a
teacher file that fits the data set — with one line that names the argument and the fix
(:class:`TaskError`). The checks are cheap (files, metadata, shapes) and run no parallel torch
work, so a process forked afterwards (Gymnasium's ``AsyncVectorEnv``) does not deadlock.

The expensive pieces are built on demand (the teacher is read and loaded once per process):
:meth:`Task.load_teacher`,
:meth:`Task.load_data`, :meth:`Task.build_measurer`, :meth:`Task.open_cache` and
:meth:`Task.build_evaluator`. The environments, the back-end workers, the final training and the
scripts all take a task and use these; none of them assembles the pieces itself.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from n2n_gym.cache import MeasurementCache, json_digest
from n2n_gym.data import (
    DATASETS,
    IMAGE_FOLDER,
    DataError,
    DatasetInfo,
    DatasetSplits,
    available_datasets,
    canonical_dataset,
    check_data_source,
    default_val_size,
    load_dataset,
)
from n2n_gym.distill import FIDELITY_PRESETS, DistillConfig
from n2n_gym.halving import HalvingConfig
from n2n_gym.image_folder import (
    ImageFolderConfig,
    folder_info,
    resolve_normalisation,
    resolve_shape,
    scan_folder,
)
from n2n_gym.reward import RewardConfig
from n2n_gym.teachers import Teacher, TeacherError, TeacherInfo, inspect_teacher, load_teacher
from n2n_gym.teachers.errors import argument_names
from n2n_gym.teachers.loading import is_bundled

if TYPE_CHECKING:
    from n2n_gym.arch import NetworkSpec
    from n2n_gym.evaluation import Evaluator
    from n2n_gym.image_folder import FolderLayout
    from n2n_gym.measure import Measurer
    from n2n_gym.surrogate import Surrogate
    from n2n_gym.table import Table

__all__ = ["MEASURERS", "Task", "TaskError", "closest", "unknown_keys_error"]

logger = logging.getLogger(__name__)

MEASURERS = ("distill", "proxy", "table", "surrogate")
MeasurerName = Literal["distill", "proxy", "table", "surrogate"]
# Measurers that answer from a file of measurements (a table, or a surrogate fit on tables).
LOOKUPS = ("table", "surrogate")


class TaskError(ValueError):
    """A task argument that cannot work; the message names the argument and the fix."""


def closest(name: str, known: list[str] | tuple[str, ...] | set[str]) -> str | None:
    """The known name closest to a misspelt ``name``, if any is close."""
    matches = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_keys_error(where: str, unknown: list[str], known: list[str] | set[str]) -> str:
    """One line about misspelt keywords: each with its closest known name."""
    parts = []
    for key in sorted(unknown):
        guess = closest(key, known)
        parts.append(f"{key!r}" + (f" (did you mean {guess!r}?)" if guess else ""))
    return f"{where}: unknown keyword {', '.join(parts)}; known: {', '.join(sorted(known))}"


def _config_from(cls: type, value: Any, argument: str) -> Any:
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if not isinstance(value, Mapping):
        raise TaskError(f"{argument}={value!r}: pass a dict of {cls.__name__} fields")
    known = {f.name for f in fields(cls)}
    unknown = [key for key in value if key not in known]
    if unknown:
        raise TaskError(unknown_keys_error(argument, unknown, known))
    try:
        return cls(**value)
    except (TypeError, ValueError) as error:
        raise TaskError(f"{argument}: {error}") from None


def _halving(value: Any) -> HalvingConfig:
    if isinstance(value, HalvingConfig):
        return value
    if not isinstance(value, Mapping):
        raise TaskError(f"halving={value!r}: pass a dict like {{'eta': 3, 'rungs': [0.25, 0.5]}}")
    try:
        return HalvingConfig.from_dict(value)
    except (TypeError, ValueError) as error:
        raise TaskError(str(error)) from None


def _fidelity(value: str | Mapping[str, Any] | DistillConfig) -> DistillConfig:
    if isinstance(value, str):
        if value not in FIDELITY_PRESETS:
            guess = closest(value, list(FIDELITY_PRESETS))
            raise TaskError(
                f"fidelity={value!r} is not a preset"
                + (f" (did you mean {guess!r}?)" if guess else "")
                + f"; presets are {', '.join(sorted(FIDELITY_PRESETS))}, or pass a dict of "
                "DistillConfig fields"
            )
        return FIDELITY_PRESETS[value]
    return _config_from(DistillConfig, value, "fidelity")


def _parse_device(device: str) -> Any:
    import torch

    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise TaskError(f"device={device!r} is not a device name; use auto, cpu or cuda") from None
    if resolved.type not in ("cpu", "cuda"):
        raise TaskError(f"device={device!r}: supported are auto, cpu and cuda[:N]")
    return resolved


def _check_device_here(device: str) -> None:
    """Refuse a device this machine cannot use, without initialising CUDA for ``"auto"``."""
    if device == "auto":
        return
    import torch

    resolved = _parse_device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise TaskError(
                f"device={device!r}: this machine has no usable CUDA GPU; pass device='cpu' or "
                "'auto'"
            )
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise TaskError(
                f"device={device!r}: this machine has {count} CUDA device(s) (cuda:0 ... "
                f"cuda:{count - 1})"
            )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


# Per process, keyed by the file's size and modification time too, so a teacher file replaced on
# disk is read again: the envs, the search and the run's final steps share one read and one load.
@functools.lru_cache(maxsize=32)
def _inspect(
    teacher: str,
    dataset: str,
    io: tuple | None,
    arch: str | None,
    pickle: bool,
    other: bool,
    stamp: tuple,
) -> TeacherInfo:
    with _task_names():
        return inspect_teacher(
            teacher, **_io(dataset, io), arch=arch, allow_pickle=pickle, allow_other_dataset=other
        )


@functools.lru_cache(maxsize=2)
def _load(
    teacher: str,
    dataset: str,
    io: tuple | None,
    arch: str | None,
    pickle: bool,
    other: bool,
    stamp: tuple,
) -> Teacher:
    # Shared read-only: measurers and the final training copy the module before changing it.
    with _task_names():
        return load_teacher(
            teacher,
            **_io(dataset, io),
            arch=arch,
            allow_pickle=pickle,
            allow_other_dataset=other,
            device="cpu",
        )


def _io(dataset: str, io: tuple | None) -> dict[str, Any]:
    """The data set's name, and for an image folder its input shape and class count."""
    if io is None:
        return {"dataset": dataset}
    return {"dataset": dataset, "input_shape": io[0], "num_classes": io[1]}


def _task_names():
    """Teacher errors name the task's keywords (a command line may have named its flags)."""
    return argument_names(
        arch="teacher_arch", allow_pickle="allow_pickle", allow_other_dataset="allow_other_dataset"
    )


@dataclass(frozen=True)
class Task:
    """A search's world as plain data; see the module docstring.

    Attributes:
        teacher: ``"default"`` (the bundled teacher of ``dataset``), ``"bundled:NAME"`` (another
            shipped one, e.g. ``"bundled:narrow_resnet_mnist"``), or the path of a checkpoint
            from ``python -m n2n_gym.teachers train``, a state dict (with ``teacher_arch``) or a
            whole pickled model (with ``allow_pickle``).
        teacher_arch: the architecture of a plain state dict: a zoo or torchvision model name, or
            ``"package.module:function"`` returning the untrained model (see
            :func:`n2n_gym.teachers.load_teacher`'s ``arch``).
        allow_pickle: accept a pickled ``nn.Module`` (unpickling runs code from the file).
        allow_other_dataset: use a checkpoint trained on another data set anyway.
        dataset: data set name (see :data:`n2n_gym.data.DATASETS`), or ``"imagefolder"``: the
            user's images in ``torchvision.datasets.ImageFolder`` layout at ``data_dir``.
        data_dir: its folder (torchvision layout); ``None`` for the bundled MNIST.
        image_folder: for ``"imagefolder"``: image size, channels and normalisation
            (:class:`~n2n_gym.image_folder.ImageFolderConfig` or a dict of its fields); what is
            left out is resolved when the task is made (the first image's size and channels; the
            normalisation the teacher's checkpoint records, else measured on the training
            images) and recorded here.
        val_size: training images held out as the validation split rewards are measured on;
            ``None``: 5000, or a tenth of an image folder's training images (at most 5000). For
            an image folder, a fidelity ``eval_size`` above it means the whole split.
        split_seed: seeds that hold-out (0 is the split teachers are trained without).
        fidelity: how much distillation one measurement gets.
        constraints: the reward's constraints and error reward.
        halving: successive halving of each student's budget (``{"eta": 3, "rungs": [0.25,
            0.5]}``, :class:`~n2n_gym.halving.HalvingConfig`): students that rank low at a rung
            stop there; ``None``: every student gets the whole fidelity. Needs the in-process
            distillation or a table (its rungs points of the table's learning curves).
        measurer: ``"distill"`` (real distillation), ``"table"`` (the measurements of a table
            built by :mod:`n2n_gym.tabulate`, in microseconds), ``"surrogate"`` (a model fit on
            sampled tables that predicts them, :mod:`n2n_gym.surrogate`) or ``"proxy"`` (a cheap
            deterministic stand-in for tests and debugging; needs no data).
        table: the table (or surrogate) file of ``measurer="table"`` (``"surrogate"``); ``None``:
            the one shipped for the teacher and data set. It must have been measured for this
            task's teacher weights, data split and fidelity.
        table_query: what a table answers per student: ``"seed"`` (its one measurement, as a live
            search with a fixed evaluation seed sees it; the default) or ``"mean"`` (the mean over
            the seeds the table measured it with, charged their summed cost); see
            :class:`~n2n_gym.table.TableMeasurer`.
        curve_points: a live measurement also records validation accuracy at this many evenly
            spaced points of the transfer budget (a learning curve, as tables store); 1: only
            the final accuracy.
        device: where students are distilled: ``"auto"`` (CUDA when present), ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``.
        cache_path: SQLite measurement cache shared by runs and processes; ``None``: no cache.
        inherit_weights: students start from the teacher's weights where shapes allow.
        eval_seed: seeds the re-initialised layers of each student.
        teacher_fingerprint: the teacher's weights fingerprint, recorded once a search has loaded
            it (:meth:`resolved`); a task rebuilt from a file refuses other weights at ``teacher``.
    """

    teacher: str = "default"
    teacher_arch: str | None = None
    allow_pickle: bool = False
    allow_other_dataset: bool = False
    dataset: str = "mnist"
    data_dir: str | None = None
    image_folder: ImageFolderConfig | None = None
    val_size: int | None = None
    split_seed: int = 0
    fidelity: DistillConfig = field(default_factory=lambda: FIDELITY_PRESETS["fast"])
    constraints: RewardConfig = field(default_factory=RewardConfig)
    halving: HalvingConfig | None = None
    measurer: MeasurerName = "distill"
    table: str | None = None
    table_query: str = "seed"
    curve_points: int = 1
    device: str = "auto"
    cache_path: str | None = None
    inherit_weights: bool = True
    eval_seed: int = 0
    teacher_fingerprint: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str | os.PathLike):
            raise TaskError(f"teacher={self.teacher!r}: pass 'default' or a file path")
        object.__setattr__(self, "dataset", canonical_dataset(self.dataset))
        # Workers may start in another directory (Ray does): pin relative paths to this one.
        if not is_bundled(self.teacher):
            object.__setattr__(self, "teacher", _absolute(os.fspath(self.teacher)))
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", _absolute(os.fspath(self.data_dir)))
        if self.cache_path is not None:
            object.__setattr__(self, "cache_path", _absolute(os.fspath(self.cache_path)))
        if self.table is not None:
            object.__setattr__(self, "table", _absolute(os.fspath(self.table)))
        object.__setattr__(self, "fidelity", _fidelity(self.fidelity))
        object.__setattr__(
            self, "constraints", _config_from(RewardConfig, self.constraints, "constraints")
        )
        if self.halving is not None:
            object.__setattr__(self, "halving", _halving(self.halving))
        self._check()

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_kwargs(
        cls,
        *,
        train_hint: str | None = None,
        other_keywords: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> Task:
        """A task from ``gymnasium.make`` keyword arguments (plain JSON-able values).

        The keywords are the field names, with ``fidelity`` also a preset name or a dict of
        :class:`~n2n_gym.distill.DistillConfig` fields, ``constraints`` a dict of
        :class:`~n2n_gym.reward.RewardConfig` fields, and ``evaluator`` another name for
        ``measurer``.

        Args:
            train_hint: how to train the teacher, for the error when ``teacher`` is ``None``.
            other_keywords: keywords the caller takes besides the task's (suggested for typos).
            kwargs: the arguments.

        Raises:
            TaskError: an unknown or misspelt keyword (naming the closest one) or a bad value.
        """
        if "evaluator" in kwargs:
            if "measurer" in kwargs:
                raise TaskError("pass evaluator= or measurer=, not both (they are the same)")
            kwargs["measurer"] = kwargs.pop("evaluator")
        known = {f.name for f in fields(cls)}
        unknown = [key for key in kwargs if key not in known]
        if unknown:
            raise TaskError(
                unknown_keys_error("arguments", unknown, known | {"evaluator"} | other_keywords)
            )
        if "teacher" in kwargs and kwargs["teacher"] is None:
            dataset = kwargs.get("dataset", "mnist")
            arch = kwargs.get("teacher_arch") or "teacher"
            raise TaskError(
                f"teacher=None: this environment needs a trained {arch} for {dataset}: pass "
                "teacher=PATH"
                + (f" (train one with `{train_hint}`)" if train_hint else "")
                + (" and data_dir=DIR" if dataset != "mnist" and not kwargs.get("data_dir") else "")
            )
        try:
            return cls(**kwargs)
        except TypeError as error:
            raise TaskError(f"task: {error}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """The task :meth:`to_dict` wrote (for example from a run's ``config.json``)."""
        return cls.from_kwargs(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; ``Task.from_dict(task.to_dict()) == task``."""
        data = asdict(self)
        data["fidelity"] = self.fidelity.to_dict()
        data["constraints"] = self.constraints.to_dict()
        data["halving"] = self.halving.to_dict() if self.halving is not None else None
        if self.image_folder is not None:
            data["image_folder"] = self.image_folder.to_dict()
        return data

    def replace(self, **changes: Any) -> Task:
        """A copy with some fields changed (checked like a new task)."""
        return replace(self, **changes)

    @property
    def fingerprint(self) -> str:
        """Identifies the world: equal for tasks that measure the same students the same way."""
        return json_digest(self.to_dict())[:16]

    # ---- checks ---------------------------------------------------------------------------------
    def _check(self) -> None:
        if self.measurer not in MEASURERS:
            raise TaskError(
                f"evaluator={self.measurer!r}: use 'distill' (real distillation), 'table' (a "
                "measured table), 'surrogate' (a model of one) or 'proxy' (cheap stand-in)"
            )
        if self.dataset not in available_datasets():
            guess = closest(str(self.dataset), available_datasets())
            raise TaskError(
                f"dataset={self.dataset!r} is unknown"
                + (f" (did you mean {guess!r}?)" if guess else "")
                + f"; available: {', '.join(available_datasets())} (your own images: "
                "dataset='imagefolder', data_dir=ROOT)"
            )
        for name in ("allow_pickle", "allow_other_dataset", "inherit_weights"):
            if not isinstance(getattr(self, name), bool):
                raise TaskError(f"{name}={getattr(self, name)!r} must be true or false")
        for name in ("split_seed", "eval_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TaskError(f"{name}={value!r} must be an integer")
        info = self._resolve_data()
        if not _positive_int(self.val_size) or self.val_size >= info.train_size:
            raise TaskError(
                f"val_size={self.val_size!r}: hold out between 1 and {info.train_size - 1} of the "
                f"{info.train_size} training images of {self.dataset!r} (default 5000)"
            )
        eval_size = self.fidelity.eval_size
        if eval_size is not None and eval_size > self.val_size:
            raise TaskError(
                f"fidelity eval_size={eval_size} exceeds val_size={self.val_size} validation "
                "images: lower eval_size or raise val_size"
            )
        if not _positive_int(self.curve_points):
            raise TaskError(f"curve_points={self.curve_points!r} must be a positive integer")
        if self.table is not None and self.measurer not in LOOKUPS:
            raise TaskError(f"table={self.table!r} needs evaluator='table' or 'surrogate'")
        if self.table_query not in ("seed", "mean"):
            raise TaskError(f"table_query={self.table_query!r}: use 'seed' or 'mean'")
        if self.table_query != "seed" and self.measurer not in LOOKUPS:
            raise TaskError(
                f"table_query={self.table_query!r} needs evaluator='table' or 'surrogate'"
            )
        if not isinstance(self.device, str):
            raise TaskError(f"device={self.device!r}: pass auto, cpu or cuda[:N]")
        if self.device != "auto":
            _parse_device(self.device)
        if self.teacher_arch is not None and not isinstance(self.teacher_arch, str):
            raise TaskError(
                f"teacher_arch={self.teacher_arch!r} must be a zoo or torchvision model name, or "
                "'package.module:function' returning the model"
            )
        if self.measurer == "distill" and self.dataset != IMAGE_FOLDER:
            try:
                check_data_source(self.dataset, self.data_dir)
            except DataError as error:
                raise TaskError(str(error)) from None
        if self.cache_path is not None and Path(self.cache_path).is_dir():
            raise TaskError(
                f"cache_path={self.cache_path!r} is a folder; pass a file such as "
                f"{Path(self.cache_path) / 'rewards.sqlite'}"
            )
        info = self.teacher_info  # reads and checks the teacher file
        if self.dataset == IMAGE_FOLDER and self.image_folder.mean is None:
            self._set(
                "image_folder",
                resolve_normalisation(self._folder_layout(), self.image_folder, info.normalisation),
            )
        if self.measurer in LOOKUPS:
            self.load_lookup()  # exists, intact, and measured for this task

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _folder_layout(self) -> FolderLayout:
        try:
            return scan_folder(self.data_dir)
        except DataError as error:
            raise TaskError(str(error)) from None

    def _resolve_data(self) -> DatasetInfo:
        """The data set's facts; for an image folder, its size and channels resolved here, and the
        default validation and evaluation sizes fitted to its image count."""
        if self.dataset != IMAGE_FOLDER:
            if self.image_folder is not None:
                raise TaskError(
                    f"image_folder= applies to dataset='imagefolder', not {self.dataset!r}"
                )
            if self.val_size is None:
                self._set(
                    "val_size", default_val_size(self.dataset, DATASETS[self.dataset].train_size)
                )
            return DATASETS[self.dataset]
        if self.data_dir is None:
            raise TaskError(
                "dataset='imagefolder' needs data_dir: the root of your image folder "
                "(ROOT/<class>/x.png, or ROOT/train/<class>/x.png and ROOT/test/<class>/x.png)"
            )
        layout = self._folder_layout()
        try:
            config = resolve_shape(layout, ImageFolderConfig.from_value(self.image_folder))
        except DataError as error:
            raise TaskError(str(error)) from None
        self._set("image_folder", config)
        if self.val_size is None:
            self._set("val_size", default_val_size(self.dataset, len(layout.train)))
        eval_size = self.fidelity.eval_size
        if eval_size is not None and _positive_int(self.val_size) and eval_size > self.val_size:
            self._set("fidelity", replace(self.fidelity, eval_size=None))
        return folder_info(layout, config)

    def check_device(self) -> None:
        """Refuse a :attr:`device` this machine does not have (a Ray cluster checks its own).

        Raises:
            TaskError: naming the device and the fix.
        """
        _check_device_here(self.device)

    # ---- the pieces -----------------------------------------------------------------------------
    @property
    def teacher_info(self) -> TeacherInfo:
        """The teacher's architecture and recorded facts, read from its file without its weights.

        Raises:
            TaskError: the teacher is missing, unreadable or does not fit the data set.
        """
        try:
            return _inspect(*self._teacher_key())
        except TeacherError as error:
            raise TaskError(str(error)) from None

    def _teacher_key(self) -> tuple:
        path = Path(self.teacher)
        stamp = ()
        if not is_bundled(self.teacher) and path.is_file():
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        io = None
        if self.dataset == IMAGE_FOLDER:
            config = self.image_folder
            io = ((config.channels, *config.image_size), len(self._folder_layout().classes))
        return (
            self.teacher,
            self.dataset,
            io,
            self.teacher_arch,
            self.allow_pickle,
            self.allow_other_dataset,
            stamp,
        )

    @property
    def teacher_spec(self) -> NetworkSpec:
        """The teacher's architecture (cheap: read from the file)."""
        return self.teacher_info.spec

    def load_teacher(self) -> Teacher:
        """The teacher on the CPU, checked against :attr:`teacher_fingerprint` when recorded.

        Raises:
            TaskError: the file holds other weights than the ones this task was made with.
        """
        import socket

        try:
            teacher = _load(*self._teacher_key())
        except TeacherError as error:
            raise TaskError(str(error)) from None
        if self.teacher_fingerprint and teacher.fingerprint != self.teacher_fingerprint:
            raise TaskError(
                f"teacher {self.teacher!r} on {socket.gethostname()} has fingerprint "
                f"{teacher.fingerprint}, but this task was made with {self.teacher_fingerprint}: "
                "give every machine the same teacher file"
            )
        return teacher

    def resolved(self, teacher: Teacher | None = None) -> Task:
        """This task with the teacher's fingerprint recorded (loads the teacher if not given)."""
        teacher = teacher if teacher is not None else self.load_teacher()
        return self.replace(teacher_fingerprint=teacher.fingerprint)

    def load_data(self) -> DatasetSplits:
        """The data set, with this task's validation split."""
        try:
            return load_dataset(
                self.dataset,
                self.data_dir,
                val_size=self.val_size,
                seed=self.split_seed,
                image_folder=self.image_folder,
            )
        except DataError as error:
            raise TaskError(str(error)) from None

    @property
    def table_path(self) -> Path:
        """The file of ``measurer="table"`` (``"surrogate"``): :attr:`table`, or the shipped one.

        Raises:
            TaskError: none is given and none is shipped for this teacher and data set.
        """
        from n2n_gym.surrogate import shipped_surrogate
        from n2n_gym.table import shipped_table

        if self.table is not None:
            return Path(self.table)
        kind = "surrogate" if self.measurer == "surrogate" else "table"
        shipped = (shipped_surrogate if kind == "surrogate" else shipped_table)(
            self.teacher, self.dataset
        )
        if shipped is None:
            how = (
                "`n2n-gym surrogate fit`" if kind == "surrogate" else "`python -m n2n_gym.tabulate`"
            )
            raise TaskError(
                f"evaluator={kind!r}: no {kind} is shipped for teacher={self.teacher!r} on "
                f"{self.dataset!r}; build one with {how} and pass table=PATH"
            )
        return shipped

    def load_table(self) -> Table:
        """The measured table of ``measurer="table"``, checked against this task.

        Raises:
            TaskError: missing, corrupt, or measured for other teacher weights, data or fidelity.
        """
        from n2n_gym.table import Table

        table = self.load_lookup()
        if not isinstance(table, Table):
            raise TaskError(f"{self.table_path} is a surrogate: pass evaluator='surrogate'")
        return table

    def load_lookup(self) -> Table | Surrogate:
        """The table (``measurer="table"``) or surrogate (``"surrogate"``) this task answers from,
        checked against this task.

        Raises:
            TaskError: missing, corrupt, of the other kind, or measured for other teacher
                weights, data or fidelity.
        """
        from n2n_gym.surrogate import load_surrogate
        from n2n_gym.table import TableError, load_table

        path = self.table_path
        try:
            lookup = load_surrogate(path) if self.measurer == "surrogate" else load_table(path)
            lookup.check_task(self, self.load_teacher().fingerprint)
        except TableError as error:
            raise TaskError(str(error)) from None
        return lookup

    def build_measurer(
        self, teacher: Teacher | None = None, data: DatasetSplits | None = None
    ) -> Measurer:
        """The measurer this task describes: distillation, a table, or the proxy.

        Args:
            teacher: the loaded teacher, if the caller has it (otherwise it is loaded).
            data: the loaded data set, if the caller has it (a Ray worker gets it from the
                object store; otherwise it is loaded).
        """
        from n2n_gym.measure import DistillationMeasurer, ProxyMeasurer
        from n2n_gym.table import TableMeasurer

        if self.measurer == "table":
            return TableMeasurer(self.load_table(), self.table_query)
        if self.measurer == "surrogate":
            from n2n_gym.surrogate import SurrogateMeasurer

            return SurrogateMeasurer(self.load_lookup(), self.table_query)
        if self.measurer == "proxy":
            info = self.teacher_info
            return ProxyMeasurer(info.spec, teacher_accuracy=info.val_accuracy or 0.99)
        return DistillationMeasurer(
            teacher if teacher is not None else self.load_teacher(),
            data if data is not None else self.load_data(),
            self.fidelity,
            device=self.device,
            inherit_weights=self.inherit_weights,
            seed=self.eval_seed,
            curve_points=self.curve_points,
        )

    def open_cache(self) -> MeasurementCache | None:
        """The measurement cache at :attr:`cache_path`, or ``None``.

        The proxy is instant, so it is not cached: a database would only slow it down. A table is
        its own cache; it gets a private in-memory one, so that a repeated student is a cache hit
        that costs no simulated time.
        """
        if self.measurer in LOOKUPS:
            return MeasurementCache(":memory:")
        if self.cache_path is None or self.measurer != "distill":
            return None
        return MeasurementCache(self.cache_path)

    def build_evaluator(self, measurer: Measurer | None = None) -> Evaluator:
        """Measurer + cache + this task's constraints.

        Args:
            measurer: measure with this (a back-end) instead of :meth:`build_measurer`'s.
        """
        from n2n_gym.evaluation import Evaluator

        measurer = measurer or self.build_measurer()
        if self.halving is not None and self.measurer == "proxy":
            raise TaskError("halving: the proxy measures no learning curve; use distill or table")
        if self.halving is not None and hasattr(measurer, "check_rungs"):
            try:
                measurer.check_rungs(self.halving.rungs)
            except ValueError as error:
                raise TaskError(str(error)) from None
        try:
            evaluator = Evaluator(measurer, self.constraints, halving=self.halving)
        except ValueError as error:
            raise TaskError(str(error)) from None
        # Opened once the evaluator is accepted: a refused start leaves no cache file behind.
        evaluator.cache = self.open_cache()
        return evaluator


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())
