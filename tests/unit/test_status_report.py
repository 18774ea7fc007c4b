"""`dqagent status`'s pure parts: which workers are failing, how an exit reads, what the text shows."""

from __future__ import annotations

import signal

from dqagent.cli.status import render_text
from dqagent.core.units import ActiveState, UnitState, describe_exit


def unit(active: ActiveState, sub: str, restarts: int = 0) -> UnitState:
    return UnitState(unit="dramatiq-worker@4.service", instance=4, active_state=active, sub_state=sub,
                     main_pid=0, active_enter_us=0, n_restarts=restarts, result="exit-code", has_job=False)


def test_failing_means_failed_crash_looping_or_restarted() -> None:
    assert unit(ActiveState.FAILED, "failed").crashed_since_start
    assert unit(ActiveState.ACTIVATING, "auto-restart").crashed_since_start
    assert unit(ActiveState.ACTIVE, "running", restarts=3).crashed_since_start  # running again after crashes
    assert not unit(ActiveState.ACTIVE, "running").crashed_since_start
    assert not unit(ActiveState.ACTIVATING, "start").crashed_since_start  # a normal start
    assert not unit(ActiveState.DEACTIVATING, "stop-sigterm").crashed_since_start
    assert not unit(ActiveState.INACTIVE, "dead").crashed_since_start


def test_exit_reads_like_systemctl_status() -> None:
    assert describe_exit(1, 2) == "exit status 2"
    assert describe_exit(2, int(signal.SIGKILL)) == "killed by SIGKILL"
    assert describe_exit(3, int(signal.SIGSEGV)) == "killed by SIGSEGV (core dumped)"
    assert describe_exit(2, 99) == "killed by signal 99"
    assert describe_exit(0, 0) is None  # still running, or never ran


def report(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "queue_length": 3, "current_processes": 3, "min_processes": 1, "max_processes": 4,
        "scale_up_threshold": 15.0, "scale_down_threshold": 7.5, "monitoring_active": True,
        "monitor_state": "active", "process_list": [], "queues": {}, "queue_metric": "outstanding",
        "scaling_policy": "step", "redis": "redis://localhost:6379/0", "redis_error": None,
        "systemd_error": None, "worker_shape": None, "command_error": None,
        "agent_status_text": "3 running of 4 wanted", "failing_workers": [],
    }
    return {**base, **changes}


FAILING = {"unit": "dramatiq-worker@4.service", "state": "failed/failed", "result": "exit-code", "restarts": 5,
           "exit_code": 1, "exit_status": 2, "exit": "exit status 2", "last_line": None,
           "more": "journalctl -u dramatiq-worker@4.service"}


def test_text_shows_the_agents_status_and_each_failing_worker() -> None:
    text = render_text(report(failing_workers=[{**FAILING, "last_line": "dramatiq: error: boom"}]))
    assert "agent (dqagent.service): active: 3 running of 4 wanted" in text
    assert "dramatiq-worker@4.service  failed/failed  result exit-code, exit status 2, 5 restarts" in text
    assert "last logged: dramatiq: error: boom" in text
    assert "more: journalctl -u dramatiq-worker@4.service" in text


def test_without_the_journal_text_says_how_to_see_more() -> None:
    text = render_text(report(failing_workers=[FAILING], agent_status_text=None))
    assert "agent (dqagent.service): active\n" in text
    assert "no log line readable by this user" in text and "journalctl -u dramatiq-worker@4.service" in text
    assert "last logged" not in text
