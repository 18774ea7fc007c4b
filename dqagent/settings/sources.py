"""Where raw settings come from: flags, the environment, a settings file, and credentials.

Precedence, highest first: command-line flags, the process environment, the settings file
(read with python-dotenv, so the old manager's file with inline comments loads unchanged).
Which file, unless `--env-file` names one: the installed service's `/etc/dqagent/dqagent.env` for
every command (so `status`, `scale-up`, `check`, `install` see what the service sees, whatever the
current directory), except `start` run by hand, which keeps the old manager's `./.env` first.
The Redis password comes, under systemd, from `/etc/dqagent/redis-password` itself (0640
root:dqagent, so a reload reads the current one), else systemd's credential (copied from it at
start); otherwise from `REDIS_PASSWORD`, or the file named by `REDIS_PASSWORD_FILE`; an unreadable
file is reported, not fatal, so `dqagent status` works for any user.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from dqagent.errors import ConfigError
from dqagent.settings.config import CREDENTIAL_NAME, DEFAULTS, Settings, parse_settings
from dqagent.settings.declarations import unknown_keys
from dqagent.settings.parsers import DEFAULT_POOL
from dqagent.settings.pools import Pool, parse_pools, pools_dir
from dqagent.settings.pools import read as read_pools
from dqagent.settings.rabbitmq import RABBITMQ_CREDENTIAL_NAME

SYSTEM_ENV_FILE = Path("/etc/dqagent/dqagent.env")
#: The file the unit hands over as the `redis_password` credential (`LoadCredential=`). `dqagent install`
#: makes it 0640 root:dqagent, so the agent re-reads it on reload without any root process.
PASSWORD_SOURCE = Path("/etc/dqagent/redis-password")
#: The same for RabbitMQ (credential `rabbitmq_password`), read only when RABBITMQ_URL is set.
RABBITMQ_PASSWORD_SOURCE = Path("/etc/dqagent/rabbitmq-password")
#: Commands that look for `./.env` before the system file (the old manager's `start` in a terminal).
#: The service's own `start` passes `--env-file` explicitly, so it never depends on this.
LOCAL_ENV_COMMANDS = frozenset({"start"})


@dataclass(frozen=True, slots=True)
class Loaded:
    """Validated settings plus what could not be read (for status output)."""

    settings: Settings
    #: The settings file that was read, or None: no file, defaults (and the environment) only.
    env_file: Path | None
    #: Why the password could not be read, or "" when it could (or none is configured).
    password_note: str
    #: Keys in the settings file that no setting declares (a typo, most likely), in file order; the
    #: environment is not checked (it holds many unrelated variables).
    unknown_keys: tuple[str, ...] = ()
    #: Every pool, the default pool (`settings`) first, then one per `pools.d/<name>.env` by name.
    pools: tuple[Pool, ...] = ()

    def pool(self, name: str) -> Pool:
        """The pool named `name`; `ConfigError` naming `--pool` when none is."""
        for p in self.pools or (Pool(DEFAULT_POOL, self.settings),):
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.pools) or DEFAULT_POOL
        raise ConfigError("--pool", name, f"expected one of: {known}")


def default_env_file(cwd: Path, command: str, system_file: Path = SYSTEM_ENV_FILE) -> Path | None:
    """The settings file `command` reads when no `--env-file` is given, or None (defaults only).

    `start` (in `LOCAL_ENV_COMMANDS`): `./.env` if it exists, else the system file if it exists.
    Every other command: the system file if it exists; a `./.env` is ignored, so a command run from
    the old manager's directory reports on (or installs) what the service runs with.
    """
    candidates = (cwd / ".env", system_file) if command in LOCAL_ENV_COMMANDS else (system_file,)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def describe_source(env_file: Path | None) -> str:
    """How status output names the settings file: its path, or that none was found."""
    return str(env_file) if env_file is not None else "none: defaults"


def read_env_file(path: Path) -> dict[str, str]:
    """Raw values from a `.env` file; a key without a value reads as empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--env-file", str(path), f"cannot read it: {exc.strerror}") from None
    return {k: (val or "") for k, val in dotenv_values(stream=io.StringIO(text)).items()}


def merge_values(
    file_values: Mapping[str, str], environ: Mapping[str, str], flags: Mapping[str, str]
) -> dict[str, str]:
    """Apply the precedence: flags over environment over file. Only known keys are kept."""
    merged: dict[str, str] = {}
    for source in (file_values, environ, flags):
        merged.update({k: v for k, v in source.items() if k in DEFAULTS})
    return merged


