"""The forecaster (dqagent.core.forecast) on synthetic series with known periods, gaps, a change of rhythm and a
DST change, and the floor (dqagent.core.prediction): it never lowers the reactive target and never leaves
[MIN, MAX]."""

from __future__ import annotations

import json
from dataclasses import replace
from zoneinfo import ZoneInfo

from hypothesis import example, given
from hypothesis import strategies as st

from dqagent.core.forecast import RESOLUTION_S, Forecaster, Kind, local_slot
from dqagent.core.policies import Decision, Observation, StepPolicy, read_interval_s
from dqagent.core.prediction import Forecast, Mode, floor
from dqagent.core.predictor import watch_s
from dqagent.core.step import Rules
from dqagent.settings.config import parse_settings

T0 = 1_800_000_000.0  # a Friday, 2027-01-15 08:00 UTC


def feed(f: Forecaster, start: float, seconds: int, period: int, size: int, every: int = 2,
         lead: float = 20.0) -> None:
    """A batch of `size` arriving at each multiple of `period` and drained within 20 s, read every `every` s."""
    for i in range(0, seconds, every):
        t = start + i
        phase = (t - T0) % period
        f.observe(t, max(0, size - int(phase * size / 20)) if phase < 20 else 0)
        f.commit(t, lead)


def test_a_regular_batch_is_found_and_forecast_a_lead_ahead() -> None:
    f = Forecaster()
    feed(f, T0, 1800, 120, 50)
    assert f.period is not None and f.period.seconds == 120
    now = T0 + 1800 + 95  # 25 s before the next batch
    out = f.outlook(now, now + 30)
    assert out is not None and out.kind is Kind.RISE and out.value == 50
    quiet = f.outlook(now - 60, now - 40)  # between batches
    assert quiet is not None and quiet.value == 0
    assert f.error_recent() is not None and f.error_recent() <= 0.1


def test_a_one_minute_burst_is_forecast_and_scored_before_the_fourth() -> None:
    """Three bursts seen (15, 75, 135 s), read every second: before the fourth (195 s) the period is found, its
    error is known (the history it was found in is scored at once) and the burst is forecast a lead ahead."""
    f = Forecaster()
    for i in range(0, 186):
        f.observe(T0 + i, 40 if i >= 15 and (i - 15) % 60 < 8 else 0)
        f.commit(T0 + i, 5.0)
    assert f.period is not None and f.period.seconds == 60
    error = f.error_recent()
    assert error is not None and error <= 0.1
    now = T0 + 186
    out = f.outlook(now, now + 10)
    assert out is not None and out.kind is Kind.RISE and out.value == 40


def test_no_rhythm_no_period() -> None:
    import random
    rng = random.Random(7)
    f = Forecaster()
    for i in range(0, 3600, 2):
        f.observe(T0 + i, rng.randint(0, 100))
    assert f.period is None
    assert f.outlook(T0 + 3600, T0 + 3630) is None  # no profile yet either: nothing to say


def test_a_gap_is_skipped_not_read_as_zero() -> None:
    f = Forecaster()
    feed(f, T0, 1200, 120, 40)
    feed(f, T0 + 2400, 1200, 120, 40)  # the agent was down for 20 minutes
    assert f.period is not None and f.period.seconds == 120
    assert not any(T0 + 1200 <= b * RESOLUTION_S < T0 + 2400 for b in f.recent)


def test_a_change_of_rhythm_is_followed() -> None:
    f = Forecaster()
    feed(f, T0, 1800, 120, 40)
    assert f.period is not None and f.period.seconds == 120
    feed(f, T0 + 1800, 5400, 300, 40)
    # Within the 2-hour window 600 s fits both rhythms best: still right for the new one (a multiple of it).
    assert f.period is not None and f.period.seconds in (300, 600)
    now = T0 + 7200 + 275  # 25 s before a batch of the new rhythm
    out = f.outlook(now, now + 30)
    assert out is not None and out.value == 40
    assert f.error_recent() is not None and f.error_recent() <= 0.2
    feed(f, T0 + 7200, 7200, 300, 40)  # once the old rhythm has left the window, the period is the new one
    assert f.period is not None and f.period.seconds == 300


