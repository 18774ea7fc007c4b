"""Fleet records (pure): what each member publishes, parsed as untrusted input.

Any client of the Redis the hosts share can write a record. `read_records` takes at most `MAX_MEMBERS`
of them, refuses a record over `MAX_RECORD_BYTES` before parsing it, and a field out of its bound
(`parse_member`); a refused record is left out of the split and reported (`dqagent.core.untrusted`).
The split itself is `dqagent.core.fleet`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dqagent.core.untrusted import RecordKind, Rejection, ascii_int, shown, text
from dqagent.settings.config import MAX_PROCESSES_LIMIT
from dqagent.settings.parsers import HOST_ID_PATTERN

#: Longest `decision` text kept in a record (it is only shown by `dqagent status --fleet`).
DECISION_CHARS = 160
#: Most members a fleet read considers (the fleet store reads no more; docs/fleet.md).
MAX_MEMBERS = 256
#: Largest record taken, in bytes (stamp and JSON): a record this host writes is under 1,500 bytes.
MAX_RECORD_BYTES = 4096
#: Longest `version` text kept in a record.
VERSION_CHARS = 64
#: A host id: what FLEET_HOST_ID accepts.
HOST_ID_RE = re.compile(HOST_ID_PATTERN)
#: Largest Redis time (ms) a record may carry: 15 digits, the year 33658.
MAX_MS = 10**15 - 1


@dataclass(frozen=True, slots=True)
class Member:
    """One host's published state, as every member reads it.

    `workers` is the host's pool as its own reconciler counts it (running + starting, not stopping);
    `target` is the share it last decided. `at_ms` and `ttl_ms` are Redis server time, so ages compare
    on one clock whatever the hosts' clocks say.
    """

    host: str
    weight: int
    min_processes: int
    max_processes: int
    workers: int
    running: int = 0
    starting: int = 0
    target: int = 0
    #: The global target G this host last computed, and when (Redis time of the read it was computed from).
    global_target: int = 0
    decided_ms: int = 0
    version: str = ""
    decision: str = ""
    at_ms: int = 0
    ttl_ms: int = 0

    def to_json(self) -> str:
        """The record body (without `at_ms`, which Redis stamps)."""
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "at_ms"}
        body["decision"] = self.decision[:DECISION_CHARS]
        return json.dumps(body, separators=(",", ":"), sort_keys=True)


#: Each integer field's bounds: counts as MAX_PROCESSES (0..1000), the weight as FLEET_WEIGHT (1..1000), G up
#: to every member's MAX, times in Redis ms (a time in the future is refused by `parse_member`).
_INT_FIELDS: dict[str, tuple[int, int]] = {
    "weight": (1, MAX_PROCESSES_LIMIT),
    **dict.fromkeys(("min_processes", "max_processes", "workers", "running", "starting", "target"),
                    (0, MAX_PROCESSES_LIMIT)),
    "global_target": (0, MAX_MEMBERS * MAX_PROCESSES_LIMIT),
    "decided_ms": (0, MAX_MS),
    "ttl_ms": (0, MAX_MS),
}


class BadRecord(ValueError):
    """A fleet record that is not one: another version's, damaged, or written by a stranger; says why."""


def parse_member(body: str, at_ms: int, latest_ms: int = MAX_MS) -> Member:
    """The record `body` stamped `at_ms`; raises BadRecord (with the reason) when it is not one.

    Every field is checked against its bound (`_INT_FIELDS`, `HOST_ID_RE`), and `at_ms` and `decided_ms`
    must not be after `latest_ms` (Redis time now plus the record TTL: a record is stamped with Redis's time
    when written). A record that cannot be read is left out of the split by every member alike, so they
    still agree. Call with a body already bounded in size (`read_records`): json.loads recurses.
    """
    try:
        raw: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRecord("not JSON") from None
    if not isinstance(raw, dict):
        raise BadRecord("not a JSON object")
    host = raw.get("host")
    if not isinstance(host, str) or not HOST_ID_RE.fullmatch(host):
        raise BadRecord("host: expected 1..64 letters, digits, . _ : -")
    values: dict[str, Any] = {"host": host, "at_ms": at_ms, "version": str(raw.get("version", ""))[:VERSION_CHARS],
                              "decision": str(raw.get("decision", ""))[:DECISION_CHARS]}
    for name, (lo, hi) in _INT_FIELDS.items():
        v = raw.get(name, lo)
        if not isinstance(v, int) or ascii_int(v, lo, hi) is None:
            raise BadRecord(f"{name}: expected an integer in {lo}..{hi}")
        values[name] = v
    if values["max_processes"] < values["min_processes"]:
        raise BadRecord("max_processes below min_processes")
    for name, v in (("stamp", at_ms), ("decided_ms", values["decided_ms"])):
        if v > latest_ms:
            raise BadRecord(f"{name}: {v} is in the future, after {latest_ms} (Redis time now + the record TTL)")
    return Member(**values)


def read_records(pairs: Sequence[tuple[bytes | str, bytes | str]], now_ms: int, ttl_ms: int,
                 total: int, members_key: str) -> tuple[tuple[Member, ...], tuple[Rejection, ...]]:
    """The members in the fleet store's reply, and the records refused.

    `pairs` are (member id, stored value): `<Redis time ms> <record JSON>`, or `!<reason>` for a record the
    store did not fetch (too large, not a string). `total` is the size of the member set: over
    `MAX_MEMBERS` is reported once more; only `MAX_MEMBERS` records are read. Never raises.
    """
    members: dict[str, Member] = {}
    rejected: list[Rejection] = []
    for member_id, raw in pairs[:MAX_MEMBERS]:
        try:
            member = _read_record(raw, now_ms + ttl_ms)
        except BadRecord as exc:
            rejected.append(Rejection(RecordKind.FLEET_RECORD, f"{members_key}:host:{shown(member_id)}", str(exc)))
        else:
            members[member.host] = member
    if total > MAX_MEMBERS:
        rejected.append(Rejection(RecordKind.FLEET_RECORD, members_key,
                                  f"{total} members, more than {MAX_MEMBERS}: only {MAX_MEMBERS} considered"))
    return tuple(sorted(members.values(), key=lambda m: m.host)), tuple(rejected)


def _read_record(raw: bytes | str, latest_ms: int) -> Member:
    if len(raw) > MAX_RECORD_BYTES:
        raise BadRecord(f"{len(raw)} bytes, more than {MAX_RECORD_BYTES}")
    value = text(raw)
    if value.startswith("!"):  # the store's note on a record it did not fetch
        raise BadRecord(value[1:])
    stamp, _, body = value.partition(" ")
    at_ms = ascii_int(stamp, 0, MAX_MS)
    if at_ms is None:
        raise BadRecord(f"stamp: expected 1..15 ASCII digits, got {shown(stamp, 20)!r}")
    return parse_member(body, at_ms, latest_ms)
