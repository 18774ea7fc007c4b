"""`dqagent pause`: the rule of the step, the agent's requests and pauses, the command's checks."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from dqagent.agent.pausing import REQUESTS, STATE_FILE, PauseBook, Request, read_pauses, refusal
from dqagent.cli import pausecmd
from dqagent.core.pause import DEFAULT_DURATION_S, Pause, hold, parse_duration
from dqagent.errors import EXIT_NOPERM, EXIT_UNAVAILABLE
from dqagent.settings.config import parse_settings
from dqagent.settings.sources import Loaded
from tests.unit.fakes import FakeUnits
from tests.unit.logged import events
from tests.unit.test_agent_loop import Clock, FakeProbe, make, status

WALL = 1.7e9


class Wall:
    def __init__(self) -> None:
        self.now = WALL

    def __call__(self) -> float:
        return self.now


def pause(at: int | None = None, until: float | None = WALL + 1500, reason: str = "deploy") -> Pause:
    return Pause("default", 0, "root", reason, WALL, until, at)


# -- the rule (core.pause) ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("25m", 1500), ("4h", 14400), ("1h30m", 5400),
                                               ("2d", 172800), ("45", 45), ("forever", None), ("10min", 600)])
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "-5m", "4 hours", "31d", "1x", "h"])
def test_bad_durations_are_refused_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


def test_a_pause_freezes_the_count_even_outside_min_and_max() -> None:
    assert hold(pause(), 3, 1, 5, WALL).target == 3
    below = hold(pause(), 0, 1, 5, WALL)  # an operator stopped every worker by hand: no start
    assert (below.target, below.min_processes) == (0, 0)
    above = hold(pause(), 7, 1, 5, WALL)  # ... or started more than MAX: no stop
    assert (above.target, above.max_processes) == (7, 7)


def test_maintenance_is_clamped_to_max_and_may_go_below_min() -> None:
    zero = hold(pause(at=0), 4, 2, 5, WALL)
    assert (zero.target, zero.min_processes, zero.max_processes) == (0, 0, 5)
    assert hold(pause(at=9), 4, 2, 5, WALL).target == 5


def test_the_status_line_says_who_for_how_long_and_why() -> None:
    assert pause().status(WALL) == "paused by root for 25 min more: deploy"
    assert pause(at=0, until=None).status(WALL) == "maintenance at 0 by root until resumed: deploy"
    assert not pause().active_at(WALL + 1500)


# -- the agent: a pause through its check ---------------------------------------------------------------------

def test_a_paused_agent_neither_starts_for_a_burst_nor_stops_then_expires_and_follows_demand(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    units, probe, wall, clock = FakeUnits(running=[1, 2]), FakeProbe(ready=400), Wall(), Clock()
    agent = make(units, probe, clock, wallclock=wall)
    agent.pauses.active["default"] = pause(until=WALL + 30)

    async def scenario() -> None:
        delay = await agent.tick()
        assert units.calls == []  # the burst starts nothing
        assert "paused by root for 30 s more: deploy" in status(agent)
        assert agent.latest is not None and agent.latest.default.pause == agent.pauses.active["default"]
        wall.now += 29.5
        clock.now += 29.5
        assert await agent.tick() == pytest.approx(0.5)  # the next check is at the deadline
        assert delay <= 30
        wall.now += 0.5
        clock.now += 0.5
        await agent.tick()
        await agent.jobs.wait()
        assert [kind for kind, _ in units.calls] == ["start"]  # expired: the policy's scale-up
        assert "paused" not in status(agent)

    asyncio.run(scenario())
    assert [r.DQAGENT_POOL for r in events(caplog, "pause_expired")] == ["default"]  # type: ignore[attr-defined]


def test_maintenance_at_0_stops_every_worker_below_min() -> None:
    units, probe = FakeUnits(running=[1, 2, 3]), FakeProbe(ready=50)
    agent = make(units, probe, wallclock=Wall())
    agent.pauses.active["default"] = pause(at=0)

    async def scenario() -> None:
        await agent.tick()
        await agent.jobs.wait()

    asyncio.run(scenario())
    assert sorted(n for kind, names in units.calls if kind == "stop" for n in names) == [
        f"dramatiq-worker@{i}.service" for i in (1, 2, 3)]


# -- the requests: who, when, and what survives a restart -------------------------------------------------------

def request(op: str = "pause", uid: int = 0, made_at: float = WALL, pool: str = "default") -> Request:
    return Request(op, pool, uid, "root" if uid == 0 else "alice", "deploy", 600, None, made_at)


def test_who_may_pause() -> None:
    me = 990
    assert refusal(0, request(uid=0), "", me) == ""
    assert "says uid 0" in refusal(65534, request(uid=0), "ops", me)  # a member cannot pose as root
    assert "not root nor a member of PAUSE_GROUP (not set)" in refusal(65534, request(uid=1234), "", me)
    assert "is not the request's uid" in refusal(1001, request(uid=1234), "ops", me)


def write(folder: Path, r: Request, name: str = "1-1.json") -> None:
    (folder / REQUESTS).mkdir(exist_ok=True)
    (folder / REQUESTS / name).write_text(json.dumps(r.to_json()))


def test_a_request_is_taken_kept_across_a_restart_and_resumed(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                                               ) -> None:
    caplog.set_level(logging.INFO)
    wall = Wall()
    book = PauseBook(tmp_path, wall)
    write(tmp_path, request())
    assert book.changed_on_disk()
    assert book.update({"default"}, "") == {"default"}
    assert not list((tmp_path / REQUESTS).iterdir())  # taken
    p = book.get("default", wall.now)
    assert p is not None and (p.user, p.until_s) == ("root", WALL + 600)
    assert oct(os.stat(tmp_path / STATE_FILE).st_mode & 0o777) == "0o644"
    # A new agent (systemctl restart dqagent, a reboot) finds it
    again = PauseBook(tmp_path, wall)
    assert again.get("default", wall.now) == p == read_pauses(tmp_path)["default"]
    write(tmp_path, request("resume"), "2-1.json")
    assert again.update({"default"}, "") == {"default"}
    assert again.get("default", wall.now) is None and read_pauses(tmp_path) == {}
    assert [r.levelname for r in events(caplog, "paused") + events(caplog, "resumed")] == ["WARNING", "INFO"]


def test_a_request_made_while_the_agent_was_stopped_or_for_an_unknown_pool_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wall = Wall()
    book = PauseBook(tmp_path, wall)
    write(tmp_path, request(made_at=WALL - 120), "1-1.json")
    write(tmp_path, request(pool="nope"), "2-1.json")
    assert book.update({"default"}, "") == set()
    assert book.active == {} and not list((tmp_path / REQUESTS).iterdir())
    errors = [r.ERROR for r in events(caplog, "pause_refused")]  # type: ignore[attr-defined]
    assert "while the agent was not running" in errors[0] and "no pool 'nope'" in errors[1]


# -- the command --------------------------------------------------------------------------------------------

def args(command: str = "pause", **kw: object) -> argparse.Namespace:
    values: dict[str, object] = {"command": command, "pool": None, "for_": None, "reason": "deploy", "at": None}
    values.update(kw)
    return argparse.Namespace(**values)


def loaded(group: str = "") -> Loaded:
    return Loaded(parse_settings({"PAUSE_GROUP": group} if group else {}), None, "")


def test_an_unprivileged_user_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 4321)
    monkeypatch.setattr(os, "getgroups", lambda: [4321])
    monkeypatch.setattr(os, "getgid", lambda: 4321)
    assert pausecmd.run(args(), loaded("root"), "active") == EXIT_NOPERM
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "only root and members of PAUSE_GROUP (root) may pause; uid 4321" in err


def test_a_pause_while_the_agent_is_stopped_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert pausecmd.run(args(), loaded(), "inactive") == EXIT_UNAVAILABLE
    assert "dqagent.service is inactive" in capsys.readouterr().err


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="--for"):
        pausecmd.make_request("pause", "default", 0, for_text="4 hours")
    with pytest.raises(ValueError, match="--at"):
        pausecmd.make_request("pause", "default", 0, at=-1)
    assert pausecmd.make_request("pause", "default", 0).for_s == DEFAULT_DURATION_S
