"""RabbitMQ's management API, for the one figure AMQP does not give: each queue's unacknowledged messages.

Why the standard library (`urllib` in a thread) and not an HTTP client package: one small GET per read, with a
timeout, basic auth and TLS, is all it needs; a thread that outlives an abandoned call ends by itself within
the same socket timeout. The figures are RabbitMQ's statistics, refreshed every `collect_statistics_interval`
(5 s by default): a few seconds behind the AMQP counts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from dqagent.core.rabbitdemand import DELAY_SUFFIX
from dqagent.errors import BrokerError

#: Largest answer read (bytes): 500 queues' names and counts take a few tens of kB.
MAX_ANSWER = 8 << 20
#: The API's largest page.
PAGE_SIZE = 500


class ManagementApi:
    """GET /api/queues/<vhost> of the management API at `base_url`, with the agent's RabbitMQ user and password."""

    def __init__(self, base_url: str, username: str, password: str, timeout_s: float, vhost: str = "/") -> None:
        self._base = base_url.rstrip("/")
        self._timeout_s = timeout_s
        self._password = password
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        self.vhost = vhost

    async def unacked(self, queues: Sequence[str]) -> dict[str, int]:
        """messages_unacknowledged of `Q` and `Q.DQ` for each queue (absent: no such queue, or no statistic yet).
        Raises `BrokerError` (without the password) when the API cannot be read."""
        return await asyncio.to_thread(self._unacked, queues)

    def _unacked(self, queues: Sequence[str]) -> dict[str, int]:
        names = "|".join(re.escape(q) for q in queues)
        out: dict[str, int] = {}
        page = 1
        while True:
            query = urlencode({"page": page, "page_size": PAGE_SIZE, "name": f"^({names})(\\{DELAY_SUFFIX})?$",
                               "use_regex": "true", "columns": "name,messages_unacknowledged"})
            answer = self._get(f"/api/queues/{quote(self.vhost, safe='')}?{query}")
            out.update(unacked_of(answer))
            if not isinstance(answer, dict) or page >= int(answer.get("page_count", 1) or 1):
                return out
            page += 1

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self._base + path, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                body = response.read(MAX_ANSWER + 1)
        except urllib.error.HTTPError as exc:
            why = {401: "authentication refused (a wrong password, or a user without the monitoring tag)",
                   403: "this user may not read this virtual host's queues",
                   404: "no such virtual host"}.get(exc.code, f"HTTP {exc.code}")
            raise BrokerError(f"RabbitMQ management API at {self._base}: {why}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            detail = " ".join(str(reason).split())[:200]
            if self._password:
                detail = detail.replace(self._password, "***")
            raise BrokerError(f"RabbitMQ management API at {self._base}: {type(reason).__name__}: {detail}") from None
        if len(body) > MAX_ANSWER:
            raise BrokerError(f"RabbitMQ management API at {self._base}: answer larger than {MAX_ANSWER} bytes")
        try:
            return json.loads(body)
        except ValueError:
            raise BrokerError(f"RabbitMQ management API at {self._base}: not JSON") from None


def unacked_of(answer: Any) -> dict[str, int]:
    """One page of `/api/queues/<vhost>?columns=name,messages_unacknowledged` as {queue: unacknowledged}.

    The answer is outside input: anything but a dict item with a string name and a non-negative integer is
    skipped. A queue the statistics have not sampled yet has no `messages_unacknowledged`: absent (read as 0).
    """
    out: dict[str, int] = {}
    for item in answer.get("items", []) if isinstance(answer, dict) else []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        n = item.get("messages_unacknowledged")
        if isinstance(n, int) and not isinstance(n, bool) and n >= 0:
            out[item["name"]] = n
    return out
