"""Only validated instance numbers ever become unit names."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dqagent.core.units import MAX_INSTANCE, JobOutcome, parse_worker, worker_instance, worker_unit
from dqagent.errors import (
    AccessDeniedError,
    JobWaitTimeoutError,
    NoSuchUnitError,
    SystemdError,
    SystemdTimeoutError,
    UnitNameError,
    systemd_error,
)
from dqagent.settings.config import MAX_PROCESSES_LIMIT
from dqagent.setup.layout import PACKAGING


@given(st.integers(1, MAX_INSTANCE))
def test_round_trip(n: int) -> None:
    assert worker_instance(worker_unit(n)) == n


@pytest.mark.parametrize("bad", [0, -1, 1001, 1_000_000, True, "1", "x", 1.0, None])
def test_anything_else_is_refused(bad: object) -> None:
    with pytest.raises(UnitNameError):
        worker_unit(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["dramatiq-worker@x.service", "dramatiq-worker@01.service",
                                  "dramatiq-worker@0.service", "dramatiq-worker@1001.service",
                                  "dramatiq-worker@0001.service", "dramatiq-worker@999999.service",
                                  "dramatiq-worker@1.socket", "dramatiq-worker@1.service.d", "redis.service",
                                  "dramatiq-worker@1;x.service", "dramatiq-worker@.service"])
def test_foreign_names_are_not_managed(name: str) -> None:
    assert worker_instance(name) is None


@pytest.mark.parametrize(("name", "kind"), [
    ("org.freedesktop.DBus.Error.AccessDenied", AccessDeniedError),
    ("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", AccessDeniedError),
    ("org.freedesktop.systemd1.NoSuchUnit", NoSuchUnitError),
    ("org.freedesktop.systemd1.UnitMasked", SystemdError),
    ("org.freedesktop.systemd1.TransactionIsDestructive", SystemdError),
])
def test_a_dbus_error_becomes_its_type_and_only_a_refusal_counts_as_refused(name: str,
                                                                           kind: type[SystemdError]) -> None:
    error = systemd_error(name, "text")
    assert type(error) is kind and error.name == name
    outcome = JobOutcome("dramatiq-worker@1.service", error=error)
    assert outcome.refused is (kind is AccessDeniedError) and not outcome.ok
    assert outcome.text == f"error: {name}"  # as logs and scale-up/-down have always shown it


@pytest.mark.parametrize(("outcome", "ok", "text"), [
    (JobOutcome("dramatiq-worker@1.service", "done"), True, "done"),
    (JobOutcome("dramatiq-worker@1.service", "failed"), False, "failed"),
    # systemd's own JobTimeoutSec: a job result, not an error of ours
    (JobOutcome("dramatiq-worker@1.service", "timeout"), False, "timeout"),
    (JobOutcome("dramatiq-worker@1.service", error=JobWaitTimeoutError("no JobRemoved")), False,
     "timeout (no JobRemoved)"),
])
def test_job_outcomes_carry_their_kind_as_a_type_not_as_text(outcome: JobOutcome, ok: bool, text: str) -> None:
    assert (outcome.ok, outcome.refused, outcome.text) == (ok, False, text)
    assert isinstance(outcome.error, SystemdTimeoutError) is text.endswith("(no JobRemoved)")


def _polkit_unit_pattern() -> re.Pattern[str]:
    """The unit regex of the shipped polkit rule (a JavaScript literal `/^...$/`: no flags, so `$` is the
    end of the name, as Python's fullmatch)."""
    rule = (PACKAGING / "dqagent.rules").read_text()
    found = re.search(r"/\^(dramatiq-worker@.*?)\$/\.test\(unit\)", rule)
    assert found, "the rule's unit pattern moved"
    return re.compile(found.group(1))


@given(st.one_of(st.integers(-5, 2 * MAX_INSTANCE).map(str), st.from_regex(r"0*[0-9]{1,7}", fullmatch=True),
                 st.text(max_size=6)))
def test_polkit_rule_admits_exactly_the_names_the_agent_builds_and_parses(instance: str) -> None:
    """No @0, no leading zeros, nothing above MAX_INSTANCE = MAX_PROCESSES' limit."""
    name = f"dramatiq-worker@{instance}.service"
    parsed = parse_worker(name)
    assert (_polkit_unit_pattern().fullmatch(name) is not None) == (parsed is not None)
    if parsed is not None:
        pool, n = parsed
        assert worker_unit(n, pool) == name and 1 <= n <= MAX_INSTANCE


def test_instance_numbers_stop_at_max_processes_limit() -> None:
    assert MAX_INSTANCE == MAX_PROCESSES_LIMIT == 1000
    names = ["dramatiq-worker@0.service", "dramatiq-worker@01.service", "dramatiq-worker@1001.service"]
    assert [bool(_polkit_unit_pattern().fullmatch(n)) for n in names] == [False, False, False]
    assert _polkit_unit_pattern().fullmatch("dramatiq-worker@1000.service")


@given(st.one_of(st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True), st.sampled_from(["default", "Io", "i-o", "_io",
                                                                                     "9io", "a" * 33, "io.x", ""]),
                 st.text(max_size=6)),
       st.one_of(st.integers(-5, 2 * MAX_INSTANCE).map(str), st.sampled_from(["01", "0", "1000", "1001"])))
def test_polkit_rule_admits_exactly_the_pool_names_the_agent_builds_and_parses(pool: str, instance: str) -> None:
    """`<pool>-<N>`: a pool name systemd and the agent accept, never `default-N` (the default pool is `@N`)."""
    name = f"dramatiq-worker@{pool}-{instance}.service"
    parsed = parse_worker(name)
    assert (_polkit_unit_pattern().fullmatch(name) is not None) == (parsed is not None), name
    if parsed is not None:
        assert worker_unit(parsed[1], parsed[0]) == name


@pytest.mark.parametrize("name", ["dramatiq-worker@io-1.service", "dramatiq-worker@io-1000.service",
                                  "dramatiq-worker@a-7.service", "dramatiq-worker@cpu_heavy2-42.service",
                                  f"dramatiq-worker@a{'b' * 31}-3.service", "dramatiq-worker@defaults-3.service",
                                  "dramatiq-worker@default_x-3.service", "dramatiq-worker@5.service"])
def test_polkit_rule_admits_pool_units(name: str) -> None:
    assert _polkit_unit_pattern().fullmatch(name), name


@pytest.mark.parametrize("name", ["dramatiq-worker@default-3.service", "dramatiq-worker@io-0.service",
                                  "dramatiq-worker@io-01.service", "dramatiq-worker@io-1001.service",
                                  "dramatiq-worker@IO-3.service", "dramatiq-worker@1io-3.service",
                                  "dramatiq-worker@_io-3.service", "dramatiq-worker@io_-.service",
                                  "dramatiq-worker@io-x-3.service", "dramatiq-worker@io--3.service",
                                  f"dramatiq-worker@a{'b' * 32}-3.service", "dramatiq-worker@io-3.socket",
                                  "dramatiq-worker@io-.service", "dramatiq-worker@-3.service",
                                  "dramatiq-worker@io-3.service\n", "dramatiq-worker@io-3.serviceX",
                                  "dramatiq-worker-io@3.service", "dqagent.service"])
def test_polkit_rule_refuses_other_names(name: str) -> None:
    assert not _polkit_unit_pattern().fullmatch(name), name
