"""Print the README's settings table from the declarations (dqagent/settings/declarations.py); `--write` puts it
in README.md in place of the current one. A unit test fails while the two differ."""

from __future__ import annotations

import sys
from pathlib import Path

from dqagent.settings.declarations import markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
HEADER = "| setting | default |"


def replace_table(text: str, table: str) -> str:
    """`text` with the table that starts with `HEADER` (up to the first line that is not a row) replaced."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "".join(lines[:start]) + table + "".join(lines[end:])


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        README.write_text(replace_table(README.read_text(), markdown_table()))
        return 0
    if argv:
        print("usage: dev/settings_table.py [--write]", file=sys.stderr)
        return 2
    print(markdown_table(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
