"""Network descriptions, decision rules and students: shapes, parameter counts, inheritance."""

import json
import random
import zlib

import numpy as np
import pytest
import torch
from torch import nn

from n2n_gym.arch import (
    DESCRIPTOR_SIZE,
    KINDS,
    LAYER_KINDS,
    InvalidArchitecture,
    Layer,
    NetworkSpec,
    StudentDescription,
    unit_descriptors,
    unit_rules,
)
from n2n_gym.surgery import KIND_SURGERY, SpecNetwork, build_module, build_student
from n2n_gym.teachers import ZOO, zoo_spec


def _shape(name: str) -> tuple[int, int, int]:
    return (1, 28, 28) if name == "small_vgg" else (3, 16, 16)  # small inputs keep the test fast


@pytest.fixture(scope="module")
def teachers() -> dict:
    return {name: build_module(zoo_spec(name, _shape(name), 10), seed=0).eval() for name in ZOO}


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_analytic_counts_match_the_built_module(name, teachers):
    spec = teachers[name].spec
    assert spec.params == _param_count(teachers[name])
    assert spec.flops > 0
    assert spec.num_units >= 9


def test_known_sizes():
    assert zoo_spec("resnet18", (3, 32, 32), 10).params == 11_173_962  # the paper's 11.17 M
    assert zoo_spec("small_vgg", (1, 28, 28), 10).num_units == 9


@pytest.mark.parametrize("name", sorted(ZOO))
def test_rules_protect_stem_and_head(name, teachers):
    rules = unit_rules(teachers[name].spec)
    assert not rules[0].removable and not rules[-1].removable and not rules[-1].shrinkable
    assert rules[-1].reason
    assert any(rule.removable for rule in rules)


STUDENTS_PER_ARCHITECTURE = 25


def _real_shape(name: str) -> tuple[int, int, int]:
    return (1, 28, 28) if name == "small_vgg" else (3, 32, 32)


def _random_students(spec: NetworkSpec, count: int, seed: int) -> list[StudentDescription]:
    """``count`` distinct students that each remove or shrink something the rules allow.

    Each student changes every unit with its own probability, so the set mixes light and heavy
    compression; a unit both removable and shrinkable is removed or shrunk with equal odds.
    """
    rng = random.Random(seed)
    rules = unit_rules(spec)
    students: dict[tuple[float, ...], StudentDescription] = {}
    for _ in range(100 * count):
        if len(students) == count:
            break
        change = rng.choice((0.1, 0.3, 0.6, 1.0))
        ratios = []
        for rule in rules:
            options = [0.0] if rule.removable else []
            if rule.shrinkable:
                options.append(round(rng.uniform(0.05, 0.95), 2))
            ratios.append(rng.choice(options) if options and rng.random() < change else 1.0)
        if any(r < 1.0 for r in ratios):
            description = StudentDescription(spec, tuple(ratios))
            students[description.ratios] = description
    return list(students.values())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_student_the_rules_allow_builds_runs_and_is_smaller(name):
    """Random students of a real-size teacher, using only decisions unit_rules allows, all work."""
    spec = zoo_spec(name, _real_shape(name), 10)
    teacher = build_module(spec, seed=0).eval()
    students = _random_students(spec, STUDENTS_PER_ARCHITECTURE, seed=zlib.crc32(name.encode()))
    assert any(0.0 in s.ratios for s in students), "no student removes a unit"
    assert any(0.0 < r < 1.0 for s in students for r in s.ratios), "no student shrinks a unit"
    x = torch.randn(2, *spec.input_shape, generator=torch.Generator().manual_seed(0))
    valid = 0
    for description in students:
        context = f"{name} ratios {list(description.ratios)}"
        plan = description.plan()  # allowed decisions must give a working network
        built_plan, student = build_student(teacher, description)
        assert built_plan == plan, context
        assert _param_count(student) == plan.spec.params, context
        with torch.no_grad():
            out = student.eval()(x)
        assert out.shape == (2, spec.num_classes), context
        assert torch.isfinite(out).all(), context
        assert plan.spec.params < spec.params, context
        valid += 1
    assert valid >= STUDENTS_PER_ARCHITECTURE


@pytest.mark.parametrize("name", sorted(ZOO))
def test_forbidden_and_malformed_decisions_are_refused(name, teachers):
    spec = teachers[name].spec
    with pytest.raises(InvalidArchitecture, match="cannot be removed"):
        build_student(teachers[name], [0.0] + [1.0] * (spec.num_units - 1))
    with pytest.raises(InvalidArchitecture, match="decisions"):
        build_student(teachers[name], [1.0] * (spec.num_units + 1))
    with pytest.raises(InvalidArchitecture, match="outside"):
        build_student(teachers[name], [1.5] * spec.num_units)


def test_all_keep_student_is_the_teacher(teachers):
    teacher = teachers["small_vgg"]
    _, student = build_student(teacher, [1.0] * teacher.spec.num_units)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(student.eval()(x), teacher(x))


