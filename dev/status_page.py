"""The status page in the bench (not a test): `screenshot` regenerates docs/status-page.png; `cost` measures
the agent's CPU and RSS with the page open in a browser against the page closed (one run, one table).

Both boot the bench's throwaway systemd 252 (testbed/nspawn.py) and a private Redis, and install dqagent as
on a host (`dqagent install --now`) with METRICS_ADDRESS on loopback, which serves the page:

- `screenshot`: the sample Dramatiq app (testbed/app) on two pools, a burst of real messages; once the burst is
  absorbed (the chart shows the way up and down), headless chromium (testbed/browser.py) saves the page;
- `cost`: `/bin/sleep infinity` workers, the step policy every second and a steady backlog (the agent decides
  every second); the agent's CPU seconds (utime + stime of its main process) and VmRSS over `--seconds` with no
  browser, then over as long with chromium showing the page (which fetches it every 3 s).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.agent import APP_DIR, DQAGENT, PYTHON, QUEUE, install, running_workers, set_backlog
from testbed.browser import browser
from testbed.nspawn import Container, require_bench
from testbed.redis import RedisServer, free_port
from testbed.wait import wait_until

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "status-page.png"
IO_QUEUE = f"{QUEUE}_io"


def agent_figures(c: Container) -> tuple[float, int]:
    """The agent's CPU seconds so far and its VmRSS in bytes (its main process, read in the container)."""
    pid = c.unit_property("dqagent.service", "MainPID")
    stat = c.run(["cat", f"/proc/{pid}/stat"]).stdout
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(c.run(["getconf", "CLK_TCK"]).stdout)
    rss = next(int(ln.split()[1]) * 1024 for ln in c.run(["cat", f"/proc/{pid}/status"]).stdout.splitlines()
               if ln.startswith("VmRSS:"))
    return (int(fields[11]) + int(fields[12])) / ticks, rss


def measure(c: Container, seconds: float) -> tuple[float, int]:
    """CPU percent of one core over `seconds`, and the largest VmRSS sampled every second meanwhile."""
    cpu0, rss = agent_figures(c)
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        time.sleep(1)
        rss = max(rss, agent_figures(c)[1])
    cpu1, _ = agent_figures(c)
    return 100 * (cpu1 - cpu0) / (time.monotonic() - began), rss


def cost(c: Container, redis: RedisServer, url: str, seconds: float) -> None:
    install(c, redis, METRICS_ADDRESS=url.removeprefix("http://").rstrip("/"), MIN_PROCESSES=1, MAX_PROCESSES=4,
            LOG_LEVEL="INFO")
    set_backlog(redis, 12)  # 3 workers at the step rule's 5 per worker: a steady pool, a decision every second
    wait_until("a steady pool", lambda: len(running_workers(c)) == 3, timeout=60)
    time.sleep(5)
    closed = measure(c, seconds)
    with browser() as page:
        page.get(url)
        opened = measure(c, seconds)
        loads = page.execute_script("return document.documentElement.dataset.live")
    print(f"\nagent with the status page closed vs open in chromium ({seconds:.0f} s each, decisions every 1 s, "
          f"page.js {'running' if loads == 'on' else 'NOT running'})")
    print(f"{'':24}{'closed':>12}{'open':>12}{'ratio':>8}")
    print(f"{'CPU (% of one core)':24}{closed[0]:>12.2f}{opened[0]:>12.2f}{opened[0] / max(closed[0], 1e-9):>8.2f}")
    print(f"{'VmRSS (MiB, max)':24}{closed[1] / 2**20:>12.1f}{opened[1] / 2**20:>12.1f}{opened[1] / closed[1]:>8.2f}")


def screenshot(c: Container, redis: RedisServer, url: str) -> None:
    command = f"{PYTHON} -m dramatiq --processes 1 --threads 4 dqtestapp --queues {QUEUE}"
    install(c, redis, METRICS_ADDRESS=url.removeprefix("http://").rstrip("/"), MIN_PROCESSES=1, MAX_PROCESSES=5,
            CHECK_INTERVAL=2, PROCESS_STARTUP_DELAY=1, LOG_LEVEL="INFO", WORKER_DIRECTORY=str(APP_DIR),
            HOST_MAX_PROCESSES=7, DRAMATIQ_COMMAND=command, now=False)
    c.write("/etc/dqagent/worker.env", f"DQTEST_REDIS_URL={redis.url}\nDQTEST_QUEUE={QUEUE}\n")
    c.write("/etc/dqagent/pools.d/io.env", "".join(f"{k}={v}\n" for k, v in {
        "DRAMATIQ_QUEUE_NAME": IO_QUEUE, "MIN_PROCESSES": 1, "MAX_PROCESSES": 3, "POOL_PRIORITY": 10,
        "CHECK_INTERVAL": 2, "PROCESS_STARTUP_DELAY": 1, "WORKER_DIRECTORY": str(APP_DIR),
        "DRAMATIQ_COMMAND": f'"{PYTHON} -m dramatiq --processes 1 --threads 8 dqtestapp --queues {IO_QUEUE}"'}.items()))
    c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "install", "--now"], timeout=240)
    time.sleep(20)  # a flat start on the chart
    code = (f"import sys; sys.path.insert(0, {str(APP_DIR)!r}); import dqtestapp; "
            "dqtestapp.enqueue_burst(1500, 200); dqtestapp.enqueue_burst(400, 200, io=True)")
    c.run([PYTHON, "-c", code], env={"DQTEST_REDIS_URL": redis.url, "DQTEST_QUEUE": QUEUE})
    wait_until("the burst absorbed", lambda: int(redis.cli("SCARD", "dqtest:done")) >= 1900, timeout=300, interval=2)
    wait_until("back to one worker a pool", lambda: len(running_workers(c)) == 2, timeout=120, interval=2)
    time.sleep(10)
    with browser(width=1000, height=1600) as page:
        page.get(url)
        time.sleep(1)
        height = page.execute_script("return document.documentElement.scrollHeight")
        page.set_window_size(1000, int(height) + 40)
        time.sleep(0.5)
        page.save_screenshot(str(SCREENSHOT))
    print(f"wrote {SCREENSHOT.relative_to(ROOT)} ({SCREENSHOT.stat().st_size} bytes)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("screenshot", "cost"))
    parser.add_argument("--seconds", type=float, default=60.0, help="cost: seconds measured each way (default 60)")
    args = parser.parse_args()
    require_bench()
    redis = RedisServer()
    try:
        c = Container()
        try:
            url = f"http://127.0.0.1:{free_port()}/"
            if args.what == "cost":
                cost(c, redis, url, args.seconds)
            else:
                screenshot(c, redis, url)
        finally:
            c.stop()
    finally:
        redis.stop()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"status_page: {exc}") from None
