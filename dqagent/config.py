"""The configuration contract: every setting, its default, and its validation.

Pure: takes a mapping of raw strings (already merged from flags, environment and `.env`) and returns
one frozen `Settings`, or raises `ConfigError` naming the first bad key. Reading files lives in
`dqagent.sources`, so this module can be tested exhaustively without touching a disk.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypedDict
from urllib.parse import unquote_plus, urlsplit

from dqagent.errors import ConfigError

# Dramatiq's own rule for queue names (dramatiq/actor.py); also safe inside Redis key names.
_QUEUE_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
_NAMESPACE_RE = re.compile(r"[a-zA-Z0-9_.-]+")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
MAX_PROCESSES_LIMIT = 1000
#: Longest GRACEFUL_SHUTDOWN_TIMEOUT (TimeoutStopSec of a worker): 7 days.
MAX_GRACE_S = 7 * 86400.0


class QueueMetric(StrEnum):
    """Which Redis figure feeds the scaling rule."""

    #: ready + prefetched + running (`HLEN Q.msgs`): the real backlog.
    OUTSTANDING = "outstanding"
    #: `LLEN Q` only, as the old manager did; blind to prefetched messages.
    READY = "ready"


#: Defaults, with the old manager's names and values. Strings, as they would appear in `.env`.
DEFAULTS: dict[str, str] = {
    "REDIS_HOST": "localhost",
    "REDIS_PORT": "6379",
    "REDIS_DB": "0",
    "REDIS_PASSWORD": "",
    "REDIS_URL": "",
    "REDIS_PASSWORD_FILE": "/etc/dqagent/redis-password",
    "REDIS_TIMEOUT": "5",
    "DRAMATIQ_QUEUE_NAME": "nietest_subtask",
    "DRAMATIQ_NAMESPACE": "dramatiq",
    "DRAMATIQ_COMMAND": (
        "python -m dramatiq --processes 1 --threads 5 --verbose backend.dramatiq_app.workers.subtask"
    ),
    "MIN_PROCESSES": "1",
    "MAX_PROCESSES": "10",
    "CHECK_INTERVAL": "180",
    "SCALE_UP_THRESHOLD_MULTIPLIER": "5",
    "SCALE_DOWN_THRESHOLD_MULTIPLIER": "2.5",
    "LOG_LEVEL": "INFO",
    "LOG_FILE": "process_manager.log",
    "GRACEFUL_SHUTDOWN_TIMEOUT": "30",
    "PROCESS_STARTUP_DELAY": "5",
    "QUEUE_METRIC": "outstanding",
    "WORKER_USER": "dqworker",
    "WORKER_DIRECTORY": "/var/lib/dqagent/worker",
    # Least privilege (issue 11): WORKER_USER=root only with this explicit opt-in.
    "ALLOW_ROOT_WORKERS": "no",
    "DEMAND_POLL_INTERVAL": "5",
    "DBUS_TIMEOUT": "25",
    # --- Prometheus metrics (issue 12); parsed by `parse_metrics_address`, see docs/metrics.md. ---
    "METRICS_ADDRESS": "",
    "METRICS_TEXTFILE": "",
    # --- Fleet mode (issue 13): parsed by `_parse_fleet_settings`, documented in docs/fleet.md. ---
    "FLEET": "",
    "FLEET_WEIGHT": "",
    "FLEET_HOST_ID": "",
    # --- Scaling policy (issue 6); parsed by `_parse_policy_settings`, documented in docs/scaling.md. ---
    "SCALING_POLICY": "step",
    "TARGET_PER_WORKER": "auto",
    "TARGET_TOLERANCE": "0.2",
    "SCALE_UP_MAX_STEP": "4",
    "SCALE_DOWN_WINDOW": "120",
    # --- Scaling on age (issue 12); parsed by `_parse_age_settings`. Empty = off. ---
    "MAX_QUEUE_AGE": "",
    # --- Resource limits and the guard (issue 14); parsed by `_parse_guard_settings`, see docs/operations.md. ---
    "WORKER_MEMORY_MAX": "",
    "WORKER_MEMORY_HIGH": "",
    "POOL_MEMORY_MAX": "",
    "POOL_CPU_QUOTA": "",
    "POOL_TASKS_MAX": "",
    "GUARD": "on",
    "GUARD_MEMORY_PRESSURE": "10",
    "GUARD_CPU_PRESSURE": "50",
    "GUARD_MEMORY_RESERVE": "10%",
    "GUARD_PROC_DIR": "/proc",
}

#: Where systemd's `LoadCredential=redis_password:...` puts the password for the service.
CREDENTIAL_NAME = "redis_password"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting dqagent uses, validated. Secrets are excluded from `repr()`."""

    redis_host: str
    redis_port: int
    redis_db: int
    redis_password: str = field(repr=False)
    redis_url: str = field(repr=False)
    redis_timeout_s: float
    queue_names: tuple[str, ...]
    namespace: str
    dramatiq_command: str
    min_processes: int
    max_processes: int
    check_interval_s: float
    scale_up_multiplier: float
    scale_down_multiplier: float
    log_level: str
    log_file: str
    graceful_shutdown_timeout_s: float
    process_startup_delay_s: float
    queue_metric: QueueMetric
    worker_user: str
    worker_directory: str
    #: With SCALING_POLICY=target, how often demand is read between full checks.
    demand_poll_interval_s: float = 5.0
    #: Longest wait for one D-Bus call to systemd (systemctl's default is 25 s too).
    dbus_timeout_s: float = 25.0
    # --- Scaling policy (issue 6): defaults mirror DEFAULTS so tests may build Settings directly. ---
    scaling_policy: str = "step"
    #: None ("auto"): the worker unit's prefetch, processes x 2 x threads of DRAMATIQ_COMMAND (dqagent.workercmd).
    target_per_worker: float | None = None
    target_tolerance: float = 0.2
    scale_up_max_step: int = 4
    scale_down_window_s: float = 120.0
    #: WORKER_USER may be root (uid 0) only when this is set (ALLOW_ROOT_WORKERS=yes).
    allow_root_workers: bool = False
    # --- Scaling on age (issue 12) ---
    #: MAX_QUEUE_AGE: the target policy scales up while the oldest waiting message is older; None: off.
    max_queue_age_s: float | None = None
    # --- Prometheus metrics (issue 12): dqagent.metrics. ---
    #: host:port (or [v6]:port) to serve /metrics on, validated; "" off. `parse_metrics_address` splits it.
    metrics_address: str = ""
    #: Absolute path for node_exporter's textfile collector, rewritten after each tick; "" off.
    metrics_textfile: str = ""
    # --- Resource limits (issue 14): systemd's own forms ("" no limit; bytes as a plain integer, "N%",
    # "infinity"), rendered by `dqagent install` into drop-ins (dqagent.layout.rendered_limits). ---
    worker_memory_max: str = ""
    worker_memory_high: str = ""
    pool_memory_max: str = ""
    pool_cpu_quota: str = ""
    pool_tasks_max: str = "33%"  # DEFAULT_POOL_TASKS_MAX
    # --- The guard (issue 14, dqagent.guard): scale-ups held while the host has no headroom. ---
    guard: bool = True
    #: Percent (some avg10) of memory stall above which scale-up is held; full avg10 is held at half of it.
    guard_memory_pressure: float = 10.0
    #: Percent (some avg10) of CPU stall above which scale-up is held.
    guard_cpu_pressure: float = 50.0
    #: Memory kept free after one more worker: bytes as an integer, or "N%" of MemTotal.
    guard_memory_reserve: str = "10%"
    #: Where /proc/pressure/{cpu,memory} and /proc/meminfo are read (test-only override).
    guard_proc_dir: str = "/proc"
    # --- Fleet mode (issue 13, docs/fleet.md): "" = this host alone, as before. ---
    fleet: str = ""
    #: This host's weight in the fleet's split; None: MAX_PROCESSES.
    fleet_weight: int | None = None
    #: This host's id in the fleet; "": /etc/machine-id (read by dqagent.fleetstore).
    fleet_host_id: str = ""

    def tick_interval_s(self) -> float:
        """Seconds between two reads of demand: CHECK_INTERVAL, or faster for the target policy."""
        if self.scaling_policy == "step":
            return self.check_interval_s
        return min(self.check_interval_s, self.demand_poll_interval_s)

    def clamp(self, n: int) -> int:
        """Bring a worker count into [min_processes, max_processes]."""
        return max(self.min_processes, min(self.max_processes, n))

    def redis_location(self) -> str:
        """Where Redis is, for logs and status: never the password."""
        if self.redis_url:
            return redact_url(self.redis_url)
        return f"redis://{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def public_items(self) -> list[tuple[str, str]]:
        """(name, value) pairs safe to print: secrets show as set/unset only."""
        out: list[tuple[str, str]] = []
        for f in fields(self):
            value: Any = getattr(self, f.name)
            if f.name == "redis_password":
                value = "(set)" if value else "(unset)"
            elif f.name == "redis_url":
                value = redact_url(value) if value else ""
            elif isinstance(value, tuple):
                value = ",".join(value)
            out.append((f.name, str(value)))
        return out