def test_removing_identity_shaped_units_keeps_most_of_the_function(teachers):
    """Inherited weights: removing one block of a trained-like net changes outputs but stays close."""
    teacher = teachers["resnet18"]
    ratios = [1.0] * teacher.spec.num_units
    ratios[2] = 0.0  # second block of stage 1: identity skip
    plan, student = build_student(teacher, ratios, inherit_weights=True)
    assert plan.spec.num_units == teacher.spec.num_units - 1
    for s_layer, origin in zip(plan.spec.layers, plan.origins, strict=True):
        if s_layer.kind == "residual":
            torch.testing.assert_close(
                student[plan.origins.index(origin)].conv1.weight, teacher[origin].conv1.weight
            )


def test_shrinking_keeps_the_largest_filters(teachers):
    teacher = teachers["small_vgg"]
    spec = teacher.spec
    ratios = [1.0] * spec.num_units
    ratios[1] = 0.5  # second conv group, 32 -> 16 filters
    _plan, student = build_student(teacher, ratios, inherit_weights=True)
    index = spec.unit_indices[1]
    weight = teacher[index][0].weight
    norms = weight.abs().flatten(1).sum(1)
    kept = norms.topk(16).indices.sort().values
    torch.testing.assert_close(student[index][0].weight, weight[kept])
    # the consumer keeps the matching input channels
    consumer = spec.unit_indices[2]
    torch.testing.assert_close(student[consumer][0].weight, teacher[consumer][0].weight[:, kept])
    # re-initialised students do not copy
    _, fresh = build_student(teacher, ratios, inherit_weights=False, seed=1)
    assert not torch.equal(fresh[index][0].weight, weight[kept])


def test_removed_projection_block_keeps_its_shortcut(teachers):
    teacher = teachers["resnet18"]
    spec = teacher.spec
    position = next(p for p, i in enumerate(spec.unit_indices) if spec.layers[i].projection)
    ratios = [1.0] * spec.num_units
    ratios[position] = 0.0
    plan, student = build_student(teacher, ratios)
    shortcut = plan.spec.layers[spec.unit_indices[position]]
    assert shortcut.kind == "shortcut"
    torch.testing.assert_close(
        student[spec.unit_indices[position]][0].weight,
        teacher[spec.unit_indices[position]].downsample[0].weight,
    )


def test_student_description_round_trips_and_rebuilds_the_same_module(teachers):
    teacher = teachers["resnet50"]
    ratios = [1.0, 0.0, 0.5] + [1.0] * (teacher.spec.num_units - 3)
    description = StudentDescription(teacher.spec, tuple(ratios))
    again = StudentDescription.from_json(json.loads(json.dumps(description.to_json())))
    assert again == description and again.key == description.key
    _, a = build_student(teacher, description, seed=3)
    _, b = build_student(teacher, again, seed=3)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    assert StudentDescription(teacher.spec, (*tuple(ratios[:-1]), 1.00001)).key == description.key


def test_description_from_bad_json_is_refused():
    with pytest.raises(InvalidArchitecture, match="malformed"):
        StudentDescription.from_dict({"ratios": [1.0]})
    with pytest.raises(InvalidArchitecture, match="unknown layer field"):
        Layer.from_dict({"kind": "conv", "colour": 3})


def test_descriptors_are_normalised_and_network_independent(teachers):
    for teacher in teachers.values():
        rows = unit_descriptors(teacher.spec)
        assert rows.shape == (teacher.spec.num_units, DESCRIPTOR_SIZE)
        assert np.all(rows >= 0) and np.all(rows <= 1.5)
        np.testing.assert_allclose(rows[:, -2].sum(), 1.0, atol=0.02)  # parameter shares
    # the same layer reads the same in two different networks
    a, b = zoo_spec("vgg11", (3, 32, 32), 10), zoo_spec("vgg16", (3, 32, 32), 10)
    np.testing.assert_array_equal(unit_descriptors(a)[1, :8], unit_descriptors(b)[2, :8])


def test_a_flattening_head_protects_units_that_change_spatial_size():
    layers = (
        Layer("conv", 1, 8, 3, 1, 1, activation="relu"),
        Layer("conv", 8, 8, 3, 2, 1, activation="relu"),
        Layer("conv", 8, 8, 3, 1, 1, activation="relu"),
        Layer("flatten"),
        Layer("linear", 8 * 14 * 14, 10),
    )
    spec = NetworkSpec((1, 28, 28), 10, layers)
    rules = unit_rules(spec)
    assert not rules[1].removable and "spatial" in rules[1].reason
    assert rules[2].removable
    _plan, student = build_student(build_module(spec, 0), [1.0, 1.0, 0.0, 1.0][: spec.num_units])
    assert student(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_every_layer_kind_has_surgery():
    assert tuple(KINDS) == LAYER_KINDS and set(KIND_SURGERY) == set(KINDS)
    for name, kind in KINDS.items():
        if kind.changes_channels:
            assert KIND_SURGERY[name].inherit and KIND_SURGERY[name].kept_outputs, name


def test_unknown_layer_kinds_are_refused_by_name():
    spec = NetworkSpec((1, 28, 28), 10, (Layer("flatten"), Layer("bogus")))
    with pytest.raises(InvalidArchitecture, match=r"layer 1 \(bogus\): unknown layer kind"):
        spec.shapes()
    with pytest.raises(InvalidArchitecture, match="unknown layer kind 'bogus'"):
        SpecNetwork(spec)
