"""What `dqagent install` writes and where: the paths, the settings file's template, and the units
rendered for given settings. No I/O but reading the packaged templates.

Shared by `dqagent.setup.install` (which writes these files) and `dqagent.setup.check` (which compares the
installed files with them), so neither imports the other.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from dqagent.core.units import AGENT_UNIT
from dqagent.errors import ConfigError
from dqagent.settings.config import (
    DEFAULT_POOL_TASKS_MAX,
    DEFAULTS,
    PATH_ACCEPTED,
    RENDERED_CHARS,
    Settings,
    rendered_path,
)
from dqagent.settings.declarations import SETTINGS, OnReload, plain
from dqagent.setup import sandbox
from dqagent.setup.pooldropins import carries
from dqagent.setup.reach import Preflight

#: packaging/systemd, shipped inside the package as `dqagent/units` (a symlink in the source tree).
PACKAGING = Path(__file__).resolve().parent.parent / "units"
UNIT_DIR = Path("/etc/systemd/system")
ETC = Path("/etc/dqagent")
ENV_FILE = ETC / "dqagent.env"
PASSWORD_FILE = ETC / "redis-password"
RABBITMQ_PASSWORD_FILE = ETC / "rabbitmq-password"
POLKIT_RULE = Path("/etc/polkit-1/rules.d/50-dqagent.rules")
SYSUSERS = Path("/etc/sysusers.d/dqagent.conf")
LOGROTATE = Path("/etc/logrotate.d/dqagent")
#: polkitd's daemon (Debian 12's polkitd package): without it the rule is never read.
POLKITD = Path("/usr/lib/polkit-1/polkitd")
#: The journal catalog. journalctl --update-catalog reads only /usr/local/lib/systemd/catalog/
#: and /usr/lib/systemd/catalog/ (systemd's catalog.c: `catalog_file_dirs`), not /etc: /usr/lib is the
#: distribution package's, so the admin tool writes to /usr/local.
CATALOG_FILE = Path("/usr/local/lib/systemd/catalog/dqagent.catalog")
WORKER_TEMPLATE_FILE = UNIT_DIR / "dramatiq-worker@.service"
AGENT_UNIT_FILE = UNIT_DIR / AGENT_UNIT
DEFAULT_WORKER_USER = DEFAULTS["WORKER_USER"]

def render(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace(f"@{key}@", value)
    return template


def env_template() -> str:
    """The commented settings file: every declared setting with its description and default."""
    lines = ["# dqagent settings (python-dotenv syntax; inline comments allowed).",
             "# Every setting with its default. Passwords belong in /etc/dqagent/redis-password (rabbitmq-password).",
             ""]
    for s in SETTINGS:
        about = plain(s.description) + (" [a change needs dqagent install]" if s.on_reload is OnReload.INSTALL
                                        else "")
        if s.key == "REDIS_PASSWORD":
            lines.append(f"# {s.key}=  # {about}")
            continue
        lines += textwrap.wrap(about, 110, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False)
        lines.append(f"{s.key}={s.default}" if " " not in s.default else f'{s.key}="{s.default}"')
    return "\n".join(lines) + "\n"


def _seconds(value: float) -> str:
    """Seconds as systemd reads them, to the millisecond, never in exponent form (`1e+06s` is no time)."""
    return f"{value:.3f}".rstrip("0").rstrip(".") + "s"


def unit_values(settings: Settings, exe: str) -> dict[str, str]:
    """The @PLACEHOLDER@ values of both units, each checked on the very string that is rendered.

    Raises `ConfigError` for a value outside the characters a unit file carries as is (see
    `dqagent.settings.config.rendered_path`): `parse_settings` already refuses such settings, this also covers a
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


# -- Resource limits: drop-ins for the worker template and for its slice -----------------

#: Every template instance lands in this slice (a dash in a slice name means nesting, hence \x2d).
WORKER_SLICE = "system-dramatiq\\x2dworker.slice"
LIMITS_DROPIN = "50-dqagent-limits.conf"
WORKER_LIMITS_FILE = UNIT_DIR / "dramatiq-worker@.service.d" / LIMITS_DROPIN
SLICE_LIMITS_FILE = UNIT_DIR / f"{WORKER_SLICE}.d" / LIMITS_DROPIN
#: The first line of both drop-ins: `install` and `uninstall` replace or remove only files that carry it.
LIMITS_MARK = "# Installed by `dqagent install` from /etc/dqagent/dqagent.env; removed by `dqagent uninstall`."


def _dropin(section: str, why: str, lines: list[str]) -> str:
    return f"{LIMITS_MARK}\n# {why}\n[{section}]\n" + "".join(f"{line}\n" for line in lines)


#: The forms a limit is rendered in (dqagent.settings.parsers: parse_memory, parse_cpu_quota, parse_tasks_max).
_LIMIT_RE = re.compile(r"[0-9]+|[0-9]+(\.[0-9]{1,2})?%|infinity")


def _limit_lines(pairs: tuple[tuple[str, str, str], ...]) -> list[str]:
    """`Key=value` for each set limit, each value checked on the string rendered (`ConfigError` if not
    one of systemd's plain forms, e.g. from a `Settings` built without `parse_settings`)."""
    for setting, _, value in pairs:
        if value and not _LIMIT_RE.fullmatch(value):
            raise ConfigError(setting, value, "expected bytes, N% or infinity, as dqagent.settings.config renders them")
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
    return carries(path, LIMITS_MARK)
