"""What a unit's sandbox hides, and how to render a unit that still reaches its own files (pure).

The shipped units are hardened (`ProtectHome=`, `PrivateTmp=`, `ProtectSystem=`): a venv, an
interpreter (pyenv, uv, a user's venv) or a checkout under `/home`, `/root` or `/run/user` is hidden
from them, and systemd then fails with `203/EXEC` on a file that exists. This module takes the paths
a unit needs (already resolved, symlinks followed, by the caller), the unit's sandbox settings and the
permission bits of every directory on the way, and returns either the unit lines that make exactly
the needed directories visible (`ProtectHome=tmpfs` plus `BindReadOnlyPaths=`), or a `Refusal`: one
line naming the path, the reason and the fix. No I/O: the caller reads files and stats paths.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath

#: What `ProtectHome=` covers (systemd.exec(5)).
HOME_ROOTS = ("/home", "/root", "/run/user")
#: What `PrivateTmp=yes` replaces with the unit's own empty directories.
TMP_ROOTS = ("/tmp", "/var/tmp")
#: Characters a path may not hold to be written into a unit file unquoted (`:` separates bind
#: source and target, `%` starts a specifier, whitespace separates list items, and a control character
#: such as a newline, `\r` or NUL would end the line).
_UNSAFE = re.compile(r"[\s:%\\\"';\x00-\x1f\x7f]")
#: `ProtectHome=tmpfs` mounts a root-owned tmpfs on each home root; systemd creates the mount points
#: of the binds inside it as root-owned directories (0755): traversable by anyone.
TMPFS_DIR_MODE = 0o755


class Access(StrEnum):
    """How a unit uses a path."""

    #: A file it executes (x, and r for a script read by its interpreter).
    EXEC = "exec"
    #: A file or directory it reads (r, and x for a directory).
    READ = "read"
    #: A directory it creates and renames files in (w and x): made writable with `ReadWritePaths=`.
    WRITE = "write"


@dataclass(frozen=True, slots=True)
class Need:
    """A path a unit must reach; `scope` is the directory made visible if it is hidden."""

    path: str
    why: str
    access: Access
    scope: str


@dataclass(frozen=True, slots=True)
class Sandbox:
    """The filesystem settings of a unit that decide what it sees."""

    protect_home: str = "no"
    private_tmp: bool = False
    protect_system: str = "no"
    inaccessible: tuple[str, ...] = ()

    @classmethod
    def parse(cls, unit_text: str) -> Sandbox:
        """Read the settings from a unit file's text (the last assignment wins, as in systemd)."""
        found: dict[str, str] = {}
        inaccessible: list[str] = []
        for raw in unit_text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")) or "=" not in line:
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            if key == "InaccessiblePaths":
                if not value:
                    inaccessible.clear()
                inaccessible.extend(p.lstrip("-+") for p in value.split())
            elif key in ("ProtectHome", "PrivateTmp", "ProtectSystem"):
                found[key] = value.lower()
        return cls(
            protect_home=_tristate(found.get("ProtectHome", "no")),
            private_tmp=found.get("PrivateTmp", "no") in ("yes", "true", "1", "on"),
            protect_system=_tristate(found.get("ProtectSystem", "no")),
            inaccessible=tuple(inaccessible),
        )


