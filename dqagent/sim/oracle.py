"""A perfect forecast for the simulator: the workload's true future, in the forecaster's own terms.

`Oracle` stands in for `dqagent.core.forecast.Forecaster` inside `dqagent.core.predictor.Predicting`, so the
pre-warm lead, the hold horizon, the fast reads (`Forecast.watch`) and rule 3b's floor are exactly those of
PREDICTIVE=on; only the source of the forecast changes. What it says (never learnt, always trusted, error 0):

- `Kind.RISE` (a workload of batches, the kind the forecaster finds a short period in): the most messages that
  will arrive after `from_s` within one `RESOLUTION_S` bucket of the window, the forecaster's "rise" without
  its error (a batch arrives at one instant, so this is the batch);
- `Kind.LEVEL` (a flow, the kind the daily profile forecasts): the highest count over the window of a pool
  that starts every message on arrival (arrived and not done, with the workload's own service times): the
  work there is to do, the count a pool keeping up would read.

It answers from the workload the simulator will deliver, which no real agent can know: it measures what the
floor would do with a perfect forecast ("same policy, perfect forecast"), not a policy anyone can run.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from dqagent.core.forecast import RESOLUTION_S, Forecaster, Kind, Outlook
from dqagent.sim.agenttick import EPOCH_S
from dqagent.sim.traces import Workload

#: Arrivals per block of the range maximum (LEVEL): a window's maximum reads at most two partial blocks.
BLOCK = 64


class Oracle(Forecaster):
    """The true future of `workload` as a `Forecaster` answers (see the module docstring). Wall-clock seconds
    are the simulator's (`EPOCH_S` + simulated seconds), as `Predicting` passes them."""

    def __init__(self, workload: Workload, kind: Kind | None = None) -> None:
        super().__init__()
        self.forecast_kind = kind if kind is not None else (Kind.RISE if workload.trace.bursts else Kind.LEVEL)
        self.arrivals = sorted(workload.arrivals_s)
        self.ends: list[float] = []
        self.levels: list[int] = []
        self.blocks: list[int] = []
        if self.forecast_kind is Kind.LEVEL:
            self.ends = sorted(a + s for a, s in zip(workload.arrivals_s, workload.services_s, strict=True))
            self.levels = [self.level(a) for a in self.arrivals]
            self.blocks = [max(self.levels[i:i + BLOCK]) for i in range(0, len(self.levels), BLOCK)]

    def level(self, t: float) -> int:
        """Messages arrived by `t` and not done at `t` when each starts on arrival."""
        return bisect.bisect_right(self.arrivals, t) - bisect.bisect_right(self.ends, t)

    # -- the Forecaster's answers --

    def observe(self, now_s: float, outstanding: int) -> None:
        """Nothing to learn: the oracle knows."""

    def commit(self, now_s: float, lead_s: float) -> None:
        """Nothing to score: the oracle is never wrong."""

    def error_recent(self) -> float | None:
        return 0.0

    def error_day(self, now_s: float) -> float | None:
        return 0.0

    def kind(self) -> Kind | None:
        return self.forecast_kind

    def outlook(self, from_s: float, to_s: float) -> Outlook | None:
        if self.forecast_kind is Kind.RISE:
            return Outlook(Kind.RISE, float(self.busiest_bucket(from_s, to_s)))
        lo, hi = from_s - EPOCH_S, to_s - EPOCH_S
        return Outlook(Kind.LEVEL, float(max(self.level(lo), self.highest_level(lo, hi))))

    def busiest_bucket(self, from_s: float, to_s: float) -> int:
        """The most arrivals in (from_s, to_s] (wall clock) falling in one RESOLUTION_S bucket of the wall
        clock (the forecaster's grid)."""
        best, edge, arrivals = 0, from_s, self.arrivals
        while edge < to_s:
            stop = min(to_s, (math.floor(edge / RESOLUTION_S) + 1) * RESOLUTION_S)
            best = max(best, bisect.bisect_right(arrivals, stop - EPOCH_S) - bisect.bisect_right(arrivals,
                                                                                               edge - EPOCH_S))
            edge = stop
        return best

    def highest_level(self, lo: float, hi: float) -> int:
        """The highest `level` just after an arrival in (lo, hi] (0: none): the level only rises at one."""
        i, j = bisect.bisect_right(self.arrivals, lo), bisect.bisect_right(self.arrivals, hi)
        return _range_max(self.levels, self.blocks, i, j)


def _range_max(values: Sequence[int], blocks: Sequence[int], i: int, j: int) -> int:
    """max(values[i:j]) (0 when empty), reading whole blocks of BLOCK through `blocks`."""
    if j - i <= 2 * BLOCK:
        return max(values[i:j], default=0)
    first, last = -(-i // BLOCK), j // BLOCK
    return max(max(values[i:first * BLOCK], default=0), max(blocks[first:last], default=0),
               max(values[last * BLOCK:j], default=0))
