"""The workers' own reports, read from their runtime directories (the only reader of them).

`dqagent.dramatiq.WorkerReport` (the app's opt-in) writes one `<pid>.json` per Dramatiq process into
`/run/dramatiq-worker/<instance>/`, the `RuntimeDirectory=` systemd makes for each worker unit and removes when
it stops (so no report outlives its unit). This module lists those files for the running units and turns
them into `dqagent.core.busy.Load`s; what they mean is decided in `dqagent.core.busy`. A unit without a
directory, or with no valid report in it, has no load (the app did not opt in, or it has not booted yet).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from dqagent.core.busy import MAX_REPORT_BYTES, Load, ProcessReport, combine, parse_report
from dqagent.core.units import WORKER_TEMPLATE, UnitState

#: Where systemd makes the workers' runtime directories (`RuntimeDirectory=dramatiq-worker/%i`).
REPORT_ROOT = Path("/run") / WORKER_TEMPLATE
#: Most report files read per unit (`--processes` is rarely above the CPU count).
MAX_FILES = 256


def instance_name(unit: str) -> str:
    """`dramatiq-worker@io-3.service` -> `io-3` (systemd's %i)."""
    return unit.partition("@")[2].removesuffix(".service")


def read_unit(directory: Path) -> Load | None:
    """One unit's reports together; None without a valid one."""
    return combine(_reports(directory))


def _reports(directory: Path) -> Iterable[ProcessReport]:
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))[:MAX_FILES]
    except OSError:
        return
    for name in names:
        raw = b""
        with contextlib.suppress(OSError), open(directory / name, "rb") as f:
            raw = f.read(MAX_REPORT_BYTES + 1)
        report = parse_report(raw) if raw else None
        if report is not None:
            yield report


def read_loads(units: Iterable[UnitState], root: Path = REPORT_ROOT) -> dict[str, Load]:
    """The running units' loads by unit name (those without a report are left out)."""
    out: dict[str, Load] = {}
    for s in units:
        if s.running and (load := read_unit(root / instance_name(s.unit))) is not None:
            out[s.unit] = load
    return out


def by_instance(loads: Mapping[str, Load], units: Iterable[UnitState]) -> dict[int, Load]:
    """One pool's loads by instance number (`units`: that pool's)."""
    return {s.instance: loads[s.unit] for s in units if s.unit in loads}
