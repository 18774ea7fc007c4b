"""A private redis-server on loopback for the bench, stopped by PID."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server on loopback, random port, no persistence, owned by this test run."""

    def __init__(self, password: str = "", port: int | None = None) -> None:
        self.password = password
        # A free port can be taken by a parallel test worker between `free_port()` and the bind: then
        # redis-server exits at once and another port is tried (never a stranger's server on that port).
        for attempt in range(5):
            self.port = port or free_port()
            try:
                self._start()
                return
            except RuntimeError:
                if port or attempt == 4:
                    raise

    def _start(self) -> None:
        password = self.password
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
                # DEBUG SLEEP (a Redis that accepts connections but answers nothing) needs it; off by default.
                "--enable-debug-command", "local"]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                # Ours answers, not another run's server on this port: a redis-server that cannot bind
                # exits within milliseconds of starting.
                time.sleep(0.2)
                if self.proc.poll() is None:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        cmd = ["redis-cli", "-p", str(self.port), "--no-auth-warning"]
        if self.password:
            cmd += ["-a", self.password]
        return subprocess.run([*cmd, *args], check=True, capture_output=True, text=True).stdout.strip()

    def restart(self) -> None:
        """Start again on the same port (after `stop()`), empty."""
        self.stop()
        self._start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
