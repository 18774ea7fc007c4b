"""The agent's state directory and the requests directory `dqagent pause` writes into (made by install).

/var/lib/dqagent/agent: 0755 dqagent:dqagent (the unit's StateDirectory=, so systemd finds it as it would make it;
its parent /var/lib/dqagent, the workers' home, stays root's: systemd would chown a StateDirectory's whole tree);
`requests/` in it: 01770 dqagent:PAUSE_GROUP (dqagent:dqagent without PAUSE_GROUP): root and the group's members
create request files, the sticky bit keeps them from removing each other's, the agent reads and removes them
(`dqagent.agent.pausing` explains the checks).
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

from dqagent.agent.pausing import STATE_DIR
from dqagent.settings.config import Settings

AGENT_USER = "dqagent"


def group_refusal(settings: Settings) -> str:
    """Why PAUSE_GROUP cannot be used (no such group), or ""."""
    if not settings.pause_group:
        return ""
    try:
        grp.getgrnam(settings.pause_group)
    except KeyError:
        return (f"PAUSE_GROUP={settings.pause_group}: no such group; fix: groupadd {settings.pause_group} "
                "(and add the operators to it), or leave PAUSE_GROUP empty (root only)")
    return ""


def make_pause_dirs(settings: Settings, state_dir: Path = STATE_DIR) -> list[str]:
    """Create or correct both directories; returns what changed (for install's report)."""
    agent = pwd.getpwnam(AGENT_USER)
    gid = grp.getgrnam(settings.pause_group).gr_gid if settings.pause_group else agent.pw_gid
    changed: list[str] = []
    if not state_dir.parent.is_dir():
        state_dir.parent.mkdir(mode=0o755, parents=True)
        changed.append(f"created {state_dir.parent}")
    for path, group, mode in ((state_dir, agent.pw_gid, 0o755), (state_dir / "requests", gid, 0o1770)):
        if not path.is_dir() or path.is_symlink():
            path.mkdir(mode=mode)
            changed.append(f"created {path}")
        st = os.lstat(path)
        if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (agent.pw_uid, group, mode):
            os.chown(path, agent.pw_uid, group, follow_symlinks=False)
            os.chmod(path, mode)
            if f"created {path}" not in changed:
                changed.append(f"set {path} to {mode:04o} {AGENT_USER}:{grp.getgrgid(group).gr_name}")
    return changed
