"""`dqagent check`: the preflight operators expect (like `nginx -t`): one line per check.

`ok: ...` or `FAIL: what, why; fix: ...`; exit 0 when every check passes, 78 otherwise. Checks: the
settings file loads; Redis answers with the configured credentials (and what the queues hold);
`DRAMATIQ_COMMAND` parses with Dramatiq's own parser; every path both units need is visible in
their sandbox and reachable by their users; polkitd is installed and on the bus and the rule is in
place; the installed units are what `dqagent install` renders for these settings, and systemd has
loaded them (the template's `TimeoutStopSec` against `GRACEFUL_SHUTDOWN_TIMEOUT`, over D-Bus).
`--offline` skips what needs Redis or the system bus.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from dqagent.errors import EXIT_CONFIG, EXIT_OK, BrokerError, ConfigError, DqAgentError
from dqagent.report.terminal import printable
from dqagent.settings import sources
from dqagent.settings.config import Settings
from dqagent.settings.declarations import unknown_key_message
from dqagent.settings.workercmd import command_argv, worker_shape
from dqagent.setup.reach import AGENT_USER, Preflight, dqagent_executable, preflight, who

#: The worker template instance systemd is asked about (a template itself has no properties).
PROBE_WORKER = "dramatiq-worker@1.service"
POLKIT_NAME = "org.freedesktop.PolicyKit1"


@dataclass(frozen=True, slots=True)
class Result:
    """One check's outcome; `text` is "what" for ok, "what, why; fix: ..." for a failure."""

    ok: bool
    text: str
    #: Advice, not a failure (`hint: ...`): e.g. what the workers' opt-in report would give.
    hint: bool = False

    def line(self) -> str:
        """For a terminal (check's and install's output): the text may quote Redis's or systemd's words or a
        setting's value, so its control characters are shown as escapes (`terminal.printable`)."""
        return f"{'hint' if self.hint else 'ok' if self.ok else 'FAIL'}: {printable(self.text)}"


def _dramatiq_args_problem(command: str) -> tuple[bool, str]:
    """(is a dramatiq command line, why Dramatiq's own parser rejects it or "") via `workercmd.worker_shape`."""
    try:
        shape = worker_shape(command, os.cpu_count())
    except ConfigError as exc:
        return True, exc.accepted
    return shape.is_dramatiq, ""


def command_results(settings: Settings) -> list[Result]:
    argv = command_argv(settings.dramatiq_command)
    is_dramatiq, problem = _dramatiq_args_problem(settings.dramatiq_command)
    if problem:
        return [Result(False, f"DRAMATIQ_COMMAND does not parse as a Dramatiq command line ({problem}); "
                       "fix: correct it in the settings file (see `python -m dramatiq --help`)")]
    if not is_dramatiq:
        return [Result(True, f"DRAMATIQ_COMMAND runs {argv[0]} (not `python -m dramatiq`: its arguments "
                       "are not checked)")]
    return [Result(True, "DRAMATIQ_COMMAND parses with Dramatiq's argument parser")]


def path_results(settings: Settings, pre: Preflight) -> list[Result]:
    out = [Result(False, f"{r.line()}") for r in (*pre.refusals, *pre.missing)]
    if who(AGENT_USER).uid is None:
        out.append(Result(False, f"user {AGENT_USER} does not exist; fix: dqagent install"))
    if who(settings.worker_user).uid is None:
        out.append(Result(False, f"WORKER_USER={settings.worker_user} does not exist; fix: dqagent install "
                          "(creates the default user) or create it"))
    if not out:
        binds = sorted({*pre.agent.binds, *pre.worker.binds})
        shown = f" (visible through BindReadOnlyPaths: {' '.join(binds)})" if binds else ""
        out.append(Result(True, f"every path the units need is reachable by {AGENT_USER} and "
                          f"{settings.worker_user}, DRAMATIQ_COMMAND's executable and WORKER_DIRECTORY "
                          f"included{shown}"))
    return out


