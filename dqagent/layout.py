"""What `dqagent install` writes and where: the paths, the settings file's template, and the units
rendered for given settings. No I/O but reading the packaged templates.

Shared by `dqagent.install` (which writes these files) and `dqagent.check` (which compares the
installed files with them), so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path

from dqagent import sandbox
from dqagent.config import DEFAULTS, Settings
from dqagent.reach import Preflight
from dqagent.systemd import AGENT_UNIT

#: packaging/systemd, shipped inside the package as `dqagent/units` (a symlink in the source tree).
PACKAGING = Path(__file__).resolve().parent / "units"
UNIT_DIR = Path("/etc/systemd/system")
ETC = Path("/etc/dqagent")
ENV_FILE = ETC / "dqagent.env"
PASSWORD_FILE = ETC / "redis-password"
POLKIT_RULE = Path("/etc/polkit-1/rules.d/50-dqagent.rules")
SYSUSERS = Path("/etc/sysusers.d/dqagent.conf")
LOGROTATE = Path("/etc/logrotate.d/dqagent")
#: polkitd's daemon (Debian 12's polkitd package): without it the rule is never read.
POLKITD = Path("/usr/lib/polkit-1/polkitd")
WORKER_TEMPLATE_FILE = UNIT_DIR / "dramatiq-worker@.service"
AGENT_UNIT_FILE = UNIT_DIR / AGENT_UNIT
DEFAULT_WORKER_USER = DEFAULTS["WORKER_USER"]

#: One line per setting for the commented settings file (and the README's table).
DESCRIPTIONS: dict[str, str] = {
    "REDIS_HOST": "Redis host of the Dramatiq broker",
    "REDIS_PORT": "Redis port (1..65535)",
    "REDIS_DB": "Redis database number (>= 0)",
    "REDIS_PASSWORD": "do not set it here: put it in /etc/dqagent/redis-password (mode 0600)",
    "REDIS_URL": "redis://, rediss:// or unix:// URL; replaces host/port/db when set (password: see above)",
    "REDIS_PASSWORD_FILE": "file read for the password when not run by systemd (dqagent status)",
    "REDIS_TIMEOUT": "seconds before a Redis call is abandoned (keeps the loop under the watchdog)",
    "DRAMATIQ_QUEUE_NAME": "queue(s) the workers consume, comma-separated; demand is the sum",
    "DRAMATIQ_NAMESPACE": "Dramatiq's Redis key namespace",
    "DRAMATIQ_COMMAND": "one worker process; use the absolute path of your venv's python",
    "MIN_PROCESSES": "fewest workers (0..1000)",
    "MAX_PROCESSES": "most workers (MIN_PROCESSES..1000, >= 1)",
    "CHECK_INTERVAL": "seconds between checks (> 0)",
    "SCALE_UP_THRESHOLD_MULTIPLIER": "step policy: +1 worker when queue > workers x this",
    "SCALE_DOWN_THRESHOLD_MULTIPLIER": "step policy: -1 worker when queue < workers x this (< up)",
    "LOG_LEVEL": "CRITICAL, ERROR, WARNING, INFO or DEBUG",
    "LOG_FILE": "extra log file; relative paths go under /var/log/dqagent; empty disables",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "seconds a worker may take to stop before SIGKILL (TimeoutStopSec)",
    "PROCESS_STARTUP_DELAY": "seconds after a start before the worker must still be running",
    "QUEUE_METRIC": "outstanding (ready + prefetched + running) or ready (LLEN, the old behaviour)",
    "WORKER_USER": "user the workers run as (re-run dqagent install after changing it)",
    "WORKER_DIRECTORY": "working directory of the workers (Dramatiq's --path defaults to .)",
    "ALLOW_ROOT_WORKERS": "yes lets WORKER_USER be root (uid 0); refused otherwise (least privilege)",
    "DEMAND_POLL_INTERVAL": "target policy: seconds between cheap demand reads (bursts seen fast)",
    "DBUS_TIMEOUT": "seconds before a D-Bus call to systemd is abandoned (dqagent status and the agent never hang)",
    "SCALING_POLICY": "step (the old manager's rule, default) or target (see docs/scaling.md)",
    "TARGET_PER_WORKER": "target policy: outstanding messages one worker should hold",
    "TARGET_TOLERANCE": "target policy: relative band around the target with no change",
    "SCALE_UP_MAX_STEP": "target policy: most workers added by one decision",
    "SCALE_DOWN_WINDOW": "target policy: seconds a higher recommendation holds off scale-down",
    # Fleet mode (issue 13), docs/fleet.md.
    "FLEET": "fleet name: hosts with the same FLEET on this Redis share one target (empty: this host alone)",
    "FLEET_WEIGHT": "this host's weight in the fleet's split (empty: MAX_PROCESSES)",
    "FLEET_HOST_ID": "this host's id in the fleet (empty: /etc/machine-id; set it for cloned machines/containers)",
}


def render(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template


def env_template() -> str:
    """The commented settings file: every setting with its default."""
    lines = ["# dqagent settings (python-dotenv syntax; inline comments allowed).",
             "# Every setting with its default. The password belongs in /etc/dqagent/redis-password.",
             ""]
    for key, default in DEFAULTS.items():
        if key == "REDIS_PASSWORD":
            lines.append(f"# {key}=  # {DESCRIPTIONS.get(key, '')}")
            continue
        lines.append(f"# {DESCRIPTIONS.get(key, '')}")
        lines.append(f"{key}={default}" if " " not in default else f'{key}="{default}"')
    return "\n".join(lines) + "\n"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def rendered_units(settings: Settings, exe: str, pre: Preflight) -> dict[Path, str]:
    """Both unit files as `install` writes them for these settings (also what `check` compares)."""
    values = {
        "DQAGENT": exe,
        "WORKER_USER": settings.worker_user, "WORKER_DIRECTORY": settings.worker_directory,
        "GRACEFUL_SHUTDOWN_TIMEOUT": _seconds(settings.graceful_shutdown_timeout_s),
        "AGENT_TIMEOUT": _seconds(2 * settings.graceful_shutdown_timeout_s + 180),
    }
    return {
        AGENT_UNIT_FILE: sandbox.render(render((PACKAGING / "dqagent.service").read_text(), values), pre.agent),
        WORKER_TEMPLATE_FILE: sandbox.render(
            render((PACKAGING / "dramatiq-worker@.service").read_text(), values), pre.worker),
    }


#: Where relative LOG_FILE names go (the agent unit's LogsDirectory=).
LOG_DIR = Path("/var/log/dqagent")


def logrotate_rule(log_file: str) -> str:
    """A logrotate rule for /var/log/dqagent/*.log and LOG_FILE (no copytruncate: the agent's
    WatchedFileHandler reopens the file when logrotate renames it)."""
    paths = [str(LOG_DIR / "*.log")]
    if log_file:
        target = log_file if log_file.startswith("/") else str(LOG_DIR / log_file)
        if Path(target).parent != LOG_DIR or not target.endswith(".log"):  # not matched by the glob
            paths.append(f'"{target}"')
    return ("# Installed by `dqagent install`; removed by `dqagent uninstall`.\n"
            "# No copytruncate: dqagent's log handler reopens the file after the rename.\n"
            + " ".join(paths) + " {\n"
            "    weekly\n    rotate 8\n    maxsize 50M\n    compress\n    delaycompress\n"
            "    missingok\n    notifempty\n    su dqagent dqagent\n    create 0640 dqagent dqagent\n}\n")
