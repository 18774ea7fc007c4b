"""Which job signals the systemd client believes: only those of systemd's current bus name.

The bus itself is exercised in tests/integration/test_systemd_scale.py (a real daemon-reexec); this
checks the rule against forged senders, which the bench cannot produce.
"""

from __future__ import annotations

import asyncio

from dbus_fast import Message, MessageType

from dqagent.systemd import BUS_DRIVER, MANAGER, MANAGER_PATH, SYSTEMD, SystemdClient

JOB = "/org/freedesktop/systemd1/job/42"


def job_removed(sender: str, result: str = "done") -> Message:
    return Message(message_type=MessageType.SIGNAL, sender=sender, path=MANAGER_PATH, interface=MANAGER,
                   member="JobRemoved", signature="uoss", body=[42, JOB, "dramatiq-worker@1.service", result])


def owner_changed(old: str, new: str, sender: str = BUS_DRIVER) -> Message:
    return Message(message_type=MessageType.SIGNAL, sender=sender, path="/org/freedesktop/DBus",
                   interface=BUS_DRIVER, member="NameOwnerChanged", signature="sss", body=[SYSTEMD, old, new])


def test_job_results_only_from_the_current_owner_of_systemds_name() -> None:
    async def scenario() -> list[str]:
        client = SystemdClient()
        client._systemd_owner = ":1.1"
        future = client._await_job(JOB, "dramatiq-worker@1.service", "StartUnit", 5)
        waiting = asyncio.ensure_future(future)
        await asyncio.sleep(0)
        seen = []
        client._on_message(job_removed(":1.66", "canceled"))  # any peer can send a signal
        client._on_message(owner_changed(":1.1", ":1.66", sender=":1.66"))  # not from the bus driver
        await asyncio.sleep(0)
        seen.append("pending" if not waiting.done() else waiting.result())
        client._on_message(owner_changed(":1.1", ""))  # systemd re-executing: nobody is believed
        client._on_message(job_removed(":1.1", "failed"))
        await asyncio.sleep(0)
        seen.append("pending" if not waiting.done() else waiting.result())
        client._on_message(owner_changed("", ":1.7"))  # back under a new name
        client._on_message(job_removed(":1.7"))
        seen.append(await waiting)
        seen.append(str(client.owner_changes))
        return seen

    assert asyncio.run(scenario()) == ["pending", "pending", "done", "1"]
