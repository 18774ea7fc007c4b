from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dqagent.core.policies import Observation, StepPolicy, step_rule

counts = st.integers(min_value=0, max_value=1200)
queue = st.integers(min_value=0, max_value=100_000)


@st.composite
def bounds(draw: st.DrawFn) -> tuple[int, int, float, float]:
    lo = draw(st.integers(0, 50))
    hi = draw(st.integers(max(lo, 1), 1000))
    up = draw(st.floats(0.01, 100, allow_nan=False))
    down = draw(st.floats(0.001, up, exclude_max=True, allow_nan=False))
    return lo, hi, up, down


def _rule(q: int, n: int, b: tuple[int, int, float, float]) -> int:
    lo, hi, up, down = b
    target = n + 1 if q > n * up else n - 1 if q < n * down else n
    return max(lo, min(hi, target))


@given(queue, counts, bounds())
def test_result_always_within_bounds(q: int, n: int, b: tuple[int, int, float, float]) -> None:
    lo, hi, _, _ = b
    assert lo <= step_rule(q, n, *b).target <= hi


@given(queue, counts, bounds())
def test_at_most_one_step_when_in_range(q: int, n: int, b: tuple[int, int, float, float]) -> None:
    lo, hi, _, _ = b
    if lo <= n <= hi:
        assert abs(step_rule(q, n, *b).target - n) <= 1


@given(queue, counts, bounds())
def test_agrees_with_the_seed_rule(q: int, n: int, b: tuple[int, int, float, float]) -> None:
    assert step_rule(q, n, *b).target == _rule(q, n, b)


@given(queue, queue, counts, bounds())
def test_monotone_in_queue_length(q1: int, q2: int, n: int, b: tuple[int, int, float, float]) -> None:
    small, big = sorted((q1, q2))
    assert step_rule(small, n, *b).target <= step_rule(big, n, *b).target


def test_examples_from_the_old_readme() -> None:
    assert step_rule(16, 3, 1, 10, 5, 2.5).target == 4   # 16 > 15
    assert step_rule(15, 3, 1, 10, 5, 2.5).target == 3   # not strictly above
    assert step_rule(7, 3, 1, 10, 5, 2.5).target == 2    # 7 < 7.5
    assert step_rule(0, 1, 1, 10, 5, 2.5).target == 1    # never below MIN
    assert step_rule(999, 10, 1, 10, 5, 2.5).target == 10  # never above MAX
    assert step_rule(0, 0, 2, 10, 5, 2.5).target == 2    # below MIN moves into range
    assert "queue 16 > 3 x 5 = 15" in step_rule(16, 3, 1, 10, 5, 2.5).reason


def test_step_policy_uses_the_rule() -> None:
    p = StepPolicy(1, 10, 5, 2.5)
    obs = Observation(now_s=0, queue_length=16, ready=16, in_flight=0, delayed=0, workers=3)
    decision, state = p.decide(obs, p.initial_state())
    assert decision.target == 4 and state is None


def test_thresholds_follow_the_configured_policy() -> None:
    from dqagent.core.policies import thresholds
    from dqagent.settings.config import parse_settings
    from dqagent.settings.workercmd import worker_shape

    seed = parse_settings({})
    assert thresholds(seed, 3, worker_shape(seed.dramatiq_command, 1)) == (15, 7.5)
    target = parse_settings({"SCALING_POLICY": "target", "DRAMATIQ_COMMAND": "python -m dramatiq -p 1 -t 4 app"})
    up, down = thresholds(target, 3, worker_shape(target.dramatiq_command, 1))  # 3 x 8 (2 x 4 threads), +/- 20 %
    assert (round(up, 6), round(down, 6)) == (28.8, 19.2)
