"""The select stage: the search's best few and the uniform student, trained briefly, the best kept."""

from __future__ import annotations

import pytest

from n2n_gym.atomic import write_json_atomic
from n2n_gym.baselines import uniform_width_student
from n2n_gym.runs import CONFIG_FILE, RunRecorder
from n2n_gym.search_settings import SettingsRefused, check_stages
from n2n_gym.selection import (
    search_candidates,
)
from n2n_gym.teachers import load_teacher

PROXY = '{"evaluator": "proxy"}'


def test_candidates_are_the_best_distinct_students_within_the_constraints(tmp_path):
    spec = load_teacher("default").spec
    students = [tuple([1.0] + [r] * 7 + [1.0]) for r in (0.25, 0.5, 0.75, 1.0)]
    write_json_atomic(tmp_path / CONFIG_FILE, {"algo": "random", "env": "N2NJoint-v1", "seed": 0})
    recorder = RunRecorder(tmp_path, "random", 0)

    def record(ratios, reward, **extra):
        info = {"student": {"teacher": spec.to_dict(), "ratios": list(ratios)}}
        info |= {"student_key": str(ratios), "rewards": extra.pop("rewards", {})} | extra
        recorder.record(reward, info)

    record(students[0], 0.5)
    record(students[1], 0.7)
    record(students[1], 0.7)  # a repeat is one candidate
    record(students[2], 0.9, rewards={"violated": ["max_params"]})  # over the limit: never
    record(students[3], 0.95, error="RuntimeError: diverged")  # failed: never
    ranked = search_candidates(tmp_path, 3)
    assert [(s.ratios, reward) for s, reward in ranked] == [(students[1], 0.7), (students[0], 0.5)]


def test_the_uniform_candidate_never_exceeds_the_size_limit():
    spec = load_teacher("default").spec
    for limit in (5_000, 9_070, 12_000, 30_000):
        nearest = uniform_width_student(spec, limit)
        below = uniform_width_student(spec, limit, at_most=True)
        size, nearest_size = below.plan().spec.params, nearest.plan().spec.params
        assert size <= limit
        # the largest that fits: the nearest when it fits, else the step below it
        assert size == nearest_size if nearest_size <= limit else size < nearest_size
    # a limit on MACs per image, as max_flops gives one
    macs = spec.flops // 10
    assert uniform_width_student(spec, macs, "flops", at_most=True).plan().spec.flops <= macs


def test_select_comes_after_a_search_stage():
    assert check_stages(("removal", "shrink", "select", "final")) == (
        "removal",
        "shrink",
        "select",
        "final",
    )
    with pytest.raises(SettingsRefused, match=r"search stage .* comes before it"):
        check_stages(("select", "final"))
