"""A unit's health and its main process's end, each decided in one place (`dqagent.core.units`)."""

from __future__ import annotations

import signal

import pytest

from dqagent.core import units
from dqagent.core.reconciler import Phase, census, classify
from dqagent.core.units import ActiveState, UnitState, describe_exit
from dqagent.report import statusdoc


def state(active: ActiveState = ActiveState.FAILED, sub: str = "failed", restarts: int = 3,
          code: int = 0, exit_status: int = 0) -> UnitState:
    return UnitState("dramatiq-worker@1.service", 1, active, sub, 0, 0, restarts, "exit-code", False,
                     exec_main_code=code, exec_main_status=exit_status)


def test_one_decoder_of_a_main_process_end_and_it_reads_like_systemctl_status() -> None:
    assert not hasattr(UnitState, "exit_status")  # the second decoder, used by tests only, is gone
    assert statusdoc.describe_exit is units.describe_exit
    s = state(code=3, exit_status=int(signal.SIGSEGV))
    assert describe_exit(s.exec_main_code, s.exec_main_status) == "killed by SIGSEGV (core dumped)"
    assert describe_exit(1, 2) == "exit status 2"
    assert describe_exit(2, 99) == "killed by signal 99"
    assert describe_exit(0, 0) is None


@pytest.mark.parametrize(("active", "sub", "restarts", "failed", "crashed", "since_start", "phase"), [
    (ActiveState.FAILED, "failed", 5, True, True, True, Phase.FAILING),
    # Waiting RestartSec: not serving, but systemd brings it back, so the reconciler counts it as coming.
    (ActiveState.ACTIVATING, "auto-restart", 1, False, True, True, Phase.COMING),
    # Running again after systemd restarted it: only `dqagent status` still explains the crash.
    (ActiveState.ACTIVE, "running", 2, False, False, True, Phase.RUNNING),
    (ActiveState.ACTIVE, "running", 0, False, False, False, Phase.RUNNING),
    (ActiveState.INACTIVE, "dead", 0, False, False, False, Phase.FREE),
])
def test_three_questions_of_a_units_health_have_one_answer_each(
        active: ActiveState, sub: str, restarts: int, failed: bool, crashed: bool, since_start: bool,
        phase: Phase) -> None:
    s = state(active, sub, restarts)
    assert (s.failed, s.crashed, s.crashed_since_start) == (failed, crashed, since_start)
    assert classify(s) is phase
    assert census([s], {}).failing == int(s.crashed)
