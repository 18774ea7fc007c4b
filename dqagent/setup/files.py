"""The files and directories `dqagent install` writes, each only when it differs, under modes it sets itself
(whatever the umask) and without following a symlink it did not make; and what it says it changed.

Shared by `dqagent.setup.install` and `dqagent.setup.poolinstall`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

#: Mode of the directories install creates (/etc/dqagent, WORKER_DIRECTORY's parents, .d directories):
#: every service user must traverse them.
DIR_MODE = 0o755
#: Mode of WORKER_DIRECTORY when install creates it (owned by WORKER_USER).
WORKDIR_MODE = 0o750


@dataclass
class Report:
    changed: list[str]
    kept: list[str]

    def say(self) -> None:
        for line in self.changed:
            print(f"  {line}")
        if not self.changed:
            print("already installed: nothing changed")


def write(path: Path, text: str, mode: int, report: Report, owner: tuple[int, int] = (0, 0)) -> bool:
    """Write `path` atomically unless it already holds `text` with `mode`; True when it was written."""
    if path.exists() and path.read_text() == text and (path.stat().st_mode & 0o7777) == mode:
        report.kept.append(str(path))
        return False
    make_directories(path.parent)
    tmp = path.with_name(path.name + ".dqagent-tmp")
    tmp.write_text(text)
    os.chown(tmp, *owner)
    tmp.chmod(mode)
    tmp.replace(path)
    report.changed.append(f"wrote {path}")
    return True


def make_directories(directory: Path) -> list[Path]:
    """Create `directory` and its missing parents, each root's with `DIR_MODE` set explicitly (whatever the
    umask); existing ones are left as they are. Returns those created, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not os.path.lexists(d)]
    for d in reversed(missing):
        os.mkdir(d, 0o700)
        fix_new_directory(d, DIR_MODE)
    return missing[::-1]


def fix_new_directory(directory: Path, mode: int, owner: tuple[int, int] | None = None) -> None:
    """Set the mode (and owner) of a directory this install has just created, through a descriptor opened
    with O_NOFOLLOW, once it is checked to be still an empty root-owned directory: a symlink or another
    directory put in its place by whoever may write the parent is never followed, chmod'ed nor chowned."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if os.fstat(fd).st_uid != 0 or os.listdir(fd):
            raise OSError(f"{directory} changed while install created it: left as it is")
        if owner is not None:
            os.fchown(fd, *owner)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def make_worker_directory(workdir: Path, uid: int, gid: int) -> bool:
    """Create WORKER_DIRECTORY for the worker user (`WORKDIR_MODE`, parents root's `DIR_MODE`); True when created.

    Only a directory this call created is given away (`fix_new_directory`: no symlink followed). Anything
    already at that path, a symlink included, is the operator's and left alone (`dqagent check` judges it).
    Raises OSError when the path changed under it.
    """
    if os.path.lexists(workdir):
        return False
    make_directories(workdir.parent)
    os.mkdir(workdir, 0o700)
    fix_new_directory(workdir, WORKDIR_MODE, (uid, gid))
    return True


def remove_dropin(path: Path) -> None:
    """Remove one of our drop-ins, and its `.d` directory when nothing else is left in it."""
    path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()
