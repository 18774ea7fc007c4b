"""The agent's pauses: the requests `dqagent pause`/`resume` leave, who may make them, and the pauses in force.

Where (docs/operations.md, "Pause, resume, maintenance"): the unit's StateDirectory, /var/lib/dqagent/agent
(0755 dqagent:dqagent; not /var/lib/dqagent, which holds the workers' directory and stays root's), holds
`pauses.json` (0644: `dqagent status` shows it to any user) and `requests/`, which
`dqagent install` creates 01770 dqagent:PAUSE_GROUP (dqagent:dqagent without PAUSE_GROUP): only root and the
group's members can create a file there (the kernel checks), the sticky bit keeps them from removing each
other's, and the agent (its owner) reads and removes them.

Who: the agent runs with PrivateUsers=yes, so it sees a file's owner as root, as itself, or as the overflow uid
(anyone else). It accepts a request written by root (owner 0, the request says uid 0), or by a member of
PAUSE_GROUP (owner neither 0 nor itself, the request's uid a member of the group in /etc/group, and the owner
that uid wherever the agent can see it); anything else is refused with a `pause_refused` event. A request older
than REQUEST_MAX_AGE_S is discarded: the CLI waits that long at most for the agent, then withdraws it, so a
request made while the agent was stopped is never applied later (it is refused, not queued).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dqagent.core.pause import Pause, next_check_s
from dqagent.report.logs import event

log = logging.getLogger("dqagent.agent.loop")

#: The unit's StateDirectory= (systemd also passes it as $STATE_DIRECTORY).
STATE_DIR = Path("/var/lib/dqagent/agent")
STATE_FILE = "pauses.json"
REQUESTS = "requests"
#: A request older than this is discarded (the CLI waits at most REQUEST_WAIT_S for the agent to take it).
REQUEST_MAX_AGE_S = 30.0
REQUEST_WAIT_S = 10.0
#: How often the agent looks at the requests directory while it waits between checks.
WATCH_EVERY_S = 0.25


def state_dir() -> Path:
    """$STATE_DIRECTORY under systemd; DQAGENT_STATE_DIR (tests); else /var/lib/dqagent/agent."""
    return Path(os.environ.get("STATE_DIRECTORY") or os.environ.get("DQAGENT_STATE_DIR") or STATE_DIR)


def until_text(until_s: float | None) -> str:
    return "forever" if until_s is None else datetime.fromtimestamp(until_s, UTC).isoformat(timespec="seconds")


def read_pauses(directory: Path) -> dict[str, Pause]:
    """The pauses in force as the agent last wrote them (empty when none, or unreadable)."""
    try:
        data = json.loads((directory / STATE_FILE).read_text())
        return {name: Pause.from_json(d) for name, d in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


@dataclass(frozen=True, slots=True)
class Request:
    """One request file's content, as `dqagent pause`/`resume` writes it."""

    op: str
    pool: str
    uid: int
    user: str
    reason: str
    for_s: float | None
    at: int | None
    made_at: float

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "pool": self.pool, "uid": self.uid, "user": self.user, "reason": self.reason,
                "for_s": self.for_s, "at": self.at, "made_at": self.made_at}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Request:
        op = str(d["op"])
        if op not in ("pause", "resume"):
            raise ValueError(f"unknown op {op!r}")
        for_s, at = d["for_s"], d["at"]
        return cls(op, str(d["pool"]), int(d["uid"]), str(d["user"])[:64], str(d["reason"])[:200],
                   None if for_s is None else float(for_s), None if at is None else int(at), float(d["made_at"]))


def is_member(uid: int, group: str) -> bool:
    """Whether `uid` belongs to `group` (its primary group, or listed in /etc/group)."""
    if not group:
        return False
    try:
        g, user = grp.getgrnam(group), pwd.getpwuid(uid)
    except KeyError:
        return False
    return user.pw_gid == g.gr_gid or user.pw_name in g.gr_mem


def refusal(owner: int, request: Request, group: str, me: int) -> str:
    """Why the request file owned by `owner` (as this process sees it) must be refused, or ""."""
    if owner == 0:
        return "" if request.uid == 0 else f"a file of root says uid {request.uid}"
    if owner == me:
        return "" if request.uid == me else f"a file of the agent's user says uid {request.uid}"
    if request.uid in (0, me):
        return f"a file of another user says uid {request.uid}"
    overflow = _overflow_uid()
    if owner != overflow and owner != request.uid:
        return f"the file's owner {owner} is not the request's uid {request.uid}"
    if not is_member(request.uid, group):
        return (f"uid {request.uid} ({request.user}) is not root nor a member of PAUSE_GROUP"
                + (f" ({group})" if group else " (not set)"))
    return ""


def _overflow_uid() -> int:
    try:
        return int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        return 65534


