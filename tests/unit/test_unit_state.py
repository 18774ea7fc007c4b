from __future__ import annotations

from dqagent.systemd import ActiveState, UnitState


def state(code: int, status: int) -> UnitState:
    return UnitState("dramatiq-worker@1.service", 1, ActiveState.FAILED, "failed", 0, 0, 3, "exit-code", False,
                     exec_main_code=code, exec_main_status=status)


def test_exit_status_reads_like_systemctl() -> None:
    assert state(0, 0).exit_status == ""
    assert state(1, 2).exit_status == "exit status 2"
    assert state(2, 9).exit_status == "signal SIGKILL"
    assert state(3, 11).exit_status == "signal SIGSEGV (core dumped)"
    assert state(2, 99).exit_status == "signal 99"
