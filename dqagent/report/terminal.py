"""Outside text made safe for a terminal (pure).

Text that dqagent did not write itself (a worker's last journal line, queue and fleet host names and
error replies from Redis, systemd's answers) may hold control characters: ESC and the C1 introducers
(CSI 0x9b, OSC 0x9d) start sequences that retitle the operator's terminal, rewrite what it shows or set
its clipboard (OSC 52), BEL ends them, and a newline or carriage return forges a line. Every text report
printed to a terminal passes its outside text through `printable`; `--json` needs nothing (`json.dumps`
writes every control character and non-ASCII character as a `\\u` escape).
"""

from __future__ import annotations

import re
from typing import Any

#: C0 (incl. TAB, LF, CR, ESC, BEL), DEL, C1; the Unicode line and paragraph separators; the bidirectional
#: embedding, override and isolate controls (they reorder what a terminal shows, e.g. a unit's name).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\x1b`, `\\x0a`, `\\u202e`).

    The result holds no control character and no line break: one line stays one line. A backslash is
    kept as it is (the escapes are for the eye, not to be decoded).
    """
    return _UNSAFE.sub(_escape, text)


def printable_tree(value: Any) -> Any:
    """A copy of a JSON-like report with `printable` applied to every string in it, keys included."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable_tree(k): printable_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_tree(v) for v in value]
    return value