def _first_difference(installed: str, wanted: str) -> str:
    have = [ln for ln in installed.splitlines() if ln not in wanted.splitlines()]
    want = [ln for ln in wanted.splitlines() if ln not in installed.splitlines()]
    parts = []
    if have:
        parts.append(f"has {have[0]!r}")
    if want:
        parts.append(f"should have {want[0]!r}")
    return ", ".join(parts) or "differs"


def unit_file_results(settings: Settings, pre: Preflight, exe: str) -> list[Result]:
    from dqagent.setup.layout import PACKAGING, POLKIT_RULE, rendered_units

    out: list[Result] = []
    for path, wanted in rendered_units(settings, exe, pre).items():
        try:
            installed = path.read_text()
        except FileNotFoundError:
            out.append(Result(False, f"{path} is not installed; fix: dqagent install"))
            continue
        if installed != wanted:
            diff = _first_difference(installed, wanted)
            out.append(Result(False, f"{path} is out of date for these settings ({diff}); fix: dqagent install"))
        else:
            out.append(Result(True, f"{path} is what dqagent install renders for these settings"))
    out += limits_results(settings)
    rule = (PACKAGING / "dqagent.rules").read_text()
    try:
        same = POLKIT_RULE.read_text() == rule
    except FileNotFoundError:
        out.append(Result(False, f"polkit rule {POLKIT_RULE} is missing: the agent may not start or stop "
                          "workers; fix: dqagent install"))
    else:
        out.append(Result(same, f"polkit rule {POLKIT_RULE} is in place" if same else
                          f"polkit rule {POLKIT_RULE} differs from dqagent's; fix: dqagent install"))
    return out


def limits_results(settings: Settings) -> list[Result]:
    """The resource-limit drop-ins: in place as rendered, absent when no such limit is set."""
    from dqagent.setup.layout import limits_summary, ours, rendered_limits

    out: list[Result] = []
    for path, wanted in rendered_limits(settings).items():
        if not path.exists():
            if wanted is not None:
                out.append(Result(False, f"{path} is not installed; fix: dqagent install"))
        elif not ours(path):
            out.append(Result(False, f"{path} was not written by dqagent install (its limits are the operator's); "
                              "fix: move it away, then dqagent install"))
        elif wanted is None:
            out.append(Result(False, f"{path} sets pool limits these settings no longer set; fix: dqagent install"))
        elif path.read_text() != wanted:
            out.append(Result(False, f"{path} is out of date for these settings "
                              f"({_first_difference(path.read_text(), wanted)}); fix: dqagent install"))
    if not out:
        out.append(Result(True, f"resource limits in place: {limits_summary(settings)}"))
    return out


def pool_results(loaded: sources.Loaded, exe: str) -> list[Result]:
    """Each pool of pools.d, its lines naming it: its command, its user and paths, its drop-ins in place;
    and no drop-ins left of a pool whose file is gone."""
    from dqagent.setup import pooldropins, poolinstall
    from dqagent.setup.layout import PACKAGING, UNIT_DIR

    agent_text, worker_text = ((PACKAGING / n).read_text() for n in ("dqagent.service", "dramatiq-worker@.service"))
    pools = loaded.pools[1:]
    out: list[Result] = []
    for pool in pools:
        pre = preflight(pool.settings, exe, agent_text, worker_text)
        found = [*command_results(pool.settings), *path_results(pool.settings, pre)]
        out += [Result(r.ok, f"pool {pool.name} ({pool.source}): {r.text}") for r in found]
    wanted = poolinstall.plan(pools, UNIT_DIR, exe, agent_text, worker_text).files
    for pool in pools:
        mine = [p for p in wanted if pooldropins.pool_of(p) == pool.name]
        bad = [p for p in mine if not pooldropins.ours(p) or p.read_text() != wanted[p]]
        out.append(Result(not bad, f"pool {pool.name}: {len(bad)} of its {len(mine)} drop-ins missing, out of date "
                          f"or not dqagent's (first: {bad[0]}); fix: dqagent install" if bad else
                          f"pool {pool.name}: its drop-ins are in place (User=, Slice="
                          f"{pooldropins.pool_slice(pool.name)}, limits)"))
    stale = sorted({pooldropins.pool_of(p) or "" for p in pooldropins.stale(UNIT_DIR, wanted)})
    if stale:
        out.append(Result(False, f"drop-ins of pools no file in pools.d declares: {', '.join(stale)}; fix: dqagent "
                          "install (removes them)"))
    return out