def _tristate(value: str) -> str:
    if value in ("yes", "true", "1", "on"):
        return "yes"
    if value in ("no", "false", "0", "off", ""):
        return "no"
    return value


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a unit cannot work with a path, and what the operator can do: printed as one line."""

    path: str
    why: str
    fix: str
    #: The path does not exist (yet): `install` warns and goes on, `check` fails.
    missing: bool = False

    def line(self) -> str:
        return f"{self.path}: {self.why}; fix: {self.fix}"


@dataclass(frozen=True, slots=True)
class Plan:
    """How to render one unit: its `ProtectHome=` value, the directories bound read-only and those made
    writable (`ReadWritePaths=`, through `ProtectSystem=strict`)."""

    unit: str
    protect_home: str
    binds: tuple[str, ...]
    refusals: tuple[Refusal, ...]
    writable: tuple[str, ...] = ()


def is_under(path: str, root: str) -> bool:
    """True when `path` is `root` or inside it (purely lexical; both absolute and normalised)."""
    return PurePosixPath(path).is_relative_to(root)


def _root_of(path: str, roots: Iterable[str]) -> str | None:
    return next((r for r in roots if is_under(path, r)), None)


def minimal_cover(dirs: Iterable[str]) -> tuple[str, ...]:
    """The directories with every one nested inside another dropped, sorted."""
    out: list[str] = []
    for d in sorted(set(dirs), key=lambda p: (len(PurePosixPath(p).parts), p)):
        if not any(is_under(d, kept) for kept in out):
            out.append(d)
    return tuple(sorted(out))


def plan(unit: str, sandbox: Sandbox, needs: Sequence[Need]) -> Plan:
    """Decide how `unit` can reach every need: keep its sandbox, bind directories, or refuse.

    A need under `/tmp` or `/var/tmp` with `PrivateTmp=yes`, or under an `InaccessiblePaths=` entry,
    cannot be made visible without weakening the unit: refused. A need under a home root makes the
    unit `ProtectHome=tmpfs` with the needs' scopes bound read-only (also for `ProtectHome=read-only`,
    where it also keeps the rest of the homes hidden and the homes' own modes out of the way).
    """
    refusals: list[Refusal] = []
    binds: list[str] = []
    writable: list[str] = []
    for need in needs:
        for text in (need.path, need.scope):
            if _UNSAFE.search(text) or not text.startswith("/"):
                refusals.append(Refusal(text, f"{need.why} has a path a unit file cannot carry "
                                        "(whitespace, a control character, : % \\ ' \" or ; or not absolute)",
                                        "install it under a plain absolute path such as /opt/dqagent"))
        if not is_under(need.path, need.scope):
            raise ValueError(f"{need.path} is not inside its scope {need.scope}")
        tmp = _root_of(need.path, TMP_ROOTS)
        if sandbox.private_tmp and tmp:
            refusals.append(Refusal(need.path, f"{need.why} is under {tmp}, which {unit} cannot see "
                                    f"(PrivateTmp=yes gives it an empty private {tmp})",
                                    "move it out of /tmp and /var/tmp (e.g. to /opt or /srv) and "
                                    "update the setting that names it"))
            continue
        blocked = _root_of(need.path, sandbox.inaccessible)
        if blocked:
            refusals.append(Refusal(need.path, f"{need.why} is under {blocked}, which {unit} cannot see "
                                    f"(InaccessiblePaths={blocked})",
                                    "move it elsewhere, or drop that InaccessiblePaths= entry"))
            continue
        home = _root_of(need.path, HOME_ROOTS)
        if need.access is Access.WRITE:
            if sandbox.protect_home != "no" and home:
                refusals.append(Refusal(need.path, f"{need.why} is under {home}, which {unit} cannot write "
                                        f"(ProtectHome={sandbox.protect_home})",
                                        "use a directory outside the homes, e.g. /var/lib/prometheus/node-exporter"))
            else:
                writable.append(need.path)
            continue
        if sandbox.protect_home != "no" and home:
            # Never a whole home root (nor what holds one): then the path itself.
            binds.append(need.scope if is_under(need.scope, home) and need.scope != home else need.path)
    cover = minimal_cover(binds)
    return Plan(unit=unit, protect_home="tmpfs" if cover else sandbox.protect_home, binds=cover,
                refusals=tuple(dict.fromkeys(refusals)), writable=minimal_cover(writable))


def render(unit_text: str, p: Plan) -> str:
    """The unit text with `ProtectHome=` set to the plan's value and one `BindReadOnlyPaths=` per bind,
    and one `ReadWritePaths=-dir` per writable directory after `ProtectSystem=` (`-`: a directory missing
    at start does not fail the unit; the write fails and is logged instead).

    Unchanged when the plan binds and writes nothing, so today's units render byte for byte as before.
    """
    if p.writable:
        unit_text = _render_writable(unit_text, p)
    if not p.binds:
        return unit_text
    lines = unit_text.splitlines(keepends=True)
    out: list[str] = []
    done = False
    for line in lines:
        if line.strip().startswith("ProtectHome=") and not done:
            out.append("# Rendered by dqagent install: these directories under a home are needed and\n"
                       "# made visible read-only; the rest of /home, /root and /run/user stays hidden.\n")
            out.append(f"ProtectHome={p.protect_home}\n")
            out.extend(f"BindReadOnlyPaths={b}\n" for b in p.binds)
            done = True
            continue
        if line.strip().startswith("ProtectHome="):
            continue
        out.append(line)
    if not done:
        raise ValueError(f"{p.unit}: no ProtectHome= line to replace")
    return "".join(out)


def _render_writable(unit_text: str, p: Plan) -> str:
    out: list[str] = []
    done = False
    for line in unit_text.splitlines(keepends=True):
        out.append(line)
        if line.strip().startswith("ProtectSystem=") and not done:
            out.append("# Rendered by dqagent install: directories the agent writes (METRICS_TEXTFILE's).\n")
            out.extend(f"ReadWritePaths=-{w}\n" for w in p.writable)
            done = True
    if not done:
        raise ValueError(f"{p.unit}: no ProtectSystem= line to follow")
    return "".join(out)


# --- Who may traverse what -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stat:
    """The bits of `os.stat()` that decide access (ACLs are not modelled)."""

    mode: int
    uid: int
    gid: int
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Who:
    """The user a unit runs as; `uid=None` when sysusers has not created it yet."""

    name: str
    uid: int | None
    gids: frozenset[int]

    def bits(self, st: Stat) -> int:
        """The rwx bits (0..7) that apply to this user for a file (no capabilities: both units drop
        them, so root is checked like anyone else, as owner of its files)."""
        if self.uid is not None and st.uid == self.uid:
            return (st.mode >> 6) & 7
        if self.uid is not None and st.gid in self.gids:
            return (st.mode >> 3) & 7
        return st.mode & 7


def chain(path: str) -> list[str]:
    """`/a/b/c` -> `["/", "/a", "/a/b", "/a/b/c"]`."""
    p = PurePosixPath(path)
    return [str(q) for q in reversed([p, *p.parents])]


def access_problem(need: Need, who: Who, unit: str, stats: Mapping[str, Stat],
                   binds: Sequence[str] = ()) -> Refusal | None:
    """Whether `who` can reach `need.path` inside `unit`'s sandbox; the first obstacle, or None.

    `stats` holds `os.stat()` of every directory on the way and of the path itself (the caller
    resolved symlinks). With `binds`, directories above a bind inside a home root are the tmpfs that
    `ProtectHome=tmpfs` mounts (root's, mode 0755), not the host's: `/root` at 0700 is no obstacle.
    """
    tmpfs = [b for b in binds if _root_of(b, HOME_ROOTS)]
    steps = chain(need.path)
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        on_tmpfs = any(is_under(b, step) and b != step for b in tmpfs) and _root_of(step, HOME_ROOTS)
        if on_tmpfs:
            st = Stat(mode=0o40000 | TMPFS_DIR_MODE, uid=0, gid=0, is_dir=True)
        elif step in stats:
            st = stats[step]
        else:
            return Refusal(step, f"does not exist ({need.why}: {need.path})",
                           "create it, or correct the setting that names it", missing=True)
        bits = who.bits(st)
        if not last:
            if not st.is_dir:
                return Refusal(step, f"is not a directory (on the way to {need.why}, {need.path})",
                               "correct the setting that names it")
            if not bits & 1:
                return _denied(step, st, who, unit, f"not traversable (on the way to {need.why})", "o+x")
            continue
        if need.access is Access.WRITE:
            if not st.is_dir:
                return Refusal(step, f"{need.why} is not a directory", "correct the setting that names it")
            if bits & 3 != 3:
                return Refusal(step, f"not writable ({need.why}) by user {who.name} (mode {st.mode & 0o7777:04o}, "
                               f"owner uid {st.uid}), which {unit} runs as",
                               f"chgrp {who.name} {step} && chmod g+rwx {step}, or choose a directory {who.name} "
                               "may write")
            return None
        wanted = 5 if st.is_dir else (5 if need.access is Access.EXEC else 4)
        if need.access is Access.EXEC and st.is_dir:
            return Refusal(step, f"{need.why} is a directory, not an executable", "correct the setting")
        if bits & wanted != wanted:
            what = "not executable" if need.access is Access.EXEC else "not readable"
            return _denied(step, st, who, unit, f"{what} ({need.why})",
                           "o+rx" if wanted == 5 else "o+r")
    return None


def _denied(path: str, st: Stat, who: Who, unit: str, what: str, chmod: str) -> Refusal:
    basis = "" if who.uid is not None else ", checked with the 'other' bits: the user does not exist yet"
    return Refusal(path, f"{what} by user {who.name} (mode {st.mode & 0o7777:04o}, owner uid {st.uid}"
                   f"{basis}), which {unit} runs as",
                   f"chmod {chmod} {path}, or install under a directory every user may enter (e.g. /opt)")
