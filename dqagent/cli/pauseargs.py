"""`dqagent pause` and `dqagent resume`'s arguments (the commands: `dqagent.cli.pausecmd`)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: Any) -> None:
    """The two subcommands, on `build_parser`'s subparsers."""
    pause: argparse.ArgumentParser = sub.add_parser(
        "pause", help="hold a pool's worker count (root or PAUSE_GROUP; docs/operations.md)")
    pause.add_argument("--for", dest="for_", default=None, metavar="DURATION",
                       help="how long: 90s, 25m, 4h, 1h30m (at most 30d), or 'forever' (default 4h)")
    pause.add_argument("--reason", default=None, metavar="TEXT", help="why (shown in STATUS=, status, the journal)")
    pause.add_argument("--at", type=int, default=None, metavar="N",
                       help="maintenance: scale to N workers (0 allowed, at most MAX_PROCESSES) and hold there")
    resume: argparse.ArgumentParser = sub.add_parser(
        "resume", help="end a pool's pause or maintenance: its policy decides again")
    for p in (pause, resume):
        p.add_argument("--pool", default=None, metavar="NAME", help="the pool (default: 'default')")