def _read_text(path: Path) -> tuple[str | None, str]:
    """(stripped text, "") or (None, why not); a missing file is (None, "")."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip(), ""
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"password file {path} unavailable ({exc.strerror})"


@dataclass(frozen=True, slots=True)
class Secret:
    """Where one broker's password comes from: its setting, its file setting and its credential."""

    key: str
    file_key: str
    credential: str

    def source(self) -> Path:
        """The file the unit hands over as the credential (read at call time: tests point it elsewhere)."""
        return RABBITMQ_PASSWORD_SOURCE if self is RABBITMQ_SECRET else PASSWORD_SOURCE


REDIS_SECRET = Secret("REDIS_PASSWORD", "REDIS_PASSWORD_FILE", CREDENTIAL_NAME)
RABBITMQ_SECRET = Secret("RABBITMQ_PASSWORD", "RABBITMQ_PASSWORD_FILE", RABBITMQ_CREDENTIAL_NAME)


def _read_password(values: Mapping[str, str], environ: Mapping[str, str], source: Path | None = None,
                   *, reloading: bool = False, secret: Secret = REDIS_SECRET) -> tuple[str | None, str]:
    """(password or None to keep `REDIS_PASSWORD`, note on why a file could not be read).

    Under systemd (`$CREDENTIALS_DIRECTORY` set): at start the credential systemd copied, then `source`;
    on a reload (`reloading`) `source` first, since the credential still holds the password of the start
    (systemd 252 copies it only then), then the credential. The first file that can be read decides: its
    text, or, when empty, no password (silently; `REDIS_PASSWORD` still applies). `source` unreadable on a
    reload while the credential works means a changed password applies only at restart: said in the
    note. Otherwise: `REDIS_PASSWORD`, else the file named by `REDIS_PASSWORD_FILE` (`secret`: RabbitMQ's
    setting, file and credential instead).
    """
    notes: list[str] = []
    source = secret.source() if source is None else source
    cred_dir = environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        credential = Path(cred_dir) / secret.credential
        for path in ((source, credential) if reloading else (credential, source)):
            text, note = _read_text(path)
            if text is not None:
                if notes and path == credential:  # a reload that could not read the file
                    notes.append(f"using the password systemd handed over at start; a changed password applies "
                                 f"at restart, not on reload (fix: chown root:dqagent {source}; chmod 0640 "
                                 f"{source}, as dqagent install does)")
                return (text or None), "; ".join(notes)
            if note:
                notes.append(note)
    if values.get(secret.key):
        return None, ""
    path_text = values.get(secret.file_key, DEFAULTS[secret.file_key]).strip()
    if not path_text:
        return None, "; ".join(notes)
    text, note = _read_text(Path(path_text))
    return text, "; ".join([*notes, note] if note else notes)


def _read(env_file: Path | None, environ: Mapping[str, str], flags: Mapping[str, str] | None, cwd: Path | None,
          command: str, system_file: Path) -> tuple[dict[str, str], dict[str, str], Path | None]:
    """(the file's own values, the merged known values, the file they came from)."""
    path = env_file if env_file is not None else default_env_file(cwd or Path.cwd(), command, system_file)
    file_values = read_env_file(path) if path is not None else {}
    return file_values, merge_values(file_values, environ, flags or {}), path


def read_values(
    env_file: Path | None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    *,
    command: str = "status",
    system_file: Path = SYSTEM_ENV_FILE,
) -> tuple[dict[str, str], Path | None]:
    """The merged raw values (no password, nothing validated, unknown keys dropped) and their file."""
    environ = os.environ if environ is None else environ
    _, values, path = _read(env_file, environ, flags, cwd, command, system_file)
    return values, path


def load(
    env_file: Path | None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    *,
    command: str = "status",
    system_file: Path = SYSTEM_ENV_FILE,
    reloading: bool = False,
) -> Loaded:
    """Read, merge and validate the settings for `command` (see `default_env_file`); `reloading`: for
    `systemctl reload` (the password file is then read before the credential, see `_read_password`).

    `env_file` (the `--env-file` flag) wins over the default file. Raises `ConfigError` with a
    one-line message: a bad value names its key, an unreadable file names `--env-file`. A key of the
    file that no setting declares is not an error here: `Loaded.unknown_keys` lists it.
    """
    environ = os.environ if environ is None else environ
    file_values, values, path = _read(env_file, environ, flags, cwd, command, system_file)
    secret = RABBITMQ_SECRET if values.get("RABBITMQ_URL", "").strip() else REDIS_SECRET
    password, note = _read_password(values, environ, reloading=reloading, secret=secret)
    if password is not None:
        values[secret.key] = password
    settings = parse_settings(values)
    pools = parse_pools(settings, values, read_pools(pools_dir(path)))
    return Loaded(settings=settings, env_file=path, password_note=note, unknown_keys=unknown_keys(file_values),
                  pools=pools)
