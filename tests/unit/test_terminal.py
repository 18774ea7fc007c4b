"""Outside text on a terminal: `terminal.printable` and every text report that prints
workers', Redis's or systemd's words (`status`, `status --fleet`, `check`, the console log). The bench
test is in tests/integration/test_status_cli.py (a worker that logs an OSC sequence)."""

from __future__ import annotations

import json
import logging
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from dqagent.cli.main import _fleet_text
from dqagent.cli.status import render_json, render_text
from dqagent.report.logs import FieldsFormatter, event
from dqagent.report.terminal import printable
from dqagent.setup.check import Result
from tests.unit.test_status_report import FAILING, report

OSC_TITLE = "boom \x1b]0;pwned-title\x07 end"
#: OSC 52 (set the clipboard) with C1 introducer and terminator, and a forged second line
OSC_CLIPBOARD = "host\x9d52;c;cm0gLXJmIH4=\x9c\nforged line\r"


def controls(text: str) -> set[str]:
    return {ch for ch in text if unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029\u202e"}


@given(st.text())
def test_printable_leaves_no_control_character_and_one_line(text: str) -> None:
    out = printable(text)
    assert not controls(out)
    assert len(out.splitlines()) <= 1
    assert printable(out) == out  # nothing left to escape


@given(st.text(st.characters(blacklist_categories=("Cc", "Zl", "Zp", "Cf", "Cs"))))
def test_printable_keeps_ordinary_text_as_it_is(text: str) -> None:
    assert printable(text) == text


def test_escapes_are_visible_and_name_the_byte() -> None:
    assert printable(OSC_TITLE) == "boom \\x1b]0;pwned-title\\x07 end"
    assert printable("a\nb\tc\x7fd\x9be\u202ef") == "a\\x0ab\\x09c\\x7fd\\x9be\\u202ef"
    assert printable("C:\\path ünïcödé ✓") == "C:\\path ünïcödé ✓"


def test_status_text_shows_outside_text_escaped_and_json_keeps_it_escaped_by_json() -> None:
    r = report(failing_workers=[{**FAILING, "last_line": OSC_TITLE}],
               queues={OSC_CLIPBOARD: {"ready": 1, "in_flight": 0, "delayed": 0, "dead_lettered": 0,
                                       "orphaned": 0, "oldest_age_s": None}},
               redis_error="ERR \x1b[2J", agent_status_text="ok\x1b]52;c;eA==\x07")
    text = render_text(r)
    assert not controls(text.replace("\n", ""))
    assert "    last logged: boom \\x1b]0;pwned-title\\x07 end" in text.splitlines()
    assert "host\\x9d52;c;cm0gLXJmIH4=\\x9c\\x0aforged line\\x0d: ready 1" in text
    assert not [ln for ln in text.splitlines() if ln.startswith("forged")]
    # --json stays as it is: the raw text, which json.dumps writes with \u escapes only
    out = render_json(r)
    assert not controls(out.replace("\n", "")) and "\\u001b]0;pwned-title\\u0007" in out
    assert json.loads(out)["failing_workers"][0]["last_line"] == OSC_TITLE


def test_fleet_text_escapes_host_names_and_errors_from_redis() -> None:
    member = {"host": OSC_CLIPBOARD, "running": 1, "target": 1, "weight": 1.0, "min_processes": 1,
              "max_processes": 2, "heartbeat_age_s": 1.0, "ttl_s": 30.0}
    fleet = {"fleet": "f", "host": "me", "global_demand": 3, "global_target": 1, "targets_sum": 1,
             "running_sum": 1, "members": [member], "text": "unused"}
    text = _fleet_text(fleet)
    assert len(text.splitlines()) == 2 and not controls(text.replace("\n", ""))
    assert "host\\x9d52;c;cm0gLXJmIH4=\\x9c\\x0aforged line\\x0d  running 1" in text
    error = _fleet_text({"fleet": "f", "error": "x\x1b[31m", "text": "fleet: unavailable (x\x1b[31m)"})
    assert error == "fleet: unavailable (x\\x1b[31m)"


def test_check_lines_and_console_log_lines_escape_outside_text() -> None:
    assert Result(False, f"Redis said {OSC_TITLE}").line() == "FAIL: Redis said boom \\x1b]0;pwned-title\\x07 end"
    record = logging.LogRecord("dqagent", logging.WARNING, __file__, 1, "bad member %s", (OSC_CLIPBOARD,), None)
    for k, v in event("decision", host=OSC_TITLE).items():
        setattr(record, k, v)
    line = FieldsFormatter("%(levelname)s %(message)s").format(record)
    assert not controls(line) and "\n" not in line
    assert "bad member host\\x9d52;c;" in line and "host=boom \\x1b]0;pwned-title\\x07 end" in line
