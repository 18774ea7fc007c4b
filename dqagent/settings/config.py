"""The configuration contract: the validated `Settings`, and the checks that involve two settings.

Pure: takes a mapping of raw strings (already merged from flags, environment and `.env`) and returns
one frozen `Settings`, or raises `ConfigError` naming the first bad key. Each setting is declared once in
`dqagent.settings.declarations` (key, default, parser, description, reload class); its value parsers are in
`dqagent.settings.parsers`. Reading files lives in `dqagent.settings.sources`, so this module can be tested exhaustively
without touching a disk. The names other modules import from here are re-exported below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from dqagent.errors import ConfigError
from dqagent.settings.declarations import BY_KEY, DEFAULTS, SETTINGS
from dqagent.settings.parsers import (
    DEFAULT_POOL_TASKS_MAX,
    LOG_LEVELS,
    MAX_GRACE_S,
    MAX_PROCESSES_LIMIT,
    MAX_QUEUE_AGE_LIMIT_S,
    PATH_ACCEPTED,
    RENDERED_CHARS,
    SCALING_POLICIES,
    QueueMetric,
    parse_memory,
    parse_metrics_address,
    parse_queue_names,
    redact_url,
    rendered_path,
)
from dqagent.settings.rabbitmq import location as rabbitmq_location
from dqagent.settings.schedule import Schedule, check_bounds

__all__ = [
    "CREDENTIAL_NAME", "DEFAULTS", "DEFAULT_POOL_TASKS_MAX", "LOG_LEVELS", "MAX_GRACE_S", "MAX_PROCESSES_LIMIT",
    "MAX_QUEUE_AGE_LIMIT_S", "PATH_ACCEPTED", "RENDERED_CHARS", "SCALING_POLICIES", "QueueMetric", "Settings",
    "parse_memory", "parse_metrics_address", "parse_queue_names", "parse_settings", "parse_worker_command",
    "redact_url", "rendered_path",
]

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
    # --- Scaling policy. Defaults mirror DEFAULTS so tests may build Settings directly (a test checks). ---
    scaling_policy: str = "step"
    #: None ("auto"): the worker unit's prefetch, processes x 2 x threads of DRAMATIQ_COMMAND
    #: (dqagent.settings.workercmd).
    target_per_worker: float | None = None
    target_tolerance: float = 0.2
    scale_up_max_step: int = 4
    scale_down_window_s: float = 120.0
    #: WORKER_USER may be root (uid 0) only when this is set (ALLOW_ROOT_WORKERS=yes).
    allow_root_workers: bool = False
    # --- Scaling on age ---
    #: MAX_QUEUE_AGE: the target policy scales up while the oldest waiting message is older; None: off.
    max_queue_age_s: float | None = None
    #: WORKER_HUNG_AFTER: a settled worker whose report has not advanced this long is restarted; None: off.
    worker_hung_after_s: float | None = None
    # --- When the broker cannot be read: dqagent.core.brokerfail. ---
    broker_failure: str = "hold"
    broker_failure_count: int = 0
    broker_failure_grace_s: float = 60.0
    #: PREDICTIVE: off, shadow or on (`dqagent.core.prediction.Mode`).
    predictive: str = "off"
    # --- Prometheus metrics: dqagent.report.metrics. ---
    #: host:port (or [v6]:port) to serve /metrics on, validated; "" off. `parse_metrics_address` splits it.
    metrics_address: str = ""
    #: Absolute path for node_exporter's textfile collector, rewritten after each tick; "" off.
    metrics_textfile: str = ""
    # --- Resource limits: systemd's own forms ("" no limit; bytes as a plain integer, "N%",
    # "infinity"), rendered by `dqagent install` into drop-ins (dqagent.setup.layout.rendered_limits). ---
    worker_memory_max: str = ""
    worker_memory_high: str = ""
    pool_memory_max: str = ""
    pool_cpu_quota: str = ""
    pool_tasks_max: str = "33%"  # DEFAULT_POOL_TASKS_MAX
    # --- The guard: scale-ups held while the host has no headroom. ---
    guard: bool = True
    #: Percent (some avg10) of memory stall above which scale-up is held; full avg10 is held at half of it.
    guard_memory_pressure: float = 10.0
    #: Percent (some avg10) of CPU stall above which scale-up is held.
    guard_cpu_pressure: float = 50.0
    #: Memory kept free after one more worker: bytes as an integer, or "N%" of MemTotal.
    guard_memory_reserve: str = "10%"
    #: Where /proc/pressure/{cpu,memory} and /proc/meminfo are read (test-only override).
    guard_proc_dir: str = "/proc"
    # --- Fleet mode: "" = this host alone, as before. ---
    fleet: str = ""
    #: This host's weight in the fleet's split; None: MAX_PROCESSES.
    fleet_weight: int | None = None
    #: This host's id in the fleet; "": /etc/machine-id (read by dqagent.broker.fleetstore).
    fleet_host_id: str = ""
    # --- Pools (dqagent.settings.pools). ---
    #: The pool's priority for room under HOST_MAX_PROCESSES (higher first).
    pool_priority: int = 0
    #: Most worker units of all pools together; None: no host cap (dqagent.env only).
    host_max_processes: int | None = None
    # --- Schedules (dqagent.settings.schedule, dqagent.core.schedule). ---
    #: SCHEDULE's windows; empty: no schedule.
    schedule: Schedule = field(default_factory=Schedule)
    #: SCHEDULE_TIMEZONE: an IANA name, "" for the host's zone.
    schedule_timezone: str = ""
    #: PAUSE_GROUP: members may `dqagent pause`/`resume` besides root; "": root only.
    pause_group: str = ""
    # --- RabbitMQ (dqagent.broker.rabbitmq): RABBITMQ_URL set selects it instead of Redis. ---
    rabbitmq_url: str = ""
    rabbitmq_password: str = field(default="", repr=False)
    rabbitmq_management_url: str = ""
    rabbitmq_timeout_s: float = 5.0

    @property
    def broker(self) -> str:
        """The broker demand is read from: "rabbitmq" when RABBITMQ_URL is set, else "redis"."""
        return "rabbitmq" if self.rabbitmq_url else "redis"

    def broker_location(self) -> str:
        """Where the broker is, for logs and status: never a password."""
        return rabbitmq_location(self.rabbitmq_url) if self.rabbitmq_url else self.redis_location()

    def broker_timeout_s(self) -> float:
        """The broker's call timeout: RABBITMQ_TIMEOUT or REDIS_TIMEOUT."""
        return self.rabbitmq_timeout_s if self.rabbitmq_url else self.redis_timeout_s

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
            if f.name in ("redis_password", "rabbitmq_password"):
                value = "(set)" if value else "(unset)"
            elif f.name == "redis_url":
                value = redact_url(value) if value else ""
            elif isinstance(value, tuple):
                value = ",".join(value)
            out.append((f.name, str(value)))
        return out


