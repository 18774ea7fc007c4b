"""The bench itself: real units started over D-Bus (dbus-fast), read back by systemctl and journalctl."""

from __future__ import annotations

import asyncio
import json

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from testbed.nspawn import Container
from testbed.redis import RedisServer
from testbed.wait import wait_until

UNIT = """[Unit]
Description=dqagent bench smoke %i
[Service]
ExecStart=/bin/sh -c 'echo smoke-started-%i; exec sleep infinity'
"""


async def _call(bus: MessageBus, member: str, signature: str, body: list[object]) -> list[object]:
    reply = await bus.call(Message(
        destination="org.freedesktop.systemd1", path="/org/freedesktop/systemd1",
        interface="org.freedesktop.systemd1.Manager", member=member, signature=signature, body=body,
    ))
    assert reply is not None and reply.message_type == MessageType.METHOD_RETURN, reply and reply.body
    return list(reply.body)


async def _start_stop(address: str, verb: str, names: list[str]) -> dict[str, str]:
    """Start or stop units concurrently and wait for each job's JobRemoved result.

    A job's JobRemoved can arrive before the reply to another unit's call (they are issued together),
    so every result is kept by job path from the moment we subscribe, and looked up afterwards.
    """
    bus = await MessageBus(bus_address=address).connect()
    removed: dict[str, str] = {}
    arrived = asyncio.Event()

    def on_message(msg: Message) -> None:
        if msg.member == "JobRemoved":
            removed[str(msg.body[1])] = str(msg.body[3])
            arrived.set()

    try:
        bus.add_message_handler(on_message)
        await _call(bus, "Subscribe", "", [])
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                               body=["type='signal',interface='org.freedesktop.systemd1.Manager',"
                                     "member='JobRemoved'"]))
        jobs = [str(job) for (job,) in await asyncio.gather(*(_call(bus, verb, "ss", [n, "replace"])
                                                              for n in names))]

        async def all_removed() -> None:
            while not all(j in removed for j in jobs):
                arrived.clear()
                await arrived.wait()

        await asyncio.wait_for(all_removed(), 30)
        return {name: removed[job] for name, job in zip(names, jobs, strict=True)}
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()


def test_units_started_over_dbus_are_seen_by_systemctl_and_journalctl(bench: Container) -> None:
    # Given a trivial template unit in the container
    bench.write("/etc/systemd/system/dqsmoke@.service", UNIT)
    bench.systemctl("daemon-reload")
    names = ["dqsmoke@1.service", "dqsmoke@2.service"]

    # When two instances are started through D-Bus
    assert asyncio.run(_start_stop(bench.bus_address, "StartUnit", names)) == {
        n: "done" for n in names}

    # Then the real clients see them running, and the journal has their output
    listed = bench.systemctl("list-units", "dqsmoke@*", "--plain", "--no-legend").stdout
    running = sorted(line.split()[0] for line in listed.splitlines() if " running " in line)
    assert running == names
    wait_until("journal line of dqsmoke@1", lambda: "smoke-started-1" in bench.run(
        ["journalctl", "-u", "dqsmoke@1", "-o", "json", "--no-pager"]).stdout)
    records = [json.loads(line) for line in bench.run(
        ["journalctl", "-u", "dqsmoke@1", "-o", "json", "--no-pager"]).stdout.splitlines()]
    assert any(r.get("MESSAGE") == "smoke-started-1" and r.get("_SYSTEMD_UNIT") == "dqsmoke@1.service"
               for r in records)

    # And stopping them through D-Bus leaves none running
    assert asyncio.run(_start_stop(bench.bus_address, "StopUnit", names)) == {n: "done" for n in names}
    listed = bench.systemctl("list-units", "dqsmoke@*", "--plain", "--no-legend").stdout
    assert " running " not in listed


def test_redis_server_is_private_and_on_loopback(redis_server: RedisServer, bench: Container) -> None:
    assert redis_server.cli("PING") == "PONG"
    # The container shares the host's loopback, so units inside reach the test Redis.
    out = bench.run(["redis-cli", "-p", str(redis_server.port), "PING"]).stdout.strip()
    assert out == "PONG"
