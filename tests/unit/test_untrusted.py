"""Broker data is untrusted input: parsing and bounds of what dqagent reads from Redis, the fleet
split's speed on any records, and the loop going on after an error no handler foresaw. The real probe, store
and agent against a rogue Redis client: tests/integration/test_untrusted.py."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dqagent.broker.redis import MAX_STALE_HEARTBEATS, oldest_ages, stale_brokers
from dqagent.core.fleet import MAX_MEMBERS, Member, apportion, fleet_bounds, read_records, rendezvous
from dqagent.core.untrusted import RecordKind, Rejection, ascii_int, shown
from dqagent.errors import BrokerError
from dqagent.report.metrics import families
from dqagent.report.reporter import Reporter
from tests.unit.fakes import FakeDemandProbe, FakeUnits
from tests.unit.logged import events
from tests.unit.test_agent_loop import FakeProbe, make, run, status

NOW_MS = 1_700_000_000_000
TTL_MS = 4_000
KEY = "dramatiq:__dqagent_fleet__:f"


def record(stamp: object = NOW_MS, **fields: object) -> str:
    body = {"host": "rogue", "weight": 4, "min_processes": 0, "max_processes": 4, "workers": 0, **fields}
    return f"{stamp} {json.dumps(body)}"


def read(*raws: bytes | str, total: int | None = None) -> tuple[tuple[Member, ...], tuple[Rejection, ...]]:
    pairs = [(f"id{i}".encode(), raw) for i, raw in enumerate(raws)]
    return read_records(pairs, NOW_MS, TTL_MS, len(raws) if total is None else total, KEY)


# -- numbers and text ------------------------------------------------------------------------------


def test_only_ascii_digits_are_numbers() -> None:
    assert ascii_int("123", 0, 1000) == 123 and ascii_int(7, 0, 10) == 7
    for bad in ("²", "١٢", "+1", " 1", "1_0", "", "-1", "1" * 20, True, 1.0, None, b"1"):
        assert ascii_int(bad, -10, 10**25) is None, bad
    assert ascii_int("1001", 0, 1000) is None and ascii_int(-1, 0, 10) is None


def test_a_shown_key_is_printable_ascii_and_cut() -> None:
    assert shown(b"\xff\xfeq") == "\\xff\\xfeq"
    assert shown("a\x1b]0;t\x07b") == "a\\x1b]0;t\\x07b"
    assert shown("x" * 100) == "x" * 80 + "..."


# -- heartbeats ------------------------------------------------------------------------------------


def test_a_heartbeat_member_that_is_no_broker_id_is_skipped_and_named() -> None:
    good = str(uuid.uuid4()).encode()
    ids, rejected = stale_brokers([b"\xff\xfeq", good, "plain", b"", b"a b", b"x" * 200], "dramatiq:__heartbeats__")
    assert ids == [good, b"plain"]
    assert [r.kind for r in rejected] == [RecordKind.HEARTBEAT] * 4
    assert rejected[0].key == "dramatiq:__heartbeats__ \\xff\\xfeq" and "not a Dramatiq broker id" in rejected[0].reason


def test_stale_heartbeats_past_the_cap_are_not_counted() -> None:
    members = [f"b{i}".encode() for i in range(MAX_STALE_HEARTBEATS + 1)]
    ids, rejected = stale_brokers(members, "k")
    assert len(ids) == MAX_STALE_HEARTBEATS
    assert [r.reason for r in rejected] == [f"more than {MAX_STALE_HEARTBEATS} stale heartbeats: the orphans of "
                                            "the others are not counted"]


@given(st.lists(st.one_of(st.none(), st.binary(max_size=30), st.text(max_size=30), st.integers()), max_size=5))
def test_any_script_reply_gives_ages_or_unreadable_never_an_error(reply: list[bytes | str | int | None]) -> None:
    got = oldest_ages(reply, NOW_MS)
    assert len(got.ages_s) == len(reply) and all(a is None or a >= 0 for a in got.ages_s)


def test_a_stamp_that_is_not_ascii_digits_is_unreadable() -> None:
    got = oldest_ages([b"\xff", "²", b"12" * 10, b"1699999999000", -1, None], NOW_MS)
    assert got.ages_s == (None, None, None, 1.0, None, None) and got.unreadable == 4


# -- fleet records -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "why"), [
    (record(max_processes=10**15, global_target=10**15), "max_processes: expected an integer in 0..1000"),
    (record(weight=10**9), "weight: expected an integer in 1..1000"),
    (record(workers=10**6), "workers: expected an integer in 0..1000"),
    (record(global_target=10**15), "global_target: expected an integer in 0..256000"),
    (record("²"), "stamp: expected 1..15 ASCII digits"),
    (record("+1"), "stamp: expected 1..15 ASCII digits"),
    (f"{NOW_MS} " + "[" * 200_000 + "]" * 200_000, "400014 bytes, more than 4096"),  # before json.loads
    (f"{NOW_MS} " + "[" * 100 + "]" * 100, "not a JSON object"),
    (f"{NOW_MS} " + "[" * 2040 + "]" * 2040, "not JSON"),  # json.loads' RecursionError
    (record(NOW_MS + TTL_MS + 1), "stamp: 1700000004001 is in the future"),
    (record(decided_ms=10**14), "decided_ms: 100000000000000 is in the future"),
    (record(host="\x1b]0;x\x07"), "host: expected 1..64 letters"),
    (b"\xff\xfe 1", "stamp: expected 1..15 ASCII digits"),
    ("!5000000 bytes, more than 4096", "5000000 bytes, more than 4096"),
])
def test_a_bad_record_is_skipped_with_its_reason(raw: str | bytes, why: str) -> None:
    good = record(host="good")
    members, rejected = read(raw, good)
    assert [m.host for m in members] == ["good"]
    [r] = rejected
    assert r.kind is RecordKind.FLEET_RECORD and r.key == f"{KEY}:host:id0" and r.reason.startswith(why), r.reason


def test_records_past_the_member_cap_are_not_read_and_that_is_reported() -> None:
    raws = [record(host=f"h{i}") for i in range(MAX_MEMBERS + 5)]
    members, rejected = read(*raws, total=10**6)
    assert len(members) == MAX_MEMBERS
    assert [r.reason for r in rejected] == [f"1000000 members, more than {MAX_MEMBERS}: only {MAX_MEMBERS} considered"]


def reference_apportion(total: int, members: Sequence[Member]) -> dict[str, int]:
    """The split seat by seat, as dqagent.core.fleet computed it before the bulk step (the definition)."""
    lo, hi = fleet_bounds(members)
    shares = {m.host: m.min_processes for m in members}
    seats = sorted((-2 * m.weight / (2 * k - 1), -rendezvous(m.host, k), m.host)
                    for m in members for k in range(m.min_processes + 1, m.max_processes + 1))
    for *_, host in seats[:max(lo, min(hi, total)) - lo]:
        shares[host] += 1
    return shares


small = st.builds(lambda lo, extra, w: (lo, lo + extra, w), st.integers(0, 4), st.integers(0, 30), st.integers(1, 9))


@given(st.lists(small, min_size=1, max_size=7), st.integers(-5, 250))
def test_the_bulk_split_gives_the_same_seats_as_seat_by_seat(ranges: list[tuple[int, int, int]], total: int) -> None:
    ms = [Member(f"h{i}", w, lo, hi, 0) for i, (lo, hi, w) in enumerate(ranges)]
    assert apportion(total, ms) == reference_apportion(total, ms)


bounded = st.builds(lambda lo, hi, w: (min(lo, hi), max(lo, hi), w), st.integers(0, 1000), st.integers(0, 1000),
                    st.integers(1, 1000))


@settings(max_examples=30, deadline=None)
@given(st.lists(bounded, min_size=1, max_size=MAX_MEMBERS), st.integers(0, MAX_MEMBERS * 1000))
def test_any_valid_records_split_quickly_and_within_each_range(ranges: list[tuple[int, int, int]], total: int) -> None:
    ms = [Member(f"h{i}", w, lo, hi, 0) for i, (lo, hi, w) in enumerate(ranges)]
    began = time.monotonic()
    shares = apportion(total, ms)
    assert time.monotonic() - began < 0.5
    lo, hi = fleet_bounds(ms)
    assert sum(shares.values()) == max(lo, min(hi, total))
    assert all(m.min_processes <= shares[m.host] <= m.max_processes for m in ms)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["host", "weight", "min_processes", "max_processes", "workers",
                                                 "global_target", "decided_ms", "ttl_ms"]),
                                st.one_of(st.integers(-10, 10**16), st.text(max_size=5), st.booleans(), st.none())),
                max_size=20), st.integers(0, 10**6))
def test_arbitrary_records_never_raise_and_split_within_bounds(bodies: list[dict[str, object]], total: int) -> None:
    raws = [f"{NOW_MS} {json.dumps(b)}" for b in bodies]
    members, _ = read(*raws)
    if members:
        shares = apportion(total, members)
        assert all(m.min_processes <= shares[m.host] <= m.max_processes <= 1000 for m in members)


# -- reporting -------------------------------------------------------------------------------------


def test_each_distinct_rejection_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    reporter = Reporter()
    bad = [Rejection(RecordKind.HEARTBEAT, "k \\xff", "not a Dramatiq broker id"),
           Rejection(RecordKind.FLEET_RECORD, "f:host:x", "weight: expected an integer in 1..1000")]
    for _ in range(3):
        reporter.rejected(bad)
    logged = events(caplog, "broker_data_rejected")
    assert [(r.KIND, r.KEY, r.REASON) for r in logged] == [  # type: ignore[attr-defined]
        ("heartbeat", "k \\xff", "not a Dramatiq broker id"),
        ("fleet_record", "f:host:x", "weight: expected an integer in 1..1000")]


def test_the_agent_counts_every_skip_in_the_metrics_and_logs_it_once(caplog: pytest.LogCaptureFixture) -> None:
    probe = FakeProbe(ready=1)
    probe.demand = type(probe.demand)(probe.demand.queues, rejected=(
        Rejection(RecordKind.HEARTBEAT, "k \\xff", "not a Dramatiq broker id"),))
    agent = make(FakeUnits(running=[1]), probe)

    async def scenario() -> None:
        for _ in range(3):
            await agent.tick()
        await agent.jobs.wait()

    run(scenario)
    assert len(events(caplog, "broker_data_rejected")) == 1
    assert agent.latest is not None
    assert dict(agent.latest.counters.records_rejected) == {"heartbeat": 3, "fleet_record": 0}
    [family] = [f for f in families(agent.latest) if f.name == "dqagent_broker_records_rejected"]
    assert {(s.labels["kind"], s.value) for s in family.samples if s.name.endswith("_total")} == {
        ("heartbeat", 3), ("fleet_record", 0)}


# -- an error no handler foresaw --------------------------------------------------------------------


class BuggyProbe(FakeDemandProbe):
    """Raises what no handler in the tick expects, `failures` times, then reads like the fake."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.set_queue("q", ready=1)
        self.failures = failures

    async def fetch_demand(self):  # type: ignore[no-untyped-def]
        self.fetch_calls += 1
        if self.fetch_calls <= self.failures:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return self.demand


