"""Data read from the broker's Redis is untrusted input (pure): lenient decoding, strict numbers, and
what a skipped record is reported as.

Any client of the broker's Redis can write any bytes under the keys dqagent reads (heartbeats, fleet
records, message bodies). So nothing read there may raise out of a read: text is decoded with
replacement characters, numbers are parsed from ASCII digits only and within stated bounds, and a value
that fails is skipped and described by a `Rejection` (the agent logs each distinct one once, as
`broker_data_rejected`, and counts every skip in `dqagent_broker_records_rejected_total{kind}`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: The longest form of a rejected key shown in a log line (the rest is cut, marked with "...").
SHOWN_CHARS = 80
#: Longest heartbeat member taken for a broker id (Dramatiq's are 36 characters).
MAX_BROKER_ID_BYTES = 128


class RecordKind(StrEnum):
    """What kind of broker data a rejection is about: the `kind` label of the counter."""

    #: A member of `ns:__heartbeats__` that is not a Dramatiq broker id, or one past the cap.
    HEARTBEAT = "heartbeat"
    #: A fleet member's record (`ns:__dqagent_fleet__:FLEET:host:ID`), or a member past the cap.
    FLEET_RECORD = "fleet_record"


@dataclass(frozen=True, slots=True)
class Rejection:
    """One value read from Redis and skipped: which key (shown escaped and cut), and why."""

    kind: RecordKind
    key: str
    reason: str


def text(value: bytes | str) -> str:
    """`value` as text, never raising: bytes that are not UTF-8 become U+FFFD."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def shown(value: bytes | str, limit: int = SHOWN_CHARS) -> str:
    """A form of `value` safe for one log line and a terminal: printable ASCII only (other bytes and
    characters as backslash escapes), at most `limit` characters plus "..." when cut."""
    raw = value.encode("utf-8", errors="surrogateescape") if isinstance(value, str) else value
    out = raw[:limit].decode("ascii", errors="backslashreplace")
    out = "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in out)
    return out + ("..." if len(raw) > limit else "")


def ascii_int(value: object, lo: int, hi: int) -> int | None:
    """`value` as an int in [lo, hi], or None: an int (not a bool) or a string of 1..19 ASCII digits.

    `str.isdigit()` is not enough: it accepts "²" and other Unicode digits that `int()` refuses (or reads
    as another number), and `int()` alone accepts "+1", " 1", "1_0".
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not (0 < len(value) <= 19 and value.isascii() and value.isdigit()):
            return None
        value = int(value)
    if not isinstance(value, int) or not lo <= value <= hi:
        return None
    return value


def broker_id_problem(member: bytes) -> str:
    """Why a heartbeat member cannot be a Dramatiq broker id ("" when it can).

    Dramatiq's ids are `str(uuid4())`; anything of printable ASCII up to `MAX_BROKER_ID_BYTES` is accepted
    (a subclass may name its brokers), so the ack-set key built from it is exactly the broker's.
    """
    if not 0 < len(member) <= MAX_BROKER_ID_BYTES:
        return f"not a Dramatiq broker id: {len(member)} bytes (accepted: 1..{MAX_BROKER_ID_BYTES})"
    if not all(0x21 <= b <= 0x7E for b in member):
        return "not a Dramatiq broker id: bytes other than printable ASCII"
    return ""