class PauseBook:
    """The pauses in force by pool, kept in `directory` (None: in memory only, as in unit tests)."""

    def __init__(self, directory: Path | None, wallclock: Callable[[], float]) -> None:
        self.directory = directory
        self.wallclock = wallclock
        self.active: dict[str, Pause] = read_pauses(directory) if directory is not None else {}
        self._seen_mtime = -1

    def get(self, pool: str, now_s: float) -> Pause | None:
        p = self.active.get(pool)
        return p if p is not None and p.active_at(now_s) else None

    def status(self, pool: str, line: str, now_s: float) -> str:
        """STATUS=: the pause first (`paused by root for 25 more min: deploy; ...`)."""
        p = self.get(pool, now_s)
        return line if p is None else f"{p.status(now_s)}; {line}" if line else p.status(now_s)

    def next_check_s(self, pool: str, now_s: float, delay_s: float) -> float:
        return next_check_s(self.get(pool, now_s), now_s, delay_s)

    def update(self, pools: Collection[str], group: str) -> set[str]:
        """Take the requests waiting, then end the pauses past their deadline; returns the pools changed."""
        changed = self._take(pools, group) if self.directory is not None else set()
        now = self.wallclock()
        for name, p in list(self.active.items()):
            if not p.active_at(now) or name not in pools:
                del self.active[name]
                changed.add(name)
                if name in pools:
                    log.warning("pool %s: pause by %s expired (%s): the policy decides again", name, p.user,
                                p.reason or "no reason given",
                                extra=event("pause_expired", dqagent_pool=name, dqagent_by=p.user,
                                            dqagent_reason=p.reason, dqagent_until=until_text(p.until_s)))
        if changed:
            self._save()
        return changed

    def changed_on_disk(self) -> bool:
        """Whether the requests directory changed since the last look (a new request)."""
        if self.directory is None:
            return False
        try:
            mtime = (self.directory / REQUESTS).stat().st_mtime_ns
        except OSError:
            return False
        if mtime == self._seen_mtime:
            return False
        self._seen_mtime = mtime
        return True

    async def wait_request(self) -> None:
        """Return once the requests directory changes (polled: an inotify watch is not worth a dependency)."""
        if self.directory is None:
            await asyncio.Event().wait()  # never: no directory, no requests
        self.changed_on_disk()
        while not self.changed_on_disk():
            await asyncio.sleep(WATCH_EVERY_S)

    def _take(self, pools: Collection[str], group: str) -> set[str]:
        assert self.directory is not None
        folder = self.directory / REQUESTS
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
            mode = os.stat(folder).st_mode
        except OSError:
            return set()
        changed: set[str] = set()
        for name in names:
            path = folder / name
            outcome = self._one(path, pools, group, unsafe=bool(mode & stat.S_IWOTH))
            with contextlib.suppress(OSError):
                path.unlink()
            if outcome:
                changed.add(outcome)
        return changed

    def _one(self, path: Path, pools: Collection[str], group: str, unsafe: bool) -> str:
        """Apply one request file; returns the pool it changed, or ""."""
        try:
            with path.open("rb") as f:
                owner = os.fstat(f.fileno()).st_uid
                request = Request.from_json(json.loads(f.read(4096)))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            return self._refuse(path.name, "", f"unreadable request ({exc})")
        why = ("the requests directory is writable by anyone" if unsafe
               else refusal(owner, request, group, os.getuid()))
        if not why and request.pool not in pools:
            why = f"no pool {request.pool!r}"
        if not why and self.wallclock() - request.made_at > REQUEST_MAX_AGE_S:
            why = f"made {self.wallclock() - request.made_at:.0f} s ago, while the agent was not running"
        if why:
            return self._refuse(path.name, request.pool, why, request.user)
        return self._apply(request)

    def _refuse(self, name: str, pool: str, why: str, user: str = "") -> str:
        log.warning("pause request %s refused: %s", name, why,
                    extra=event("pause_refused", dqagent_pool=pool, dqagent_by=user, error=why))
        return ""

    def _apply(self, r: Request) -> str:
        now = self.wallclock()
        if r.op == "resume":
            p = self.active.pop(r.pool, None)
            if p is None:
                log.info("pool %s: resume by %s: it was not paused", r.pool, r.user)
                return ""
            log.info("pool %s resumed by %s (paused by %s since %s: %s): the policy decides again", r.pool, r.user,
                     p.user, until_text(p.since_s), p.reason or "no reason given",
                     extra=event("resumed", dqagent_pool=r.pool, dqagent_by=r.user, dqagent_paused_by=p.user,
                                 dqagent_reason=p.reason))
            return r.pool
        p = Pause(r.pool, r.uid, r.user, r.reason, now, None if r.for_s is None else now + r.for_s, r.at)
        self.active[r.pool] = p
        log.warning("pool %s %s by %s until %s: %s", r.pool, p.kind, r.user, until_text(p.until_s),
                    r.reason or "no reason given",
                    extra=event("paused", dqagent_pool=r.pool, dqagent_by=r.user, dqagent_uid=r.uid,
                                dqagent_reason=r.reason, dqagent_until=until_text(p.until_s),
                                dqagent_at="" if r.at is None else r.at))
        return r.pool

    def _save(self) -> None:
        """pauses.json, replaced whole (0644: any user's `dqagent status` reads it)."""
        if self.directory is None:
            return
        tmp = self.directory / f".{STATE_FILE}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o644)
                json.dump({n: p.to_json() for n, p in self.active.items()}, f)
            os.replace(tmp, self.directory / STATE_FILE)
        except OSError as exc:
            log.error("cannot keep the pauses in %s (%s): they end with this agent", self.directory, exc,
                      extra=event("pause_refused", dqagent_pool="", dqagent_by="", error=str(exc)))