def test_an_unexpected_error_in_a_tick_is_logged_once_with_its_traceback_and_the_loop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    probe = BuggyProbe(failures=3)
    agent = make(FakeUnits(running=[1]), probe, under_systemd=False)
    caplog.set_level(logging.INFO)

    async def no_pause(delay_s: float, bus_lost: object) -> None:
        if probe.fetch_calls == 3:
            assert status(agent).startswith("STATUS=check failed (UnicodeDecodeError")
        if probe.fetch_calls >= 5:
            agent.stop_requested.set()
        await asyncio.sleep(0)

    agent._pause = no_pause  # type: ignore[method-assign,assignment]
    assert run(agent.run) == 0
    assert probe.fetch_calls == 5  # three failed ticks, then two good ones: the loop went on
    [failed] = events(caplog, "tick_failed")
    assert failed.levelno == logging.ERROR and failed.exc_info is not None  # the traceback, once
    assert failed.ERROR.startswith("UnicodeDecodeError")  # type: ignore[attr-defined]
    assert len(events(caplog, "tick_recovered")) == 1
    assert agent.latest is not None and dict(agent.latest.counters.source_errors)["internal"] == 3
    assert agent._progress_deadline > agent.clock()  # a failed tick still counts as the loop's progress


def test_a_check_that_finds_redis_down_is_no_recovery_from_a_failed_one(caplog: pytest.LogCaptureFixture) -> None:
    probe = BuggyProbe(failures=1)  # the first check fails unexpectedly, then Redis is down, then it is back
    agent = make(FakeUnits(running=[1]), probe, under_systemd=False)
    caplog.set_level(logging.INFO)
    real_fetch = probe.fetch_demand

    async def fetch():  # type: ignore[no-untyped-def]
        if probe.fetch_calls == 1:
            probe.fetch_calls += 1
            raise BrokerError("connection refused")
        return await real_fetch()

    async def no_pause(delay_s: float, bus_lost: object) -> None:
        if probe.fetch_calls == 2:  # after the Redis-down check: not recovered yet
            assert not events(caplog, "tick_recovered")
        if probe.fetch_calls >= 3:
            agent.stop_requested.set()
        await asyncio.sleep(0)

    probe.fetch_demand = fetch  # type: ignore[method-assign]
    agent._pause = no_pause  # type: ignore[method-assign,assignment]
    assert run(agent.run) == 0
    assert len(events(caplog, "tick_recovered")) == 1  # once, by the check that ran to its end
