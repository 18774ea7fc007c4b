"""The demo: dqagent scaling real Dramatiq workers end to end, on any Debian 12 machine (root).

A throwaway systemd (the test bench's nspawn container over a tmpfs overlay), a private Redis, the
small sample Dramatiq app in testbed/app run as two pools (the default pool on one queue, pool `io` with
more threads on another, each with Dramatiq's `--queues`), `dqagent install --now` exactly as on a real host,
a burst of messages on each queue, and the live view an operator would use. Everything it starts is
stopped by PID at the end, also on Ctrl+C.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testbed.agent import APP_DIR, DQAGENT, PYTHON, QUEUE, make_reachable, settings_text
from testbed.nspawn import Container, require_bench
from testbed.redis import RedisServer, free_port

BURST, TASK_MS = 1500, 200
IO_BURST = 400
IO_QUEUE = f"{QUEUE}_io"
DEADLINE_S = 240


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def sh(c: Container, *cmd: str) -> str:
    return c.run(list(cmd), check=False).stdout.rstrip()


def main() -> int:
    require_bench()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Ctrl+C, kill and a closed terminal all clean up; SIGINT is reset because a shell starting the
    # demo in the background hands it over ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupted)
    redis = container = None
    try:
        banner("booting a throwaway systemd 252 (systemd-nspawn over a tmpfs overlay) and a private Redis")
        redis = RedisServer()
        container = c = Container(name=f"dqagent-demo-{uuid.uuid4().hex[:6]}")
        print(sh(c, "systemctl", "--version").splitlines()[0], "| redis on 127.0.0.1:", redis.port)

        page = f"127.0.0.1:{free_port()}"  # the status page and /metrics (the bench shares this host's network)
        banner("settings: /etc/dqagent/dqagent.env (the default pool: step rule, check every 2 s, 1..5 workers)")
        make_reachable(c)
        c.write("/etc/dqagent/dqagent.env", settings_text(
            redis, MIN_PROCESSES=1, MAX_PROCESSES=5, CHECK_INTERVAL=2, PROCESS_STARTUP_DELAY=1,
            GRACEFUL_SHUTDOWN_TIMEOUT=20, LOG_LEVEL="INFO", WORKER_DIRECTORY=str(APP_DIR), HOST_MAX_PROCESSES=7,
            METRICS_ADDRESS=page,
            DRAMATIQ_COMMAND=f"{PYTHON} -m dramatiq --processes 1 --threads 4 --worker-shutdown-timeout 15000 "
                             f"dqtestapp --queues {QUEUE}"))
        c.write("/etc/dqagent/worker.env", f"DQTEST_REDIS_URL={redis.url}\nDQTEST_QUEUE={QUEUE}\n")
        print((c.root / "etc/dqagent/dqagent.env").read_text().rstrip())
        banner("a second pool: /etc/dqagent/pools.d/io.env (8 threads on its own queue, 1..3 workers, priority 10)")
        c.write("/etc/dqagent/pools.d/io.env", "".join(f"{k}={v}\n" for k, v in {
            "DRAMATIQ_QUEUE_NAME": IO_QUEUE, "MIN_PROCESSES": 1, "MAX_PROCESSES": 3, "POOL_PRIORITY": 10,
            "CHECK_INTERVAL": 2, "PROCESS_STARTUP_DELAY": 1, "WORKER_DIRECTORY": str(APP_DIR),
            "DRAMATIQ_COMMAND": f'"{PYTHON} -m dramatiq --processes 1 --threads 8 dqtestapp --queues {IO_QUEUE}"',
        }.items()))
        print((c.root / "etc/dqagent/pools.d/io.env").read_text().rstrip())

        banner("dqagent install --now")
        print(c.run([DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "install", "--now"]).stdout.rstrip())
        print(sh(c, "systemctl", "status", "dqagent", "--no-pager", "--lines=0"))
        banner(f"status page: http://{page}/ (open it in a browser while the demo runs; also /status.json, /metrics)")

        banner(f"enqueueing a burst of {BURST} messages of {TASK_MS} ms on {QUEUE}, {IO_BURST} on {IO_QUEUE}")
        time.sleep(2)
        code = (f"import sys; sys.path.insert(0, {str(APP_DIR)!r}); import dqtestapp; "
                f"dqtestapp.enqueue_burst({BURST}, {TASK_MS}); dqtestapp.enqueue_burst({IO_BURST}, {TASK_MS}, io=True)")
        c.run([PYTHON, "-c", code], env={"DQTEST_REDIS_URL": redis.url, "DQTEST_QUEUE": QUEUE})

        started = time.monotonic()
        peak = 0
        while time.monotonic() - started < DEADLINE_S:
            banner(f"t+{time.monotonic() - started:.0f}s: dqagent status; systemctl list-units 'dramatiq-worker@*'"
                   f"  (page: http://{page}/)")
            print(sh(c, DQAGENT, "--env-file", "/etc/dqagent/dqagent.env", "status"))
            print(sh(c, "systemctl", "list-units", "dramatiq-worker@*", "--no-pager"))
            running = len([ln for ln in sh(c, "systemctl", "list-units", "dramatiq-worker@*", "--plain",
                                            "--no-legend", "--state=running").splitlines() if ln.strip()])
            peak = max(peak, running)
            done = int(redis.cli("SCARD", "dqtest:done"))
            if done >= BURST + IO_BURST and running == 2 and peak > 2:
                break
            time.sleep(2)

        banner("journalctl -u dqagent (scale events)")
        print(sh(c, "journalctl", "-u", "dqagent", "--no-pager", "-o", "short-monotonic",
                 "DQAGENT_EVENT=scale_up", "+", "_SYSTEMD_UNIT=dqagent.service", "DQAGENT_EVENT=scale_down"))
        done = int(redis.cli("SCARD", "dqtest:done"))
        left = sh(c, "systemctl", "list-units", "dramatiq-worker@*", "--plain", "--no-legend", "--state=running")
        banner(f"result: {done}/{BURST + IO_BURST} messages done over two pools, workers peaked at {peak} "
               f"(HOST_MAX_PROCESSES=7), back to {left.count('running')}")
        return 0 if done >= BURST + IO_BURST and peak > 2 else 1
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    except (subprocess.SubprocessError, AssertionError, RuntimeError, OSError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if container is not None:
            container.stop()
        if redis is not None:
            redis.stop()
        print("cleaned up: container and redis-server stopped", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