def redact_url(url: str) -> str:
    """A Redis URL safe to log and print: every password it may carry replaced by `***`.

    redis-py takes a password from the userinfo (`redis://user:pw@host`, `redis://:pw@host`) and from the
    query (`?password=pw`, names decoded as `parse_qs` does, so `?%70assword=` too). A userinfo without a
    colon is redis-py's username, but also the way some write a bare password: it is redacted whole.
    The rest is kept as written (host, IPv6 brackets, port, path, other query parameters).
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:***" if colon else "***"
    query = "&".join(f"{name}=***" if unquote_plus(name).strip().lower() == "password" else field
                     for field in parts.query.split("&") for name in (field.partition("=")[0],))
    # By hand, not urlunsplit: it would drop the empty authority of unix:///path (-> unix:/path).
    head = f"{parts.scheme}:" if parts.scheme else ""
    rest = url[len(head):] if url[:len(head)].lower() == head else url
    authority = f"//{userinfo}{at}{hostport}" if rest.startswith("//") else ""
    return (head + authority + parts.path + (f"?{query}" if "?" in rest else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))


def _int(key: str, raw: str, lo: int | None = None, hi: int | None = None, accepted: str = "") -> int:
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(key, raw, accepted or "expected an integer") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(key, raw, accepted)
    return value


def _float(key: str, raw: str, accepted: str, ok: Callable[[float], bool]) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(key, raw, f"expected a number; {accepted}") from None
    if value != value or value in (float("inf"), float("-inf")) or not ok(value):
        raise ConfigError(key, raw, accepted)
    return value


def parse_queue_names(key: str, raw: str) -> tuple[str, ...]:
    """Split a comma-separated queue list; each name must be a valid Dramatiq queue name."""
    names = tuple(part.strip() for part in raw.split(","))
    accepted = (
        "one or more comma-separated queue names, each a letter or _ then letters, digits, . _ -"
    )
    if not raw.strip() or any(not _QUEUE_NAME_RE.fullmatch(n) for n in names):
        raise ConfigError(key, raw, accepted)
    if len(set(names)) != len(names):
        raise ConfigError(key, raw, "queue names must not repeat")
    return names


#: Names accepted by SCALING_POLICY; `dqagent.policies.POLICIES` has exactly these keys (a test checks).
SCALING_POLICIES = ("step", "target")


class _PolicySettings(TypedDict):
    scaling_policy: str
    target_per_worker: float | None
    target_tolerance: float
    scale_up_max_step: int
    scale_down_window_s: float


def _parse_policy_settings(v: Mapping[str, str]) -> _PolicySettings:
    """The scaling-policy block, kept apart so the rest of `parse_settings` stays as it was."""
    policy = v["SCALING_POLICY"].strip().lower()
    if policy not in SCALING_POLICIES:
        raise ConfigError("SCALING_POLICY", v["SCALING_POLICY"],
                          "expected one of " + ", ".join(SCALING_POLICIES))
    per_worker = None if v["TARGET_PER_WORKER"].strip().lower() == "auto" else _float(
        "TARGET_PER_WORKER", v["TARGET_PER_WORKER"],
        "expected auto or outstanding messages per worker > 0 (auto = the prefetch, processes x 2 x threads)",
        lambda x: x > 0)
    tolerance = _float("TARGET_TOLERANCE", v["TARGET_TOLERANCE"], "expected a fraction in [0, 1)",
                       lambda x: 0 <= x < 1)
    max_step = _int("SCALE_UP_MAX_STEP", v["SCALE_UP_MAX_STEP"], 1, MAX_PROCESSES_LIMIT,
                    f"expected an integer in 1..{MAX_PROCESSES_LIMIT}")
    window = _float("SCALE_DOWN_WINDOW", v["SCALE_DOWN_WINDOW"], "expected seconds in 0..86400",
                    lambda x: 0 <= x <= 86400)
    return _PolicySettings(scaling_policy=policy, target_per_worker=per_worker, target_tolerance=tolerance,
                           scale_up_max_step=max_step, scale_down_window_s=window)


#: Longest MAX_QUEUE_AGE: Dramatiq's own longest delay (7 days); older messages are dead letters anyway.
MAX_QUEUE_AGE_LIMIT_S = 7 * 86400.0


def _parse_age_settings(v: Mapping[str, str], policy: str) -> float | None:
    """MAX_QUEUE_AGE (issue 12): seconds > 0, or empty for off; only the target policy scales on age."""
    raw = v["MAX_QUEUE_AGE"]
    if not raw.strip():
        return None
    limit = MAX_QUEUE_AGE_LIMIT_S
    age = _float("MAX_QUEUE_AGE", raw, f"expected seconds in (0, {limit:g}], or empty for off",
                 lambda x: 0 < x <= limit)
    if policy != "target":
        raise ConfigError("MAX_QUEUE_AGE", raw, "only SCALING_POLICY=target scales on age: set it, or leave "
                          "MAX_QUEUE_AGE empty")
    return age
_FLEET_NAME_RE = re.compile(r"[a-zA-Z0-9_.-]{1,64}")
_HOST_ID_RE = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")


class _FleetSettings(TypedDict):
    fleet: str
    fleet_weight: int | None
    fleet_host_id: str


def _parse_fleet_settings(v: Mapping[str, str]) -> _FleetSettings:
    """Fleet mode (issue 13): the fleet's name, this host's weight and id."""
    name = v["FLEET"].strip()
    if name and not _FLEET_NAME_RE.fullmatch(name):
        raise ConfigError("FLEET", name, "expected empty (no fleet) or 1..64 letters, digits, . _ -")
    weight_raw = v["FLEET_WEIGHT"].strip()
    weight = None if not weight_raw else _int(
        "FLEET_WEIGHT", weight_raw, 1, MAX_PROCESSES_LIMIT,
        f"expected empty (= MAX_PROCESSES) or an integer in 1..{MAX_PROCESSES_LIMIT}")
    host = v["FLEET_HOST_ID"].strip()
    if host and not _HOST_ID_RE.fullmatch(host):
        raise ConfigError("FLEET_HOST_ID", host, "expected empty (= /etc/machine-id) or 1..64 letters, digits, . _ : -")
    return _FleetSettings(fleet=name, fleet_weight=weight, fleet_host_id=host)


def parse_worker_command(values: Mapping[str, str]) -> tuple[str, str]:
    """(DRAMATIQ_COMMAND, WORKER_DIRECTORY), validated alone: all `dqagent worker-exec` needs.

    Workers read the settings file at each start; validating only these two keys keeps a bad value
    elsewhere (one a reload rejected, the agent running on its old settings) from failing every start.
    """
    v = {**DEFAULTS, **{k: val for k, val in values.items() if k in DEFAULTS}}
    command = v["DRAMATIQ_COMMAND"].strip()
    if not command:
        raise ConfigError("DRAMATIQ_COMMAND", v["DRAMATIQ_COMMAND"], "expected a non-empty command line")
    try:
        shlex.split(command)
    except ValueError as exc:
        raise ConfigError("DRAMATIQ_COMMAND", command, f"expected a shell-like command line ({exc})") from None
    return command, rendered_path("WORKER_DIRECTORY", v["WORKER_DIRECTORY"])


#: What a path may hold to be written as is into a unit file, a drop-in or a logrotate rule: nothing
#: systemd or logrotate reads specially (`%` specifiers, `$` variables, `\` escapes, quotes, whitespace
#: that splits words, `*?[` globs, `{` blocks) and no control character (a newline, or a `\r` or NUL,
#: which systemd also ends a line at, would start a directive of the value's choosing).
RENDERED_CHARS = re.compile(r"[A-Za-z0-9._+@/-]+")
PATH_ACCEPTED = ("letters, digits and . _ - + @ between slashes, no .. component (nothing a unit file or "
                 "logrotate reads specially: no whitespace, control character, quote, backslash, %, $ or glob)")


def rendered_path(key: str, raw: str, absolute: bool = True) -> str:
    """`raw` as the path install renders: validated on that very string, not on its realpath.

    `//`, `.` components and a trailing `/` are normalised away (the same directory); a `..`
    component is refused (after a symlink it names another directory than the text suggests), and so
    is any character outside `RENDERED_CHARS`. Raises `ConfigError`.
    """
    text = raw.strip()
    form = "an absolute path" if absolute else "a path"
    if not RENDERED_CHARS.fullmatch(text) or (absolute and not text.startswith("/")):
        raise ConfigError(key, raw, f"expected {form} of {PATH_ACCEPTED}")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts or not (parts or absolute):
        raise ConfigError(key, raw, f"expected {form} of {PATH_ACCEPTED}")
    return ("/" if text.startswith("/") else "") + "/".join(parts)


def parse_settings(values: Mapping[str, str]) -> Settings:
    """Validate raw settings (missing keys take `DEFAULTS`) into `Settings`.

    Raises `ConfigError` for the first invalid key, with a one-line message naming it.
    """
    v = {**DEFAULTS, **{k: val for k, val in values.items() if k in DEFAULTS}}

    port = _int("REDIS_PORT", v["REDIS_PORT"], 1, 65535, "expected an integer in 1..65535")
    db = _int("REDIS_DB", v["REDIS_DB"], 0, None, "expected an integer >= 0")
    url = v["REDIS_URL"].strip()
    if url:
        scheme = urlsplit(url).scheme if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("REDIS_URL", redact_url(url), "expected a redis://, rediss:// or unix:// URL")
    redis_timeout = _float("REDIS_TIMEOUT", v["REDIS_TIMEOUT"], "expected seconds > 0", lambda x: x > 0)
    queues = parse_queue_names("DRAMATIQ_QUEUE_NAME", v["DRAMATIQ_QUEUE_NAME"])
    namespace = v["DRAMATIQ_NAMESPACE"].strip()
    if not _NAMESPACE_RE.fullmatch(namespace):
        raise ConfigError("DRAMATIQ_NAMESPACE", namespace, "expected letters, digits, . _ -")
    command, workdir = parse_worker_command(v)
    lo = _int("MIN_PROCESSES", v["MIN_PROCESSES"], 0, MAX_PROCESSES_LIMIT,
              f"expected an integer in 0..{MAX_PROCESSES_LIMIT}")
    hi = _int("MAX_PROCESSES", v["MAX_PROCESSES"], max(lo, 1), MAX_PROCESSES_LIMIT,
              f"expected an integer in {max(lo, 1)}..{MAX_PROCESSES_LIMIT} (>= MIN_PROCESSES={lo}, >= 1)")
    interval = _float("CHECK_INTERVAL", v["CHECK_INTERVAL"], "expected seconds > 0", lambda x: x > 0)
    up = _float("SCALE_UP_THRESHOLD_MULTIPLIER", v["SCALE_UP_THRESHOLD_MULTIPLIER"],
                "expected a number > 0", lambda x: x > 0)
    up_raw = v["SCALE_UP_THRESHOLD_MULTIPLIER"].strip()
    down = _float("SCALE_DOWN_THRESHOLD_MULTIPLIER", v["SCALE_DOWN_THRESHOLD_MULTIPLIER"],
                  f"expected a number > 0 and < SCALE_UP_THRESHOLD_MULTIPLIER={up_raw}"
                  " (otherwise the workers would flap)",
                  lambda x: 0 < x < up)
    level = v["LOG_LEVEL"].strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError("LOG_LEVEL", v["LOG_LEVEL"], "expected one of " + ", ".join(LOG_LEVELS))
    # 0 would become TimeoutStopSec=0, which systemd reads as "never SIGKILL"; it is rendered to the
    # millisecond (dqagent.layout), so a finer value would render as another one, or as 0.
    grace = _float("GRACEFUL_SHUTDOWN_TIMEOUT", v["GRACEFUL_SHUTDOWN_TIMEOUT"],
                   f"expected seconds > 0, at most {MAX_GRACE_S:g} (7 days), to the millisecond",
                   lambda x: 0 < x <= MAX_GRACE_S and round(x, 3) == x)
    delay = _float("PROCESS_STARTUP_DELAY", v["PROCESS_STARTUP_DELAY"], "expected seconds >= 0",
                   lambda x: x >= 0)
    metric_raw = v["QUEUE_METRIC"].strip().lower()
    try:
        metric = QueueMetric(metric_raw)
    except ValueError:
        raise ConfigError("QUEUE_METRIC", v["QUEUE_METRIC"], "expected outstanding or ready") from None
    user = v["WORKER_USER"].strip()
    if not _USER_RE.fullmatch(user):
        raise ConfigError("WORKER_USER", user, "expected a system user name ([a-z_][a-z0-9_-]*)")
    allow_root = _yes_no("ALLOW_ROOT_WORKERS", v["ALLOW_ROOT_WORKERS"])
    if user == "root" and not allow_root:
        raise ConfigError("WORKER_USER", user, "workers as root are refused: use a dedicated user (the default "
                          "dqworker), or set ALLOW_ROOT_WORKERS=yes to accept root workers (without capabilities)")

    return Settings(
        redis_host=v["REDIS_HOST"].strip() or "localhost",
        redis_port=port,
        redis_db=db,
        redis_password=v["REDIS_PASSWORD"],
        redis_url=url,
        redis_timeout_s=redis_timeout,
        queue_names=queues,
        namespace=namespace,
        dramatiq_command=command,
        min_processes=lo,
        max_processes=hi,
        check_interval_s=interval,
        scale_up_multiplier=up,
        scale_down_multiplier=down,
        log_level=level,
        log_file=rendered_path("LOG_FILE", v["LOG_FILE"], absolute=False) if v["LOG_FILE"].strip() else "",
        graceful_shutdown_timeout_s=grace,
        process_startup_delay_s=delay,
        queue_metric=metric,
        worker_user=user,
        worker_directory=workdir,
        demand_poll_interval_s=_float("DEMAND_POLL_INTERVAL", v["DEMAND_POLL_INTERVAL"], "expected seconds > 0",
                                      lambda x: x > 0),
        dbus_timeout_s=_float("DBUS_TIMEOUT", v["DBUS_TIMEOUT"], "expected seconds in (0, 600]",
                              lambda x: 0 < x <= 600),
        **_parse_policy_settings(v),
        allow_root_workers=allow_root,
        max_queue_age_s=_parse_age_settings(v, v["SCALING_POLICY"].strip().lower()),
        metrics_address=_check_metrics_address(v["METRICS_ADDRESS"]),
        metrics_textfile=_parse_metrics_textfile(v["METRICS_TEXTFILE"]),
        **_parse_guard_settings(v),
        **_parse_fleet_settings(v),
    )


def _yes_no(key: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off", ""):
        return False
    raise ConfigError(key, raw, "expected yes or no")


# --- Prometheus metrics (issue 12) -------------------------------------------------------------

_METRICS_ADDRESS_FORM = ("expected empty (off) or host:port with a port in 1..65535, an IPv6 address in "
                         "brackets, e.g. 127.0.0.1:9810, [::1]:9810, 0.0.0.0:9810")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")


def parse_metrics_address(raw: str, key: str = "METRICS_ADDRESS") -> tuple[str, int] | None:
    """`host:port` or `[v6]:port` -> (host, port) without brackets; empty -> None. Raises `ConfigError`.

    The host is an IPv4 or IPv6 literal or a host name (resolved when the server binds); a bare
    IPv6 address without brackets is refused, since its last `:` cannot be told from the port's.
    """
    text = raw.strip()
    if not text:
        return None
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        try:
            ok = bool(sep) and ipaddress.ip_address(host).version == 6
        except ValueError:
            ok = False
    else:
        host, sep, port_text = text.rpartition(":")
        ok = bool(sep) and ":" not in host and bool(_HOST_RE.fullmatch(host))
    if not ok or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(key, raw, _METRICS_ADDRESS_FORM)
    return host, int(port_text)


def _check_metrics_address(raw: str) -> str:
    parse_metrics_address(raw)
    return raw.strip()


def _parse_metrics_textfile(raw: str) -> str:
    """An absolute path ending in `.prom` (node_exporter reads only those), or "" (off)."""
    text = raw.strip()
    if text and (not text.startswith("/") or not text.endswith(".prom") or text.endswith("/.prom")):
        raise ConfigError("METRICS_TEXTFILE", raw, "expected empty (off) or an absolute path ending in .prom, "
                          "e.g. /var/lib/prometheus/node-exporter/dqagent.prom")
    return text
# --- Resource limits and the guard (issue 14) ---------------------------------------------------

_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)", re.IGNORECASE)
_PERCENT_RE = re.compile(r"([0-9]+(?:\.[0-9]{1,2})?)%")
_SIZE_FACTORS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_SIZE_ACCEPTED = ("expected empty (no limit), bytes with an optional K, M, G or T suffix (base 1024, e.g. 512M "
                  "or 1.5G), a percentage of physical memory in (0, 100] (e.g. 20%), or infinity")


_RESERVE_ACCEPTED = ("expected bytes with an optional K, M, G or T suffix (base 1024, e.g. 512M; 0 for none) or a "
                     "percentage of MemTotal in [0, 100] (e.g. 10%)")


def parse_memory(key: str, raw: str, limit: bool = True) -> str:
    """A memory size in one of systemd's forms, as the value to render: "" (no limit), "infinity",
    "N%" (of physical memory), or bytes as a plain integer (the suffix applied, so systemd reads it exactly).

    `limit=False` (GUARD_MEMORY_RESERVE): no "" or infinity, and 0 / 0% allowed.
    """
    text = raw.strip()
    accepted = _SIZE_ACCEPTED if limit else _RESERVE_ACCEPTED
    lowest = 1 if limit else 0
    if limit and text.lower() in ("", "infinity"):
        return text.lower()
    percent = _PERCENT_RE.fullmatch(text)
    if percent:
        share = float(percent.group(1))
        if share > 100 or (share <= 0 if limit else share < 0):
            raise ConfigError(key, raw, accepted)
        return text
    size = _SIZE_RE.fullmatch(text)
    if not size:
        raise ConfigError(key, raw, accepted)
    n = int(float(size.group(1)) * _SIZE_FACTORS[size.group(2).upper()])
    if n < lowest or n >= 2**63:
        raise ConfigError(key, raw, accepted)
    return str(n)


def _parse_cpu_quota(key: str, raw: str) -> str:
    text = raw.strip()
    accepted = "expected empty (no limit) or a percentage >= 1% (100% = one CPU; e.g. 300% for three CPUs)"
    if not text:
        return ""
    match = _PERCENT_RE.fullmatch(text)
    if not match or not 1 <= float(match.group(1)) <= 100_000:
        raise ConfigError(key, raw, accepted)
    return text


#: TasksMax= of the workers' slice when POOL_TASKS_MAX is empty: a third of the kernel's task limit, the
#: share systemd-logind gives each user's slice (UserTasksMax=33%). No pool needs more, and a fork bomb
#: in a task, or a runaway pool, leaves the rest of the host (sshd, journald, root's shell) two thirds.
#: A percentage, not a figure from MAX_PROCESSES: it needs no re-install when a reload changes that.
DEFAULT_POOL_TASKS_MAX = "33%"


def _parse_tasks_max(key: str, raw: str) -> str:
    text = raw.strip()
    accepted = (f"expected empty (the default, {DEFAULT_POOL_TASKS_MAX}), a number of tasks >= 1, a percentage "
                "of the kernel's limit in (0, 100] (e.g. 50%), or infinity (no limit)")
    if not text:
        return DEFAULT_POOL_TASKS_MAX
    if text.lower() == "infinity":
        return text.lower()
    percent = _PERCENT_RE.fullmatch(text)
    if percent:
        if not 0 < float(percent.group(1)) <= 100:
            raise ConfigError(key, raw, accepted)
        return text
    return str(_int(key, text, 1, 2**31, accepted))


class _GuardSettings(TypedDict):
    worker_memory_max: str
    worker_memory_high: str
    pool_memory_max: str
    pool_cpu_quota: str
    pool_tasks_max: str
    guard: bool
    guard_memory_pressure: float
    guard_cpu_pressure: float
    guard_memory_reserve: str
    guard_proc_dir: str


def _parse_guard_settings(v: Mapping[str, str]) -> _GuardSettings:
    """The resource-limit and guard block (issue 14), kept apart like the policy block."""
    worker_max = parse_memory("WORKER_MEMORY_MAX", v["WORKER_MEMORY_MAX"])
    worker_high = parse_memory("WORKER_MEMORY_HIGH", v["WORKER_MEMORY_HIGH"])
    if worker_max.isdigit() and worker_high.isdigit() and int(worker_high) >= int(worker_max):
        raise ConfigError("WORKER_MEMORY_HIGH", v["WORKER_MEMORY_HIGH"],
                          f"expected less than WORKER_MEMORY_MAX={v['WORKER_MEMORY_MAX'].strip()} (the throttling "
                          "point must come before the kill point), or empty")

    def pressure(key: str) -> float:
        return _float(key, v[key], "expected a percentage of stalled time in (0, 100] (avg10 of /proc/pressure)",
                      lambda x: 0 < x <= 100)

    guard = v["GUARD"].strip().lower()
    if guard not in ("on", "off", "yes", "no", "true", "false", "1", "0"):
        raise ConfigError("GUARD", v["GUARD"], "expected on or off")
    proc_dir = v["GUARD_PROC_DIR"].strip()
    if not proc_dir.startswith("/"):
        raise ConfigError("GUARD_PROC_DIR", proc_dir, "expected an absolute path (test-only; default /proc)")
    return _GuardSettings(
        worker_memory_max=worker_max, worker_memory_high=worker_high,
        pool_memory_max=parse_memory("POOL_MEMORY_MAX", v["POOL_MEMORY_MAX"]),
        pool_cpu_quota=_parse_cpu_quota("POOL_CPU_QUOTA", v["POOL_CPU_QUOTA"]),
        pool_tasks_max=_parse_tasks_max("POOL_TASKS_MAX", v["POOL_TASKS_MAX"]),
        guard=guard in ("on", "yes", "true", "1"),
        guard_memory_pressure=pressure("GUARD_MEMORY_PRESSURE"),
        guard_cpu_pressure=pressure("GUARD_CPU_PRESSURE"),
        guard_memory_reserve=parse_memory("GUARD_MEMORY_RESERVE", v["GUARD_MEMORY_RESERVE"], limit=False),
        guard_proc_dir=proc_dir,
    )
