"""How `DRAMATIQ_COMMAND` becomes a worker process, and what its flags imply.

The worker template runs `dqagent worker-exec`, which reads the same settings as the agent
(python-dotenv, so the old manager's `.env` with inline comments keeps working), changes to
`WORKER_DIRECTORY` and replaces itself (exec) with the command: the unit's main PID is then
Dramatiq's own main process, which is what `KillMode=mixed` sends SIGTERM to.
"""

from __future__ import annotations

import shlex

#: Dramatiq's default `--worker-shutdown-timeout`, in milliseconds (dramatiq/cli.py).
DRAMATIQ_DEFAULT_SHUTDOWN_TIMEOUT_MS = 600_000


def command_argv(command: str) -> list[str]:
    """Split the command like a POSIX shell would, without running a shell."""
    argv = shlex.split(command)
    if not argv:
        raise ValueError("DRAMATIQ_COMMAND is empty")
    return argv


def dramatiq_shutdown_timeout_s(argv: list[str]) -> float:
    """Dramatiq's own graceful-stop bound for this command line, in seconds."""
    for i, arg in enumerate(argv):
        value = None
        if arg == "--worker-shutdown-timeout" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--worker-shutdown-timeout="):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                return int(value) / 1000
            except ValueError:
                break
    return DRAMATIQ_DEFAULT_SHUTDOWN_TIMEOUT_MS / 1000


def shutdown_warning(command: str, graceful_shutdown_timeout_s: float) -> str:
    """A warning when systemd would SIGKILL workers before Dramatiq's own timeout, else ""."""
    dramatiq_s = dramatiq_shutdown_timeout_s(command_argv(command))
    if graceful_shutdown_timeout_s >= dramatiq_s:
        return ""
    return (
        f"GRACEFUL_SHUTDOWN_TIMEOUT={graceful_shutdown_timeout_s:g}s is shorter than Dramatiq's "
        f"--worker-shutdown-timeout ({dramatiq_s:g}s): tasks still running after "
        f"{graceful_shutdown_timeout_s:g}s are SIGKILLed and their messages come back only through "
        "orphan recovery; add --worker-shutdown-timeout to DRAMATIQ_COMMAND or raise the timeout"
    )
