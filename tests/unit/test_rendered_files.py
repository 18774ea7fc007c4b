"""What install renders carries exactly the directives meant, whatever the settings hold.

Settings values are rendered into root-owned files: the worker template (run as root by systemd), the
limit drop-ins and /etc/logrotate.d/dqagent (run by root's logrotate). The files are parsed back here the
way systemd and logrotate read them, and must hold exactly the template's directives, each with exactly
the value meant; a value that cannot be rendered as is is refused with a one-line `ConfigError`.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from dqagent.errors import ConfigError
from dqagent.settings.config import MAX_GRACE_S, Settings, parse_settings
from dqagent.setup.layout import (
    AGENT_UNIT_FILE,
    LOG_DIR,
    PACKAGING,
    SLICE_LIMITS_FILE,
    WORKER_LIMITS_FILE,
    WORKER_TEMPLATE_FILE,
    logrotate_rule,
    rendered_limits,
    rendered_units,
    unit_values,
)
from dqagent.setup.reach import Preflight
from dqagent.setup.sandbox import Plan

EXE = "/opt/dqagent/bin/dqagent"
INJECTION = "/srv/app/x\nExecStartPre=+/bin/sh -c 'id > /root/pwned'\nX=/../../../../.."
#: Keys whose values end up in a rendered file.
RENDERED_KEYS = ("WORKER_USER", "WORKER_DIRECTORY", "LOG_FILE", "GRACEFUL_SHUTDOWN_TIMEOUT", "WORKER_MEMORY_MAX",
                 "WORKER_MEMORY_HIGH", "POOL_MEMORY_MAX", "POOL_CPU_QUOTA", "POOL_TASKS_MAX")
Entry = tuple[str, str, str]


def parse_unit(text: str) -> list[Entry]:
    """(section, key, value) per assignment, read as systemd 252 reads a unit file (conf-parser.c):
    a line ends at \\n, \\r\\n, \\r or NUL; an odd trailing backslash continues the line (replaced by a
    space), comment lines inside a continuation are skipped; then whitespace is stripped, `#`/`;` lines are
    comments, `[x]` opens a section, and `key=value` is split at the first `=`, both sides stripped."""
    entries: list[Entry] = []
    section = ""
    continuation: str | None = None
    for raw in re.split(r"\r\n|\n|\r|\0", text):
        if continuation is not None and raw.lstrip(" \t").startswith(("#", ";")):
            continue
        line = raw if continuation is None else continuation + raw
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            continuation = line[:-1] + " "
            continue
        continuation = None
        line = line.strip(" \t\n\r")
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        assert "=" in line, f"systemd would reject the line {line!r} (missing '=')"
        key, _, value = line.partition("=")
        entries.append((section, key.strip(" \t"), value.strip(" \t")))
    assert continuation is None, "a continuation runs off the end of the file"
    return entries


def parse_logrotate(text: str) -> tuple[list[str], list[str]]:
    """(the paths the rule applies to, its directives), read as logrotate reads a rule: `#` lines are
    comments, paths are words (double or single quotes group) up to `{`, directives one a line up to `}`."""
    lines = [ln for ln in text.split("\n") if not ln.lstrip().startswith("#")]
    body = "\n".join(lines)
    head, brace, rest = body.partition("{")
    assert brace, "no rule"
    paths = [a or b or c for a, b, c in re.findall(r'"([^"]*)"|\'([^\']*)\'|([^\s"\']+)', head)]
    block, close, tail = rest.partition("}")
    assert close and not tail.strip(), f"text after the rule: {tail!r}"
    return paths, [ln.strip() for ln in block.split("\n") if ln.strip()]


def _preflight() -> Preflight:
    def plan(unit: str) -> Plan:
        return Plan(unit=unit, protect_home="yes", binds=(), refusals=())
    return Preflight(plan("dqagent.service"), plan("dramatiq-worker@.service"), (), ())


def _expected(template: str, values: dict[str, str]) -> list[Entry]:
    """The template's own directives with each @KEY@ replaced by its value, and nothing else."""
    out = []
    for section, key, value in parse_unit(template):
        for name, rendered in values.items():
            value = value.replace(f"@{name}@", rendered)
        out.append((section, key, value))
    return out


