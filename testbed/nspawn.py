"""A throwaway systemd 252 in systemd-nspawn: the bench's host.

The container boots over a tmpfs-backed overlay of the host root, inside a private mount
namespace: it sees the host's files (venv, checkout) but everything it writes vanishes with the
tmpfs. Never boot systemd on the host's own filesystem: its tmpfiles pass wipes the host's /tmp.

Everything here is stopped by PID: `Container.stop()`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

#: Units the tests do not need; masking them keeps the boot about a second and quiet.
MASKED = (
    "postgresql.service", "postgresql@15-main.service", "getty@tty1.service", "console-getty.service",
    "redis-server.service", "apt-daily.timer", "apt-daily-upgrade.timer", "man-db.timer",
    "e2scrub_all.timer", "fstrim.timer", "systemd-timesyncd.service", "cron.service",
    "ssh.service", "logrotate.timer",
    # Debian's rabbitmq-server enables its unit and epmd's: the bench starts its own server on the host instead.
    "rabbitmq-server.service", "epmd.service", "epmd.socket",
)

_BOOT_SCRIPT = r"""
set -eu
R="$1"; shift
mount -t tmpfs -o size=2g tmpfs "$R"
mkdir "$R/upper" "$R/work" "$R/merged"
mount -t overlay overlay -o "lowerdir=/,upperdir=$R/upper,workdir=$R/work" "$R/merged"
exec systemd-nspawn --register=no --keep-unit -q -D "$R/merged" -b "$@"
"""


#: The checkout (and its .venv), which the container must see through the overlay of the host root.
CHECKOUT = Path(__file__).resolve().parent.parent


def checkout_problem(checkout: Path = CHECKOUT) -> str | None:
    """Why the container could not see `checkout`, or None.

    The overlay's lower layer is the host's root filesystem only (no other mounts), and the container's
    systemd mounts a fresh tmpfs on /tmp; a clone there fails every test with "No such file".
    """
    if checkout.is_relative_to("/tmp"):
        return f"the checkout {checkout} is under /tmp, which the bench's systemd replaces with its own tmpfs"
    if checkout.stat().st_dev != Path("/").stat().st_dev:
        return f"the checkout {checkout} is on another filesystem than /, which the bench's overlay does not include"
    return None


def require_bench() -> None:
    """Fail loudly (never skip) when the machine cannot host the bench."""
    missing = [tool for tool in ("systemd-nspawn", "redis-server", "unshare", "nsenter") if not shutil.which(tool)]
    if os.geteuid() != 0:
        raise RuntimeError("the integration bench needs root (systemd-nspawn, mounts)")
    if missing:
        raise RuntimeError(f"the integration bench needs {', '.join(missing)}: run ./dev/test to install them")
    problem = checkout_problem()
    if problem:
        raise RuntimeError(f"{problem}: clone it elsewhere on the root filesystem (e.g. under /root or /srv)")


class Container:
    """A booted systemd in nspawn; `run()` executes inside it, `bus_address` reaches its system bus."""

    def __init__(self, name: str | None = None, extra_masks: Sequence[str] = ()) -> None:
        self.name = name or f"dqtest-{uuid.uuid4().hex[:8]}"
        self.root_dir = Path(f"/run/dqbench-{self.name}")
        self.root_dir.mkdir(parents=True)
        masks = [f"systemd.mask={u}" for u in (*MASKED, *extra_masks)]
        self.log_path = self.root_dir.with_suffix(".log")
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "bash", "-c", _BOOT_SCRIPT, "boot",
             str(self.root_dir), f"--machine={self.name}", "systemd.unit=multi-user.target", *masks],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        try:
            self.leader = self._wait_leader()
            self._wait_running()
        except BaseException:
            self.stop()
            raise

    def _wait_leader(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            with contextlib.suppress(OSError):
                pids = children.read_text().split()
                for pid in pids:
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
            time.sleep(0.05)
        raise RuntimeError("container systemd did not appear")

    def _wait_running(self) -> None:
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = self.run(["systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"container did not finish booting (state {state!r})")

    @property
    def root(self) -> Path:
        """The container's filesystem as the host sees it (write here to put files inside)."""
        return Path(f"/proc/{self.leader}/root")

    @property
    def bus_address(self) -> str:
        return f"unix:path=/proc/{self.leader}/root/run/dbus/system_bus_socket"

    def run(self, cmd: Sequence[str], check: bool = True, timeout: float = 120,
            user: str | None = None, env: dict[str, str] | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces), as root or `user`."""
        prefix = ["nsenter", "-t", str(self.leader), "-a"]
        if user:
            gid = subprocess.run([*prefix, "id", "-g", user], capture_output=True, text=True, check=True).stdout
            prefix += ["setpriv", f"--reuid={user}", f"--regid={gid.strip()}", "--init-groups", "--"]
        envs = [f"{k}={v}" for k, v in (env or {}).items()]
        full = [*prefix, "env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LANG=C.UTF-8", *envs, *cmd]
        done = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}\nstdout: {done.stdout[-3000:]}"
                                 f"\nstderr: {done.stderr[-3000:]}")
        return done

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def unit_property(self, unit: str, prop: str) -> str:
        return self.systemctl("show", unit, "-p", prop, "--value").stdout.strip()

    def stop(self) -> None:
        """Power the container off (SIGTERM to nspawn), SIGKILL after 15 s; remove its mount point."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                # Killing the namespace's init takes every process of the container with it.
                for pid in (getattr(self, "leader", None), self.proc.pid):
                    if pid:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(OSError):
            self.root_dir.rmdir()
        with contextlib.suppress(OSError):
            self.log_path.unlink()


@contextlib.contextmanager
def container(**kwargs: object) -> Iterator[Container]:
    c = Container(**kwargs)  # type: ignore[arg-type]
    try:
        yield c
    finally:
        c.stop()
