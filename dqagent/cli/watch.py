"""`dqagent status --watch [SECONDS]`: the status report redrawn in place until Ctrl+C.

On a terminal: the alternate screen (the shell's screen comes back as it was), the cursor hidden, each
refresh drawn from the top left with every line cleared to its end, and the words that changed since the
last refresh in reverse video. Ctrl+C ends it with exit status 0, the cursor shown and the alternate screen
left, also when it arrives in the middle of a read. Not a terminal (a pipe, a file): each report printed
after the other, plain, so `dqagent status --watch 5 > log` keeps a record.

The report comes from the caller (`dqagent.cli.main`: the same read and text as `dqagent status`), whose
text has already passed `terminal.printable`; the only escape sequences are this module's own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import TextIO

#: Default seconds between two refreshes, and the accepted range.
DEFAULT_S = 2.0
MIN_S, MAX_S = 0.5, 3600.0

ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?1049l\x1b[?25h"  # alternate screen + hide cursor; the reverse
HOME, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
REVERSE, PLAIN = "\x1b[7m", "\x1b[0m"


def seconds(text: str) -> float:
    """`--watch`'s SECONDS: a number in [MIN_S, MAX_S]; argparse reports anything else in one line."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not MIN_S <= value <= MAX_S:  # (also NaN)
        raise argparse.ArgumentTypeError(f"SECONDS must be a number from {MIN_S:g} to {MAX_S:g}, got {text!r}")
    return value


def marked(line: str, before: str | None) -> str:
    """`line` with the words that differ from `before` (the same line of the last refresh) in reverse video;
    a line that is new (no line there before) entirely."""
    if before is None:
        return f"{REVERSE}{line}{PLAIN}" if line else line
    if line == before:
        return line
    old = before.split(" ")
    words = [w if (i < len(old) and old[i] == w) or not w else f"{REVERSE}{w}{PLAIN}"
             for i, w in enumerate(line.split(" "))]
    return " ".join(words)


def frame(text: str, previous: list[str] | None, interval_s: float, now: datetime) -> str:
    """One redraw for a terminal: a header, the report with its changes marked, the rest of the screen cleared."""
    lines = text.splitlines()
    shown = lines if previous is None else [marked(ln, previous[i] if i < len(previous) else None)
                                            for i, ln in enumerate(lines)]
    header = (f"every {interval_s:g}s, {now:%H:%M:%S}; changes since the last refresh in reverse video; "
              "Ctrl+C to stop")
    return HOME + "".join(f"{ln}{CLEAR_LINE}\n" for ln in [header, "", *shown]) + CLEAR_BELOW


def watch(report: Callable[[], str], interval_s: float, out: TextIO | None = None) -> int:
    """Show `report()` every `interval_s` seconds until Ctrl+C (see the module); returns 0."""
    out = out if out is not None else sys.stdout
    tty = out.isatty()
    previous: list[str] | None = None
    try:
        if tty:
            out.write(ENTER)
        while True:
            began = time.monotonic()
            text = report()
            if tty:
                out.write(frame(text, previous, interval_s, datetime.now()))
                previous = text.splitlines()
            else:
                out.write(f"{text}\n\n")
            out.flush()
            time.sleep(max(0.0, interval_s - (time.monotonic() - began)))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # the reader went away (`| head`): done, quietly; nothing more to flush there
        os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    finally:
        if tty:
            with contextlib.suppress(OSError):
                out.write(LEAVE)
                out.flush()
