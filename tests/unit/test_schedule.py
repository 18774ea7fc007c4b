"""SCHEDULE (dqagent.settings.schedule, dqagent.core.schedule, rule 4 of dqagent.core.step): the syntax and its
refusals, overlapping windows, the pre-warm, and daylight-saving changes with the real IANA data (`zoneinfo`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from dqagent.core.demand import Demand, QueueDemand
from dqagent.core.hoststep import PoolInput, decide_host
from dqagent.core.reconciler import Backoff
from dqagent.core.schedule import in_force, next_change, status_note
from dqagent.core.step import Check, Memory, Observed, Rules, decide
from dqagent.core.units import ActiveState, UnitState, worker_unit
from dqagent.errors import ConfigError
from dqagent.settings.config import QueueMetric, parse_settings
from dqagent.settings.schedule import Schedule, parse_schedule
from tests.unit.test_hoststep import Wants

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def us(iso: str) -> float:
    """Wall-clock microseconds of a UTC time, `2024-03-31T01:00:00`."""
    return datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1e6


def sched(text: str) -> Schedule:
    return parse_schedule("SCHEDULE", text)


def span_h(s: Schedule, zone: ZoneInfo, inside: str, step_s: int = 60) -> float:
    """How long (hours) the window in force at `inside` (UTC) lasts, found minute by minute around it."""
    t = us(inside)
    lo = hi = t
    while in_force(s, zone, lo - step_s * 1e6).windows:
        lo -= step_s * 1e6
    while in_force(s, zone, hi + step_s * 1e6).windows:
        hi += step_s * 1e6
    return (hi - lo) / 1e6 / 3600 + step_s / 3600


# -- the syntax -----------------------------------------------------------------------------------

def test_the_example_parses_into_two_windows() -> None:
    s = sched("Mon-Fri 08:00-18:00 min=4; * 22:00-06:00 max=2;")
    day, night = s.windows
    assert (sorted(day.days), day.start_min, day.end_min, day.floor, day.ceiling) == ([0, 1, 2, 3, 4], 480, 1080, 4,
                                                                                      None)
    assert (len(night.days), night.overnight, night.floor, night.ceiling) == (7, True, None, 2)
    assert sorted(sched("fri-mon 00:00-24:00 MIN=1 max=3").windows[0].days) == [0, 4, 5, 6]
    assert sorted(sched("Sat,Sun 10:00-12:00 max=1").windows[0].days) == [5, 6]
    assert not sched("  ")


@pytest.mark.parametrize(("text", "where", "part"), [
    ("Mon-Fry 08:00-18:00 min=4", "SCHEDULE entry 1 (days)", "Mon-Fry"),
    ("* 22:00-06:00 max=2; Mon 8-18 min=4", "SCHEDULE entry 2 (hours)", "8-18"),
    ("Mon 08:00-25:00 min=4", "SCHEDULE entry 1 (hours)", "08:00-25:00"),
    ("Mon 08:00-08:00 min=4", "SCHEDULE entry 1 (hours)", "08:00-08:00"),
    ("Mon 08:00-18:00 floor=4", "SCHEDULE entry 1 (bounds)", "floor=4"),
    ("Mon 08:00-18:00 min=4 min=5", "SCHEDULE entry 1 (bounds)", "min=5"),
    ("Mon 08:00-18:00 min=5 max=4", "SCHEDULE entry 1 (bounds)", "min=5 max=4"),
    ("Mon 08:00-18:00", "SCHEDULE entry 1", "Mon 08:00-18:00"),
])
def test_a_bad_entry_is_refused_in_one_line_naming_the_entry_the_column_and_the_form(
        text: str, where: str, part: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_settings({"SCHEDULE": text})
    assert (e.value.key, e.value.value) == (where, part)
    assert "\n" not in str(e.value) and "expected" in str(e.value)


def test_floors_and_ceilings_must_lie_within_min_and_max_processes() -> None:
    with pytest.raises(ConfigError, match=r"SCHEDULE entry 2 \(bounds\)='max=12'.*in 2\.\.10"):
        parse_settings({"MIN_PROCESSES": "2", "SCHEDULE": "* 08:00-09:00 min=3; * 22:00-06:00 max=12"})
    with pytest.raises(ConfigError, match=r"in 2\.\.10"):
        parse_settings({"MIN_PROCESSES": "2", "SCHEDULE": "* 22:00-06:00 max=1"})
    assert parse_settings({"MIN_PROCESSES": "0", "SCHEDULE": "* 22:00-06:00 max=0"}).schedule.windows[0].ceiling == 0


def test_the_zone_must_be_an_iana_name() -> None:
    with pytest.raises(ConfigError, match="SCHEDULE_TIMEZONE='Europe/Berln': expected an IANA"):
        parse_settings({"SCHEDULE_TIMEZONE": "Europe/Berln"})
    assert parse_settings({"SCHEDULE_TIMEZONE": "America/New_York"}).schedule_timezone == "America/New_York"


def test_a_pool_file_may_set_its_own_schedule() -> None:
    from dqagent.settings.pools import POOL_KEYS

    assert {"SCHEDULE", "SCHEDULE_TIMEZONE"} <= POOL_KEYS


# -- evaluation ------------------------------------------------------------------------------------

def test_a_window_is_in_force_from_its_start_until_its_end_on_its_days_only() -> None:
    s = sched("Mon-Fri 08:00-18:00 min=4")
    # Monday 2024-01-15, Berlin is UTC+1
    assert in_force(s, BERLIN, us("2024-01-15T06:59:59")).floor is None
    assert in_force(s, BERLIN, us("2024-01-15T07:00:00")).floor == 4
    assert in_force(s, BERLIN, us("2024-01-15T16:59:59")).floor == 4
    assert in_force(s, BERLIN, us("2024-01-15T17:00:00")).floor is None
    assert in_force(s, BERLIN, us("2024-01-13T10:00:00")).floor is None  # a Saturday


def test_a_night_window_runs_past_midnight_into_the_next_day() -> None:
    s = sched("Fri 22:00-06:00 max=2")  # opens Friday night, ends Saturday morning
    assert in_force(s, UTC, us("2024-01-19T21:59:00")).ceiling is None
    assert in_force(s, UTC, us("2024-01-20T05:59:00")).ceiling == 2  # Saturday 05:59
    assert in_force(s, UTC, us("2024-01-20T06:00:00")).ceiling is None
    assert in_force(s, UTC, us("2024-01-20T23:00:00")).ceiling is None  # Saturday night: not a Friday


def test_overlapping_windows_take_the_highest_floor_and_the_lowest_ceiling_and_a_floor_beats_a_ceiling() -> None:
    s = sched("* 08:00-18:00 min=2 max=8; * 09:00-10:00 min=5; * 09:30-12:00 max=6; * 09:45-10:00 max=3")
    assert (lambda f: (f.floor, f.ceiling))(in_force(s, UTC, us("2024-01-15T08:30:00"))) == (2, 8)
    at_0935 = in_force(s, UTC, us("2024-01-15T09:35:00"))
    assert (at_0935.floor, at_0935.ceiling, len(at_0935.windows)) == (5, 6, 3)
    assert at_0935.bound(1) == 5 and at_0935.bound(9) == 6
    at_0950 = in_force(s, UTC, us("2024-01-15T09:50:00"))
    assert (at_0950.floor, at_0950.ceiling) == (5, 3) and at_0950.bound(9) == 5 and at_0950.bound(0) == 5


def test_a_floor_pre_warms_by_the_lead_and_a_ceiling_does_not() -> None:
    s = sched("* 08:00-09:00 min=4; * 12:00-13:00 max=1")
    early = in_force(s, UTC, us("2024-01-15T07:59:50"), lead_s=12.0)
    assert (early.floor, early.windows, early.warming) == (4, (), ("* 08:00-09:00 min=4",))
    assert in_force(s, UTC, us("2024-01-15T07:59:47"), lead_s=12.0).floor is None
    assert in_force(s, UTC, us("2024-01-15T11:59:50"), lead_s=12.0).ceiling is None
    # The next change is the pre-warm's start, then the opening, then the end
    assert in_force(s, UTC, us("2024-01-15T07:00:00"), lead_s=12.0).next_us == us("2024-01-15T07:59:48")
    assert early.next_us == us("2024-01-15T08:00:00")
    assert status_note(early, UTC) == "schedule pre-warming * 08:00-09:00 min=4 (min=4), next change Mon 08:00 UTC"


def test_next_change_skips_edges_that_change_nothing() -> None:
    s = sched("* 08:00-12:00 min=2; * 12:00-18:00 min=2; Mon-Fri 22:00-06:00 max=1")
    at, then = next_change(s, UTC, us("2024-01-15T09:00:00")) or (0.0, None)
    assert then is not None and at == us("2024-01-15T12:00:00") and then.windows == ("* 12:00-18:00 min=2",)
    at, then = next_change(s, UTC, us("2024-01-19T23:00:00")) or (0.0, None)  # Friday night, until Sat 06:00
    assert then is not None and at == us("2024-01-20T06:00:00") and then.ceiling is None


# -- daylight-saving changes, with the real IANA data ----------------------------------------------------

def test_berlin_a_night_lasts_7_hours_when_clocks_spring_forward_and_9_when_they_fall_back() -> None:
    s = sched("* 22:00-06:00 max=2")
    # 2024-03-31: 02:00 CET -> 03:00 CEST. Opens Sat 22:00 CET (21:00Z), ends Sun 06:00 CEST (04:00Z)
    assert in_force(s, BERLIN, us("2024-03-30T20:59:00")).ceiling is None
    assert in_force(s, BERLIN, us("2024-03-30T21:00:00")).ceiling == 2
    assert in_force(s, BERLIN, us("2024-03-31T03:59:59")).ceiling == 2
    assert in_force(s, BERLIN, us("2024-03-31T04:00:00")).ceiling is None
    assert span_h(s, BERLIN, "2024-03-31T01:30:00") == 7
    # 2024-10-27: 03:00 CEST -> 02:00 CET. Opens Sat 22:00 CEST (20:00Z), ends Sun 06:00 CET (05:00Z)
    assert in_force(s, BERLIN, us("2024-10-26T20:00:00")).ceiling == 2
    assert in_force(s, BERLIN, us("2024-10-27T04:59:59")).ceiling == 2
    assert in_force(s, BERLIN, us("2024-10-27T05:00:00")).ceiling is None
    assert span_h(s, BERLIN, "2024-10-27T01:30:00") == 9


def test_berlin_a_window_opening_in_the_skipped_hour_opens_at_the_jump() -> None:
    s = sched("Sun 02:30-04:00 min=3")
    assert in_force(s, BERLIN, us("2024-03-31T00:59:59")).floor is None  # 01:59:59 CET
    assert in_force(s, BERLIN, us("2024-03-31T01:00:00")).floor == 3  # 03:00 CEST: the clock jumped past 02:30
    assert in_force(s, BERLIN, us("2024-03-31T02:00:00")).floor is None  # 04:00 CEST
    # and the step reads at the jump: the next change seen before it is the jump itself
    assert in_force(s, BERLIN, us("2024-03-31T00:00:00")).next_us == us("2024-03-31T01:00:00")


def test_berlin_a_time_shown_twice_opens_at_its_first_showing_and_ends_at_its_last() -> None:
    opens = sched("Sun 02:30-05:00 min=3")  # 02:30 CEST = 00:30Z, and again 02:30 CET = 01:30Z
    assert in_force(opens, BERLIN, us("2024-10-27T00:29:59")).floor is None
    assert in_force(opens, BERLIN, us("2024-10-27T00:30:00")).floor == 3
    assert in_force(opens, BERLIN, us("2024-10-27T01:15:00")).floor == 3  # the clock shows 02:15 again: still open
    ends = sched("Sun 01:00-02:30 max=1")  # 01:00 CEST = 23:00Z Sat; ends at 02:30 CET = 01:30Z
    assert in_force(ends, BERLIN, us("2024-10-27T00:45:00")).ceiling == 1  # 02:45 CEST
    assert in_force(ends, BERLIN, us("2024-10-27T01:29:59")).ceiling == 1
    assert in_force(ends, BERLIN, us("2024-10-27T01:30:00")).ceiling is None
    assert span_h(ends, BERLIN, "2024-10-27T00:00:00") == 2.5  # the repeated hour counts once more


def test_new_york_nights_and_a_morning_window_across_both_changes() -> None:
    night = sched("* 22:00-06:00 max=2")
    # 2024-03-10: 02:00 EST -> 03:00 EDT. Sat 22:00 EST = 03:00Z, Sun 06:00 EDT = 10:00Z
    assert in_force(night, NEW_YORK, us("2024-03-10T03:00:00")).ceiling == 2
    assert in_force(night, NEW_YORK, us("2024-03-10T10:00:00")).ceiling is None
    assert span_h(night, NEW_YORK, "2024-03-10T07:30:00") == 7
    # 2024-11-03: 02:00 EDT -> 01:00 EST. Sat 22:00 EDT = 02:00Z, Sun 06:00 EST = 11:00Z
    assert in_force(night, NEW_YORK, us("2024-11-03T02:00:00")).ceiling == 2
    assert in_force(night, NEW_YORK, us("2024-11-03T10:59:59")).ceiling == 2
    assert span_h(night, NEW_YORK, "2024-11-03T06:00:00") == 9
    morning = sched("Mon-Fri 08:00-18:00 min=4")  # 08:00 local is 13:00Z on Friday 8 March, 12:00Z on Monday 11
    assert in_force(morning, NEW_YORK, us("2024-03-08T12:59:00")).floor is None
    assert in_force(morning, NEW_YORK, us("2024-03-08T13:00:00")).floor == 4
    assert in_force(morning, NEW_YORK, us("2024-03-11T12:00:00")).floor == 4
    assert in_force(morning, NEW_YORK, us("2024-03-11T11:59:00")).floor is None
    gap = sched("Sun 02:15-03:30 min=2")  # 02:15 does not exist on 10 March: opens at the jump, 07:00Z
    assert in_force(gap, NEW_YORK, us("2024-03-10T06:59:59")).floor is None
    assert in_force(gap, NEW_YORK, us("2024-03-10T07:00:00")).floor == 2
    # pre-warm across the jump: 30 s before the jump, the floor applies
    assert in_force(gap, NEW_YORK, us("2024-03-10T06:59:30"), lead_s=30).floor == 2


# -- through the step -------------------------------------------------------------------------------

def rules(wants: int, schedule: str, zone: ZoneInfo = BERLIN) -> Rules:
    return Rules(Wants(wants), 1, 8, QueueMetric("outstanding"), adaptive_reads=False, read_every_s=180.0,
                 check_interval_s=180.0, startup_delay_s=5.0, guard=False, queue_names=("q",),
                 schedule=sched(schedule), zone=zone)


def observed(now_iso: str, running: int, start_s: float = 0.0) -> Observed:
    units = tuple(UnitState(worker_unit(n), n, ActiveState.ACTIVE, "running", 100 + n, 1, 0, "success", False)
                  for n in range(1, running + 1))
    return Observed(100.0, us(now_iso), Demand((QueueDemand("q", 0, 0, 0, 0, 0, None),)), units, {}, Backoff(),
                    start_s=start_s)


def test_the_step_raises_the_target_to_a_floor_before_the_window_opens_and_reads_again_at_its_opening() -> None:
    r = rules(1, "Mon-Fri 08:00-18:00 min=4")
    check = decide(r, observed("2024-01-15T06:59:53", 1, start_s=3.0), Memory(None))  # 07:59:53 CET, lead 8 s
    assert isinstance(check, Check)
    assert check.decision.target == 4 and len(check.plan.start) == 3 and check.label == "schedule"
    assert "schedule floor 4 (Mon-Fri 08:00-18:00 min=4)" in check.decision.reason
    assert check.next_read_s == pytest.approx(7.0)  # read again when the window opens
    before = decide(r, observed("2024-01-15T06:59:51", 1, start_s=3.0), Memory(None))
    assert isinstance(before, Check) and before.decision.target == 1 and before.label == "wants"
    assert before.next_read_s == pytest.approx(1.0)  # the pre-warm begins at 07:59:52


def test_the_step_lowers_the_target_to_a_ceiling_and_the_host_step_claims_with_it() -> None:
    r = rules(7, "* 22:00-06:00 max=2")
    check = decide(r, observed("2024-01-15T23:00:00", 5), Memory(None))
    assert isinstance(check, Check)
    assert check.decision.target == 2 and len(check.plan.stop) == 3 and check.label == "schedule"
    assert check.schedule is not None and check.schedule.ceiling == 2
    assert "schedule ceiling 2" in check.decision.reason
    host = decide_host([PoolInput("default", r, observed("2024-01-15T23:00:00", 5), Memory(None))], 8)
    assert isinstance(host, dict) and host["default"].decision.target == 2
    assert host["default"].budget is not None and host["default"].budget.share == 2


def test_without_a_schedule_the_step_is_unchanged() -> None:
    r = replace(rules(3, ""), schedule=Schedule(), zone=None)
    check = decide(r, observed("2024-01-15T23:00:00", 1), Memory(None))
    assert isinstance(check, Check) and check.schedule is None and check.decision.reason == "wants 3"
    assert check.next_read_s == 180.0


# -- dqagent status ---------------------------------------------------------------------------------

def test_status_shows_the_windows_in_force_and_the_next_change_in_text_and_json() -> None:
    from dqagent.cli.status import schedule_report
    from dqagent.cli.status_text import _schedule_lines

    s = parse_settings({"SCHEDULE": "Mon-Fri 08:00-18:00 min=4; * 22:00-06:00 max=2",
                        "SCHEDULE_TIMEZONE": "Europe/Berlin", "PROCESS_STARTUP_DELAY": "5"})
    report = schedule_report(s, us("2024-06-03T10:00:00"))  # Monday 12:00 CEST
    assert report is not None
    assert (report["timezone"], report["windows"], report["floor"], report["ceiling"]) == (
        "Europe/Berlin", ["Mon-Fri 08:00-18:00 min=4"], 4, None)
    assert report["next_change"] == {"at": "2024-06-03T16:00:00+00:00", "local": "Mon 18:00 CEST", "windows": [],
                                     "warming": [], "floor": None, "ceiling": None}
    assert _schedule_lines(report) == ["schedule (Europe/Berlin): Mon-Fri 08:00-18:00 min=4 (min=4)",
                                       "  next change: Mon 18:00 CEST: no window"]
    night = schedule_report(s, us("2024-06-03T21:00:00"))  # 23:00 CEST: the ceiling
    assert night is not None and night["ceiling"] == 2 and night["next_change"]["local"] == "Tue 06:00 CEST"
    # the next morning's pre-warm (PROCESS_STARTUP_DELAY early) is the change after 06:00
    early = schedule_report(s, us("2024-06-04T04:30:00"))
    assert early is not None and early["next_change"]["at"] == "2024-06-04T05:59:55+00:00"
    assert schedule_report(parse_settings({}), 0.0) is None
