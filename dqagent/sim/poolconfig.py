"""The simulated pool's configuration: its workers' shape, start-up, dispatch model and the agent's settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from dqagent.core.brokerfail import HOLD, BrokerFailure
from dqagent.settings.schedule import Schedule

#: The dispatch models `PoolConfig.dispatch` accepts.
DISPATCH_MODELS = ("first", "random", "poll")
#: `poll` simulated one poll at a time, every idle consumer about once a second (its cost grows with idle
#: consumers x simulated time): the reference the fast `poll` is tested against; also accepted by `simulate`.
POLL_EXACT = "poll-exact"


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """The pool being simulated (defaults: the seed's 5 threads, Dramatiq's 2 x threads prefetch)."""

    threads: int = 5
    prefetch: int = 10
    startup_delay_s: float = 5.0
    min_workers: int = 1
    max_workers: int = 10
    #: Whether the policy is fed `ready` (LLEN) or `outstanding` as its queue length.
    metric: str = "outstanding"
    #: Which worker with prefetch room takes an arrival: "first" (a busy consumer polls again at once
    #: while idle ones back off, so the same one keeps winning) or "random" (the consumers race evenly;
    #: seeded by the workload), or "poll" (each consumer fetches on its own poll schedule, Dramatiq's
    #: backoff; measured against real workers by dev/replay). A modelling assumption, so the benchmark
    #: can check each.
    dispatch: str = "first"
    #: The "poll" model's backoff: first step and cap (Dramatiq's `compute_backoff` factor, 5 ms, and
    #: `worker_timeout`, 1000 ms).
    poll_base_s: float = 0.005
    poll_max_s: float = 1.0
    #: Measured start-up delays as (start time, delay), times ascending, instead of `startup_delay_s`: a
    #: worker started at t takes the delay of the measured start nearest to t (the earlier one on a tie).
    #: A host's start-up latency follows its load over time, and the load rises with the very spike that
    #: makes the agent start workers: a model start a moment before the real one must not take the quiet
    #: delay of a start minutes earlier. dev/replay passes a real run's.
    startup_profile_s: tuple[tuple[float, float], ...] = ()
    #: Seconds a stopped worker process still lives (and costs) after its last task ended: Dramatiq's
    #: shutdown joins its threads (each wakes within `worker_timeout`) and the interpreter exits. 0: none.
    stop_delay_s: float = 0.0
    #: The agent's CHECK_INTERVAL: its slowest read when idle (with adaptive reads), and its routine
    #: decision line's spacing.
    check_interval_s: float = 180.0
    #: The agent's PROCESS_STARTUP_DELAY: its start check's wait after the start job; a unit is "starting"
    #: (in the check, not stoppable) until then. None: `startup_delay_s` (the check ends as a worker of the
    #: typical start-up gets ready, as a host whose operator set it to the workers' start-up).
    check_delay_s: float | None = None
    #: Measured start job durations (start -> systemd's "Started", the worker binary executed) as
    #: (start time, seconds), looked up like `startup_profile_s`; empty: 0.
    start_job_profile_s: tuple[tuple[float, float], ...] = ()
    #: Starts that failed in a real run, as (start time, seconds until the unit ended), times ascending:
    #: the first model start within `failure_match_s` of one fails the same way (never ready, ends after
    #: that time), once per real failure, and the agent's crash-loop backoff (`dqagent.core.reconciler.Backoff`)
    #: holds the next starts; reusing a failed unit's number counts as a failure, as in `dqagent.systemd.jobtable`.
    failed_starts_s: tuple[tuple[float, float], ...] = ()
    failure_match_s: float = 1.25
    #: SCHEDULE's windows, read on the clock of SCHEDULE_TIMEZONE (the simulated wall clock is
    #: `dqagent.sim.pool.EPOCH_US` + the simulated time); empty: none.
    schedule: Schedule = field(default_factory=Schedule)
    schedule_timezone: str = "UTC"
    #: Broker outages as (start, end) times, ascending: the agent reads no demand in [start, end) and decides by
    #: `broker_failure` (BROKER_FAILURE, `dqagent.core.brokerfail`); the workers go on with what they hold.
    broker_outages_s: tuple[tuple[float, float], ...] = ()
    broker_failure: BrokerFailure = HOLD
    #: False: the agent cannot see in flight (RabbitMQ without its management API) and reads what
    #: `dqagent.core.rabbitdemand.queue_demand` estimates from the ready count and the consumers.
    in_flight_visible: bool = True
    #: Dramatiq's `--worker-shutdown-timeout` (seconds): a stopped worker's tasks still running this long after
    #: the stop are cut short, and Dramatiq delivers them again (they run twice). None: never (drains fully).
    shutdown_timeout_s: float | None = None
    #: The app opts in to the per-worker reports (`dqagent.dramatiq.WorkerReport`): the agent sees what each
    #: worker runs and holds, and stops the least busy first (`dqagent.core.busy`); off: the highest number.
    reports: bool = False

    def check_s(self) -> float:
        """The agent's PROCESS_STARTUP_DELAY for this pool."""
        return self.startup_delay_s if self.check_delay_s is None else self.check_delay_s
