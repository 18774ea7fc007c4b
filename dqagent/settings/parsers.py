"""How one setting's text becomes its value (pure): numbers in a range, names, paths, sizes, addresses.

Each parser takes the setting's name (for the error) and its raw text, and returns the value or raises
`ConfigError` with one line naming the setting and what is accepted. `dqagent.settings.declarations` pairs every
setting with one of them; checks that involve two settings live in `dqagent.settings.config`.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Callable
from enum import StrEnum
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from dqagent.errors import ConfigError

#: A parser: (setting name, raw text) -> value; raises `ConfigError`.
Parser = Callable[[str, str], Any]

# Dramatiq's own rule for queue names (dramatiq/actor.py); also safe inside Redis key names.
_QUEUE_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9._-]*")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
MAX_PROCESSES_LIMIT = 1000
#: A fleet host id (FLEET_HOST_ID, and what a fleet record may carry): /etc/machine-id's 32 hex digits fit.
HOST_ID_PATTERN = r"[a-zA-Z0-9_.:-]{1,64}"
#: Longest GRACEFUL_SHUTDOWN_TIMEOUT (TimeoutStopSec of a worker): 7 days.
MAX_GRACE_S = 7 * 86400.0
#: Longest MAX_QUEUE_AGE: Dramatiq's own longest delay (7 days); older messages are dead letters anyway.
MAX_QUEUE_AGE_LIMIT_S = 7 * 86400.0
#: Names accepted by SCALING_POLICY; `dqagent.core.policies.POLICIES` has exactly these keys (a test checks).
SCALING_POLICIES = ("step", "target")
#: BROKER_FAILURE (`dqagent.core.brokerfail.Mode`).
BROKER_FAILURE_MODES = ("hold", "min", "fixed")
#: PREDICTIVE (`dqagent.core.prediction.Mode`).
PREDICTIVE_MODES = ("off", "shadow", "on")


class QueueMetric(StrEnum):
    """Which Redis figure feeds the scaling rule."""

    #: ready + prefetched + running (`HLEN Q.msgs`): the real backlog.
    OUTSTANDING = "outstanding"
    #: `LLEN Q` only, as the old manager did; blind to prefetched messages.
    READY = "ready"


def parse_int(key: str, raw: str, lo: int | None = None, hi: int | None = None, accepted: str = "") -> int:
    """An integer in [lo, hi] (either bound optional)."""
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(key, raw, accepted or "expected an integer") from None
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(key, raw, accepted)
    return value


def parse_float(key: str, raw: str, accepted: str, ok: Callable[[float], bool]) -> float:
    """A finite number for which `ok` holds."""
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(key, raw, f"expected a number; {accepted}") from None
    if value != value or value in (float("inf"), float("-inf")) or not ok(value):
        raise ConfigError(key, raw, accepted)
    return value


def integer(lo: int, hi: int, accepted: str = "") -> Parser:
    """A parser of integers in lo..hi (the message says so unless `accepted` is given)."""
    return lambda key, raw: parse_int(key, raw, lo, hi, accepted or f"expected an integer in {lo}..{hi}")


def number(accepted: str, ok: Callable[[float], bool]) -> Parser:
    """A parser of finite numbers for which `ok` holds."""
    return lambda key, raw: parse_float(key, raw, accepted, ok)


def choice(options: tuple[str, ...], upper: bool = False) -> Parser:
    """A parser of one of `options`, compared case-insensitively (returned lower- or upper-cased)."""
    def parse(key: str, raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in options:
            raise ConfigError(key, raw, "expected one of " + ", ".join(options))
        return value
    return parse


def matching(pattern: str, accepted: str, empty: str | None = None) -> Parser:
    """A parser of text (stripped) matching `pattern`; `empty`: the value of an empty text, else refused."""
    regex = re.compile(pattern)

    def parse(key: str, raw: str) -> str:
        text = raw.strip()
        if empty is not None and not text:
            return empty
        if not regex.fullmatch(text):
            raise ConfigError(key, text, accepted)
        return text
    return parse


def verbatim(key: str, raw: str) -> str:
    """The text as written (a password: its spaces count)."""
    return raw


def stripped(key: str, raw: str) -> str:
    """The text without surrounding whitespace, unchecked."""
    return raw.strip()


def yes_no(key: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("yes", "true", "1", "on"):
        return True
    if value in ("no", "false", "0", "off", ""):
        return False
    raise ConfigError(key, raw, "expected yes or no")


def on_off(key: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("on", "off", "yes", "no", "true", "false", "1", "0"):
        raise ConfigError(key, raw, "expected on or off")
    return value in ("on", "yes", "true", "1")


#: The pool `/etc/dqagent/dqagent.env` describes: its workers keep the single-pool names (`dramatiq-worker@3`).
DEFAULT_POOL = "default"
#: A further pool's name (`/etc/dqagent/pools.d/<name>.env`): what systemd allows in an instance name, narrowed
#: to lower-case letters, digits and `_`, so `dramatiq-worker@<pool>-*` matches exactly one pool's units (no `-`:
#: pool `a`'s glob would match pool `a-b`'s units) and the polkit rule can check it with one expression.
POOL_NAME_PATTERN = "[a-z][a-z0-9_]{0,31}"


def optional(parse: Parser) -> Parser:
    """`parse`, except an empty text is None (off, or "take the default from elsewhere")."""
    return lambda key, raw: parse(key, raw) if raw.strip() else None


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


def parse_redis_url(key: str, raw: str) -> str:
    """A redis://, rediss:// or unix:// URL, or "" (host/port/db apply); the error shows it redacted."""
    url = raw.strip()
    if url:
        scheme = urlsplit(url).scheme if "://" in url else ""
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(key, redact_url(url), "expected a redis://, rediss:// or unix:// URL")
    return url


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


