"""A private rabbitmq-server (Debian's package) on loopback for the bench, stopped by PID.

Everything is its own: AMQP, distribution, epmd and management ports (free ones), node name, Erlang cookie
(`$HOME/.erlang.cookie`), data, log and config files, all in a temp directory removed at `stop()`. Its epmd is
started first, in the foreground, as our child (a node started with `ERL_EPMD_PORT` would otherwise start one as
a daemon that outlives it), and stopped by PID after the server. Debian's own `rabbitmq-server.service` never
runs: the package's wrapper is not used (it `su`s to user rabbitmq and uses /var/lib/rabbitmq), and the bench
containers mask the unit (`testbed.nspawn.MASKED`).

Erlang takes ~5 s to boot: share one server per test module and give each test its own virtual host
(`add_vhost`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

from testbed.redis import free_port

BIN = Path("/usr/lib/rabbitmq/bin")


def require_rabbitmq() -> None:
    """Fail loudly (never skip) when Debian's rabbitmq-server is not installed."""
    if not (BIN / "rabbitmq-server").exists() or not shutil.which("epmd"):
        raise RuntimeError("the RabbitMQ tests need Debian's rabbitmq-server: run ./dev/setup (or ./dev/test)")


class RabbitServer:
    """One rabbitmq-server on 127.0.0.1, with user `dq` (password `password`, tag monitoring) and the
    management plugin when `management`."""

    def __init__(self, management: bool = True, password: str | None = None) -> None:
        require_rabbitmq()
        self.dir = Path(tempfile.mkdtemp(prefix="dqrabbit-", dir="/run"))
        self.management = management
        self.user = "dq"
        self.password = password or secrets.token_hex(12)
        self.node = f"dqtest{uuid.uuid4().hex[:8]}@localhost"
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.mgmt_port = free_port() if management else 0
        self.epmd: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        try:
            self._configure()
            self.start()
            self.ctl("add_user", self.user, self.password)
            self.ctl("set_user_tags", self.user, "monitoring")
        except BaseException:
            self.stop()
            raise

    def _configure(self) -> None:
        home = self.dir / "home"
        for sub in ("home", "mnesia", "log"):
            (self.dir / sub).mkdir()
        cookie = home / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
        conf = [f"listeners.tcp.default = 127.0.0.1:{self.port}", "loopback_users = none",
                # Statistics (the management API's figures) every second rather than 5: tests wait less.
                "collect_statistics_interval = 1000"]
        if self.management:
            conf += [f"management.tcp.port = {self.mgmt_port}", "management.tcp.ip = 127.0.0.1"]
        (self.dir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management]." if self.management else "[].")

    @property
    def env(self) -> dict[str, str]:
        d = str(self.dir)
        return {**os.environ, "HOME": f"{d}/home", "RABBITMQ_NODENAME": self.node,
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
                "ERL_EPMD_ADDRESS": "127.0.0.1", "RABBITMQ_MNESIA_BASE": f"{d}/mnesia", "RABBITMQ_LOG_BASE": f"{d}/log",
                "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf", "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
                "RABBITMQ_LOGS": f"{d}/log/server.log", "RABBITMQ_PID_FILE": f"{d}/pid"}

    def start(self) -> None:
        """Start (again, after `stop_server()`) on the same ports, with the same data: users and vhosts stay."""
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen(["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                         env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        out = (self.dir / "log" / "stdout.log").open("ab")
        self.proc = subprocess.Popen([str(BIN / "rabbitmq-server")], env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True)
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited: {(self.dir / 'log' / 'stdout.log').read_text()[-2000:]}")
            # `await_startup` waits for the boot to finish (plugins too) once the node answers at all.
            if self.ctl("await_startup", "--timeout", "30", check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise RuntimeError("rabbitmq-server did not start within 60 s")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`rabbitmqctl -n <node> args...` (quiet), as root with this server's cookie."""
        return subprocess.run([str(BIN / "rabbitmqctl"), "-n", self.node, "-q", *args], env=self.env,
                              capture_output=True, text=True, check=check, timeout=60)

    def add_vhost(self, name: str) -> str:
        """A fresh virtual host with full rights for `dq`; returns its name."""
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, self.user, ".*", ".*", ".*")
        return name

    def url(self, vhost: str, password: bool = False) -> str:
        """amqp://dq@127.0.0.1:port/vhost (with the password only when asked: the agent takes it from a file)."""
        auth = f"{self.user}:{self.password}" if password else self.user
        return f"amqp://{auth}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt_port}"

    def list_queues(self, vhost: str) -> dict[str, tuple[int, int, int]]:
        """`rabbitmqctl list_queues name messages_ready messages_unacknowledged consumers`, by name."""
        out = self.ctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages_ready",
                       "messages_unacknowledged", "consumers").stdout
        rows = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4:
                rows[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
        return rows

    def pause(self) -> None:
        """SIGSTOP the server's process group (a stalled broker: connections stay open, nothing answers)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop_server(self) -> None:
        """Stop the server (SIGTERM to the node's process group, by its PID), keeping epmd and the data."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # The node's helpers (erl_child_setup, inet_gethost) are in its process group: gone with it.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self) -> None:
        """Stop the server and its epmd, and remove the directory."""
        self.stop_server()
        if self.epmd is not None and self.epmd.poll() is None:
            self.epmd.terminate()
            try:
                self.epmd.wait(5)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
                self.epmd.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