def test_the_daily_profile_follows_local_time_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 2026-03-29 03:00 Berlin time: UTC+1 becomes UTC+2, so 09:00 local is 08:00 UTC before and 07:00 UTC after.
    before, after, change = 1774684800.0, 1774767600.0, 1774746000.0  # 28th 09:00, 29th 09:00, the change
    assert local_slot(before, berlin)[1] == local_slot(after, berlin)[1] == 9 * 12
    f = Forecaster(berlin)
    day = 86400.0
    start = 1774224000.0  # 2026-03-23 00:00 UTC
    for i in range(0, int(6 * day), 60):  # six days: a rush from 09:00 to 10:00 local time every day
        t = start + i
        hour = ((t + (3600 if t < change else 7200)) % day) / 3600  # Berlin's local hour
        f.observe(t, 80 if 9 <= hour < 10 else 5)
    assert f.period is None
    at_nine = after + 600  # 09:10 local on the 29th, after the change: 07:10 UTC
    level = f.outlook(at_nine, at_nine + 60)
    assert level is not None and level.kind is Kind.LEVEL and level.value > 60
    at_eight_utc = after + 3600 + 600  # 08:10 UTC, where the rush was before the change: 10:10 local
    quiet = f.outlook(at_eight_utc, at_eight_utc + 60)
    assert quiet is not None and quiet.value < 20


def test_it_survives_a_restart_through_json() -> None:
    f = Forecaster()
    feed(f, T0, 1800, 120, 50)
    g = Forecaster.from_dict(json.loads(json.dumps(f.to_dict())))
    assert g.period is not None and f.period is not None and g.period.seconds == f.period.seconds
    now = T0 + 1800 + 95
    assert g.outlook(now, now + 30) == f.outlook(now, now + 30)
    assert g.error_recent() == f.error_recent()


def test_a_damaged_file_is_refused() -> None:
    for bad in ({}, {"version": 99}, {"version": 1, "recent": "x"}):
        try:
            Forecaster.from_dict(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


counts = st.floats(min_value=0, max_value=10_000, allow_nan=False)


@given(target=st.integers(0, 50), workers=st.integers(0, 50), lo=st.integers(0, 10), span=st.integers(0, 40),
       ahead=st.none() | counts, back=st.none() | counts, error=st.none() | st.floats(0, 5),
       each=st.floats(0.5, 50), mode=st.sampled_from([Mode.SHADOW, Mode.ON]))
def test_the_floor_never_lowers_the_target_nor_leaves_its_bounds(
        target: int, workers: int, lo: int, span: int, ahead: float | None, back: float | None,
        error: float | None, each: float, mode: Mode) -> None:
    hi = lo + span
    target = max(lo, min(hi, target))
    decision, predicted = floor(Decision(target, "policy"), workers, Forecast(mode, ahead, back, error), each, lo, hi)
    assert decision.target >= target
    assert lo <= decision.target <= hi
    if mode is Mode.SHADOW:
        assert decision.target == target  # shadow never acts
    if predicted.aside:
        assert decision.target == target and predicted.would is None


SETTINGS = parse_settings({"DRAMATIQ_COMMAND": "/bin/sleep infinity", "SCALING_POLICY": "target"})
RULES = Rules.from_settings(SETTINGS, StepPolicy.from_settings(SETTINGS))


@given(base=st.floats(0.1, 60), slowest=st.floats(0.1, 300), lead=st.floats(0, 120), adaptive=st.booleans(),
       ready=st.integers(0, 50), in_flight=st.integers(0, 50), workers=st.integers(0, 10),
       target=st.integers(0, 10), previous=st.none() | st.integers(0, 100))
@example(base=5.0, slowest=30.0, lead=10.0, adaptive=True, ready=0, in_flight=0, workers=1, target=1, previous=0)
def test_the_watch_horizon_covers_the_longest_wait_for_a_read(
        base: float, slowest: float, lead: float, adaptive: bool, ready: int, in_flight: int, workers: int,
        target: int, previous: int | None) -> None:
    """Forecast work within `watch_s` switches to fast reads; whatever the pool's state, the next read comes
    before the lead begins, so the read that starts the pre-warm is never late (an idle pool is read every
    2 x DEMAND_POLL_INTERVAL)."""
    rules = replace(RULES, read_every_s=base, check_interval_s=slowest, adaptive_reads=adaptive)
    obs = Observation(0.0, ready + in_flight, ready, in_flight, 0, workers)
    wait = read_interval_s(base, obs, target, previous, slowest) if adaptive else base
    assert watch_s(rules, lead) - lead >= wait - 1e-9
