"""Every setting, declared once (pure): its `.env` key, default, parser, description, the `Settings`
field it fills, and what `systemctl reload dqagent` does with a change.

Everything else is derived from `SETTINGS`: `DEFAULTS`, `dqagent.settings.config.parse_settings`, the commented
settings file `dqagent install` writes (`dqagent.setup.layout.env_template`), reload's classification
(`dqagent.agent.reload`), the unknown-key warnings of `dqagent check` and the agent, and the README's settings
table (`markdown_table`, written by `dev/settings_table`; a unit test fails when the README differs).
Checks that involve two settings (MAX_PROCESSES >= MIN_PROCESSES, ...) live in `dqagent.settings.config`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from dqagent.settings import parsers as p
from dqagent.settings.parsers import MAX_GRACE_S, MAX_PROCESSES_LIMIT, MAX_QUEUE_AGE_LIMIT_S, Parser
from dqagent.settings.rabbitmq import parse_management_url, parse_rabbitmq_url
from dqagent.settings.schedule import parse_schedule, parse_timezone


class OnReload(StrEnum):
    """What `systemctl reload dqagent` does with a changed setting (the value is the README's wording)."""

    #: The agent uses the new value from the next check on.
    LIVE = "applied"
    #: Applied, through a new Redis connection (the demand probe is rebuilt, the old one closed).
    REDIS = "applied: new Redis connection"
    #: Applied, through a new RabbitMQ connection (the demand probe is rebuilt, the old one closed).
    RABBITMQ = "applied: new RabbitMQ connection"
    #: Rendered into the units by `dqagent install`: the running units keep the old value until then.
    INSTALL = "`dqagent install`"


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting. `field` is "" for a setting that fills no `Settings` field (read by `dqagent.settings.sources`)."""

    key: str
    default: str
    field: str
    parse: Parser
    #: One line, light Markdown (backticks, links): the README shows it as is, the settings file as text.
    description: str
    on_reload: OnReload = OnReload.LIVE


_seconds = p.number("expected seconds > 0", lambda x: x > 0)
_NAME_CHARS = r"[a-zA-Z0-9_.-]"

# A data table: one row per setting, in the order of the settings file.
SETTINGS: tuple[Setting, ...] = (
    Setting("REDIS_HOST", "localhost", "redis_host", lambda k, raw: raw.strip() or "localhost",
            "Redis host of the Dramatiq broker", OnReload.REDIS),
    Setting("REDIS_PORT", "6379", "redis_port", p.integer(1, 65535), "Redis port (1..65535)", OnReload.REDIS),
    Setting("REDIS_DB", "0", "redis_db", lambda k, raw: p.parse_int(k, raw, 0, None, "expected an integer >= 0"),
            "Redis database number (>= 0)", OnReload.REDIS),
    Setting("REDIS_PASSWORD", "", "redis_password", p.verbatim,
            "do not set it here: put it in /etc/dqagent/redis-password (0640 root:dqagent)", OnReload.REDIS),
    Setting("REDIS_URL", "", "redis_url", p.parse_redis_url,
            "redis://, rediss:// or unix:// URL; replaces host/port/db when set (password: see above)",
            OnReload.REDIS),
    Setting("REDIS_PASSWORD_FILE", "/etc/dqagent/redis-password", "", p.stripped,
            "file read for the password when not run by systemd (`dqagent status`)", OnReload.REDIS),
    Setting("REDIS_TIMEOUT", "5", "redis_timeout_s", _seconds,
            "seconds before a Redis call is abandoned (keeps the loop under the watchdog)", OnReload.REDIS),
    # RabbitMQ instead of Redis, README "Brokers" (dqagent.broker.rabbitmq).
    Setting("RABBITMQ_URL", "", "rabbitmq_url", parse_rabbitmq_url,
            "read demand from RabbitMQ instead of Redis: `amqp://user@host:5672/vhost` or `amqps://` (TLS); no "
            "password here: it goes in /etc/dqagent/rabbitmq-password (0640 root:dqagent); empty: Redis",
            OnReload.RABBITMQ),
    Setting("RABBITMQ_PASSWORD", "", "rabbitmq_password", p.verbatim,
            "do not set it here: put it in /etc/dqagent/rabbitmq-password (0640 root:dqagent)", OnReload.RABBITMQ),
    Setting("RABBITMQ_PASSWORD_FILE", "/etc/dqagent/rabbitmq-password", "", p.stripped,
            "file read for the RabbitMQ password when not run by systemd (`dqagent status`)", OnReload.RABBITMQ),
    Setting("RABBITMQ_MANAGEMENT_URL", "", "rabbitmq_management_url", parse_management_url,
            "RabbitMQ's management API, `http(s)://host:15672` (same user and password): shows the messages "
            "workers hold unacknowledged (in flight); empty: in flight is estimated (README \"Brokers\")",
            OnReload.RABBITMQ),
    Setting("RABBITMQ_TIMEOUT", "5", "rabbitmq_timeout_s", _seconds,
            "seconds before a RabbitMQ call (AMQP or management API) is abandoned", OnReload.RABBITMQ),
    Setting("DRAMATIQ_QUEUE_NAME", "nietest_subtask", "queue_names", p.parse_queue_names,
            "queue(s) the workers consume, comma-separated; demand is the sum", OnReload.REDIS),
    Setting("DRAMATIQ_NAMESPACE", "dramatiq", "namespace",
            p.matching(f"{_NAME_CHARS}+", "expected letters, digits, . _ -"),
            "Dramatiq's Redis key namespace", OnReload.REDIS),
    Setting("DRAMATIQ_COMMAND",
            "python -m dramatiq --processes 1 --threads 5 --verbose backend.dramatiq_app.workers.subtask",
            "dramatiq_command", p.parse_command,
            "one worker process; use the absolute path of your venv's python. Workers read it when they start: "
            "running workers keep theirs"),
    Setting("MIN_PROCESSES", "1", "min_processes", p.integer(0, MAX_PROCESSES_LIMIT),
            f"fewest workers (0..{MAX_PROCESSES_LIMIT})"),
    Setting("MAX_PROCESSES", "10", "max_processes",
            p.integer(1, MAX_PROCESSES_LIMIT, f"expected an integer in 1..{MAX_PROCESSES_LIMIT} (>= MIN_PROCESSES, "
                      ">= 1)"),
            f"most workers (MIN_PROCESSES..{MAX_PROCESSES_LIMIT}, >= 1); a lower value on reload stops the "
            "highest-numbered workers at once"),
    Setting("CHECK_INTERVAL", "180", "check_interval_s", _seconds, "seconds between checks (> 0)"),
    Setting("SCALE_UP_THRESHOLD_MULTIPLIER", "5", "scale_up_multiplier",
            p.number("expected a number > 0", lambda x: x > 0),
            "step policy: +1 worker when queue > workers x this"),
    Setting("SCALE_DOWN_THRESHOLD_MULTIPLIER", "2.5", "scale_down_multiplier",
            p.number("expected a number > 0 and < SCALE_UP_THRESHOLD_MULTIPLIER (otherwise the workers would flap)",
                     lambda x: x > 0),
            "step policy: -1 worker when queue < workers x this (< up)"),
    Setting("LOG_LEVEL", "INFO", "log_level", p.choice(p.LOG_LEVELS, upper=True),
            "CRITICAL, ERROR, WARNING, INFO or DEBUG"),
    Setting("LOG_FILE", "process_manager.log", "log_file", p.parse_log_file,
            "extra log file; relative paths go under /var/log/dqagent; empty disables; letters, digits, "
            ". _ - + @, no .."),
    Setting("GRACEFUL_SHUTDOWN_TIMEOUT", "30", "graceful_shutdown_timeout_s",
            # 0 would become TimeoutStopSec=0, which systemd reads as "never SIGKILL"; it is rendered to the
            # millisecond (dqagent.setup.layout), so a finer value would render as another one, or as 0.
            p.number(f"expected seconds > 0, at most {MAX_GRACE_S:g} (7 days), to the millisecond",
                     lambda x: 0 < x <= MAX_GRACE_S and round(x, 3) == x),
            "seconds a worker may take to stop before SIGKILL (TimeoutStopSec; up to 7 days, to the ms)",
            OnReload.INSTALL),
    Setting("WORKER_HUNG_AFTER", "", "worker_hung_after_s",
            p.optional(p.number(f"expected seconds in [5, {MAX_GRACE_S:g}], or empty for off",
                                lambda x: 5 <= x <= MAX_GRACE_S)),
            "seconds a running worker's report (`dqagent.dramatiq.WorkerReport`) may go without a heartbeat "
            "before the agent restarts it as hung; its report thread beats through long tasks; empty: off"),
    Setting("PROCESS_STARTUP_DELAY", "5", "process_startup_delay_s",
            p.number("expected seconds >= 0", lambda x: x >= 0),
            "seconds after a start before the worker must still be running"),
    Setting("QUEUE_METRIC", "outstanding", "queue_metric",
            p.parse_queue_metric,
            "outstanding (ready + prefetched + running) or ready (LLEN, the old behaviour)"),
    Setting("WORKER_USER", "dqworker", "worker_user",
            p.matching(r"[a-z_][a-z0-9_-]{0,31}", "expected a system user name ([a-z_][a-z0-9_-]*)"),
            "user the workers run as", OnReload.INSTALL),
    Setting("WORKER_DIRECTORY", "/var/lib/dqagent/worker", "worker_directory", p.rendered_path,
            "working directory of the workers (Dramatiq's --path defaults to .); letters, digits, . _ - + @, "
            "no ..", OnReload.INSTALL),
    # Least privilege: WORKER_USER=root only with this explicit opt-in.
    Setting("ALLOW_ROOT_WORKERS", "no", "allow_root_workers", p.yes_no,
            "`yes` lets `WORKER_USER` be root (uid 0); refused otherwise (exit 78)"),
    Setting("DEMAND_POLL_INTERVAL", "5", "demand_poll_interval_s", _seconds,
            "target policy: seconds between cheap demand reads (bursts seen fast); adaptive: every min(this, 1 s) "
            "while the pool is at zero or growing or a backlog rises, 2 x this (at most `CHECK_INTERVAL`) when "
            "idle"),
    Setting("DBUS_TIMEOUT", "25", "dbus_timeout_s",
            p.number("expected seconds in (0, 600]", lambda x: 0 < x <= 600),
            "seconds before a D-Bus call to systemd is abandoned (`dqagent status` and the agent never hang)"),
    # Prometheus metrics, docs/metrics.md.
    Setting("METRICS_ADDRESS", "", "metrics_address", p.check_metrics_address,
            "serve Prometheus `/metrics` and the read-only status page `/` on `host:port` or `[v6]:port` (e.g. "
            "`127.0.0.1:9810`); empty: off ([docs/metrics.md](docs/metrics.md), "
            "[docs/status-page.md](docs/status-page.md))"),
    Setting("METRICS_TEXTFILE", "", "metrics_textfile", p.parse_metrics_textfile,
            "also write the same metrics to this absolute `.prom` path after each check, atomically, for "
            "node_exporter's textfile collector (its directory is the agent unit's `ReadWritePaths=`)",
            OnReload.INSTALL),
    # Fleet mode, docs/fleet.md.
    Setting("FLEET", "", "fleet",
            p.matching(f"{_NAME_CHARS}{{1,64}}", "expected empty (no fleet) or 1..64 letters, digits, . _ -", ""),
            "fleet mode: hosts with the same name on the same Redis and namespace share one global target "
            "([docs/fleet.md](docs/fleet.md)); empty: this host alone"),
    Setting("FLEET_WEIGHT", "", "fleet_weight",
            p.optional(p.integer(1, MAX_PROCESSES_LIMIT, "expected empty (= MAX_PROCESSES) or an integer in "
                                 f"1..{MAX_PROCESSES_LIMIT}")),
            f"fleet mode: this host's weight in the split of the global target (1..{MAX_PROCESSES_LIMIT}); "
            "empty: `MAX_PROCESSES`"),
    Setting("FLEET_HOST_ID", "", "fleet_host_id",
            p.matching(p.HOST_ID_PATTERN, "expected empty (= /etc/machine-id) or 1..64 letters, digits, "
                       ". _ : -", ""),
            "fleet mode: this host's id (letters, digits, `. _ : -`); empty: `/etc/machine-id` (set it for clones "
            "and containers sharing one)"),
    # Scaling policy, docs/scaling.md.
    Setting("SCALING_POLICY", "step", "scaling_policy", p.choice(p.SCALING_POLICIES),
            "step (the old manager's rule, default) or target (see [docs/scaling.md](docs/scaling.md))"),
    Setting("TARGET_PER_WORKER", "auto", "target_per_worker", p.parse_per_worker,
            "target policy: outstanding messages one worker unit should hold; auto = its prefetch, processes x 2 x "
            "threads as Dramatiq's parser reads `DRAMATIQ_COMMAND` (`--processes` defaults to the CPU count)"),
    Setting("TARGET_TOLERANCE", "0.2", "target_tolerance",
            p.number("expected a fraction in [0, 1)", lambda x: 0 <= x < 1),
            "target policy: relative band around the target with no change"),
    Setting("SCALE_UP_MAX_STEP", "4", "scale_up_max_step", p.integer(1, MAX_PROCESSES_LIMIT),
            "target policy: most workers added by one decision"),
    Setting("SCALE_DOWN_WINDOW", "120", "scale_down_window_s",
            p.number("expected seconds in 0..86400", lambda x: 0 <= x <= 86400),
            "target policy: seconds a higher recommendation holds off scale-down (capped by the recent flow)"),
    Setting("MAX_QUEUE_AGE", "", "max_queue_age_s",
            p.optional(p.number(f"expected seconds in (0, {MAX_QUEUE_AGE_LIMIT_S:g}], or empty for off",
                                lambda x: 0 < x <= MAX_QUEUE_AGE_LIMIT_S)),
            "target policy: seconds the oldest waiting message may wait; older, and the pool grows (at least one "
            "worker, more the further past it, at most `SCALE_UP_MAX_STEP`) even inside the tolerance band, and "
            "does not shrink. Only with `SCALING_POLICY=target` (exit 78 otherwise); empty: off"),
    # When the broker cannot be read, README "When Redis cannot be read" (dqagent.core.brokerfail).
    Setting("BROKER_FAILURE", "hold", "broker_failure", p.choice(p.BROKER_FAILURE_MODES),
            "while Redis cannot be read: hold (keep the workers, default), min (go to `MIN_PROCESSES`) or fixed "
            "(go to `BROKER_FAILURE_COUNT`) once the outage has lasted `BROKER_FAILURE_GRACE`"),
    Setting("BROKER_FAILURE_COUNT", "0", "broker_failure_count", p.integer(0, MAX_PROCESSES_LIMIT),
            "`BROKER_FAILURE=fixed`: the workers to run while Redis cannot be read (clamped to [MIN, MAX])"),
    Setting("BROKER_FAILURE_GRACE", "60", "broker_failure_grace_s",
            p.number("expected seconds in 0..86400", lambda x: 0 <= x <= 86400),
            "seconds of outage before `BROKER_FAILURE=min` or `fixed` takes over (the workers are kept until then)"),
    # Prediction, README "Prediction" (dqagent.core.forecast, dqagent.core.prediction).
    Setting("PREDICTIVE", "off", "predictive", p.choice(p.PREDICTIVE_MODES),
            "learn the pool's rhythm (short periods, the daily and weekly profile) and pre-warm / hold workers: off "
            "(default), shadow (forecast and journal what it would do, never act) or on (a floor under the policy's "
            "target while the forecast's error is low); README \"Prediction\""),
    # Pools, README "Pools".
    Setting("POOL_PRIORITY", "0", "pool_priority", p.integer(0, 100),
            "pools: this pool's priority (0..100) for room under `HOST_MAX_PROCESSES`: a higher one is served "
            "first, equal ones share evenly; in dqagent.env, the default pool's"),
    Setting("HOST_MAX_PROCESSES", "", "host_max_processes",
            p.optional(p.integer(1, MAX_PROCESSES_LIMIT, "expected empty (no host cap) or an integer in "
                                 f"1..{MAX_PROCESSES_LIMIT}, >= the pools' MIN_PROCESSES together")),
            "pools: most worker units of all pools together on this host (dqagent.env only); empty: no cap "
            "beyond each pool's `MAX_PROCESSES`"),
    # Schedules, README "Schedules".
    Setting("SCHEDULE", "", "schedule", parse_schedule,
            "time windows with a floor and/or a ceiling: `DAYS HH:MM-HH:MM min=N max=N` entries separated by `;` "
            "(e.g. `Mon-Fri 08:00-18:00 min=4; * 22:00-06:00 max=2`; README \"Schedules\"); empty: none"),
    Setting("SCHEDULE_TIMEZONE", "", "schedule_timezone", parse_timezone,
            "the IANA zone `SCHEDULE`'s times are read in (e.g. `Europe/Berlin`); empty: the host's zone"),
    Setting("PAUSE_GROUP", "", "pause_group",
            p.matching(f"({_NAME_CHARS}{{1,32}})?",
                       "expected empty (root only) or a group name: letters, digits, . _ -", ""),
            "group whose members may `dqagent pause`/`resume` besides root (dqagent.env only; install makes "
            "the requests directory writable by it); empty: root only", OnReload.INSTALL),
    # Resource limits and the guard, docs/operations.md.
    Setting("WORKER_MEMORY_MAX", "", "worker_memory_max", p.parse_memory,
            "per worker `MemoryMax=` (e.g. `1G`, `20%`, `infinity`; empty: none): the kernel kills a worker past it "
            "(`Result=oom-kill`)", OnReload.INSTALL),
    Setting("WORKER_MEMORY_HIGH", "", "worker_memory_high", p.parse_memory,
            "per worker `MemoryHigh=`: throttled and reclaimed past it (below `WORKER_MEMORY_MAX`)",
            OnReload.INSTALL),
    Setting("POOL_MEMORY_MAX", "", "pool_memory_max", p.parse_memory,
            "the whole pool (slice `system-dramatiq\\x2dworker.slice`): `MemoryMax=`", OnReload.INSTALL),
    Setting("POOL_CPU_QUOTA", "", "pool_cpu_quota", p.parse_cpu_quota,
            "the whole pool: `CPUQuota=`, a percentage (100% = one CPU, e.g. `300%`)", OnReload.INSTALL),
    Setting("POOL_TASKS_MAX", "", "pool_tasks_max", p.parse_tasks_max,
            "the whole pool: `TasksMax=` (a number, `N%` or `infinity`); empty: `33%` of the kernel's task limit, "
            "as logind gives each user", OnReload.INSTALL),
    Setting("GUARD", "on", "guard", p.on_off,
            "`on`: hold scale-ups while the host lacks headroom (see "
            "[operations](docs/operations.md#resource-limits-and-the-guard)); scale-down is never held"),
    Setting("GUARD_MEMORY_PRESSURE", "10", "guard_memory_pressure", p.parse_pressure,
            "guard: hold while memory `some avg10` > this % (or `full avg10` > half of it)"),
    Setting("GUARD_CPU_PRESSURE", "50", "guard_cpu_pressure", p.parse_pressure,
            "guard: hold while CPU `some avg10` > this %"),
    Setting("GUARD_MEMORY_RESERVE", "10%", "guard_memory_reserve", p.parse_reserve,
            "guard: `MemAvailable` kept free after one more worker (bytes, or % of MemTotal)"),
    Setting("GUARD_PROC_DIR", "/proc", "guard_proc_dir",
            p.matching("(?s)/.*", "expected an absolute path (test-only; default /proc)"),
            "guard: where `pressure/` and `meminfo` are read; for tests only"),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
#: Defaults, with the old manager's names and values. Strings, as they would appear in `.env`.
DEFAULTS: dict[str, str] = {s.key: s.default for s in SETTINGS}
#: `Settings` field -> its setting's key.
FIELD_KEYS: dict[str, str] = {s.field: s.key for s in SETTINGS if s.field}


def fields_where(on_reload: OnReload) -> tuple[str, ...]:
    """The `Settings` fields whose settings a reload treats this way, in declaration order."""
    return tuple(s.field for s in SETTINGS if s.field and s.on_reload is on_reload)


#: Rendered into the units by `dqagent install`: the running units keep the old values until then.
NEEDS_INSTALL_FIELDS = fields_where(OnReload.INSTALL)
#: What the demand probe (its Redis connection and key names) is built from: a change means a new one.
REDIS_FIELDS = fields_where(OnReload.REDIS) + fields_where(OnReload.RABBITMQ)


def unknown_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """The keys no setting declares, in the order given (each once)."""
    return tuple(dict.fromkeys(k for k in keys if k not in BY_KEY))


def unknown_key_message(key: str) -> str:
    """`MAX_PROCESS: unknown setting; did you mean MAX_PROCESSES?`, the nearest declared name if one is close."""
    near = difflib.get_close_matches(key.upper(), BY_KEY, n=1)
    hint = f"did you mean {near[0]}?" if near else "no setting has a similar name (the README lists them all)"
    return f"{key}: unknown setting; {hint}"


_LINK_RE = re.compile(r"\[([^]]*)\]\([^)]*\)")


def plain(description: str) -> str:
    """A description as plain text (the settings file): links become their text, backticks go."""
    return _LINK_RE.sub(r"\1", description).replace("`", "")


def markdown_table() -> str:
    """The README's settings table, one row per setting (`dev/settings_table --write` puts it in place)."""
    rows = ["| setting | default | on `systemctl reload` | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        rows.append(f"| `{s.key}` | {default} | {s.on_reload.value} | {s.description} |")
    return "\n".join(rows) + "\n"
