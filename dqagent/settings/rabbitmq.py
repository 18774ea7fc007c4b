"""The RabbitMQ settings' values (pure): `RABBITMQ_URL` and `RABBITMQ_MANAGEMENT_URL`.

Neither URL may carry a password: it would sit in a world-readable settings file, in `dqagent status` and in
the journal's start line. The password lives in `/etc/dqagent/rabbitmq-password`, handed to the agent as the
systemd credential `rabbitmq_password`, exactly like Redis's (`dqagent.settings.sources`).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from dqagent.errors import ConfigError

#: Where systemd's `LoadCredential=rabbitmq_password:...` puts the password for the service.
RABBITMQ_CREDENTIAL_NAME = "rabbitmq_password"
_AMQP_SCHEMES = ("amqp", "amqps")
_HTTP_SCHEMES = ("http", "https")


def _shown(url: str) -> str:
    """The URL for an error line: any userinfo after the user name replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable URL)"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    netloc = f"{user}{':***' if colon else ''}@{hostport}"
    return parts._replace(netloc=netloc).geturl()


def _checked(key: str, raw: str, schemes: tuple[str, ...], accepted: str) -> str:
    url = raw.strip()
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(key, _shown(url), f"expected {accepted} with a valid host and port") from None
    if parts.scheme not in schemes or not parts.hostname or "://" not in url:
        raise ConfigError(key, _shown(url), f"expected {accepted}")
    if parts.password is not None:
        raise ConfigError(key, _shown(url), f"expected {accepted} without a password: put the password in "
                          "/etc/dqagent/rabbitmq-password (0640 root:dqagent), which dqagent install creates")
    if port == 0:
        raise ConfigError(key, _shown(url), f"expected {accepted} with a port in 1..65535")
    return url


def parse_rabbitmq_url(key: str, raw: str) -> str:
    """`amqp://[user@]host[:port][/vhost]` or `amqps://...` (TLS), or "" (Redis is the broker)."""
    url = _checked(key, raw, _AMQP_SCHEMES, "empty (Redis) or amqp://[user@]host[:port][/vhost] or amqps://...")
    if url and urlsplit(url).path.count("/") > 1:
        raise ConfigError(key, _shown(url), "expected one path segment, the virtual host (write / as %2F)")
    return url


def parse_management_url(key: str, raw: str) -> str:
    """`http(s)://host:port[/prefix]` of RabbitMQ's management API, or "" (none: in-flight is not seen)."""
    accepted = "empty (no management API) or http(s)://host:port[/path prefix]"
    return _checked(key, raw, _HTTP_SCHEMES, accepted).rstrip("/")


def vhost(url: str) -> str:
    """The virtual host of an AMQP URL, decoded: the path without its `/`; "/" when there is none."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def user(url: str) -> str:
    """The user name of a URL, decoded; "guest" (RabbitMQ's and AMQP clients' default) when it names none."""
    name = urlsplit(url).username
    return unquote(name) if name else "guest"


def location(url: str) -> str:
    """Where RabbitMQ is, for logs and status: the URL without query (no password is ever in it)."""
    parts = urlsplit(url)
    return parts._replace(query="", fragment="").geturl()
