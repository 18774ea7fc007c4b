"""The journal catalog: every event the package logs has a stable, unique MESSAGE_ID and an explanation,
every record carries it, and the rendered file is what systemd's catalog parser expects. (The bench test
`tests/integration/test_age_scaling.py` runs `journalctl -x` and `journalctl MESSAGE_ID=` on the real thing.)"""

from __future__ import annotations

import ast
import logging
import re
import uuid
from pathlib import Path

import pytest

from dqagent.report import catalog
from dqagent.report.logs import FieldsFormatter, event

PACKAGE = Path(catalog.__file__).resolve().parents[1]


def logged_events() -> dict[str, list[str]]:
    """Every `event(...)` call in the package: name -> where. A name that is not a literal fails the test."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "event":
                first = node.args[0] if node.args else None
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                    f"{where}: event() with a name that is not a string literal cannot be checked")
                found.setdefault(first.value, []).append(where)
    return found


def test_every_logged_event_has_a_catalog_entry() -> None:
    used = logged_events()
    assert {"scale_up", "scale_down", "worker_failed", "redis_error", "bus_lost", "config_warning"} <= set(used)
    missing = {name: where for name, where in used.items() if name not in catalog.BY_EVENT}
    assert not missing, f"add these events to dqagent/report/catalog.py ENTRIES: {missing}"


def test_ids_are_unique_128_bit_and_entries_complete() -> None:
    ids = [e.message_id for e in catalog.ENTRIES]
    assert len(set(ids)) == len(ids)
    assert len({e.event for e in catalog.ENTRIES}) == len(catalog.ENTRIES)
    for e in catalog.ENTRIES:
        assert re.fullmatch(r"[0-9a-f]{32}", e.message_id), e
        assert uuid.UUID(e.message_id).int != 0
        assert e.subject and "\n" not in e.subject and len(e.text) > 40, e
        # `@FIELD@` is replaced from the journal entry: only fields the event always carries
        for name in re.findall(r"@([A-Z_]+)@", e.text):
            assert name in {"WORKERS", "TARGET", "UNIT", "RESULT", "ERROR"}, (e.event, name)


def test_every_entry_is_logged_somewhere() -> None:
    assert set(catalog.BY_EVENT) - set(logged_events()) == set()


def test_every_record_carries_its_message_id_and_console_lines_do_not_repeat_it() -> None:
    fields = event("scale_up", workers=1, target=3)
    assert fields == {"DQAGENT_EVENT": "scale_up", "MESSAGE_ID": "b3312c1771c54fc7bce8d525847dfcff",
                      "WORKERS": 1, "TARGET": 3}
    assert "MESSAGE_ID" not in event("not_in_the_catalog")
    record = logging.makeLogRecord({"msg": "scale up by 2 to 3", **fields})
    assert FieldsFormatter("%(message)s").format(record) == "scale up by 2 to 3 event=scale_up workers=1 target=3"


def test_rendered_file_has_one_entry_per_event_in_systemds_format() -> None:
    text = catalog.render()
    blocks = text.split("\n-- ")[1:]
    assert len(blocks) == len(catalog.ENTRIES)
    for block, e in zip(blocks, catalog.ENTRIES, strict=True):
        head, _, body = block.partition("\n\n")
        assert head.splitlines() == [e.message_id, f"Subject: {e.subject}", "Defined-By: dqagent"]
        assert all(len(line) <= 78 for line in body.splitlines())
        assert " ".join(body.split()) == " ".join(e.text.split())


def test_a_malformed_id_is_refused_when_rendering(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = catalog.Entry("x", "not-hex", "s", "t" * 50)
    monkeypatch.setattr(catalog, "ENTRIES", (*catalog.ENTRIES, bad))
    with pytest.raises(ValueError, match="MESSAGE_ID 'not-hex'"):
        catalog.render()
