"""The only reader of the systemd journal: the last line a unit's own processes logged.

`dqagent status` shows it for a failing worker, so Dramatiq's own error (a usage error, an import
error) is seen next to systemd's `Result`. The system journal is readable by root and by members of
`systemd-journal` or `adm`; for anyone else the reader simply finds nothing, which is reported as
None (the caller then says how to see more).
"""

from __future__ import annotations

#: Longest line returned; a traceback's last line or a usage error fits.
MAX_LINE_CHARS = 400


def last_line(unit: str) -> str | None:
    """The newest message logged by the processes of `unit` (`_SYSTEMD_UNIT=` match), or None.

    None when the unit logged nothing this user may read (no permission is the usual cause). The
    message is one line: whitespace runs collapse, long lines are cut at `MAX_LINE_CHARS`.
    """
    from systemd import journal

    try:
        reader = journal.Reader()
    except OSError:  # no journal directory at all: nothing to read
        return None
    try:
        reader.add_match(_SYSTEMD_UNIT=unit)
        reader.seek_tail()
        entry = reader.get_previous()
    finally:
        reader.close()
    message = entry.get("MESSAGE") if entry else None
    if isinstance(message, bytes):  # not UTF-8: the reader hands the raw bytes over
        message = message.decode("utf-8", errors="replace")
    if not message:
        return None
    text = " ".join(str(message).split())
    return text if len(text) <= MAX_LINE_CHARS else text[: MAX_LINE_CHARS - 3] + "..."
