"""The chaos suite's harder scenarios, counted by ``harness.verify`` and recorded for
docs/RELIABILITY.md. ``SD_CHAOS_ROUNDS`` (default 1) makes them longer."""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import Iterator

import pytest

from tests.chaos.harness import (
    ROUNDS,
    LiveReader,
    WorkerProcs,
    base_settings,
    committed_total,
    drained,
    group_members,
    make_stream,
    produce,
    publish,
    sized,
    verify,
)
from tests.chaos.proxy import TcpProxy
from tests.helpers import wait_until
from tests.services import Services, free_port

pytestmark = [pytest.mark.integration, pytest.mark.own_services]  # storms kill many workers: their own broker


def _assert_outcome(figures: dict, exactly_once: bool) -> None:
    shown = str(figures)
    assert figures["lost_alerts"] == 0, shown
    assert figures["poison_not_dead_lettered"] == 0, shown
    assert figures["all_committed"], shown
    if exactly_once:
        assert figures["duplicate_alerts"] == 0 and figures["duplicate_dead_letters"] == 0, shown
        assert figures["live_reader_agrees"] in (True, None), shown


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_kill_storm_two_workers_ten_percent_poison(services, bundle, env_for, tmp_path, delivery):
    settings = base_settings(services, delivery=delivery)
    publish(settings, bundle)
    n, k, slow = sized(12_000, 30)
    stream = make_stream(n, k, poison_rate=0.10, seed=31)
    produce(settings, stream)
    live = LiveReader(settings)
    procs = WorkerProcs(env_for(settings), tmp_path)
    rng = random.Random(5)
    try:
        procs.start(0)
        procs.start(1)
        for round_ in range(2 * ROUNDS):
            target = committed_total(settings) + len(stream.records) // (3 * ROUNDS + 1)
            wait_until(lambda t=target: committed_total(settings) >= min(t, len(stream.records)) or drained(settings),
                       timeout_s=120 * slow, message=f"progress before kill {round_}")
            if drained(settings):
                break
            slot = rng.randrange(2)
            procs.kill(slot)  # SIGKILL at an arbitrary point: mid-batch, mid-transaction, mid-commit
            procs.restart(slot)
        wait_until(lambda: drained(settings), timeout_s=180 * slow, message="stream drained after the kills")
    finally:
        procs.stop_all()
    outcome = verify("kill -9 storm, 2 workers, 10% poison", settings, stream, live.close(),
                     kills=procs.kills, restarts=procs.restarts)
    assert procs.kills >= 1
    _assert_outcome(outcome.figures, delivery == "exactly_once")


def test_sigstop_past_session_timeout_is_fenced_without_duplicates(services, bundle, env_for, tmp_path):
    settings = base_settings(services, delivery="exactly_once")
    publish(settings, bundle)
    n, k, slow = sized(8_000, 20)
    stream = make_stream(n, k, poison_rate=0.02, seed=32)
    produce(settings, stream)
    live = LiveReader(settings)
    procs = WorkerProcs(env_for(settings), tmp_path)
    try:
        procs.start(0)
        procs.start(1)
        wait_until(lambda: group_members(settings) == 2 and committed_total(settings) > 500, timeout_s=120 * slow,
                   message="two members making progress")
        procs.signal(0, signal.SIGSTOP)  # frozen mid-whatever, past the 10 s session timeout
        wait_until(lambda: group_members(settings) == 1, timeout_s=60, message="the frozen worker left the group")
        wait_until(lambda: drained(settings), timeout_s=180 * slow, message="the other worker took over and drained")
        procs.signal(0, signal.SIGCONT)  # the zombie wakes up with stale state: it must be fenced
        wait_until(lambda: group_members(settings) == 2, timeout_s=60, message="the zombie rejoined")
    finally:
        procs.stop_all()
    outcome = verify("SIGSTOP past session timeout, then SIGCONT", settings, stream, live.close())
    _assert_outcome(outcome.figures, exactly_once=True)