def _with_defaults(values: Mapping[str, str]) -> dict[str, str]:
    return {**DEFAULTS, **{k: val for k, val in values.items() if k in DEFAULTS}}


def parse_worker_command(values: Mapping[str, str]) -> tuple[str, str]:
    """(DRAMATIQ_COMMAND, WORKER_DIRECTORY), validated alone: all `dqagent worker-exec` needs.

    Workers read the settings file at each start; validating only these two keys keeps a bad value
    elsewhere (one a reload rejected, the agent running on its old settings) from failing every start,
    and so does a key no setting declares (`dqagent check` and the agent report those).
    """
    v = _with_defaults(values)
    return (BY_KEY["DRAMATIQ_COMMAND"].parse("DRAMATIQ_COMMAND", v["DRAMATIQ_COMMAND"]),
            BY_KEY["WORKER_DIRECTORY"].parse("WORKER_DIRECTORY", v["WORKER_DIRECTORY"]))


def parse_settings(values: Mapping[str, str]) -> Settings:
    """Validate raw settings (missing keys take `DEFAULTS`, unknown keys are ignored) into `Settings`.

    Each value is parsed in declaration order, then the checks across settings run. Raises `ConfigError`
    for the first invalid key, with a one-line message naming it.
    """
    v = _with_defaults(values)
    parsed: dict[str, Any] = {}
    for s in SETTINGS:
        value = s.parse(s.key, v[s.key])
        if s.field:
            parsed[s.field] = value
    _check_across(parsed, v)
    check_bounds("SCHEDULE", parsed["schedule"], parsed["min_processes"], parsed["max_processes"])
    return Settings(**parsed)


