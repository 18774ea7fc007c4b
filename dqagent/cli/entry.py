"""The `dqagent` command's entry point: the CLI, or one line saying what to install when the agent's own
dependencies are missing (`pip install dqagent` alone installs only what the app-side middleware needs,
`dqagent.dramatiq.WorkerReport`; the agent needs the `agent` extra)."""

from __future__ import annotations

import sys

#: The agent's own dependencies (the `agent` extra), by import name.
AGENT_MODULES = frozenset({"dbus_fast", "redis", "systemd", "sdnotify", "dotenv", "prometheus_client"})
#: EX_UNAVAILABLE, as for a missing system bus.
EXIT_MISSING = 69


def main() -> int:
    try:
        from dqagent.cli.main import main as cli
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in AGENT_MODULES:
            raise
        print(f"dqagent: the agent's dependencies are not installed (no module {exc.name!r}): "
              "pip install 'dqagent[agent]'", file=sys.stderr)
        return EXIT_MISSING
    return cli()