@pytest.mark.parametrize("how", ["kill-kafka", "stop-kafka"])
def test_broker_restart_mid_stream(services, bundle, start_worker, how):
    settings = base_settings(services, delivery_timeout_s=10.0)
    publish(settings, bundle)
    n, k, slow = sized(15_000, 30)
    stream = make_stream(n, k, poison_rate=0.02, seed=33)
    produce(settings, stream)
    running = start_worker(settings)
    wait_until(lambda: committed_total(settings) > 2_000, message="worker under way")
    services.run(how)  # hard (SIGKILL) or clean (SIGTERM) broker stop mid-stream
    services.run("up")
    wait_until(lambda: drained(settings), timeout_s=180 * slow, message="worker recovered on its own")
    running.stop()
    outcome = verify(f"broker {'killed' if how == 'kill-kafka' else 'stopped'} mid-stream, restarted",
                     settings, stream, restarts=1)
    _assert_outcome(outcome.figures, exactly_once=False)


@pytest.fixture
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Services, TcpProxy]]:
    """Kafka advertised behind a loopback TCP proxy, so the test can cut every client off."""
    import os

    kafka_port, proxy_port = free_port(), free_port()
    proxy = TcpProxy(proxy_port, kafka_port)
    env = dict(os.environ, SD_KAFKA_PORT=str(kafka_port), SD_KAFKA_CONTROLLER_PORT=str(free_port()),
               SD_KAFKA_ADVERTISED_PORT=str(proxy_port), SD_REDIS_PORT=str(free_port()),
               SD_SERVICES_DIR=str(tmp_path_factory.mktemp("proxied")))
    running = Services(f"127.0.0.1:{proxy_port}", f"redis://127.0.0.1:{env['SD_REDIS_PORT']}/0", env)
    try:
        running.run("up")
        yield running, proxy
    finally:
        running.run("down")
        proxy.close()


def test_network_cut_between_worker_and_broker(proxied, bundle, start_worker):
    services, proxy = proxied
    settings = base_settings(services, delivery_timeout_s=5.0)
    publish(settings, bundle)
    n, k, slow = sized(15_000, 30)
    stream = make_stream(n, k, poison_rate=0.02, seed=34)
    produce(settings, stream)
    running = start_worker(settings)
    wait_until(lambda: committed_total(settings) > 2_000, message="worker under way")
    proxy.cut()
    # The outage itself lasts past the 10 s session timeout: a fault of fixed duration, not a wait
    # for readiness. The worker must neither hang nor crash meanwhile.
    threading.Event().wait(12.0)
    assert running.error is None, running.trace
    assert running.thread.is_alive()
    proxy.restore()
    wait_until(lambda: drained(settings), timeout_s=180 * slow, message="worker recovered after the cut")
    running.stop()
    assert running.error is None
    outcome = verify("network cut between worker and broker (TCP proxy)", settings, stream)
    _assert_outcome(outcome.figures, exactly_once=False)


def test_rebalance_storm_exactly_once(services, bundle, start_worker):
    base = base_settings(services, delivery="exactly_once")
    publish(base, bundle)
    n, k, slow = sized(20_000, 40)
    stream = make_stream(n, k, poison_rate=0.05, seed=35)
    live = LiveReader(base)
    feeder = threading.Thread(target=produce, args=(base, stream))
    feeder.start()
    slots = [base.model_copy(update={"worker_id": f"slot-{i}"}) for i in range(4)]
    workers = {0: start_worker(slots[0])}
    rng = random.Random(7)
    changes = 0
    for _ in range(4 * ROUNDS):  # workers join and leave, as an autoscaler would make them
        target = committed_total(base) + 1_500
        wait_until(lambda t=target: committed_total(base) >= t or drained(base), timeout_s=120 * slow,
                   message="progress between membership changes")
        slot = rng.randrange(1, 4)
        if slot in workers:
            workers.pop(slot).stop()
        else:
            workers[slot] = start_worker(slots[slot])
        changes += 1
    feeder.join(timeout=120)
    wait_until(lambda: drained(base), timeout_s=180 * slow, message="drained after the storm")
    for running in workers.values():
        running.stop()
    outcome = verify("rebalance storm (workers joining and leaving)", base, stream, live.close(),
                     restarts=changes)
    _assert_outcome(outcome.figures, exactly_once=True)
