"""The scaling-policy settings: defaults, accepted values, one-line rejections."""

from __future__ import annotations

from dqagent.core.policies import POLICIES, StepPolicy, TargetPolicy, make_policy
from dqagent.settings.config import DEFAULTS, SCALING_POLICIES, Settings, parse_settings
from dqagent.settings.workercmd import worker_shape


def test_defaults_keep_the_step_rule_and_document_the_target_parameters() -> None:
    s = parse_settings({})
    assert s.scaling_policy == "step"
    assert (s.target_per_worker, s.target_tolerance) == (None, 0.2)  # None: auto, processes x 2 x threads
    assert (s.scale_up_max_step, s.scale_down_window_s) == (4, 120)


def test_dataclass_defaults_match_the_string_defaults() -> None:
    parsed = parse_settings({})
    for name in ("scaling_policy", "target_per_worker", "target_tolerance", "scale_up_max_step",
                 "scale_down_window_s"):
        assert getattr(parsed, name) == Settings.__dataclass_fields__[name].default, name


def test_accepted_names_are_exactly_the_registered_policies() -> None:
    assert set(SCALING_POLICIES) == set(POLICIES)


def test_valid_values_parse() -> None:
    s = parse_settings({"SCALING_POLICY": " Target ", "TARGET_PER_WORKER": "2.5", "TARGET_TOLERANCE": "0",
                        "SCALE_UP_MAX_STEP": "1000", "SCALE_DOWN_WINDOW": "0"})
    assert (s.scaling_policy, s.target_per_worker, s.target_tolerance) == ("target", 2.5, 0)
    assert (s.scale_up_max_step, s.scale_down_window_s) == (1000, 0)


def test_make_policy_builds_the_configured_class() -> None:
    seed = parse_settings({})
    assert isinstance(make_policy(seed, shape=worker_shape(seed.dramatiq_command, 4)), StepPolicy)
    s = parse_settings({"SCALING_POLICY": "target"})
    assert isinstance(make_policy(s, s.scaling_policy, shape=worker_shape(s.dramatiq_command, 4)), TargetPolicy)


def test_policy_keys_are_one_contiguous_block_of_defaults() -> None:
    keys = list(DEFAULTS)
    start = keys.index("SCALING_POLICY")
    assert keys[start:start + 5] == ["SCALING_POLICY", "TARGET_PER_WORKER", "TARGET_TOLERANCE",
                                  "SCALE_UP_MAX_STEP", "SCALE_DOWN_WINDOW"]
