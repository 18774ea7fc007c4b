"""The system bus connection to systemd: bounded calls, systemd's bus name followed, signals believed.

Every call is bounded by `call_timeout_s` (raising `SystemdTimeoutError`) and at most
`max_pending_calls` are in flight at once, so 1,000 units never hit the bus's pending-reply limit.

systemd's bus name is followed through `NameOwnerChanged`: after `daemon-reexec` systemd comes back
under a new unique name. Signals are believed from the current owner only (any peer can send a
signal); `receive()` checks each and hands it, decoded, to a `SignalSink`. After a re-exec the
subscription is renewed and the sink settles what the gap may have lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any, Protocol

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from dqagent.errors import BusConnectionError, SystemdError, SystemdTimeoutError, systemd_error
from dqagent.report.logs import event

log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
SERVICE = "org.freedesktop.systemd1.Service"
UNIT = "org.freedesktop.systemd1.Unit"
UNIT_PATH = "/org/freedesktop/systemd1/unit"
BUS_DRIVER = "org.freedesktop.DBus"
NO_REPLY = "org.freedesktop.DBus.Error.NoReply"
#: systemctl's own default for a D-Bus call (DBUS_TIMEOUT overrides it).
DEFAULT_CALL_TIMEOUT_S = 25.0
#: Calls in flight at once: far below dbus-daemon's 128 pending replies per connection.
DEFAULT_MAX_PENDING_CALLS = 48
#: Calls that only read, safe to send again when systemd left the bus before answering (daemon-reexec).
_READS = frozenset({"Get", "ListUnitsByPatterns", "ListUnitsByNames", "ListJobs", "LoadUnit"})
_ALREADY_SUBSCRIBED = "org.freedesktop.systemd1.AlreadySubscribed"
#: The signals subscribed to: systemd's name changing hands, its jobs' ends, unit objects that come or
#: go, and the Service and Unit properties of units (a start or stop is judged from them, and a running
#: unit's properties are followed instead of read again at every tick).
_MATCHES = (
    f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'",
    f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='UnitNew'",
    f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='UnitRemoved'",
    *(f"type='signal',sender='{SYSTEMD}',interface='{PROPERTIES}',member='PropertiesChanged',"
      f"path_namespace='{UNIT_PATH}',arg0='{iface}'" for iface in (SERVICE, UNIT)),
)


def unit_from_path(path: str) -> str:
    """The unit name of a systemd unit object path (sd-bus label escaping: `_2d` is `-`, ...)."""
    label = path.rpartition("/")[2]
    return re.sub(r"_([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), label)


class SignalSink(Protocol):
    """Who acts on systemd's signals, once `SystemdBus.receive` has believed and decoded them."""

    def job_removed(self, job: str, result: str) -> None:
        """JobRemoved: the job (object path) ended with `result`."""

    def unit_reloaded(self, unit: str) -> None:
        """UnitNew or UnitRemoved: the unit object is new or gone; nothing known of it holds."""

    def properties_changed(self, unit: str, changed: dict[str, Any], invalidated: list[str]) -> None:
        """PropertiesChanged of a unit's Service or Unit interface (values already unwrapped)."""

    def owner_changed(self) -> None:
        """systemd is back under a new name (daemon-reexec): signals sent meanwhile are lost."""

    async def after_reexec(self) -> None:
        """Once subscribed again after a re-exec: settle what the lost signals would have told."""