def _seconds(value: str) -> float:
    assert re.fullmatch(r"[0-9]+(\.[0-9]{1,3})?s", value), value
    return float(value[:-1])


def _is_plain(value: str) -> bool:
    """Nothing systemd expands or splits in a value: no specifier, variable, escape, quote or whitespace."""
    return not re.search(r"[%$\\\"'\s;]", value) and value.isprintable()


def assert_renders_exactly(s: Settings, exe: str) -> None:
    units = rendered_units(s, exe, _preflight())
    values = unit_values(s, exe)
    for path, name in ((AGENT_UNIT_FILE, "dqagent.service"), (WORKER_TEMPLATE_FILE, "dramatiq-worker@.service")):
        assert parse_unit(units[path]) == _expected((PACKAGING / name).read_text(), values)
    worker = parse_unit(units[WORKER_TEMPLATE_FILE])
    found = {key: value for _, key, value in worker}
    assert found["User"] == s.worker_user and _is_plain(s.worker_user)
    assert found["WorkingDirectory"] == "-" + s.worker_directory and _is_plain(s.worker_directory)
    assert posixpath.normpath(s.worker_directory) == s.worker_directory.replace("//", "/")
    assert ".." not in s.worker_directory.split("/")
    assert found["ExecStart"].split() == [exe, "--env-file", "/etc/dqagent/dqagent.env", "worker-exec", "%i"]
    assert _seconds(found["TimeoutStopSec"]) == s.graceful_shutdown_timeout_s
    assert [k for _, k, _ in worker].count("ExecStartPre") == 0
    # The limit drop-ins: exactly one section and exactly the limits set, in systemd's plain forms
    limits = rendered_limits(s)
    for path, section, wanted in (
            (WORKER_LIMITS_FILE, "Service", [("MemoryAccounting", "yes"), ("MemoryMax", s.worker_memory_max),
                                             ("MemoryHigh", s.worker_memory_high)]),
            (SLICE_LIMITS_FILE, "Slice", [("MemoryMax", s.pool_memory_max), ("CPUQuota", s.pool_cpu_quota),
                                          ("TasksMax", s.pool_tasks_max)])):
        text = limits[path]
        assert text is not None
        assert parse_unit(text) == [(section, k, v) for k, v in wanted if v]
        for _, _, value in parse_unit(text):
            assert re.fullmatch(r"yes|infinity|[0-9]+|[0-9]+(\.[0-9]{1,2})?%", value), value
    # The logrotate rule: our glob, LOG_FILE (when the glob misses it), and the fixed directives
    paths, directives = parse_logrotate(logrotate_rule(s.log_file))
    assert paths[0] == str(LOG_DIR / "*.log") and len(paths) <= 2
    if s.log_file:
        target = str(Path(LOG_DIR, s.log_file))
        assert target in paths or (str(Path(target).parent) == str(LOG_DIR) and target.endswith(".log"))
        assert all(_is_plain(p) and not re.search(r"[*?\[{}]", p) for p in paths[1:])
    assert directives == ["weekly", "rotate 8", "maxsize 50M", "compress", "delaycompress", "missingok",
                          "notifempty", "su dqagent dqagent", "create 0640 dqagent dqagent"]


def test_the_reported_injection_is_refused_in_one_line() -> None:
    """The value from the issue resolved to /srv/app, passed, and rendered an `ExecStartPre=+` root line."""
    with pytest.raises(ConfigError) as info:
        parse_settings({"WORKER_DIRECTORY": INJECTION})
    text = str(info.value)
    assert text.startswith("invalid WORKER_DIRECTORY=") and "\n" not in text and "absolute path" in text


