"""The project's error hierarchy and process exit codes.

Exit codes follow sysexits(3) where one fits, so systemd's `RestartPreventExitStatus=` and
scripts can tell a bad configuration from a transient fault.
"""

from __future__ import annotations

#: Clean exit.
EXIT_OK = 0
#: A worker action failed (scale-up/-down reported a failed unit).
EXIT_FAILED = 1
#: Bad command-line usage (argparse uses 2 as well).
EXIT_USAGE = 2
#: A service we need (system bus) is unavailable; systemd may restart us.
EXIT_UNAVAILABLE = 69
#: Permission denied (polkit refused, not root for install).
EXIT_NOPERM = 77
#: Invalid configuration: nothing was started. `RestartPreventExitStatus=78`.
EXIT_CONFIG = 78


class DqAgentError(Exception):
    """Base of every error dqagent raises on purpose."""


class ConfigError(DqAgentError, ValueError):
    """A setting is missing, malformed or out of range; the message is one line for operators."""

    def __init__(self, key: str, value: str, accepted: str) -> None:
        self.key = key
        self.value = value
        self.accepted = accepted
        super().__init__(f"invalid {key}={value!r}: {accepted}")


class SystemdError(DqAgentError):
    """systemd refused or failed a request; `name` keeps the D-Bus error name."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        super().__init__(f"{name}: {text}")


class AccessDeniedError(SystemdError, PermissionError):
    """polkit (or the bus policy) refused the call."""


class NoSuchUnitError(SystemdError, LookupError):
    """The unit is not loaded."""


class SystemdTimeoutError(SystemdError, TimeoutError):
    """systemd (or the bus) did not answer a call within DBUS_TIMEOUT: hung, stopped, or re-executing."""


class JobWaitTimeoutError(SystemdTimeoutError):
    """A queued job's end (JobRemoved) was not seen in time, and systemd no longer confirmed the job."""

    def __init__(self, text: str) -> None:
        super().__init__("org.freedesktop.DBus.Error.Timeout", text)


#: D-Bus error names mapped onto the project's exceptions, the only such table; any other name is a
#: plain SystemdError. (Timeouts are not D-Bus errors: the client raises SystemdTimeoutError itself.)
DBUS_ERRORS: dict[str, type[SystemdError]] = {
    "org.freedesktop.DBus.Error.AccessDenied": AccessDeniedError,
    "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired": AccessDeniedError,
    "org.freedesktop.systemd1.NoSuchUnit": NoSuchUnitError,
}


def systemd_error(name: str, text: str) -> SystemdError:
    """The exception for a D-Bus error reply `name` (its type from DBUS_ERRORS)."""
    return DBUS_ERRORS.get(name, SystemdError)(name, text)


class UnitNameError(DqAgentError, ValueError):
    """A unit name would be built from something other than a valid worker instance number."""


class BusConnectionError(DqAgentError, ConnectionError):
    """The system bus is unreachable or the connection dropped."""


class BrokerError(DqAgentError, ConnectionError):
    """Redis could not be read (down, slow, refused auth); the message never holds a secret."""
