"""STATUS= says what systemd shows: running and wanted apart, failing units by name, the backoff."""

from __future__ import annotations

from dqagent.core.reconciler import Backoff, reconcile
from dqagent.core.units import ActiveState, UnitState
from dqagent.report.reporter import Reporter


def unit(n: int, active: ActiveState = ActiveState.ACTIVE, sub: str = "running", result: str = "success",
         job: str = "") -> UnitState:
    return UnitState(f"dramatiq-worker@{n}.service", n, active, sub, 0, 0, 0, result, bool(job), job)


def line(states: list[UnitState], target: int, backoff_s: float = 0.0) -> str:
    plan = reconcile(states, target, min_processes=0, max_processes=10, in_flight={}, backoff=Backoff(), now_s=0)
    return Reporter().status_line(plan, states, backoff_s, 12, 1.0)


def test_all_well() -> None:
    assert line([unit(1), unit(2)], 2) == "2 running of 2 wanted; queue 12, next check in 1s"


def test_a_crashed_worker_is_named_and_not_counted_as_running() -> None:
    states = [unit(1), unit(2), unit(3), unit(4, ActiveState.ACTIVATING, "auto-restart", "exit-code")]
    assert line(states, 4) == ("3 running of 4 wanted (1 starting); dramatiq-worker@4 failing: exit-code, "
                               "restarting; queue 12, next check in 1s")


def test_many_failing_units_are_summarised_and_the_backoff_shown() -> None:
    states = [unit(n, ActiveState.FAILED, "failed", "start-limit-hit") for n in range(1, 6)]
    text = line(states, 1, backoff_s=20)
    assert text.startswith("0 running of 1 wanted; dramatiq-worker@1 failing: start-limit-hit; ")
    assert "and 2 more; next start in 20s; queue 12" in text


def test_an_operators_restart_shows_as_starting_and_a_drain_as_stopping() -> None:
    restarting = unit(1, ActiveState.DEACTIVATING, "stop", job="restart")
    draining = unit(2, ActiveState.DEACTIVATING, "stop-sigterm", job="stop")
    states = [restarting, draining, unit(3)]
    assert line(states, 2).startswith("1 running of 2 wanted (1 starting, 1 stopping); queue 12")
