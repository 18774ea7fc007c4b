"""Which signals the systemd client believes: only those of systemd's current bus name.

The bus itself is exercised in tests/integration/test_systemd_scale.py (a real daemon-reexec); this
checks the rule against forged senders, which the bench cannot produce.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from dbus_fast import Message, MessageType, Variant

from dqagent.systemd.client import (
    BUS_DRIVER,
    MANAGER,
    MANAGER_PATH,
    PROPERTIES,
    SERVICE,
    SYSTEMD,
    UNIT,
    UNIT_PATH,
    JobOutcome,
    Seen,
    SystemdBus,
    SystemdClient,
    unit_from_path,
)

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
        client.bus.owner_answered(":1.1")
        future = client.jobs.await_job(JOB, "dramatiq-worker@1.service", "StartUnit", 5)
        waiting = asyncio.ensure_future(future)
        await asyncio.sleep(0)
        seen = []
        client.receive(job_removed(":1.66", "canceled"))  # any peer can send a signal
        client.receive(owner_changed(":1.1", ":1.66", sender=":1.66"))  # not from the bus driver
        await asyncio.sleep(0)
        seen.append("pending" if not waiting.done() else waiting.result())
        client.receive(owner_changed(":1.1", ""))  # systemd re-executing: nobody is believed
        client.receive(job_removed(":1.1", "failed"))
        await asyncio.sleep(0)
        seen.append("pending" if not waiting.done() else waiting.result())
        client.receive(owner_changed("", ":1.7"))  # back under a new name
        client.receive(job_removed(":1.7"))
        seen.append(await waiting)
        seen.append(str(client.owner_changes))
        return seen

    assert asyncio.run(scenario()) == ["pending", "pending", "done", "1"]


def service_changed(sender: str, unit_label: str, **props: object) -> Message:
    kinds = {int: "u", str: "s"}
    body = {k: Variant(kinds[type(v)], v) for k, v in props.items()}
    return Message(message_type=MessageType.SIGNAL, sender=sender, path=f"{UNIT_PATH}/{unit_label}",
                   interface=PROPERTIES, member="PropertiesChanged", signature="sa{sv}as", body=[SERVICE, body, []])


def unit_changed(sender: str, unit_label: str, **props: int) -> Message:
    body = {k: Variant("t", v) for k, v in props.items()}
    return Message(message_type=MessageType.SIGNAL, sender=sender, path=f"{UNIT_PATH}/{unit_label}",
                   interface=PROPERTIES, member="PropertiesChanged", signature="sa{sv}as", body=[UNIT, body, []])


def test_unit_names_from_object_paths() -> None:
    assert unit_from_path(f"{UNIT_PATH}/dramatiq_2dworker_40417_2eservice") == "dramatiq-worker@417.service"


def test_a_jobs_outcome_carries_what_systemd_sent_of_its_unit_before_jobremoved() -> None:
    """Values sent before the job was queued, by an impostor, or of another unit are not taken."""

    class Scripted(SystemdBus):
        async def manager(self, member: str, signature: str, body: list[object]) -> list[object]:
            assert member == "StartUnit"
            label = "dramatiq_2dworker_401_2eservice"
            self.receive(service_changed(":1.66", label, MainPID=666, NRestarts=9))  # not systemd
            self.receive(service_changed(":1.1", "dramatiq_2dworker_402_2eservice", MainPID=2))
            self.receive(service_changed(":1.1", label, MainPID=0, NRestarts=0, Result="success"))
            self.receive(service_changed(":1.1", label, MainPID=4242))  # only changed ones may come
            self.receive(job_removed(":1.1"))  # before StartUnit's reply: kept as early
            return [JOB]

    class Quiet(SystemdBus):
        """No PropertiesChanged arrives: the outcome has none, and the caller reads the unit."""

        async def manager(self, member: str, signature: str, body: list[object]) -> list[object]:
            self.receive(job_removed(":1.1"))
            return [JOB]

    async def scenario() -> list[JobOutcome]:
        client, quiet = SystemdClient(bus=Scripted()), SystemdClient(bus=Quiet())
        client.bus.owner_answered(":1.1")
        quiet.bus.owner_answered(":1.1")
        client.receive(service_changed(":1.1", "dramatiq_2dworker_401_2eservice", MainPID=1))  # no job yet
        first = await client.start_units(["dramatiq-worker@1.service"])
        return [*first, *(await quiet.start_units(["dramatiq-worker@1.service"]))]

    done, quiet = asyncio.run(scenario())
    assert done == JobOutcome("dramatiq-worker@1.service", "done", Seen(4242, 0, "success"))
    assert quiet == JobOutcome("dramatiq-worker@1.service", "done", None)


def test_a_running_units_followed_properties_are_read_once_then_taken_from_systemds_signals() -> None:
    label = "dramatiq_2dworker_401_2eservice"
    row = ["dramatiq-worker@1.service", "", "loaded", "active", "running", "", f"{UNIT_PATH}/{label}", 0, "", "/"]

    class Scripted(SystemdBus):
        gets: ClassVar[list[str]] = []

        async def manager(self, member: str, signature: str, body: list[object]) -> list[object]:
            return [[row]] if member == "ListUnitsByPatterns" else []  # (Subscribe after the re-exec)

        async def get(self, path: str, interface: str, name: str) -> object:
            self.gets.append(name)
            if name == "MainPID" and len(self.gets) == 1:  # a restart is signalled while the read is under way
                self.receive(service_changed(":1.1", label, NRestarts=1))
            return {"MainPID": 10, "ActiveEnterTimestamp": 1000}[name]

    async def scenario() -> list[tuple[int, int, list[str]]]:
        bus = Scripted()
        client = SystemdClient(bus=bus)
        bus.owner_answered(":1.1")
        seen = []
        for step in range(4):
            if step == 2:  # systemd restarted the worker: its signals carry the new values
                client.receive(service_changed(":1.1", label, MainPID=11))
                client.receive(unit_changed(":1.1", label, ActiveEnterTimestamp=2000))
            if step == 3:
                client.receive(owner_changed(":1.1", ":1.7"))  # daemon-reexec: signals may be lost
            (state,) = await client.worker_states(brief=("MainPID", "ActiveEnterTimestamp"))
            seen.append((state.main_pid, state.active_enter_us, list(bus.gets)))
            bus.gets.clear()
        return seen

    reads = asyncio.run(scenario())
    assert reads[0] == (10, 1000, ["MainPID", "ActiveEnterTimestamp"])
    assert reads[1] == (10, 1000, ["MainPID"])  # the first MainPID read was overtaken by a signal: not kept
    assert reads[2] == (11, 2000, [])
    assert reads[3] == (10, 1000, ["MainPID", "ActiveEnterTimestamp"])  # read again after the re-exec


def test_a_unit_object_that_is_unloaded_or_loaded_anew_is_read_again() -> None:
    """A garbage-collected worker's number is reused by a new unit object, which systemd announces with
    UnitNew and no properties: nothing known of the old object may be served for it."""
    label = "dramatiq_2dworker_407_2eservice"
    unit = "dramatiq-worker@7.service"
    row = [unit, "", "loaded", "active", "running", "", f"{UNIT_PATH}/{label}", 0, "", "/"]

    def manager_signal(member: str, sender: str = ":1.1") -> Message:
        return Message(message_type=MessageType.SIGNAL, sender=sender, path=MANAGER_PATH, interface=MANAGER,
                       member=member, signature="so", body=[unit, f"{UNIT_PATH}/{label}"])

    class Scripted(SystemdBus):
        gets: ClassVar[list[str]] = []

        async def manager(self, member: str, signature: str, body: list[object]) -> list[object]:
            return [[row]]

        async def get(self, path: str, interface: str, name: str) -> object:
            self.gets.append(name)
            return 70 + len(self.gets)

    async def scenario() -> list[list[str]]:
        bus = Scripted()
        client = SystemdClient(bus=bus)
        bus.owner_answered(":1.1")
        rounds = []
        for announce in (None, manager_signal("UnitNew", sender=":1.66"), manager_signal("UnitRemoved"),
                         manager_signal("UnitNew")):
            if announce is not None:
                client.receive(announce)
            await client.worker_states(brief=("MainPID",))
            rounds.append(list(bus.gets))
            bus.gets.clear()
        return rounds

    assert asyncio.run(scenario()) == [["MainPID"], [], ["MainPID"], ["MainPID"]]  # the impostor changes nothing