async def template_stop_timeout_s(bus_address: str | None = None) -> float | None:
    """The `TimeoutStopSec` systemd has loaded for the worker template, in seconds; None when systemd
    has no such template (not installed, or not reloaded since)."""
    from dqagent.systemd.client import SystemdClient

    client = SystemdClient(bus_address)
    await client.connect()
    try:
        if await client.unit_property(PROBE_WORKER, "Unit", "LoadState") != "loaded":
            return None
        usec = await client.unit_property(PROBE_WORKER, "Service", "TimeoutStopUSec")
    finally:
        client.close()
    return int(usec) / 1e6


def stop_timeout_mismatch(loaded_s: float, settings: Settings) -> str:
    """One line when systemd's template timeout is not GRACEFUL_SHUTDOWN_TIMEOUT, else ""."""
    if abs(loaded_s - settings.graceful_shutdown_timeout_s) < 1e-3:
        return ""
    return (f"dramatiq-worker@.service has TimeoutStopSec={loaded_s:g}s in systemd but "
            f"GRACEFUL_SHUTDOWN_TIMEOUT={settings.graceful_shutdown_timeout_s:g}: workers are SIGKILLed "
            "after the template's value; fix: dqagent install (renders the template and reloads systemd)")


async def bus_results(settings: Settings, bus_address: str | None) -> list[Result]:
    from dqagent.setup.layout import POLKITD
    from dqagent.systemd.client import SystemdClient

    out: list[Result] = []
    try:
        loaded_s = await template_stop_timeout_s(bus_address)
    except DqAgentError as exc:
        out.append(Result(False, f"systemd could not be asked about {PROBE_WORKER} ({exc}); fix: see "
                          "journalctl -b, then dqagent install"))
    else:
        if loaded_s is None:
            out.append(Result(False, "systemd has no dramatiq-worker@.service loaded; fix: dqagent install"))
        else:
            mismatch = stop_timeout_mismatch(loaded_s, settings)
            out.append(Result(not mismatch, mismatch or f"systemd's worker template stops with "
                              f"TimeoutStopSec={loaded_s:g}s = GRACEFUL_SHUTDOWN_TIMEOUT"))
    client = SystemdClient(bus_address)
    try:
        await client.connect()
        state = await client.bus_name_state(POLKIT_NAME)
    except DqAgentError as exc:
        state = f"unknown ({exc})"
    finally:
        client.close()
    if not POLKITD.exists() or state not in ("running", "activatable"):
        out.append(Result(False, f"polkitd is not installed or not on the system bus ({POLKITD} "
                          f"{'present' if POLKITD.exists() else 'missing'}, {POLKIT_NAME} {state}): every "
                          "worker start by user dqagent would be refused; fix: apt-get install polkitd"))
    else:
        out.append(Result(True, f"polkitd is installed and {POLKIT_NAME} is {state} on the system bus"))
    return out


