"""The status page of the installed, hardened agent, read by a real headless browser (Debian's chromium).

One container and one agent for the module (`/bin/sleep infinity` workers, the step policy every second,
METRICS_ADDRESS on loopback: the bench shares the host's network namespace). The browser loads the page
while the agent scales 1 -> 4 on a real Redis backlog and the figures in its DOM are compared with
`dqagent status --json` taken in the container; the hostile strings come from outside the settings (a
pause's reason, a heartbeat member in Redis), since queue names that are not Dramatiq's are refused.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from testbed.agent import DQAGENT, dqagent, install, running_workers, set_backlog, settings_text, worker_names
from testbed.browser import browser
from testbed.nspawn import Container
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until

MAX = 4
HOSTILE = "<script>alert(1)</script>"
HEARTBEATS = "dramatiq:__heartbeats__"
#: Figures of the default pool that the page shows and `dqagent status --json` has.
FIELDS = ("current_processes", "queue_length", "min_processes", "max_processes", "scale_up_threshold",
          "scale_down_threshold", "scaling_policy")


@dataclass
class Paged:
    c: Container
    redis: RedisServer
    url: str

    def status(self) -> dict[str, Any]:
        return dict(json.loads(dqagent(self.c, "status", "--json").stdout))

    def served(self) -> Any:
        with urllib.request.urlopen(self.url + "status.json", timeout=5) as r:
            return json.loads(r.read())

    def at_min(self) -> None:
        set_backlog(self.redis, 0)
        wait_until("the pool back at MIN_PROCESSES", lambda: running_workers(self.c) == worker_names(1), timeout=30)
        wait_until("the agent's snapshot at MIN", lambda: (self.served() or {}).get("current_processes") == 1)


@pytest.fixture(scope="module")
def paged(module_container: Container, redis: RedisServer) -> Paged:
    c, port = module_container, free_port()
    install(c, redis, now=False, MIN_PROCESSES=1, MAX_PROCESSES=MAX, METRICS_ADDRESS=f"127.0.0.1:{port}")
    c.systemctl("start", "dqagent")
    p = Paged(c, redis, f"http://127.0.0.1:{port}/")
    wait_until("the first snapshot", lambda: p.served() is not None, timeout=30)
    return p


@pytest.fixture(scope="module")
def page(paged: Paged) -> Iterator[WebDriver]:
    with browser() as driver:
        yield driver


def fresh(read: Callable[..., Any]) -> Callable[..., Any]:
    """`read` again when the page swapped its live fragment (every 3 s, /page.js) between finding an element
    and reading it (selenium's StaleElementReferenceException): a read sees one fragment, never a stale one."""
    @functools.wraps(read)
    def again(*args: Any, **kwargs: Any) -> Any:
        for _ in range(5):
            with contextlib.suppress(StaleElementReferenceException):
                return read(*args, **kwargs)
            time.sleep(0.05)
        return read(*args, **kwargs)
    return again


@fresh
def shown(driver: WebDriver, field: str, root: str = 'section[data-pool="default"]') -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f'{root} [data-field="{field}"]').text)


def text_of(value: Any) -> str:
    """A figure as the page writes it (`dqagent.report.page.e`)."""
    return "—" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


@fresh
def dom_figures(driver: WebDriver) -> dict[str, Any]:
    """The default pool's figures, queues and workers as the DOM shows them now."""
    pool = driver.find_element(By.CSS_SELECTOR, 'section[data-pool="default"]')
    queues = {row.get_attribute("data-queue"): {f: row.find_element(By.CSS_SELECTOR, f'[data-field="{f}"]').text
                                                for f in ("ready", "in_flight", "delayed", "dead_lettered", "orphaned")}
              for row in pool.find_elements(By.CSS_SELECTOR, "tr[data-queue]")}
    workers = [(row.get_attribute("data-unit"), row.find_element(By.CSS_SELECTOR, '[data-field="pid"]').text,
                row.find_element(By.CSS_SELECTOR, '[data-field="start_time"]').text,
                row.find_element(By.CSS_SELECTOR, '[data-field="status"]').text)
               for row in pool.find_elements(By.CSS_SELECTOR, "tr[data-unit]")]
    return {"fields": {f: shown(driver, f) for f in FIELDS}, "queues": queues, "workers": workers}