def parse_command(key: str, raw: str) -> str:
    """A non-empty, shell-like command line (what `dqagent worker-exec` splits and execs)."""
    command = raw.strip()
    if not command:
        raise ConfigError(key, raw, "expected a non-empty command line")
    try:
        shlex.split(command)
    except ValueError as exc:
        raise ConfigError(key, command, f"expected a shell-like command line ({exc})") from None
    return command


def parse_queue_metric(key: str, raw: str) -> QueueMetric:
    try:
        return QueueMetric(raw.strip().lower())
    except ValueError:
        raise ConfigError(key, raw, "expected outstanding or ready") from None


def parse_per_worker(key: str, raw: str) -> float | None:
    """TARGET_PER_WORKER: None for auto (the worker's prefetch), else messages per worker > 0."""
    if raw.strip().lower() == "auto":
        return None
    return parse_float(key, raw, "expected auto or outstanding messages per worker > 0 (auto = the prefetch, "
                       "processes x 2 x threads)", lambda x: x > 0)


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


def parse_log_file(key: str, raw: str) -> str:
    """LOG_FILE: "" (off) or a path, relative ones under the logs directory."""
    return rendered_path(key, raw, absolute=False) if raw.strip() else ""


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


def check_metrics_address(key: str, raw: str) -> str:
    """METRICS_ADDRESS validated, kept as text (`parse_metrics_address` splits it where it is used)."""
    parse_metrics_address(raw, key)
    return raw.strip()


def parse_metrics_textfile(key: str, raw: str) -> str:
    """An absolute path ending in `.prom` (node_exporter reads only those), or "" (off)."""
    text = raw.strip()
    if text and (not text.startswith("/") or not text.endswith(".prom") or text.endswith("/.prom")):
        raise ConfigError(key, raw, "expected empty (off) or an absolute path ending in .prom, "
                          "e.g. /var/lib/prometheus/node-exporter/dqagent.prom")
    return text


# -- Resource limits: systemd's own forms, rendered by `dqagent install` (dqagent.setup.layout) --------------

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


def parse_reserve(key: str, raw: str) -> str:
    """GUARD_MEMORY_RESERVE: `parse_memory` without "" or infinity, 0 allowed."""
    return parse_memory(key, raw, limit=False)


def parse_cpu_quota(key: str, raw: str) -> str:
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


def parse_tasks_max(key: str, raw: str) -> str:
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
    return str(parse_int(key, text, 1, 2**31, accepted))


#: GUARD_MEMORY_PRESSURE, GUARD_CPU_PRESSURE: a share of stalled time.
parse_pressure = number("expected a percentage of stalled time in (0, 100] (avg10 of /proc/pressure)",
                        lambda x: 0 < x <= 100)
