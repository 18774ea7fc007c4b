"""A real headless browser for the bench: Debian's chromium driven by selenium through Debian's chromedriver.

Nothing is downloaded (the driver's path is given, so selenium's own driver manager never runs), and chromium
gets the flags this closed network needs (no background networking, no component updates, no sync, a fresh
profile directory). Every process it started (chromedriver, chromium and chromium's helpers) is ended by PID
when the `browser()` context ends, and the profile directory removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")


def descendants(pid: int) -> list[int]:
    """Every process under `pid` (children first found, then theirs), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2:].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@contextlib.contextmanager
def browser(javascript: bool = True, width: int = 1100, height: int = 1400,
            phone: bool = False) -> Iterator[webdriver.Chrome]:
    """A headless chromium (JavaScript on or off) at `width` x `height` (`phone`: a phone's viewport of that
    size, emulated: a desktop window is never narrower than about 500 px); its processes ended afterwards."""
    profile = tempfile.mkdtemp(prefix="dqagent-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    if phone:
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": width, "height": height,
                                                                              "pixelRatio": 2.0}})
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver_pid = driver.service.process.pid
    try:
        yield driver
    finally:
        started = descendants(driver_pid)
        with contextlib.suppress(Exception):
            driver.quit()
        for pid in [*started, driver_pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in started):
            time.sleep(0.05)
        shutil.rmtree(profile, ignore_errors=True)
