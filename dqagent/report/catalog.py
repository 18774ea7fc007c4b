"""The journal catalog: one stable MESSAGE_ID per event the agent logs, and what each means (pure).

Every record logged with `extra=event(name, ...)` carries `MESSAGE_ID=` from `ENTRIES` (see
`dqagent.report.logs.event`), so `journalctl MESSAGE_ID=<id>` finds every occurrence of an event, and
`journalctl -x -u dqagent` shows the entry's explanation under the line, once `dqagent install` has put
`render()`'s text into systemd's catalog directory and rebuilt the catalog index.

Adding an event is one entry in `ENTRIES`: its name, an id made once (`systemd-id128 new`, or
`python3 -c 'import uuid; print(uuid.uuid4().hex)'`) and never changed afterwards (journals and
operators' saved searches keep it), a subject and what to do. A unit test checks that every
`event("...")` in the package has an entry and that the ids are unique.

The catalog file format is systemd's (`man sd-journal_get_catalog`, systemd's `catalog/*.catalog`):
`-- <id>` starts an entry, then header lines (`Subject:`, `Defined-By:`), a blank line and the text.
`@FIELD@` in the text is replaced with that field of the journal entry; a field the entry lacks would
show its own name, so the texts only name fields their event always carries.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    """One event: its `DQAGENT_EVENT` name, its MESSAGE_ID (32 lower-case hex digits) and its explanation."""

    event: str
    message_id: str
    subject: str
    #: What happened and what to do, in plain sentences (wrapped when rendered).
    text: str


ENTRIES: tuple[Entry, ...] = (
    # -- scaling ---------------------------------------------------------------------------------------
    Entry("scale_up", "b3312c1771c54fc7bce8d525847dfcff", "dqagent started Dramatiq workers",
          "The backlog in Redis called for more workers, so dqagent asked systemd to start dramatiq-worker@N "
          "units: from @WORKERS@ to @TARGET@. The message says why (the queue figures and the policy's rule, "
          "e.g. MAX_QUEUE_AGE). Nothing to do. If it happens too often, see the scaling settings "
          "(SCALING_POLICY, TARGET_TOLERANCE, SCALE_DOWN_WINDOW) in docs/scaling.md."),
    Entry("scale_down", "a120bb7b109a4dabb44a4a329ff69942", "dqagent stopped Dramatiq workers",
          "The backlog no longer needs as many workers, so dqagent asked systemd to stop settled units "
          "gracefully (the least busy first when the app reports with WorkerReport, else the highest-numbered): "
          "from @WORKERS@ to @TARGET@. Running tasks finish first "
          "(GRACEFUL_SHUTDOWN_TIMEOUT). Nothing to do."),
    Entry("decision", "e301c325d61c40b185cb6d12e9dc28b3", "dqagent checked the queue and decided a worker count",
          "One line per check: the queue figures (QUEUE_LENGTH, READY, IN_FLIGHT, DELAYED, OLDEST_AGE_S, "
          "per queue in BREAKDOWN), the workers counted and the target, with the rule that gave it. "
          "Nothing to do."),
    Entry("start", "0e09de61e88241c8b46972bb4dae48aa", "dqagent started",
          "The agent started, adopted the workers systemd already runs and set its first target. Nothing to do."),
    Entry("adopted", "c6decf8926a440f495bcb7dee0269d54", "dqagent adopted a running worker",
          "A dramatiq-worker@N unit was already running when the agent started (after a restart of the agent, "
          "the workers keep running); the agent counts it and manages it from now on. Nothing to do."),
    Entry("clamped", "ed1bf6705bb74517b2ae34e86e99c7cd", "dqagent clamped a requested worker count",
          "The worker count asked for with --processes is outside MIN_PROCESSES..MAX_PROCESSES; the agent uses "
          "the nearest bound. Ask for a count inside the range, or change the bounds."),
    Entry("shutdown", "80f13dbf76c249a9a5641c5d147e7edc", "dqagent is stopping",
          "On `systemctl stop dqagent` the agent stops every worker gracefully; on a restart (or a crash, or a "
          "watchdog kill) it leaves them running for the next agent to adopt. The message says which. "
          "Nothing to do."),
    Entry("foreign_job", "2e3263ad68c44c9ba2e772d585cba3ed", "dqagent left a worker with someone else's job alone",
          "A worker unit has a systemd job the agent did not start (an operator's `systemctl restart` or "
          "`stop`): the agent never cancels or overrides it. Nothing to do; the agent counts the unit again "
          "once the job is done."),
    Entry("bus_lost", "c3bf8b900d0a47fca65243d8ea97c513", "dqagent lost the system bus and exits",
          "The connection to systemd over D-Bus is gone. The agent exits with status 69 and systemd restarts it "
          "(Restart=on-failure); the workers keep running and are adopted. If it repeats, check dbus.service "
          "and the system journal around this line."),
    # -- workers ---------------------------------------------------------------------------------------
    Entry("worker_started", "0e26cd1dd56b428182ac4373aa02df07", "A Dramatiq worker started",
          "A worker unit the agent started is still running PROCESS_STARTUP_DELAY seconds after its start. "
          "Nothing to do."),
    Entry("worker_stopped", "19134d1319784286a2bceb08fc9920da", "A Dramatiq worker stopped",
          "A worker unit the agent stopped has ended (its running tasks finished). Nothing to do."),
    Entry("worker_failed", "d96224c5e4c7452f8597b32d615b9c92", "A Dramatiq worker failed",
          "The worker unit @UNIT@ is not serving (systemd's result: @RESULT@): it exited, crashed or did not "
          "stay up after its start. The agent backs off further starts (doubling, up to 5 minutes) instead of "
          "hammering systemd. See why with `journalctl -u @UNIT@` and `dqagent status` (exit code, last line "
          "the worker logged); typical causes are a wrong DRAMATIQ_COMMAND or WORKER_DIRECTORY, a missing "
          "module, or Redis unreachable from the worker. See docs/operations.md, \"worker fails to start\"."),
    Entry("worker_recovered", "3ee5fe83588e4bd0b0d957497d784303", "A failing Dramatiq worker runs again",
          "A worker unit that was failing has been running without a restart for PROCESS_STARTUP_DELAY seconds. "
          "Nothing to do."),
    Entry("worker_stop_failed", "2d3275d3908a4990bea62115925db723", "Stopping a Dramatiq worker failed",
          "systemd reported a failure for the stop job of a worker unit. See `journalctl -u` for that unit and "
          "`systemctl status`; the agent re-reads the unit at the next check."),
    Entry("worker_stop_timeout", "e1fd1275e7bd4f758feea13986ffa661", "A Dramatiq worker was killed at its stop timeout",
          "A worker did not finish its running tasks within GRACEFUL_SHUTDOWN_TIMEOUT (TimeoutStopSec=), so "
          "systemd SIGKILLed it: those tasks were cut short and Dramatiq redelivers them later. Raise "
          "GRACEFUL_SHUTDOWN_TIMEOUT (then run `dqagent install` again) if tasks are longer than that."),
    Entry("worker_hung", "7345010cd44b464d82a62ddddabd8a6a", "dqagent restarts a hung Dramatiq worker",
          "The worker's own report (dqagent.dramatiq.WorkerReport in the app) has not advanced for "
          "WORKER_HUNG_AFTER seconds while systemd shows the unit running: its Dramatiq process is frozen or "
          "gone. A busy worker keeps reporting during long tasks, so this is not a long task. dqagent stops "
          "the unit and starts it again (the usual start check and backoff). Look at the unit's journal "
          "before the restart (journalctl -u @UNIT@) for what it was doing; raise WORKER_HUNG_AFTER if "
          "workers legitimately stall longer."),
    Entry("worker_restarted", "aff8e207a2a7494e8fef6856bb147a60", "dqagent restarted a hung Dramatiq worker",
          "The restart that a worker_hung line announced has ended: the unit was stopped (a frozen process is "
          "SIGKILLed at GRACEFUL_SHUTDOWN_TIMEOUT) and started again; the message says whether the new "
          "start passed its check. Nothing to do unless it repeats."),
    Entry("start_backoff", "21dac11c721647b0808757b7f62da932", "dqagent holds worker starts after failures",
          "Starts failed, so the agent waits before starting workers again (doubling, capped at 5 minutes). "
          "Fix the cause in the worker_failed lines before this one; the agent retries by itself."),
    Entry("start_unconfirmed", "e63c5366e05a48a7ad3cd4ada67421d3", "dqagent could not confirm a worker start",
          "systemd did not answer about a start job in time (DBUS_TIMEOUT). The agent re-reads the units at "
          "the next check and counts what systemd shows. If it repeats, systemd is overloaded or hung."),
    Entry("stop_unconfirmed", "63251e0073b941e18b015a1789d3428a", "dqagent could not confirm a worker stop",
          "systemd did not answer about a stop job in time (DBUS_TIMEOUT). The agent re-reads the units at "
          "the next check. If it repeats, systemd is overloaded or hung."),
    # -- Redis and systemd -----------------------------------------------------------------------------
    Entry("redis_error", "42671c9d205e4985b8574fd5623a4f59",
          "dqagent cannot read the Dramatiq broker (Redis or RabbitMQ)",
          "Reading the queue from the broker failed: @ERROR@. The agent keeps the current workers "
          "(BROKER_FAILURE=hold; min and fixed change the count after BROKER_FAILURE_GRACE) and retries "
          "with a growing pause (up to the larger of CHECK_INTERVAL and 30 s). Check that Redis runs and that "
          "REDIS_HOST/REDIS_PORT/REDIS_URL and the password (/etc/dqagent/redis-password) are right (with "
          "RabbitMQ: RABBITMQ_URL, RABBITMQ_MANAGEMENT_URL and /etc/dqagent/rabbitmq-password): "
          "`dqagent check`. See docs/operations.md, \"Redis unreachable\"."),
    Entry("redis_ok", "299c6043446b471185da79391aa0c6fd", "dqagent reads the broker again",
          "The broker (Redis or RabbitMQ) answers again after failed reads; scaling resumes. Nothing to do."),
    Entry("broker_failure_applied", "f3f89db538eb4459bb7651758338c49c",
          "BROKER_FAILURE sets a pool's count while Redis is down",
          "Redis has been unreadable longer than BROKER_FAILURE_GRACE: the pool (DQAGENT_POOL=) goes to @TARGET@ "
          "workers (BROKER_FAILURE=min or fixed, MODE=) until Redis answers again. Bring Redis back (see "
          "\"Redis unreachable\"); the policy takes over at the first successful read. See docs/operations.md, "
          "\"When Redis cannot be read\"."),
    Entry("broker_failure_ended", "df3b910c26c6434babea93db260efeca",
          "a pool follows its policy again after a Redis outage",
          "Redis answers again after an outage (DOWN_S= seconds); the pool's count (DQAGENT_POOL=) is its "
          "policy's again, no longer BROKER_FAILURE's. Nothing to do."),
    Entry("systemd_error", "7b8a2ec578e84493ae0828814cb528b2", "systemd refused a request from dqagent",
          "systemd (or polkit) refused a start, stop or reset: @ERROR@. The agent keeps the current workers "
          "and retries at the next check. \"Access denied\" means the polkit rule is missing or not read: run "
          "`dqagent check` and see docs/operations.md, \"permission denied by polkit\"."),
    Entry("systemd_reexec", "d9fa5c0bbca948f68272a5396627a3e5", "systemd re-executed itself",
          "systemd came back on the bus (daemon-reexec, an upgrade); the agent subscribed again and re-checks "
          "its jobs. Nothing to do."),
    Entry("orphans_recovered", "831be0c878134efda36f55859f2d0752", "Messages of dead Dramatiq workers were requeued",
          "Messages fetched by a worker that died without acknowledging them (its heartbeat is older than "
          "Dramatiq's timeout) were put back in their queues by Dramatiq's own maintenance, run by the agent. "
          "They will run again (at least once delivery). Nothing to do; look for why the worker died."),
    Entry("orphans_failed", "7aa0a511663b42a18f97ffc4d181f609", "Requeueing messages of dead workers failed",
          "Running Dramatiq's maintenance to requeue orphaned messages failed; the agent tries again at the "
          "next check. See the Redis error in the message."),
    # -- settings --------------------------------------------------------------------------------------
    Entry("config_warning", "426c1de524cb4ceea041d696dcee57f8", "A dqagent setting will not work as it likely should",
          "The settings are valid, but a combination is suspect (e.g. workers SIGKILLed before Dramatiq's own "
          "shutdown timeout, or --queues in DRAMATIQ_COMMAND not matching DRAMATIQ_QUEUE_NAME). The message "
          "names the settings and the fix; edit /etc/dqagent/dqagent.env and `systemctl reload dqagent`."),
    Entry("log_file_unavailable", "f385f661faaf49cfbee64d91e8871fdc", "dqagent cannot write its LOG_FILE",
          "The extra log file cannot be opened; the agent logs to the journal only. Fix the path or its "
          "permissions, or set LOG_FILE empty."),
    Entry("password_unavailable", "441f55fff9ce425e8e387536b99da080", "dqagent cannot read the Redis password",
          "The Redis password file or credential could not be read. When the message says the password systemd "
          "handed over at start is used, the agent connects as before, but a changed password applies only at "
          "restart; otherwise it connects without one. Keep the password in /etc/dqagent/redis-password with "
          "mode 0640, owner root, group dqagent (as dqagent install makes it), then reload the agent."),
    Entry("reloaded", "60f42497ae3c4cbf9fed80ac419f4307", "dqagent reloaded its settings",
          "`systemctl reload dqagent` re-read the settings file; the message lists what changed. The PID and "
          "the workers stay. Nothing to do."),
    Entry("reload_failed", "21be9d5596cf4244beec4f3a826110ec", "dqagent rejected a settings reload",
          "The settings file has an invalid value (named in the message), so the agent keeps its old "
          "settings. Fix the value, then `systemctl reload dqagent` again."),
    Entry("reload_needs_install", "01fe4e511ec44e9483110c5bc5241cd3", "A reloaded setting needs dqagent install",
          "Some changed settings (the KEYS field lists them) are rendered by `dqagent install` into the unit files, "
          "the drop-ins or the agent's sandbox (the README's settings table marks them); the agent keeps their "
          "old values. Run `dqagent install` and `systemctl restart dqagent` (the workers keep running)."),
    Entry("unknown_setting",
          "89957cfd313b47928e387ebdcb3354b9", "The dqagent settings file has a key no setting declares",
          "The settings file sets a key (the KEY field) that is no dqagent setting, a typo most likely (the "
          "message names the nearest setting): the agent ignores it, so the setting meant keeps its value. "
          "Correct or remove the key and run `systemctl reload dqagent`; `dqagent check` fails on it. Keys from "
          "the environment are not checked."),
    Entry("reload_answer_failed", "954054bdb8d94ae48b545c9e2b483d8a", "dqagent could not answer a reload",
          "The agent reloaded but could not write its answer file in /run/dqagent, so `systemctl reload` "
          "times out. Check the unit's RuntimeDirectory= and free space on /run."),
    # -- the oldest message's age -----------------------------------------------------------
    Entry("clock_skew", "1496a1880f404d5096956e68c6f47951", "A waiting message is stamped in this host's future",
          "The oldest waiting message's timestamp (set by the producer's clock) is later than this host's "
          "clock, so its age counts as 0 and MAX_QUEUE_AGE acts late. Synchronise the clocks of the producers "
          "and this host (NTP, systemd-timesyncd)."),
    Entry("clock_skew_ended", "a7f92dc820574fb9b0a5adbab2077a13", "No waiting message is stamped in the future now",
          "The clock skew reported before is no longer seen. Nothing to do."),
    Entry("age_unreadable", "586b1be36e6b464f9f12be88490b679d", "The oldest waiting message's age cannot be read",
          "Either Redis refused the short Lua script that reads it (an ACL user without EVAL: allow it with "
          "+eval), or the body of the message at the head of a queue is not JSON with a message_timestamp "
          "(Dramatiq's default JSONEncoder; pickle is not readable), or it is larger than 1 MiB (never "
          "fetched, so that no client can stall Redis through the agent). That queue has no age, so "
          "MAX_QUEUE_AGE cannot act on it. Scaling on the count still works."),
    # -- untrusted broker data and unexpected failures --------------------------------------
    Entry("broker_data_rejected", "b1b466bcebee4a129a5629af6c2cc16d", "dqagent skipped broker data it cannot trust",
          "A value in the broker's Redis is not what Dramatiq or dqagent writes there (KIND: a heartbeat member "
          "that is not a broker id, a fleet record out of its bounds or too large, or more members than the "
          "cap), so the agent skips it; KEY names it, REASON says why. Logged once per value; every skip counts "
          "in dqagent_broker_records_rejected_total. Any client of that Redis can write there: find and fix "
          "the writer, delete the key, and restrict who may write to the broker (docs/operations.md)."),
    Entry("tick_failed", "5fd49619fd064325828c1edf2cb286f3", "A dqagent check failed unexpectedly",
          "One check raised an error no rule foresaw (a bug, or data the checks did not catch); the message "
          "carries its traceback, logged once per distinct error. The agent keeps its workers, keeps running "
          "and checks again at the next interval; each such check counts in "
          "dqagent_source_errors_total{source=\"internal\"}. Please report it with the traceback."),
    Entry("tick_recovered", "9a0a60661b084bef9c598a235c5e5a68", "dqagent checks succeed again",
          "A check completed after one or more failed unexpectedly. Nothing to do."),

    # -- metrics -----------------------------------------------------------------------------
    Entry("metrics_listening", "50edd6f3072a4d2c9d22c74f7fe2477c", "dqagent serves Prometheus metrics",
          "METRICS_ADDRESS is set: the agent serves /metrics there, from the snapshot of its last check "
          "(docs/metrics.md). Nothing to do."),
    Entry("metrics_error", "4dc8ea6deb064b789515d0ae81b90c4b", "dqagent cannot serve Prometheus metrics",
          "The agent could not listen on METRICS_ADDRESS: the port is in use (exit 69) or the address is not "
          "one of this host's (exit 78). Pick a free port above 1023 on an address of this host, or empty "
          "METRICS_ADDRESS, then `systemctl restart dqagent` (or reload)."),
    Entry("metrics_scrape_error", "3d5786b2b83f4895a997b8750acdac08", "A scrape of dqagent's /metrics failed",
          "Formatting the metrics for a scrape raised an exception (a bug in dqagent: the traceback is in the "
          "entry); the scrape was answered 500. Logged once until the error changes; the agent keeps scaling. "
          "Please report it with the traceback."),
    Entry("metrics_textfile_error", "1b4ff6c113284128acc081eefd46830b", "dqagent cannot write its metrics textfile",
          "Writing METRICS_TEXTFILE failed (its directory is missing, not writable by user dqagent, or full). "
          "The agent keeps scaling and tries again after the next check. `dqagent check` names the problem."),
    Entry("metrics_textfile_ok", "31a8eccc9e68423693e7ad8a96acbc94", "dqagent writes its metrics textfile again",
          "METRICS_TEXTFILE is written again after earlier failures. Nothing to do."),

    # -- resource limits and the guard ---------------------------------------------------------
    Entry("guard_blocked", "91afad180bf4400e90e9b75d0f5f4353", "dqagent holds a scale-up: the host lacks headroom",
          "The policy wants more workers, but the host lacks headroom (the fields RESOURCE, FIGURE and LIMIT "
          "say which figure and by how much), so the agent starts fewer or none until it recovers; "
          "scale-down is never held. Find what "
          "loads the host, or raise GUARD_CPU_PRESSURE / GUARD_MEMORY_PRESSURE / GUARD_MEMORY_RESERVE, or set "
          "GUARD=off (docs/operations.md, Resource limits and the guard)."),
    Entry("guard_released", "b17d00d317d04d6fae49cd611ddd1401", "dqagent's scale-up hold has ended",
          "The host has headroom again; the held scale-up proceeds at this check. Nothing to do."),
    Entry("schedule_changed", "e8ffc0f784f04b00865201c3a911c72f",
          "A SCHEDULE window opened, ended or began its pre-warm",
          "The windows of SCHEDULE in force for this pool (DQAGENT_POOL) changed: the message names them, the "
          "floor and ceiling they set and the next change. A window's floor applies from its pre-warm on (the "
          "measured start time plus PROCESS_STARTUP_DELAY before it opens), so its workers run when it opens. "
          "Nothing to do; to change the windows, edit SCHEDULE and reload (README, Schedules)."),
    Entry("forecast_would", "c94713a6ecce47e78118de7c2a3ee131", "PREDICTIVE=shadow would have started or kept workers",
          "In shadow mode the forecast of this pool (DQAGENT_POOL) would have raised the target to FORECAST_WOULD "
          "workers (pre-warm before a forecast rise, or hold through a gap); nothing was started. Logged once per "
          "change. Compare with the rises that followed to judge it; PREDICTIVE=on lets it act (README, Prediction)."),
    Entry("forecast_trusted", "3f6544d7e45d460e939c7df8f9730361", "The forecast of a pool is trusted",
          "The recent error of this pool's forecast (FORECAST_ERROR, a ratio) is low enough: with PREDICTIVE=on it "
          "now pre-warms and holds workers, with shadow it reports what it would do. Nothing to do."),
    Entry("forecast_aside", "56040f6615bf4a78b36e6878dc05f257", "The forecast of a pool steps aside",
          "The forecast of this pool does not act (FORECAST_ASIDE says why: no rhythm learnt yet, too few "
          "forecasts scored, or an error above the limit because the workload has no rhythm or it changed). The "
          "policy alone decides until the forecast is trusted again. Nothing to do; dqagent status shows the "
          "error over the last day."),
    Entry("forecast_restored", "f59187d416af4a21ae8d331f066905c0", "A pool's forecast state was read back",
          "PREDICTIVE's learning of this pool was read from its state file (PATH) in the agent's state directory: "
          "a restart or a reboot keeps it. Nothing to do."),
    Entry("forecast_state_damaged", "3d39fb5212d54071af387fa62ca711fc",
          "A pool's forecast state file could not be used",
          "The file at PATH is damaged or is not this pool's forecast state (ERROR says why). The forecast starts "
          "learning afresh and replaces the file at its next save; the workers are not affected."),
    Entry("forecast_state_unsaved", "24ddb0c22fab4c97a1c7af248bea747d", "A pool's forecast state could not be saved",
          "Writing PATH failed (ERROR). The forecast goes on in memory, but a restart would forget its learning. "
          "Check the agent's state directory (/var/lib/dqagent/agent): it must exist and belong to dqagent; "
          "dqagent install makes it."),
    Entry("budget_yield", "184e549eb6da4465bbd8d661e565449e", "A pool gave way to others under HOST_MAX_PROCESSES",
          "The pools together want more workers than HOST_MAX_PROCESSES allows, so this pool (DQAGENT_POOL) stops "
          "workers gracefully to leave room to the pools named in DQAGENT_TO_POOLS (higher POOL_PRIORITY, or equal "
          "priority sharing evenly). It grows back when their demand falls. Raise HOST_MAX_PROCESSES or change "
          "POOL_PRIORITY if this pool must not give way (README, Pools)."),
    Entry("paused", "4707c0f812ee428088aafc9839b3134f", "An operator paused a pool's scaling",
          "`dqagent pause` (by DQAGENT_BY, uid DQAGENT_UID) holds the pool DQAGENT_POOL until DQAGENT_UNTIL: a pause "
          "freezes its worker count (the agent neither starts nor stops workers; units started or stopped by hand "
          "are adopted on resume), `pause --at N` (DQAGENT_AT) scales it to N and holds it there. DQAGENT_REASON "
          "says why. `dqagent resume` ends it; it also ends by itself at its deadline (pause_expired). See "
          "docs/operations.md, \"Pause, resume, maintenance\"."),
    Entry("resumed", "3e2726e03108498f81ac1527636f1ad1", "An operator resumed a paused pool",
          "`dqagent resume` (by DQAGENT_BY) ended the pause or maintenance of the pool DQAGENT_POOL: its policy "
          "decides its worker count again from this check on. Nothing to do."),
    Entry("pause_expired", "23b220288855442a98f5da4454101cee", "A pool's pause reached its deadline",
          "The pause or maintenance of the pool DQAGENT_POOL made by DQAGENT_BY (DQAGENT_REASON) reached its "
          "deadline (`dqagent pause --for`, 4 h by default): the policy decides its worker count again. Pause "
          "again (`dqagent pause --for ...`) if the work it was for is not done."),
    Entry("pause_refused", "9a2c7527643a4030ade2b6d5909462b0", "dqagent refused a pause request",
          "A request left by `dqagent pause`/`resume` was refused: ERROR says why (not made by root or a member "
          "of PAUSE_GROUP, an unknown pool, or made while the agent was not running). Nothing changed. Run the "
          "command again as root or as a member of PAUSE_GROUP while dqagent.service runs."),
    Entry("pool_added", "94b31e601c8c4743a7260d402dddab10", "dqagent manages a worker pool",
          "A pool file (pools.d/<pool>.env, DQAGENT_POOL) was read at start or added by a reload: the agent "
          "scales its dramatiq-worker@<pool>-N units on its own queues from now on. Nothing to do."),
    Entry("pool_not_installed", "702907d6a4404f37a713690c1d2fd403", "A pool's systemd drop-ins are not installed",
          "The pool (DQAGENT_POOL) has a pools.d file but `dqagent install` has not written its drop-ins (User=, "
          "WorkingDirectory=, Slice=, limits) yet, as after a pool added by a reload. Its workers run as the "
          "template's user without the pool's limits, and dqagent worker-exec refuses them when the pool's "
          "WORKER_USER differs. Run dqagent install."),
    Entry("pool_removed", "08807a70afb3495494c3d69f593635d1", "A worker pool was removed and its workers stop",
          "A reload found the pool's file gone: its workers stop gracefully (GRACEFUL_SHUTDOWN_TIMEOUT) and the "
          "agent no longer scales it. Put the file back and reload to bring it back."),
    Entry("undeclared_pool", "2e58fcf911a349d5b28a8429c8dfeecf", "Units of a pool no pool file declares run",
          "systemd runs dramatiq-worker@<pool>-N units of a pool that has no pools.d/<pool>.env (a pool file was "
          "removed while the agent was stopped, or someone started them by hand). The agent leaves them alone. "
          "Stop them (systemctl stop 'dramatiq-worker@<pool>-*') or add the pool file back and reload."),
    Entry("guard_source_missing", "fc95019c00154ce2a1f9f5e437172646", "A figure the guard reads is missing",
          "A pressure file (/proc/pressure/*: a kernel without PSI, or psi=0) or /proc/meminfo cannot be read, "
          "so that part of the guard is off; the others still apply. Boot with psi=1 to use it, or ignore."),
    Entry("worker_oom_killed", "b4812458ec7f43248906c6a3f6d011ba", "The kernel killed a Dramatiq worker for memory",
          "A worker went past its memory limit (WORKER_MEMORY_MAX or the pool's POOL_MEMORY_MAX) and systemd "
          "reports Result=oom-kill. Its running and prefetched messages return to the queue through Dramatiq's "
          "orphan recovery (at-least-once). Raise the limit, or find the task that needs so much memory."),

    # -- systemd not answering ---------------------------------------------------------------
    Entry("systemd_timeout", "9cf1aa9b9767410989507973bdbb514c", "systemd did not answer dqagent in time",
          "A D-Bus call to systemd got no answer within DBUS_TIMEOUT: systemd is busy (a daemon-reload or "
          "re-exec, thousands of jobs) or hung. The agent keeps the current workers, tries again at the next "
          "check and logs systemd_ok when it answers. If it lasts, look at systemd itself (journalctl -b -u "
          "init.scope, systemctl list-jobs)."),
    Entry("systemd_ok", "a0238a858fc146058a7382bf81d19c9c", "systemd answers dqagent again",
          "systemd answers again after a refusal or a timeout logged before; the agent scales as usual. "
          "Nothing to do."),
)

#: Entries by event name.
BY_EVENT: dict[str, Entry] = {e.event: e for e in ENTRIES}
_ID = re.compile(r"[0-9a-f]{32}")


def message_id(event: str) -> str | None:
    """The MESSAGE_ID of `event`; None for a name without an entry (a unit test keeps that from shipping)."""
    entry = BY_EVENT.get(event)
    return entry.message_id if entry is not None else None


def render() -> str:
    """The catalog file, `dqagent.catalog`, as systemd's journalctl --update-catalog reads it."""
    out = ["# The journal catalog of dqagent: what each event means and what to do.",
           "# Written by `dqagent install` from dqagent/report/catalog.py; removed by `dqagent uninstall`.", ""]
    for e in ENTRIES:
        if not _ID.fullmatch(e.message_id):
            raise ValueError(f"catalog entry {e.event}: MESSAGE_ID {e.message_id!r} is not 32 lower-case hex digits")
        out += [f"-- {e.message_id}", f"Subject: {e.subject}", "Defined-By: dqagent", "",
                *textwrap.wrap(e.text, 78, break_on_hyphens=False), ""]
    return "\n".join(out)
