"""`dqagent status --watch`'s drawing without a terminal (tests/integration/test_status_page.py runs it under
a real pseudo-terminal, in tmux)."""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable
from datetime import datetime

import pytest

from dqagent.cli import watch
from dqagent.cli.main import main


class Screen(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def reports(*texts: str) -> Callable[[], str]:
    """`report()` giving `texts` in turn, then Ctrl+C."""
    it = iter(texts)

    def report() -> str:
        try:
            return next(it)
        except StopIteration:
            raise KeyboardInterrupt from None
    return report


@pytest.mark.parametrize("text", ["0.1", "0", "-1", "nan", "inf", "3601", "two"])
def test_seconds_out_of_range_are_refused_in_one_line(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"SECONDS must be a number from 0.5 to 3600"):
        watch.seconds(text)


def test_bad_seconds_exit_2_naming_the_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["status", "--watch", "0.1"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1 and "--watch" in err and "0.5 to 3600" in err


def test_only_changed_words_are_marked() -> None:
    assert watch.marked("current workers: 4", "current workers: 1") == f"current workers: {watch.REVERSE}4{watch.PLAIN}"
    assert watch.marked("range: 1 - 4", "range: 1 - 4") == "range: 1 - 4"
    assert watch.marked("new line", None) == f"{watch.REVERSE}new line{watch.PLAIN}"


def test_on_a_terminal_it_redraws_in_place_and_ctrl_c_restores_the_screen() -> None:
    out = Screen(tty=True)
    code = watch.watch(reports("workers: 1\nqueue: 0", "workers: 4\nqueue: 0"), 0.5, out)
    text = out.getvalue()
    assert code == 0
    assert text.startswith(watch.ENTER) and text.endswith(watch.LEAVE)  # alternate screen left, cursor shown
    assert text.count(watch.HOME) == 2  # drawn twice from the top, never scrolled
    second = text.split(watch.HOME)[2]
    assert f"workers: {watch.REVERSE}4{watch.PLAIN}" in second and f"queue: 0{watch.CLEAR_LINE}" in second


def test_not_a_terminal_it_prints_plain_reports_one_after_the_other() -> None:
    out = Screen(tty=False)
    assert watch.watch(reports("workers: 1", "workers: 4"), 0.5, out) == 0
    assert out.getvalue() == "workers: 1\n\nworkers: 4\n\n"


def test_a_frame_has_a_header_and_clears_what_the_last_one_left() -> None:
    f = watch.frame("a\nb", ["a", "c", "d"], 2.0, datetime(2026, 1, 1, 12, 0, 5))
    assert f.startswith(watch.HOME + "every 2s, 12:00:05") and f.endswith(watch.CLEAR_BELOW)