class SystemdBus:
    """One connection to the system bus (or `bus_address`, a test container's bus). `connect()` first."""

    def __init__(self, bus_address: str | None = None, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
                 max_pending_calls: int = DEFAULT_MAX_PENDING_CALLS) -> None:
        self._address = bus_address
        self.timeout_s = call_timeout_s
        self._slots = asyncio.Semaphore(max_pending_calls)
        self._bus: MessageBus | None = None
        self._sink: SignalSink | None = None
        self._owner = ""
        self._owner_signalled = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: How many times systemd's bus name got a new owner since connect (daemon-reexec).
        self.owner_changes = 0

    def attach(self, sink: SignalSink) -> None:
        """Where believed signals go (the client wires this before `connect`)."""
        self._sink = sink

    async def connect(self) -> None:
        """Connect, follow systemd's name and subscribe; raises BusConnectionError or SystemdTimeoutError."""
        try:
            bus = MessageBus(bus_address=self._address) if self._address else MessageBus(bus_type=BusType.SYSTEM)
            self._bus = await asyncio.wait_for(bus.connect(), self.timeout_s)
        except TimeoutError:
            raise BusConnectionError(f"no answer from the system bus within {self.timeout_s:g}s") from None
        except (OSError, DBusError, EOFError) as exc:
            raise BusConnectionError(f"cannot connect to the system bus: {exc}") from None
        self._bus.add_message_handler(self.receive)
        # Follow systemd's bus name first, so a re-exec during the rest of connect() is not missed.
        await self.call_bus("AddMatch", "s", [
            f"type='signal',sender='{BUS_DRIVER}',interface='{BUS_DRIVER}',member='NameOwnerChanged',"
            f"arg0='{SYSTEMD}'"])
        (owner,) = await self.call_bus("GetNameOwner", "s", [SYSTEMD])
        self.owner_answered(str(owner))
        for rule in _MATCHES:
            await self.call_bus("AddMatch", "s", [rule])
        await self.subscribe()

    def owner_answered(self, owner: str) -> None:
        """systemd's unique bus name as GetNameOwner answered it; a NameOwnerChanged seen before the
        answer is newer and wins. (Tests start from here too, with a name of their choosing.)"""
        if not self._owner_signalled:
            self._owner = owner

    @property
    def owner(self) -> str:
        """systemd's current unique bus name; "" while it is away (re-executing)."""
        return self._owner

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    async def wait_disconnected(self) -> None:
        """Returns when the bus connection is lost."""
        bus = self._require()
        with contextlib.suppress(Exception):
            await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    def _require(self) -> MessageBus:
        if self._bus is None or not self._bus.connected:
            raise BusConnectionError("not connected to the system bus")
        return self._bus

    # -- signals -------------------------------------------------------------------------------------

    def receive(self, msg: Message) -> bool | None:
        """The entry point of every message from the bus: a signal from systemd's current owner (or the
        bus driver's NameOwnerChanged) goes to the sink; anything else is dropped. Returns None, as
        dbus-fast's message handlers do when they leave the message to others."""
        if msg.message_type is not MessageType.SIGNAL:
            return None
        from_systemd = bool(self._owner) and msg.sender == self._owner
        if msg.member == "NameOwnerChanged":
            if msg.sender == BUS_DRIVER and msg.interface == BUS_DRIVER and msg.signature == "sss" \
                    and msg.body[0] == SYSTEMD:
                self._owner_changed(str(msg.body[2]))
        elif from_systemd and self._sink is not None:
            self._dispatch(msg, self._sink)
        return None

    @staticmethod
    def _dispatch(msg: Message, sink: SignalSink) -> None:
        if msg.member == "JobRemoved" and msg.interface == MANAGER and msg.signature == "uoss":
            _id, job, _unit, result = msg.body
            sink.job_removed(str(job), str(result))
        elif msg.member in ("UnitNew", "UnitRemoved") and msg.interface == MANAGER and msg.signature == "so":
            # systemd announces a (re)loaded unit object with UnitNew and no properties: what was known of
            # the name is of an unloaded object (a garbage-collected worker whose number is reused).
            sink.unit_reloaded(str(msg.body[0]))
        elif (msg.member == "PropertiesChanged" and msg.interface == PROPERTIES and msg.signature == "sa{sv}as"
              and msg.body[0] in (SERVICE, UNIT) and msg.path):
            changed = {k: v.value if isinstance(v, Variant) else v for k, v in msg.body[1].items()}
            sink.properties_changed(unit_from_path(msg.path), changed, list(msg.body[2]))

    def _owner_changed(self, new_owner: str) -> None:
        """systemd left the bus ("" during a re-exec) or came back under a new unique name."""
        self._owner_signalled = True
        if new_owner == self._owner:
            return
        self._owner = new_owner
        if new_owner:
            self.owner_changes += 1
            if self._sink is not None:
                self._sink.owner_changed()
            task = asyncio.get_running_loop().create_task(self._after_reexec(new_owner))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _after_reexec(self, owner: str) -> None:
        """Renew the subscription, then let the sink settle every job whose JobRemoved fell into the gap."""
        try:
            await self.subscribe()
            if self._sink is not None:
                await self._sink.after_reexec()
        except (SystemdError, BusConnectionError) as exc:
            log.warning("systemd is back on the bus as %s but did not answer: %s; jobs are re-checked "
                        "every %gs", owner, exc, extra=event("systemd_reexec", error=str(exc)))
            return
        log.info("systemd is back on the bus as %s (daemon-reexec): subscribed again", owner,
                 extra=event("systemd_reexec"))

    async def subscribe(self) -> None:
        """systemd's Subscribe (it sends job and unit signals to subscribers only)."""
        try:
            await self.manager("Subscribe", "", [])
        except SystemdError as exc:
            if exc.name != _ALREADY_SUBSCRIBED:  # systemd keeps subscribers across a re-exec
                raise

    # -- calls ---------------------------------------------------------------------------------------

    async def manager(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        """A method of systemd's Manager; its reply's body."""
        return await self.call(SYSTEMD, MANAGER_PATH, MANAGER, member, signature, body)

    async def call_bus(self, member: str, signature: str, body: list[Any]) -> list[Any]:
        """A method of the bus driver (org.freedesktop.DBus)."""
        return await self.call(BUS_DRIVER, "/org/freedesktop/DBus", BUS_DRIVER, member, signature, body)

    async def get(self, path: str, interface: str, name: str) -> Any:
        """One property of a systemd object (`interface` without its `org.freedesktop.systemd1.` prefix)."""
        (value,) = await self.call(SYSTEMD, path, PROPERTIES, "Get", "ss", [f"{SYSTEMD}.{interface}", name])
        return value.value if isinstance(value, Variant) else value

    async def call(self, destination: str, path: str, interface: str, member: str,
                   signature: str, body: list[Any]) -> list[Any]:
        """One call; a read that systemd dropped by leaving the bus (daemon-reexec: the bus answers
        NoReply, "disconnected without replying") is sent once more when systemd is back.

        Raises the SystemdError subclass of the reply's D-Bus error name, SystemdTimeoutError after
        DBUS_TIMEOUT, BusConnectionError when the connection is lost."""
        owner = self._owner
        try:
            return await self._call_once(destination, path, interface, member, signature, body)
        except SystemdError as exc:
            if (destination != SYSTEMD or member not in _READS or exc.name != NO_REPLY
                    or isinstance(exc, SystemdTimeoutError)):
                raise
            # Back under a new unique name (NameOwnerChanged), or this NoReply was something else.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout_s
            while self._owner in ("", owner):
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.05)
            log.debug("%s dropped by systemd leaving the bus (%s); sending it again", member, exc.text)
            return await self._call_once(destination, path, interface, member, signature, body)

    async def _call_once(self, destination: str, path: str, interface: str, member: str,
                         signature: str, body: list[Any]) -> list[Any]:
        bus = self._require()
        msg = Message(destination=destination, path=path, interface=interface, member=member,
                      signature=signature, body=body)
        async with self._slots:
            try:
                reply = await asyncio.wait_for(bus.call(msg), self.timeout_s)
            except TimeoutError:
                who = "the bus" if destination == BUS_DRIVER else "systemd"
                raise SystemdTimeoutError(NO_REPLY, f"{who} did not answer {member} within "
                                                    f"{self.timeout_s:g}s (DBUS_TIMEOUT)") from None
            except (OSError, EOFError) as exc:
                raise BusConnectionError(f"system bus connection lost: {exc}") from None
        if reply is None:
            raise BusConnectionError("no reply from the system bus")
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or "org.freedesktop.DBus.Error.Failed"
            raise systemd_error(name, str(reply.body[0]) if reply.body else name)
        return list(reply.body)