def _check_across(parsed: Mapping[str, Any], v: Mapping[str, str]) -> None:
    """The rules that tie one setting to another; raises `ConfigError` naming the dependent one."""
    lo, hi = parsed["min_processes"], parsed["max_processes"]
    if hi < lo:
        raise ConfigError("MAX_PROCESSES", v["MAX_PROCESSES"], f"expected an integer in {max(lo, 1)}.."
                          f"{MAX_PROCESSES_LIMIT} (>= MIN_PROCESSES={lo}, >= 1)")
    if not parsed["scale_down_multiplier"] < parsed["scale_up_multiplier"]:
        raise ConfigError("SCALE_DOWN_THRESHOLD_MULTIPLIER", v["SCALE_DOWN_THRESHOLD_MULTIPLIER"],
                          "expected a number > 0 and < SCALE_UP_THRESHOLD_MULTIPLIER="
                          f"{v['SCALE_UP_THRESHOLD_MULTIPLIER'].strip()} (otherwise the workers would flap)")
    if parsed["worker_user"] == "root" and not parsed["allow_root_workers"]:
        raise ConfigError("WORKER_USER", "root", "workers as root are refused: use a dedicated user (the default "
                          "dqworker), or set ALLOW_ROOT_WORKERS=yes to accept root workers (without capabilities)")
    if parsed["max_queue_age_s"] is not None and parsed["scaling_policy"] != "target":
        raise ConfigError("MAX_QUEUE_AGE", v["MAX_QUEUE_AGE"], "only SCALING_POLICY=target scales on age: set it, "
                          "or leave MAX_QUEUE_AGE empty")
    _check_rabbitmq(parsed, v)
    high, top = parsed["worker_memory_high"], parsed["worker_memory_max"]
    if top.isdigit() and high.isdigit() and int(high) >= int(top):
        raise ConfigError("WORKER_MEMORY_HIGH", v["WORKER_MEMORY_HIGH"],
                          f"expected less than WORKER_MEMORY_MAX={v['WORKER_MEMORY_MAX'].strip()} (the throttling "
                          "point must come before the kill point), or empty")


def _check_rabbitmq(parsed: Mapping[str, Any], v: Mapping[str, str]) -> None:
    """What RabbitMQ cannot do: the oldest message's age (Dramatiq sets no AMQP timestamp), and the fleet store
    (a Redis). Without RABBITMQ_URL the other RABBITMQ_* settings are ignored (so is REDIS_* with it)."""
    if not parsed["rabbitmq_url"]:
        return
    if parsed["max_queue_age_s"] is not None:
        raise ConfigError("MAX_QUEUE_AGE", v["MAX_QUEUE_AGE"], "expected empty with RABBITMQ_URL: Dramatiq's "
                          "messages carry no timestamp RabbitMQ exposes, so the oldest message's age is unknown")
    if parsed["fleet"]:
        raise ConfigError("FLEET", v["FLEET"], "expected empty with RABBITMQ_URL: fleet mode keeps its shared "
                          "records in the Dramatiq Redis, which a RabbitMQ deployment does not have")
