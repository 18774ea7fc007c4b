"""`dqagent pause` and `dqagent resume`: a request file for the running agent, and its answer.

Refused in one line before anything is written: a user who is neither root nor a member of PAUSE_GROUP (exit
77), a bad --for/--at/--reason (exit 2), an unknown --pool (exit 78), the agent not running (exit 69: a request
is never queued for a later agent). Then the request goes into the agent's requests directory
(`dqagent.agent.pausing`, which checks the file's owner again), and the command waits for the agent to take it
(it looks every 0.25 s between its checks) and shows the pause as the agent keeps it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import sys
import time
from pathlib import Path
from typing import Any

from dqagent.agent.pausing import REQUEST_WAIT_S, REQUESTS, Request, read_pauses, state_dir, until_text
from dqagent.core.pause import DEFAULT_DURATION_S, Pause, human, parse_duration
from dqagent.errors import EXIT_FAILED, EXIT_NOPERM, EXIT_OK, EXIT_UNAVAILABLE
from dqagent.report.terminal import printable

#: Exit status of a bad argument (argparse's).
EXIT_USAGE = 2
MAX_REASON = 200


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def may_pause(uid: int, group: str, groups: list[int]) -> bool:
    """Root, or a member of PAUSE_GROUP (`groups`: the caller's group ids, os.getgroups() and its gid)."""
    if uid == 0:
        return True
    try:
        return bool(group) and grp.getgrnam(group).gr_gid in groups
    except KeyError:
        return False


def make_request(op: str, pool: str, uid: int, reason: str = "", for_text: str | None = None,
                 at: int | None = None, now_s: float | None = None) -> Request:
    """The request for these arguments; ValueError (a line naming the argument) for a bad one."""
    if for_text is None:
        for_s: float | None = DEFAULT_DURATION_S
    else:
        try:
            for_s = parse_duration(for_text)
        except ValueError as exc:
            raise ValueError(f"--for: {exc}") from None
    if at is not None and at < 0:
        raise ValueError(f"--at: expected an integer >= 0 (0 stops every worker), got {at}")
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise ValueError(f"--reason: expected at most {MAX_REASON} printable characters on one line")
    return Request(op, pool, uid, user_name(uid), reason, for_s, at, time.time() if now_s is None else now_s)


def main(args: Any, loaded: Any) -> int:
    """`dqagent pause`/`resume`: asks systemd whether the agent runs, then the agent (see the module)."""
    import asyncio

    from dqagent.core.units import AGENT_UNIT
    from dqagent.systemd.client import SystemdClient

    async def agent_state() -> str:
        client = SystemdClient(os.environ.get("DQAGENT_BUS_ADDRESS") or None,
                               call_timeout_s=loaded.settings.dbus_timeout_s)
        await client.connect()
        try:
            return str(await client.unit_property(AGENT_UNIT, "Unit", "ActiveState"))
        finally:
            client.close()

    return run(args, loaded, asyncio.run(agent_state()))


def run(args: Any, loaded: Any, agent_state: str) -> int:
    """`dqagent pause`/`resume` (args.command): see the module. `agent_state`: dqagent.service's ActiveState."""
    from dqagent.settings.parsers import DEFAULT_POOL

    me = f"dqagent {args.command}"
    uid = os.getuid()
    pool = loaded.pool(args.pool or DEFAULT_POOL).name  # an unknown pool: ConfigError naming --pool, exit 78
    group = loaded.settings.pause_group
    if not may_pause(uid, group, [*os.getgroups(), os.getgid()]):
        print(f"{me}: permission denied: only root and members of PAUSE_GROUP ({group or 'not set'}) may "
              f"{args.command}; uid {uid} ({user_name(uid)}) is neither", file=sys.stderr)
        return EXIT_NOPERM
    try:
        request = (make_request("pause", pool, uid, args.reason or "", args.for_, args.at) if args.command == "pause"
                   else make_request("resume", pool, uid))
    except ValueError as exc:
        print(f"{me}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if agent_state not in ("active", "reloading"):
        print(f"{me}: refused: dqagent.service is {agent_state or 'not loaded'}; only the running agent takes a "
              f"{args.command} (start it: systemctl start dqagent)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    directory = state_dir()
    try:
        path = write_request(directory / REQUESTS, request)
    except PermissionError:
        print(f"{me}: permission denied writing {directory / REQUESTS}: run as root or as a member of PAUSE_GROUP "
              f"({group or 'not set'}), after dqagent install", file=sys.stderr)
        return EXIT_NOPERM
    except OSError as exc:
        print(f"{me}: cannot write the request into {directory / REQUESTS} ({exc}): run dqagent install",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    return answer(me, path, request, directory)


def write_request(folder: Path, request: Request) -> Path:
    """The request as a new file in `folder` (written under a dot name, then renamed: the agent reads it whole)."""
    name = f"{time.time_ns()}-{os.getpid()}.json"
    tmp = folder / f".{name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o644)  # the agent reads it as "another user"
        json.dump(request.to_json(), f)
    os.rename(tmp, folder / name)
    return folder / name


def answer(me: str, path: Path, request: Request, directory: Path) -> int:
    """Wait for the agent to take the request; print the pause as it keeps it, or why not."""
    deadline = time.monotonic() + REQUEST_WAIT_S
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if path.exists():
        path.unlink(missing_ok=True)
        print(f"{me}: the agent did not take the request within {REQUEST_WAIT_S:g} s (systemctl status dqagent); "
              "withdrawn, nothing changed", file=sys.stderr)
        return EXIT_FAILED
    held = read_pauses(directory).get(request.pool)
    if request.op == "resume":
        if held is not None:
            print(f"{me}: the agent kept the pool paused (journalctl -u dqagent DQAGENT_EVENT=pause_refused)",
                  file=sys.stderr)
            return EXIT_FAILED
        print(f"pool {request.pool} resumed: the policy decides its workers again")
        return EXIT_OK
    if held is None or held.uid != request.uid or held.since_s < request.made_at - 1:
        print(f"{me}: the agent refused the request (journalctl -u dqagent DQAGENT_EVENT=pause_refused)",
              file=sys.stderr)
        return EXIT_FAILED
    print(printable(described(held)))
    return EXIT_OK


def described(p: Pause) -> str:
    """`pool default paused by root until 2025-06-01T14:00:00+00:00 (4 h): deploy`."""
    span = "until resumed" if p.until_s is None else f"until {until_text(p.until_s)} ({human(p.until_s - p.since_s)})"
    what = "paused" if p.at is None else f"in maintenance at {p.at} workers"
    return f"pool {p.pool} {what} by {p.user} {span}" + (f": {p.reason}" if p.reason else "")