async def report_results(bus_address: str | None) -> list[Result]:
    """Whether the running workers report what they do (`dqagent.dramatiq.WorkerReport`): a hint, never a FAIL,
    when none does (the agent then stops the highest numbers and cannot tell a hung worker)."""
    from dqagent.host.reports import read_loads
    from dqagent.systemd.client import SystemdClient

    client = SystemdClient(bus_address)
    try:
        await client.connect()
        running = [s for s in await client.worker_states(brief=()) if s.running]
    except DqAgentError:
        return []  # bus_results says what is wrong with systemd
    finally:
        client.close()
    if not running:
        return []
    reporting = len(read_loads(running))
    if reporting:
        return [Result(True, f"{reporting} of {len(running)} running workers report what they run "
                       "(dqagent.dramatiq.WorkerReport): scale-down stops the least busy first")]
    return [Result(True, f"none of the {len(running)} running workers reports what it runs: add "
                   "`broker.add_middleware(WorkerReport())` (from dqagent.dramatiq import WorkerReport) to the app "
                   "so that scale-down stops idle workers first, never cuts a running task short while one is "
                   "idle, and WORKER_HUNG_AFTER can restart hung workers (README, \"Which worker is busy\")",
                   hint=True)]


async def redis_results(loaded: sources.Loaded) -> list[Result]:
    from dqagent.broker.probes import open_probe

    s = loaded.settings
    if s.rabbitmq_url:
        from dqagent.setup.check_rabbitmq import rabbitmq_results

        return [Result(ok, text) for ok, text in await rabbitmq_results(loaded)]
    probe = open_probe(s)
    try:
        demand = await probe.fetch_demand()
    except BrokerError as exc:
        note = f" ({loaded.password_note}: run as root)" if loaded.password_note else ""
        return [Result(False, f"{exc}{note}; fix: check REDIS_* in the settings file and the password in "
                       "/etc/dqagent/redis-password")]
    finally:
        await probe.close()
    out = [Result(True, f"Redis at {s.redis_location()} answers with the configured credentials")]
    for q in demand.queues:
        if q.outstanding or q.delayed or q.dead or q.ready:
            out.append(Result(True, f"queue {q.queue} (namespace {s.namespace}) exists: {q.ready} ready, "
                              f"{q.outstanding} outstanding, {q.delayed} delayed, {q.dead} dead-lettered"))
        else:
            out.append(Result(True, f"queue {q.queue} (namespace {s.namespace}) is empty: Redis holds no key "
                              "for it (nothing enqueued yet, or everything processed)"))
    return out


def settings_results(loaded: sources.Loaded) -> list[Result]:
    """`ok` when the file loaded and declares nothing unknown; one FAIL per key no setting declares."""
    if loaded.unknown_keys:
        return [Result(False, f"{unknown_key_message(key)} (a key of {loaded.env_file} that dqagent ignores; fix: "
                       "correct or remove it)") for key in loaded.unknown_keys]
    return [Result(True, f"settings{f' ({loaded.env_file})' if loaded.env_file else ''} load and are valid")]


async def run_checks(env_file: Path | None, offline: bool = False,
                     bus_address: str | None = None) -> list[Result]:
    """Every check, in order; a settings file that does not load stops there."""
    try:
        loaded = sources.load(env_file)
    except ConfigError as exc:
        where = env_file or "the settings file"
        pool_file = exc.key.partition(": ")[0] if "/pools.d/" in exc.key else ""  # the file it names
        return [Result(False, f"settings ({where}) do not load: {exc}; fix: edit {pool_file or where}")]
    s = loaded.settings
    results = settings_results(loaded)
    from dqagent.setup.layout import PACKAGING

    exe = dqagent_executable()
    pre = preflight(s, exe, (PACKAGING / "dqagent.service").read_text(),
                    (PACKAGING / "dramatiq-worker@.service").read_text())
    results += command_results(s) + path_results(s, pre) + unit_file_results(s, pre, exe)
    results += pool_results(loaded, exe)
    if not offline:
        results += await redis_results(loaded)
        results += await bus_results(s, bus_address)
        results += await report_results(bus_address)
    return results


def check(env_file: Path | None, offline: bool = False, bus_address: str | None = None) -> int:
    """Print one line per check; 0 when all pass, 78 otherwise."""
    results = asyncio.run(run_checks(env_file, offline, bus_address))
    for r in results:
        print(r.line())
    return EXIT_OK if all(r.ok for r in results) else EXIT_CONFIG