def test_the_reported_injection_cannot_reach_a_unit_through_settings_built_otherwise() -> None:
    s = Settings(**{**_fields(parse_settings({})), "worker_directory": INJECTION})
    with pytest.raises(ConfigError, match=r"^invalid WORKER_DIRECTORY="):
        rendered_units(s, EXE, _preflight())


@pytest.mark.parametrize(("key", "raw"), [
    ("WORKER_DIRECTORY", "/srv/app/../../etc"), ("WORKER_DIRECTORY", "/srv/%h"), ("WORKER_DIRECTORY", "/srv/a b"),
    ("WORKER_DIRECTORY", "/srv/$HOME"), ("WORKER_DIRECTORY", "/srv/a\\"), ("WORKER_DIRECTORY", "/srv/a\rX=1"),
    ("LOG_FILE", 'x.log"\n/etc/passwd {\n postrotate'), ("LOG_FILE", "../../etc/shadow"), ("LOG_FILE", "*.log"),
    ("LOG_FILE", "/var/log/dqagent/a b.log"), ("LOG_FILE", "."), ("LOG_FILE", "a.log\x00"),
    ("GRACEFUL_SHUTDOWN_TIMEOUT", "1e300"), ("GRACEFUL_SHUTDOWN_TIMEOUT", "0.0001"),
    ("GRACEFUL_SHUTDOWN_TIMEOUT", "1234567"),
])
def test_values_a_file_cannot_carry_as_is_are_refused_in_one_line(key: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings({key: raw})
    assert str(info.value).startswith(f"invalid {key}=") and "\n" not in str(info.value)


@pytest.mark.parametrize(("raw", "rendered"), [("/srv/app/", "/srv/app"), ("//srv//app/./x", "/srv/app/x"),
                                               ("/", "/"), (" /srv/app ", "/srv/app")])
def test_harmless_path_forms_render_normalised(raw: str, rendered: str) -> None:
    assert parse_settings({"WORKER_DIRECTORY": raw}).worker_directory == rendered


def test_large_and_fractional_stop_timeouts_render_exactly() -> None:
    """`{:g}` rendered 1234567 s as `1.23457e+06s`, which systemd does not read as that time."""
    for raw, stop, agent in (("123456", "123456s", "247092s"), ("0.25", "0.25s", "180.5s"), ("30", "30s", "240s")):
        found = dict((k, v) for _, k, v in parse_unit(
            rendered_units(parse_settings({"GRACEFUL_SHUTDOWN_TIMEOUT": raw}), EXE, _preflight())[AGENT_UNIT_FILE]))
        worker = dict((k, v) for _, k, v in parse_unit(rendered_units(
            parse_settings({"GRACEFUL_SHUTDOWN_TIMEOUT": raw}), EXE, _preflight())[WORKER_TEMPLATE_FILE]))
        assert (worker["TimeoutStopSec"], found["TimeoutStopSec"]) == (stop, agent)
    assert parse_settings({"GRACEFUL_SHUTDOWN_TIMEOUT": f"{MAX_GRACE_S:g}"}).graceful_shutdown_timeout_s == MAX_GRACE_S


@pytest.mark.parametrize("exe", ["/opt/x/bin/dqagent\nExecStartPre=+/bin/id", "/opt/$X/dqagent", "/opt/%h/dqagent",
                                 "/opt/x/../dqagent", "relative/dqagent", "/opt/a b/dqagent"])
def test_a_dqagent_executable_path_a_unit_cannot_carry_is_refused(exe: str) -> None:
    with pytest.raises(ConfigError, match=r"^invalid the dqagent executable's path="):
        rendered_units(parse_settings({}), exe, _preflight())


def test_the_parser_follows_systemds_continuation_and_line_ends() -> None:
    """The test's own parser: it must see what systemd sees, or the property below proves nothing."""
    assert parse_unit("[S]\nA=1 \\\n# skipped\n 2\nB=x\rC=y\0D=z\n; c\n") == [
        ("S", "A", "1   2"), ("S", "B", "x"), ("S", "C", "y"), ("S", "D", "z")]
    assert parse_unit("[S]\nA=x\\\\\nB=y\n") == [("S", "A", "x\\\\"), ("S", "B", "y")]


def _fields(s: Settings) -> dict[str, object]:
    return {name: getattr(s, name) for name in s.__dataclass_fields__}


_NASTY = st.lists(st.sampled_from([*"/a.-_+@%$\\\"' \t\n\r\x00\x1b{}*?[;#=:~é0123456789", "..", "//"]),
                  max_size=24).map("".join)
_GOOD = {"WORKER_USER": ["dqworker", "app", "www-data", "_svc"],
         "WORKER_DIRECTORY": ["/srv/app", "/var/lib/dqagent/worker", "/", "/srv/app/", "/opt/a.b/c-d+e@f"],
         "LOG_FILE": ["", "process_manager.log", "/var/log/dqagent/x.log", "sub/dir.log", "/var/log/other.txt"],
         "GRACEFUL_SHUTDOWN_TIMEOUT": ["30", "0.5", "600", "604800", "0.001"],
         "WORKER_MEMORY_MAX": ["", "1G", "20%", "infinity"], "WORKER_MEMORY_HIGH": ["", "512M", "10%"],
         "POOL_MEMORY_MAX": ["", "2G", "50%"], "POOL_CPU_QUOTA": ["", "300%", "1%"],
         "POOL_TASKS_MAX": ["", "500", "infinity", "10%"]}


#: Strings of the characters a path may hold, with `.`, `..` and `//` components: normalisation's cases.
_PATHISH = st.lists(st.sampled_from(["/", "/", "a", "b1", ".", "..", "-", "_", "+", "@", "//"]),
                    max_size=12).map("".join)


@st.composite
def _raw_settings(draw: st.DrawFn) -> dict[str, str]:
    """Good values for most keys, and for one or two of them something hostile or arbitrary."""
    out = {key: draw(st.sampled_from(_GOOD[key])) for key in RENDERED_KEYS if draw(st.booleans())}
    for key in draw(st.lists(st.sampled_from(RENDERED_KEYS), max_size=2)):
        kind = draw(st.sampled_from(["nasty", "text", "pathish", "pathish", "injection"]))
        if kind == "nasty":
            out[key] = draw(_NASTY)
        elif kind == "text":
            out[key] = draw(st.text(max_size=30))
        elif kind == "pathish":
            out[key] = draw(_PATHISH)
        else:
            out[key] = draw(st.sampled_from(_GOOD[key])) + draw(st.sampled_from(
                ["\nExecStartPre=+/bin/id", "\\\nExecStartPre=+/bin/id", "\r[Service]\rUser=root", "%h", "$USER",
                 '" /etc/shadow', "/../../etc", " x", "\x00", "", "/./x//"]))
    return out


@settings(max_examples=600, deadline=None)
@given(_raw_settings(),
       st.sampled_from([EXE, "/usr/local/bin/dqagent", "/opt/x/../dqagent", "/opt/%h/dqagent"]) | st.text(max_size=20))
@example({"WORKER_DIRECTORY": INJECTION}, EXE)
def test_any_settings_render_exactly_what_was_meant_or_are_refused(raw: dict[str, str], exe: str) -> None:
    try:
        s = parse_settings(raw)
    except ConfigError as exc:  # never another exception type; always one line naming a setting
        event(f"refused {exc.key}")
        assert exc.key in RENDERED_KEYS and "\n" not in str(exc)
        return
    try:
        unit_values(s, exe)
    except ConfigError as exc:
        event("refused exe")
        assert exc.key == "the dqagent executable's path" and exe != EXE and "\n" not in str(exc)
        return
    event("rendered")
    assert_renders_exactly(s, exe)
