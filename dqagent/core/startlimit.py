"""systemd's start limit on worker units, pure: which instance numbers the agent should not start now.

The worker template allows BURST starts of one unit within INTERVAL_S (StartLimitIntervalSec=60s,
StartLimitBurst=5); one more start and systemd refuses it and leaves the unit failed with Result=
`start-limit-hit`. systemd keeps that count while the unit stays loaded (another unit refers to it, it
failed, it waits to restart...), and systemd's own `Restart=` counts too.

The agent's rule (step rule 5, `dqagent.core.reconciler.reconcile`'s `avoid`): it remembers when it started
each number (`record`); a number it started `BURST - RESERVE` times within the last INTERVAL_S is *worn*,
and a scale-up takes the lowest free numbers that are not worn, a worn one only when no other is free.
RESERVE starts of each number are left to systemd's `Restart=` (a crash and its restart). Flipping
demand therefore moves on to fresh numbers instead of driving one unit into its limit; the cost is only
that a busy pool's numbers are not always the lowest (stops take the highest first, so they come back
down).

A unit that did end in `start-limit-hit` (an operator's starts, or a crash loop) is failed like any other:
the reconciler resets it (ResetFailedUnit, which also clears systemd's count) and reuses its number, and the
crash-loop backoff counts that reuse as a failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

#: The worker template's StartLimitIntervalSec and StartLimitBurst (packaging/systemd/dramatiq-worker@.service).
INTERVAL_S = 60.0
BURST = 5
#: Starts of one number within INTERVAL_S left to systemd's Restart= (not used by the agent's own starts).
RESERVE = 2

#: Start times (monotonic seconds) of each instance number, within the last INTERVAL_S.
Starts = Mapping[int, tuple[float, ...]]


def record(starts: Starts, numbers: Iterable[int], now_s: float,
           interval_s: float = INTERVAL_S) -> dict[int, tuple[float, ...]]:
    """`starts` with a start of each of `numbers` at `now_s`, and the starts older than `interval_s` dropped."""
    out = {n: kept for n, times in starts.items() if (kept := recent(times, now_s, interval_s))}
    for n in numbers:
        out[n] = (*out.get(n, ()), now_s)
    return out


def recent(times: tuple[float, ...], now_s: float, interval_s: float = INTERVAL_S) -> tuple[float, ...]:
    return tuple(t for t in times if now_s - t < interval_s)


def worn(starts: Starts, now_s: float, interval_s: float = INTERVAL_S, burst: int = BURST,
         reserve: int = RESERVE) -> frozenset[int]:
    """The numbers started `burst - reserve` times or more within the last `interval_s`: not to be started again
    while another number is free."""
    limit = max(1, burst - reserve)
    return frozenset(n for n, times in starts.items() if len(recent(times, now_s, interval_s)) >= limit)
