"""What `dqagent install` writes and where: the paths, the settings file's template, and the units
rendered for given settings. No I/O but reading the packaged templates.

Shared by `dqagent.install` (which writes these files) and `dqagent.check` (which compares the
installed files with them), so neither imports the other.
"""

from __future__ import annotations

import re
from pathlib import Path

from dqagent import sandbox
from dqagent.config import DEFAULT_POOL_TASKS_MAX, DEFAULTS, PATH_ACCEPTED, RENDERED_CHARS, Settings, rendered_path
from dqagent.errors import ConfigError
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
#: The journal catalog (issue 12). journalctl --update-catalog reads only /usr/local/lib/systemd/catalog/
#: and /usr/lib/systemd/catalog/ (systemd's catalog.c: `catalog_file_dirs`), not /etc: /usr/lib is the
#: distribution package's, so the admin tool writes to /usr/local.
CATALOG_FILE = Path("/usr/local/lib/systemd/catalog/dqagent.catalog")
WORKER_TEMPLATE_FILE = UNIT_DIR / "dramatiq-worker@.service"
AGENT_UNIT_FILE = UNIT_DIR / AGENT_UNIT
DEFAULT_WORKER_USER = DEFAULTS["WORKER_USER"]

#: One line per setting for the commented settings file (and the README's table).
DESCRIPTIONS: dict[str, str] = {
    "REDIS_HOST": "Redis host of the Dramatiq broker",
    "REDIS_PORT": "Redis port (1..65535)",
    "REDIS_DB": "Redis database number (>= 0)",
    "REDIS_PASSWORD": "do not set it here: put it in /etc/dqagent/redis-password (0640 root:dqagent)",
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
    "LOG_FILE": ("extra log file; relative paths go under /var/log/dqagent; empty disables; letters, digits, "
                 ". _ - + @, no .."),
    "GRACEFUL_SHUTDOWN_TIMEOUT": ("seconds a worker may take to stop before SIGKILL (TimeoutStopSec; up to 7 days, "
                                  "to the ms)"),
    "PROCESS_STARTUP_DELAY": "seconds after a start before the worker must still be running",
    "QUEUE_METRIC": "outstanding (ready + prefetched + running) or ready (LLEN, the old behaviour)",
    "WORKER_USER": "user the workers run as (re-run dqagent install after changing it)",
    "WORKER_DIRECTORY": ("working directory of the workers (Dramatiq's --path defaults to .); letters, digits, "
                         ". _ - + @, no .."),
    "ALLOW_ROOT_WORKERS": "yes lets WORKER_USER be root (uid 0); refused otherwise (least privilege)",
    "DEMAND_POLL_INTERVAL": "target policy: seconds between cheap demand reads (bursts seen fast)",
    "DBUS_TIMEOUT": "seconds before a D-Bus call to systemd is abandoned (dqagent status and the agent never hang)",
    "SCALING_POLICY": "step (the old manager's rule, default) or target (see docs/scaling.md)",
    "TARGET_PER_WORKER": "target policy: outstanding messages one worker should hold",
    "TARGET_TOLERANCE": "target policy: relative band around the target with no change",
    "SCALE_UP_MAX_STEP": "target policy: most workers added by one decision",
    "SCALE_DOWN_WINDOW": "target policy: seconds a higher recommendation holds off scale-down",
    "MAX_QUEUE_AGE": "target policy: seconds the oldest waiting message may wait before a scale-up; empty = off",
    "METRICS_ADDRESS": "serve Prometheus /metrics on host:port ([v6]:port); empty: off (see docs/metrics.md)",
    "METRICS_TEXTFILE": "also write the metrics to this .prom file after each check (node_exporter textfile)",
    "WORKER_MEMORY_MAX": "per worker: MemoryMax= (e.g. 1G, 20%, infinity; empty: none); the kernel kills past it",
    "WORKER_MEMORY_HIGH": "per worker: MemoryHigh= (throttled and reclaimed past it; below WORKER_MEMORY_MAX)",
    "POOL_MEMORY_MAX": "whole pool (the workers' slice): MemoryMax=",
    "POOL_CPU_QUOTA": "whole pool: CPUQuota= as a percentage (100% = one CPU, e.g. 300%)",
    "POOL_TASKS_MAX": "whole pool: TasksMax= (processes and threads; a number, N% or infinity; empty: 33%)",
    "GUARD": "on: hold scale-ups while the host lacks headroom (pressure, memory); off: never",
    "GUARD_MEMORY_PRESSURE": "guard: hold above this memory some avg10 % (full avg10: above half of it)",
    "GUARD_CPU_PRESSURE": "guard: hold above this CPU some avg10 %",
    "GUARD_MEMORY_RESERVE": "guard: MemAvailable kept free after one more worker (bytes or % of MemTotal)",
    "GUARD_PROC_DIR": "guard: where pressure/ and meminfo are read; for tests only",
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
    """Seconds as systemd reads them, to the millisecond, never in exponent form (`1e+06s` is no time)."""
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def unit_values(settings: Settings, exe: str) -> dict[str, str]:
    """The @PLACEHOLDER@ values of both units, each checked on the very string that is rendered.

    Raises `ConfigError` for a value outside the characters a unit file carries as is (see
    `dqagent.config.rendered_path`): `parse_settings` already refuses such settings, this also covers a
    `Settings` built otherwise and the dqagent script's own path.
    """
    if rendered_path("the dqagent executable's path", exe) != exe:
        raise ConfigError("the dqagent executable's path", exe, f"expected a normalised absolute path of "
                          f"{PATH_ACCEPTED}")
    values = {
        "DQAGENT": exe,
        "WORKER_USER": settings.worker_user, "WORKER_DIRECTORY": settings.worker_directory,
        "GRACEFUL_SHUTDOWN_TIMEOUT": _seconds(settings.graceful_shutdown_timeout_s),
        "AGENT_TIMEOUT": _seconds(2 * settings.graceful_shutdown_timeout_s + 180),
    }
    for key, value in values.items():
        if not RENDERED_CHARS.fullmatch(value):
            raise ConfigError(key, value, f"expected {PATH_ACCEPTED}")
    return values


def rendered_units(settings: Settings, exe: str, pre: Preflight) -> dict[Path, str]:
    """Both unit files as `install` writes them for these settings (also what `check` compares).

    Raises `ConfigError` for a value a unit file cannot carry as is (`unit_values`).
    """
    values = unit_values(settings, exe)
    return {
        AGENT_UNIT_FILE: sandbox.render(render((PACKAGING / "dqagent.service").read_text(), values), pre.agent),
        WORKER_TEMPLATE_FILE: sandbox.render(
            render((PACKAGING / "dramatiq-worker@.service").read_text(), values), pre.worker),
    }


#: Where relative LOG_FILE names go (the agent unit's LogsDirectory=).
LOG_DIR = Path("/var/log/dqagent")


def logrotate_rule(log_file: str) -> str:
    """A logrotate rule for /var/log/dqagent/*.log and LOG_FILE (no copytruncate: the agent's
    WatchedFileHandler reopens the file when logrotate renames it).

    Raises `ConfigError` for a LOG_FILE outside the characters logrotate reads as is (`rendered_path`).
    """
    paths = [str(LOG_DIR / "*.log")]
    if log_file:
        if rendered_path("LOG_FILE", log_file, absolute=False) != log_file:
            raise ConfigError("LOG_FILE", log_file, f"expected a normalised path of {PATH_ACCEPTED}")
        target = log_file if log_file.startswith("/") else str(LOG_DIR / log_file)
        if Path(target).parent != LOG_DIR or not target.endswith(".log"):  # not matched by the glob
            paths.append(f'"{target}"')
    return ("# Installed by `dqagent install`; removed by `dqagent uninstall`.\n"
            "# No copytruncate: dqagent's log handler reopens the file after the rename.\n"
            + " ".join(paths) + " {\n"
            "    weekly\n    rotate 8\n    maxsize 50M\n    compress\n    delaycompress\n"
            "    missingok\n    notifempty\n    su dqagent dqagent\n    create 0640 dqagent dqagent\n}\n")


# -- Resource limits (issue 14): drop-ins for the worker template and for its slice -----------------

#: Every template instance lands in this slice (a dash in a slice name means nesting, hence \x2d).
WORKER_SLICE = "system-dramatiq\\x2dworker.slice"
LIMITS_DROPIN = "50-dqagent-limits.conf"
WORKER_LIMITS_FILE = UNIT_DIR / "dramatiq-worker@.service.d" / LIMITS_DROPIN
SLICE_LIMITS_FILE = UNIT_DIR / f"{WORKER_SLICE}.d" / LIMITS_DROPIN
#: The first line of both drop-ins: `install` and `uninstall` replace or remove only files that carry it.
LIMITS_MARK = "# Installed by `dqagent install` from /etc/dqagent/dqagent.env; removed by `dqagent uninstall`."


def _dropin(section: str, why: str, lines: list[str]) -> str:
    return f"{LIMITS_MARK}\n# {why}\n[{section}]\n" + "".join(f"{line}\n" for line in lines)


#: The forms a limit is rendered in (dqagent.config.parse_memory, _parse_cpu_quota, _parse_tasks_max).
_LIMIT_RE = re.compile(r"[0-9]+|[0-9]+(\.[0-9]{1,2})?%|infinity")


def _limit_lines(pairs: tuple[tuple[str, str, str], ...]) -> list[str]:
    """`Key=value` for each set limit, each value checked on the string rendered (`ConfigError` if not
    one of systemd's plain forms, e.g. from a `Settings` built without `parse_settings`)."""
    for setting, _, value in pairs:
        if value and not _LIMIT_RE.fullmatch(value):
            raise ConfigError(setting, value, "expected bytes, N% or infinity, as dqagent.config renders them")
    return [f"{key}={value}" for _, key, value in pairs if value]


def _worker_limits(settings: Settings) -> tuple[tuple[str, str, str], ...]:
    return (("WORKER_MEMORY_MAX", "MemoryMax", settings.worker_memory_max),
            ("WORKER_MEMORY_HIGH", "MemoryHigh", settings.worker_memory_high))


def _pool_limits(settings: Settings) -> tuple[tuple[str, str, str], ...]:
    return (("POOL_MEMORY_MAX", "MemoryMax", settings.pool_memory_max),
            ("POOL_CPU_QUOTA", "CPUQuota", settings.pool_cpu_quota),
            ("POOL_TASKS_MAX", "TasksMax", settings.pool_tasks_max))


def rendered_limits(settings: Settings) -> dict[Path, str | None]:
    """The two limit drop-ins for these settings; None: the file must not exist (no such limit set).

    The worker drop-in always turns memory accounting on (the guard reads each worker's MemoryCurrent)
    and carries WORKER_MEMORY_MAX/HIGH; the slice drop-in carries the POOL_* limits, and always a
    TasksMax= (POOL_TASKS_MAX, by default `DEFAULT_POOL_TASKS_MAX`). Raises `ConfigError` for a value
    that is not one of systemd's plain forms.
    """
    worker = ["MemoryAccounting=yes", *_limit_lines(_worker_limits(settings))]
    pool = _limit_lines(_pool_limits(settings))
    return {
        WORKER_LIMITS_FILE: _dropin("Service", "Per worker: WORKER_MEMORY_MAX, WORKER_MEMORY_HIGH; accounting "
                                    "for the guard's MemoryCurrent reads.", worker),
        SLICE_LIMITS_FILE: _dropin("Slice", "The whole pool (every dramatiq-worker@N): POOL_MEMORY_MAX, "
                                   f"POOL_CPU_QUOTA, POOL_TASKS_MAX (empty: {DEFAULT_POOL_TASKS_MAX}).", pool)
        if pool else None,
    }


def limits_summary(settings: Settings) -> str:
    """The limits in force, one line for `dqagent check`, e.g. `per worker MemoryMax=1073741824; pool CPUQuota=300%`."""
    worker = [f"{k}={v}" for _, k, v in _worker_limits(settings) if v]
    pool = [f"{k}={v}" + (" (default)" if (k, v) == ("TasksMax", DEFAULT_POOL_TASKS_MAX) else "")
            for _, k, v in _pool_limits(settings) if v]
    return "; ".join([f"per worker {' '.join(worker) or 'no limit'}", f"pool ({WORKER_SLICE}) "
                      f"{' '.join(pool) or 'no limit'}"])


def ours(path: Path) -> bool:
    """Whether `path` is a limits drop-in `dqagent install` wrote (its first line is LIMITS_MARK)."""
    try:
        with path.open() as f:
            return f.readline().rstrip("\n") == LIMITS_MARK
    except OSError:
        return False