def json_figures(doc: dict[str, Any]) -> dict[str, Any]:
    """The same figures from `dqagent status --json`."""
    queues = {name: {f: text_of(q[f]) for f in ("ready", "in_flight", "delayed", "dead_lettered", "orphaned")}
              for name, q in doc["queues"].items()}
    workers = [(w["unit"], text_of(w["pid"]), text_of(w["start_time"]), w["status"]) for w in doc["process_list"]]
    return {"fields": {f: text_of(doc[f]) for f in FIELDS}, "queues": queues, "workers": workers}


@fresh
def points(driver: WebDriver) -> int:
    return int(driver.find_element(By.CSS_SELECTOR, 'section[data-pool="default"] svg.chart')
               .get_attribute("data-points") or 0)


def test_the_page_shows_status_json_while_scaling_and_its_chart_grows(paged: Paged, page: WebDriver,
                                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    paged.at_min()
    page.get(paged.url)
    # the script runs (it marks the page live) and the page is not reloaded meanwhile: a value set now stays
    wait_until("page.js running", lambda: page.execute_script("return document.documentElement.dataset.live") == "on")
    page.execute_script("window.loadedOnce = 'yes'")
    first = points(page)
    # When: a real backlog in Redis makes the agent scale 1 -> 4
    set_backlog(paged.redis, 100)
    seen: set[str] = set()

    def scaled() -> bool:
        seen.add(shown(page, "current_processes"))
        # counted, not named @1..@4: a number started 3 times in 60 s is skipped for a fresh one (start limit)
        return len(running_workers(paged.c)) == MAX and shown(page, "current_processes") == str(MAX)

    wait_until("the page shows 4 workers", scaled, timeout=60, interval=0.2)
    # Then: the page followed without a reload, through the way up, and the chart gained points
    assert page.execute_script("return window.loadedOnce") == "yes"
    assert {"1", str(MAX)} <= seen, seen
    wait_until("the chart grows", lambda: points(page) > first, timeout=30)
    # and the DOM's figures are `dqagent status --json`'s at the same moment (a check may land between the two
    # reads: compare again until a pair agrees, with the page refreshed at most 3 s after each check)
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def agree() -> bool:
        pairs.append((dom_figures(page), json_figures(paged.status())))
        return pairs[-1][0] == pairs[-1][1]

    wait_until("the DOM's figures equal status --json", agree, timeout=30, interval=1)
    dom = pairs[-1][0]
    assert len(dom["workers"]) == MAX and all(w[1].isdigit() for w in dom["workers"]), dom
    assert dom["fields"]["queue_length"] == "100"
    # /status.json is the same document as status --json (less the withheld keys, the agent's own text)
    served, cli = paged.served(), paged.status()
    assert set(served) == set(cli) and set(served["pools"]["default"]) == set(cli["pools"]["default"])
    assert served["redis"] is None and served["settings_file"] is None and cli["redis"]
    shot = tmp_path_factory.mktemp("status-page") / "status-page.png"
    page.save_screenshot(str(shot))
    print(f"\nscreenshot: {shot} ({shot.stat().st_size} bytes); chart points {first} -> {points(page)}; "
          f"current_processes seen: {sorted(seen)}")
    assert shot.stat().st_size > 10_000
    paged.at_min()


def test_hostile_text_from_outside_is_shown_as_text_and_runs_nothing(paged: Paged, page: WebDriver) -> None:
    # Given: a pause whose reason, and a heartbeat member in Redis, are markup (queue names cannot be)
    paged.redis.cli("ZADD", HEARTBEATS, "0", f"{HOSTILE} x")
    dqagent(paged.c, "pause", "--for", "10m", "--reason", HOSTILE)
    try:
        page.get(paged.url)
        page.execute_script("window.alerts = []; window.alert = (m) => window.alerts.push(m);")

        @fresh
        def both_shown() -> bool:
            texts = [e.text for e in page.find_elements(By.CSS_SELECTOR, '[data-field="pause"], '
                                                                         '[data-field="broker_data_rejected"]')]
            return len(texts) >= 2 and all(HOSTILE in t for t in texts)

        wait_until("the pause and the skipped heartbeat on the page", both_shown, timeout=30, interval=0.5)
        time.sleep(3.5)  # one more refresh by page.js: swapped-in markup runs nothing either
        # Then: shown as text, no element made of it, no alert (neither at load nor after a refresh)
        assert len(page.find_elements(By.TAG_NAME, "script")) == 1  # /page.js
        assert page.execute_script("return window.alerts") == []
        with pytest.raises(NoAlertPresentException):
            page.switch_to.alert.text  # noqa: B018
        assert HOSTILE in page.find_element(By.TAG_NAME, "body").text
    finally:
        dqagent(paged.c, "resume")
        paged.redis.cli("ZREM", HEARTBEATS, f"{HOSTILE} x")


def test_with_javascript_off_the_page_shows_the_figures(paged: Paged) -> None:
    paged.at_min()
    with browser(javascript=False, width=390, height=844, phone=True) as driver:  # and at a phone's width
        driver.get(paged.url)
        assert driver.find_element(By.TAG_NAME, "html").get_attribute("data-live") is None  # page.js did not run
        doc = paged.status()
        assert shown(driver, "current_processes") == text_of(doc["current_processes"]) == "1"
        assert shown(driver, "queue_length") == "0"
        assert points(driver) > 0
        assert driver.find_element(By.TAG_NAME, "main").size["width"] <= 390  # one column fits a phone


class Tmux:
    """A private tmux server (its own socket) with one 100x40 window running `command`; killed by PID at exit."""

    def __init__(self, tmp: Path, command: str) -> None:
        self.base = ["tmux", "-S", str(tmp / "tmux.sock"), "-f", "/dev/null"]
        subprocess.run([*self.base, "new-session", "-d", "-s", "w", "-x", "100", "-y", "40", command], check=True)
        self.raw = tmp / "pane.raw"  # every byte the command writes to its terminal from now on
        subprocess.run([*self.base, "pipe-pane", "-t", "w", "-o", f"cat >> {self.raw}"], check=True)
        self.pid = int(self.show("#{pid}"))

    def show(self, fmt: str) -> str:
        return subprocess.run([*self.base, "display-message", "-p", "-t", "w", fmt], check=True,
                              capture_output=True, text=True).stdout.strip()

    def screen(self, escapes: bool = False) -> str:
        return subprocess.run([*self.base, "capture-pane", "-p", "-t", "w", *(["-e"] if escapes else [])],
                              check=True, capture_output=True, text=True).stdout

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def test_status_watch_redraws_in_place_and_ctrl_c_leaves_a_clean_terminal(paged: Paged, tmp_path: Path) -> None:
    paged.at_min()
    env_file = tmp_path / "dqagent.env"  # the same settings, read from this host: Redis and the bus on loopback
    env_file.write_text(settings_text(paged.redis, MIN_PROCESSES=1, MAX_PROCESSES=MAX))
    # bash reports the exit status, and would itself die, printing nothing, if dqagent died of the SIGINT
    command = (f"bash -c 'env TERM=screen DQAGENT_BUS_ADDRESS={paged.c.bus_address} {DQAGENT} --env-file {env_file} "
               "status --watch 1; echo EXIT=$?; sleep 60'")
    tmux = Tmux(tmp_path, command)
    try:
        wait_until("the first report", lambda: "current workers: 1" in tmux.screen(), timeout=30)
        first = tmux.show("#{alternate_on} #{cursor_flag}")
        stamps = {tmux.screen().splitlines()[0]}
        set_backlog(paged.redis, 100)  # When: the figures change
        wait_until("redrawn with 4 workers", lambda: "current workers: 4" in tmux.screen(), timeout=60)
        wait_until("the change in reverse video", lambda: "\x1b[7m4" in tmux.screen(escapes=True), timeout=10)
        stamps.add(tmux.screen().splitlines()[0])
        screen = tmux.screen()
        # Then: redrawn in place (the header at the top, one report on the screen), on the alternate screen
        assert first == "1 0", first  # alternate screen on, cursor hidden
        assert len(stamps) == 2 and all(s.startswith("every 1s, ") for s in stamps), stamps
        assert screen.count("=== dqagent status ===") == 1
        # When: Ctrl+C
        subprocess.run([*tmux.base, "send-keys", "-t", "w", "C-c"], check=True)
        wait_until("the command ended", lambda: "EXIT=" in tmux.screen(), timeout=15)
        # Then: exit status 0, the shell's screen back (no report left on it), the cursor shown, and the last
        # bytes dqagent wrote leave the alternate screen and show the cursor
        assert tmux.screen().strip() == "EXIT=0"
        assert tmux.show("#{alternate_on} #{cursor_flag}") == "0 1"
        assert b"\x1b[?1049l\x1b[?25h" + b"EXIT=0" in tmux.raw.read_bytes()
    finally:
        tmux.close()
        paged.at_min()
