"""RabbitMQ's demand arithmetic against answers recorded from a real server (dev/record-rabbitmq-answers), the
RabbitMQ settings, its password as a credential, and failures as one line without the password."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dqagent.broker.probes import open_probe, prefetch_by_queue
from dqagent.broker.rabbitmq import RabbitmqDemandProbe
from dqagent.broker.rabbitmq_http import unacked_of
from dqagent.broker.redis import RedisDemandProbe
from dqagent.core.demand import Demand
from dqagent.core.rabbitdemand import QueueCounts, queue_demand
from dqagent.errors import BrokerError, ConfigError
from dqagent.settings import sources
from dqagent.settings.config import QueueMetric, parse_settings
from dqagent.settings.pools import Pool
from dqagent.settings.rabbitmq import user, vhost

ANSWERS = json.loads((Path(__file__).parent.parent / "fixtures" / "rabbitmq_answers.json").read_text())
Q = ANSWERS["queue"]
SCENES = ANSWERS["scenes"]


def _counts(scene: dict[str, Any], name: str, unacked: dict[str, int] | None) -> QueueCounts:
    d = scene["declare"][name]
    return QueueCounts(d["message_count"], d["consumer_count"], None if unacked is None else unacked.get(name, 0))


def _demand(scene: dict[str, Any], management: bool, prefetch: int = 8) -> Any:
    unacked = unacked_of(scene["management"]) if management else None
    return queue_demand(Q, _counts(scene, Q, unacked), _counts(scene, f"{Q}.DQ", unacked),
                        _counts(scene, f"{Q}.XQ", unacked), prefetch)


@pytest.mark.parametrize("name", sorted(SCENES))
def test_with_the_management_api_every_figure_is_rabbitmqctls(name: str) -> None:
    scene = SCENES[name]
    ready, unacked, consumers = scene["rabbitmqctl"][Q]
    dq_ready, dq_unacked, _ = scene["rabbitmqctl"][f"{Q}.DQ"]
    q = _demand(scene, management=True)
    assert (q.ready, q.in_flight, q.consumers, q.delayed, q.dead) == (
        ready, unacked, consumers, dq_ready + dq_unacked, scene["rabbitmqctl"][f"{Q}.XQ"][0])
    assert q.in_flight_known and q.oldest_age_s is None and q.orphaned == 0
    # The load is Q's ready + unacknowledged: never the delayed messages a worker holds
    assert Demand((q,)).queue_length(QueueMetric.OUTSTANDING) == ready + unacked
    assert Demand((q,)).queue_length(QueueMetric.READY) == ready


def test_without_it_in_flight_is_consumers_x_prefetch_while_messages_wait() -> None:
    # One consumer with prefetch 8 and 22 messages ready: RabbitMQ filled its window, so the estimate is exact
    q = _demand(SCENES["prefetch_full"], management=False, prefetch=8)
    assert (q.ready, q.in_flight, q.in_flight_known) == (22, 8, False)
    assert q.in_flight == SCENES["prefetch_full"]["rabbitmqctl"][Q][1]
    # No consumer: nothing in flight
    assert _demand(SCENES["ready_only"], management=False).in_flight == 0
    # Delayed messages held by a worker are invisible without the API, and never load either way
    held = _demand(SCENES["delayed_held"], management=False)
    assert (held.delayed, held.outstanding) == (0, 0)
    assert _demand(SCENES["delayed_held"], management=True).delayed == 30


def test_nothing_ready_counts_no_estimate() -> None:
    # Consumers may still run their last messages: not seen, counted 0 (the documented reduced behaviour)
    q = queue_demand("q", QueueCounts(0, 4), QueueCounts(), QueueCounts(), 8)
    assert (q.in_flight, q.consumers, q.in_flight_known) == (0, 4, False)


def test_a_queue_the_statistics_have_not_sampled_is_estimated_not_zero() -> None:
    page = {"items": [{"name": "q"}, {"name": "q.DQ", "messages_unacknowledged": 2}]}
    assert unacked_of(page) == {"q.DQ": 2}


@pytest.mark.parametrize("answer", [None, [], "x", {"items": "x"}, {"items": [1, None, {"name": 3},
                                    {"name": "q", "messages_unacknowledged": -1},
                                    {"name": "q", "messages_unacknowledged": True},
                                    {"name": "q", "messages_unacknowledged": "7"}]}])
def test_a_management_answer_that_is_not_what_rabbitmq_writes_gives_nothing(answer: Any) -> None:
    assert unacked_of(answer) == {}


def test_prefetch_comes_from_each_pools_threads() -> None:
    a = parse_settings({"DRAMATIQ_QUEUE_NAME": "a", "DRAMATIQ_COMMAND": "python -m dramatiq -p 2 -t 3 app"})
    b = parse_settings({"DRAMATIQ_QUEUE_NAME": "b,c", "DRAMATIQ_COMMAND": "python -m dramatiq -t 16 app"})
    assert prefetch_by_queue([Pool("default", a), Pool("io", b)]) == {"a": 6, "b": 32, "c": 32}


# -- settings ------------------------------------------------------------------------------------------------

def test_rabbitmq_url_selects_the_rabbitmq_probe() -> None:
    s = parse_settings({"RABBITMQ_URL": "amqps://app@mq.example:5671/prod%2Fa"})
    assert (s.broker, s.broker_location(), vhost(s.rabbitmq_url), user(s.rabbitmq_url)) == (
        "rabbitmq", "amqps://app@mq.example:5671/prod%2Fa", "prod/a", "app")
    assert isinstance(open_probe(s), RabbitmqDemandProbe)
    assert isinstance(open_probe(parse_settings({})), RedisDemandProbe)
    assert vhost("amqp://h") == "/" and user("amqp://h") == "guest"


@pytest.mark.parametrize(("key", "raw", "says"), [
    ("RABBITMQ_URL", "amqp://app:hunter2@mq/v", "without a password: put the password in /etc/dqagent/"),
    ("RABBITMQ_URL", "redis://mq/0", "expected empty (Redis) or amqp://"),
    ("RABBITMQ_URL", "amqp://mq:99999/v", "valid host and port"),
    ("RABBITMQ_URL", "amqp:///v", "expected empty (Redis) or amqp://"),
    ("RABBITMQ_URL", "amqp://mq/a/b", "one path segment, the virtual host"),
    ("RABBITMQ_MANAGEMENT_URL", "ftp://mq:15672", "http(s)://host:port"),
    ("RABBITMQ_MANAGEMENT_URL", "http://app:hunter2@mq:15672", "without a password"),
    ("RABBITMQ_TIMEOUT", "0", "seconds > 0"),
])
def test_bad_rabbitmq_values_are_one_line_naming_the_key_and_never_the_password(key: str, raw: str,
                                                                                 says: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"RABBITMQ_URL": "amqp://mq/v", key: raw})
    text = str(err.value)
    assert err.value.key == key and says in text and "\n" not in text and "hunter2" not in text


@pytest.mark.parametrize(("extra", "key"), [
    ({"SCALING_POLICY": "target", "MAX_QUEUE_AGE": "60"}, "MAX_QUEUE_AGE"),
    ({"FLEET": "web"}, "FLEET"),
])
def test_what_rabbitmq_cannot_do_is_refused_at_start(extra: dict[str, str], key: str) -> None:
    parse_settings(extra)  # fine on Redis
    with pytest.raises(ConfigError) as err:
        parse_settings({"RABBITMQ_URL": "amqp://mq/v", **extra})
    assert err.value.key == key and "RABBITMQ_URL" in str(err.value)


def test_the_password_comes_from_the_rabbitmq_credential_and_is_never_shown(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cred").mkdir()
    (tmp_path / "cred" / "rabbitmq_password").write_text("from-cred\n")
    (tmp_path / "cred" / "redis_password").write_text("redis-one\n")
    monkeypatch.setattr(sources, "RABBITMQ_PASSWORD_SOURCE", tmp_path / "rabbitmq-password")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path / "cred"), "RABBITMQ_URL": "amqp://app@mq/v"}
    s = sources.load(None, environ=environ, cwd=tmp_path).settings
    assert (s.rabbitmq_password, s.redis_password) == ("from-cred", "")
    assert "from-cred" not in repr(s) and "from-cred" not in str(s.public_items())
    # On reload the file itself first (0640 root:dqagent), as for Redis
    (tmp_path / "rabbitmq-password").write_text("changed\n")
    assert sources.load(None, environ=environ, cwd=tmp_path, reloading=True).settings.rabbitmq_password == "changed"


# -- failures: one line, naming where, never the password -------------------------------------------------------

@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a stalled broker)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


def _fetch(settings_values: dict[str, str]) -> str:
    async def go() -> str:
        probe = open_probe(parse_settings(settings_values))
        try:
            await probe.fetch_demand()
        except BrokerError as exc:
            return str(exc)
        finally:
            await probe.close()
        raise AssertionError("no failure")
    return asyncio.run(go())


def test_a_broker_slow_past_its_timeout_is_one_line(silent_port: int) -> None:
    text = _fetch({"RABBITMQ_URL": f"amqp://app@127.0.0.1:{silent_port}/v", "RABBITMQ_PASSWORD": "s3cret-pw",
                   "RABBITMQ_TIMEOUT": "0.5"})
    assert text == f"RabbitMQ at amqp://app@127.0.0.1:{silent_port}/v: no answer within 0.5 s"


def test_a_broker_that_is_down_is_one_line_without_the_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    text = _fetch({"RABBITMQ_URL": f"amqp://app@127.0.0.1:{port}/v", "RABBITMQ_PASSWORD": "s3cret-pw"})
    assert text.startswith(f"RabbitMQ at amqp://app@127.0.0.1:{port}/v: ") and "\n" not in text
    assert "s3cret-pw" not in text
    api = _fetch({"RABBITMQ_URL": f"amqp://app@127.0.0.1:{port}/v", "RABBITMQ_PASSWORD": "s3cret-pw",
                  "RABBITMQ_MANAGEMENT_URL": f"http://127.0.0.1:{port}"})
    assert "s3cret-pw" not in api and "\n" not in api


# -- the simulator: the same workload, seen as Redis shows it and as RabbitMQ without its management API --------

def test_the_simulated_pool_scales_on_the_estimate_as_on_the_full_count() -> None:
    from dqagent.core.policies import StepPolicy
    from dqagent.sim.model import PoolConfig, simulate
    from dqagent.sim.traces import Trace, Workload

    settings = parse_settings({"MIN_PROCESSES": "1", "MAX_PROCESSES": "6", "CHECK_INTERVAL": "2", "GUARD": "off",
                               "DRAMATIQ_QUEUE_NAME": "default"})
    # A burst of 600 tasks of 0.5 s at t=10 (one worker of 2 threads would need 150 s), nothing after
    arrivals = tuple(10 + i * 0.001 for i in range(600))
    workload = Workload(Trace("burst", 300, ((0, 0),)), 1, arrivals, (0.5,) * 600, ())
    runs = {}
    for visible in (True, False):
        pool = PoolConfig(threads=2, prefetch=4, min_workers=1, max_workers=6, check_interval_s=2,
                          in_flight_visible=visible)
        runs[visible] = simulate(workload, StepPolicy.from_settings(settings), pool, 2.0, horizon_s=600)
    full, estimated = runs[True], runs[False]
    # Every message processed either way; the estimate grows the pool to the same peak while the burst waits
    assert len(full.waits_s) == len(estimated.waits_s) == 600
    assert max(x.workers for x in estimated.samples) == max(x.workers for x in full.samples) == 6
    # The estimated run saw no message in flight once none was ready (the full count did: the burst's tail)
    assert any(x.ready == 0 and x.outstanding > 0 for x in full.samples)
    assert not any(x.ready == 0 and x.outstanding > 0 for x in estimated.samples)
    # What the estimate cannot see (the last messages in flight) costs little: the drain is as fast within 10%
    assert max(estimated.waits_s) <= 1.1 * max(full.waits_s)
    # And the pool comes back to MIN afterwards
    assert estimated.samples[-1].workers == full.samples[-1].workers == 1
    print(f"worker-seconds: full {full.worker_seconds:.0f}, estimated {estimated.worker_seconds:.0f}; longest wait: "
          f"full {max(full.waits_s):.1f} s, estimated {max(estimated.waits_s):.1f} s")
