"""The write-behind window through a rebalance (``Worker._revoking`` / ``_revoke_done``,
``base.Source.on_revoke_done``), on the in-memory transport: the window written in the
rebalance hook and its commit made, or refused there. Every event's account features must be
offline enrichment's, whichever events are read twice, a crash included.

Both Kafka clients run the hook inside the worker thread's poll (confluent in ``consume``;
kafka-python 3.0.12 on its I/O thread, while the worker thread waits in ``poll``: a helper's
reading of its coordinator, 2026-12-05), so a batch is never between enrich and delivery while
the hook runs; the first test makes that interleaving anyway (the lock the hook keeps guards it).
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from stream_detector.entity import EntitySpec, enrich_history
from stream_detector.model.bundle import Bundle
from stream_detector.settings import Settings
from stream_detector.store.memory import MemoryControl
from stream_detector.transport.base import OutMessage
from stream_detector.transport.memory import MemoryBroker, MemoryPublisher, MemorySource
from stream_detector.worker import Worker
from tests.helpers import entity_bundle, raw_card_events

SPEC = EntitySpec(keys=("account_id",), windows=(3600, 86_400), max_distinct=8)
TOPIC, ALERTS, DLQ, GROUP = "tx", "alerts", "dlq", "g"


def _raw(n: int, seed: int) -> list[dict[str, Any]]:
    return raw_card_events(n, seed, accounts=30, tag="win")


@pytest.fixture(scope="module")
def accounts() -> Bundle:
    return entity_bundle(SPEC, _raw(800, seed=41), epochs=2)


def _append(broker: MemoryBroker, events: list[dict[str, Any]]) -> None:
    broker.append([OutMessage(TOPIC, str(e["account_id"]).encode(), orjson.dumps(e), []) for e in events])


def _drain(worker: Worker) -> None:
    for _ in range(400):
        if not worker.run_once() and not worker.hold.active and not worker.run_once():
            return
    raise AssertionError("the worker did not drain its topic")


def _worker(accounts: Bundle, broker: MemoryBroker | None = None, control: MemoryControl | None = None,
            flush_ms: int = 600_000, **settings_: Any) -> tuple[MemoryBroker, Worker, MemorySource]:
    """A started worker with write-behind on ``account_id`` (a 10-minute flush interval: the
    window stays open unless a test flushes it) on a four-partition topic of ``broker``; the
    entity state is ``control``'s (a new one's by default: shared, as Redis is, by a restart)."""
    if broker is None:
        broker = MemoryBroker()
        broker.create_topic(TOPIC, 4)
        for topic in (ALERTS, DLQ):
            broker.create_topic(topic)
    if control is None:
        control = MemoryControl()
        control.publish(accounts)
    settings = Settings(input_topic=TOPIC, alerts_topic=ALERTS, dlq_topic=DLQ, group_id=GROUP, create_topics=False,
                        metrics_port=0, score_feed_sample=0, batch_size=64, threshold_refresh_s=0.05, worker_id="w",
                        entity_partition_key="account_id", entity_flush_ms=flush_ms, **settings_)
    source = MemorySource(broker, TOPIC, GROUP, settings.batch_size)
    worker = Worker(settings, control, source, MemoryPublisher(broker))
    worker.start()
    return broker, worker, source


def _offlines(seen: dict[str, dict[str, Any]], events: list[dict[str, Any]]) -> None:
    offline = enrich_history(SPEC, events)
    assert len(seen) == len(events)
    different = [e["event_id"] for e in offline if seen[e["event_id"]] != e]
    assert not different, f"{len(different)} events differ from offline enrichment, e.g. {different[:3]}"


@pytest.mark.parametrize("refused", [False, True], ids=["committed", "commit-refused"])
def test_a_batch_delivered_while_the_rebalance_hook_commits_the_window_keeps_offlines_features(
        accounts: Bundle, refused: bool) -> None:
    """Window W (300 events, uncommitted) is open when a rebalance starts during batch B's
    delivery; the hook writes W and its offsets go to the commit.

    * committed: B joins a window of its own (its records' undo is the state before B, not
      before W). The eager rejoin reads B again from W's end, against B's records: had they kept
      W's undo (pinned: before 2026-12-05 the hook never learned the commit's outcome), B would be
      replayed from the state before W without W's events — 64 events off offline's.
    * refused: W is open again and taken; the next batch drops it and everything is read again
      from the committed offsets (none) against the stored records, which keep W's undo."""
    events = _raw(600, seed=42)
    broker, worker, source = _worker(accounts)
    try:
        assert worker.enricher is not None and worker.behind is not None
        seen: dict[str, dict[str, Any]] = {}
        worker.enricher.on_enriched = lambda batch: seen.update((e["event_id"], e) for e in batch)
        _append(broker, events[:300])
        _drain(worker)
        assert broker.committed(GROUP) == {} and worker.behind.pending > 0  # W: delivered, uncommitted

        publish, hooked = worker.publisher.publish, []

        def free_elsewhere() -> bool:  # whether another thread could take the window's lock now
            got: list[bool] = []

            def probe() -> None:
                got.append(worker._window_lock.acquire(blocking=False))
                if got[0]:
                    worker._window_lock.release()
            thread = threading.Thread(target=probe)
            thread.start()
            thread.join()
            return got[0]

        def publish_then_rebalance(messages: Any) -> None:
            publish(messages)
            if not hooked:  # B: enriched and delivered, not yet accepted into the window
                source.revoke(refuse_commit=refused)
                assert worker.behind is not None
                hooked.append((free_elsewhere(), dict(worker.behind.pinned), worker._taken))
            elif len(hooked) == 1:  # the batch after B: the group moves on while it is in flight
                hooked.append(True)
                broker.evict(GROUP)

        worker.publisher.publish = publish_then_rebalance  # type: ignore[method-assign]
        _append(broker, events[300:])
        _drain(worker)
        assert hooked, "a batch was delivered after W"
        free, pinned, taken = hooked[0]
        assert free, "the hook released the window's lock once told the commit's outcome"
        if refused:
            assert taken and pinned  # W open again: its undo stays until it is read again
        else:
            assert not taken and not pinned  # W committed: B's records start undo snapshots of their own
        assert worker.stats.abandoned_batches == 1  # the batch in flight at the eviction: read again
    finally:
        worker.close()
    _offlines(seen, events)
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)  # the window committed at close


class _Crash(Exception):
    """The process dies here."""


def test_a_window_whose_commit_the_rebalance_refused_is_read_again_before_a_crash_can_strand_it(
        accounts: Bundle) -> None:
    """A cooperative rebalance (confluent's cooperative-sticky) takes partition 3 while window W is
    open; 0-2 stay with the worker at their positions. The hook writes W (its records keep W's
    undo) and the commit is refused. Then batches B on 0-2, their records written, and the process
    dies before B's commit. Its successor reads everything again from the committed offsets (none).

    Before 2026-12-05 the hook never learned of the refusal: the next batch forgot W's undo, B's
    records were written with B's undo, and the successor found W's events on 0-2 applied outside
    any undo — their features came from the state after B. Now the worker that learns of the
    refusal drops W and reads it again from the committed offsets first."""
    events = _raw(600, seed=43)
    broker, worker, source = _worker(accounts)
    seen: dict[str, dict[str, Any]] = {}
    assert worker.enricher is not None and worker.behind is not None
    worker.enricher.on_enriched = lambda batch: seen.update((e["event_id"], e) for e in batch)
    _append(broker, events[:300])
    _drain(worker)
    source.rebalance(refuse_commit=True, revoke={3})  # inside a poll, as the clients call the hook
    _append(broker, events[300:])
    _drain(worker)
    assert {tp.partition for tp in source.assignment()} == {0, 1, 2}

    def crash(*args: Any, **kwargs: Any) -> bool:
        raise _Crash

    worker.publisher.commit = crash  # type: ignore[method-assign]
    with pytest.raises(_Crash):
        worker._flush_and_commit()  # the window's records written; the process dies before its commit
    assert broker.committed(GROUP) == {}

    # restarted on the same state: every partition read again from the committed offsets
    _, successor, _ = _worker(accounts, broker, worker.control)  # type: ignore[arg-type]
    try:
        assert successor.enricher is not None
        successor.enricher.on_enriched = lambda batch: seen.update((e["event_id"], e) for e in batch)
        seen.clear()
        _drain(successor)
        misses = successor.enricher.log_misses  # applied events outside any undo: approximate features
    finally:
        successor.close()
    assert misses == 0
    _offlines(seen, events)


@pytest.mark.parametrize("crash_at", [2, 3, 6])
def test_windows_written_while_the_next_batches_are_read_replay_exactly_after_a_crash(
        accounts: Bundle, crash_at: int) -> None:
    """SD_ENTITY_FLUSH_ASYNC with a window due after every batch: each window is written on the
    writer thread while the next batch is read from its records, and committed once landed. The
    process dies at the ``crash_at``-th commit — a window written, the batches after it accepted
    into the next one. Its successor reads everything again from the last commit: every event's
    account features are offline enrichment's and no already-applied event lacks its undo (a
    window opened while the last was in flight starts an undo of its own once that one commits)."""
    events = _raw(600, seed=44)
    broker, worker, _source = _worker(accounts, flush_ms=1)
    seen: dict[str, dict[str, Any]] = {}
    assert worker.enricher is not None and worker.behind is not None
    worker.enricher.on_enriched = lambda batch: seen.update((e["event_id"], e) for e in batch)
    commit, calls = worker.publisher.commit, []

    def crash_on(*args: Any, **kwargs: Any) -> bool:
        calls.append(1)
        if len(calls) == crash_at:
            raise _Crash
        return commit(*args, **kwargs)

    worker.publisher.commit = crash_on  # type: ignore[method-assign]
    _append(broker, events)
    with pytest.raises(_Crash):
        _drain(worker)
    assert worker.stats.state_flushes >= crash_at and 0 < sum(broker.committed(GROUP).values()) < len(events)
    assert worker._writer is not None  # the windows were written on the writer thread
    worker._writer.shutdown(wait=True)

    _, successor, _ = _worker(accounts, broker, worker.control, flush_ms=1)  # type: ignore[arg-type]
    try:
        assert successor.enricher is not None
        successor.enricher.on_enriched = lambda batch: seen.update((e["event_id"], e) for e in batch)
        _drain(successor)
        misses = successor.enricher.log_misses
    finally:
        successor.close()
    assert misses == 0
    _offlines(seen, events)
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)


def test_a_window_whose_write_fails_at_a_switch_to_a_pass_through_model_reads_the_batch_in_hand_again(
        accounts: Bundle) -> None:
    """A review of the asynchronous write (2026-12-06): the window in flight must land before a model
    whose records all pass through (a shared key, ``SD_ENTITY_REPLAY_LOG=false``) takes over. When
    its write fails, the window is dropped and its partitions rewound to the last commit; the batch
    in hand came after it, so it is not enriched (it would be written and committed past the events
    read again, which would then find themselves already applied) but read again too."""
    from types import SimpleNamespace

    from stream_detector.errors import EntityStateUnavailable
    from stream_detector.worker import _WindowDropped

    events = _raw(400, seed=45)
    terminals = [dict(e, terminal_id=f"T{i % 7}") for i, e in enumerate(events)]
    shared = entity_bundle(EntitySpec(keys=("account_id", "terminal_id"), windows=(3600,), max_distinct=8),
                           terminals[:200], epochs=1)
    broker, worker, source = _worker(accounts, flush_ms=1, entity_replay_log=False)
    try:
        assert worker.behind is not None
        _append(broker, events[:256])
        assert worker.run_once() and worker._flush is not None  # the first window in flight
        assert worker.run_once() and worker._flush is not None  # landed and committed; the second in flight
        worker._flush.flush.result()  # written (the writer thread's)
        committed = broker.committed(GROUP)
        inner = worker.behind.inner

        def refused(write: Any) -> list[int]:
            raise EntityStateUnavailable("injected: connection refused")
        inner.send_save = refused  # type: ignore[attr-defined]
        assert worker.run_once()  # lands the second, puts the third in flight: its write fails
        assert worker._flush is not None
        before = broker.committed(GROUP)
        assert sum(before.values()) > sum(committed.values())
        batch = source.poll_batch()
        assert len(batch)
        with pytest.raises(_WindowDropped):
            worker._enrich_for(SimpleNamespace(bundle=shared), batch)  # type: ignore[arg-type]
        assert worker._flush is None and not worker._pending and not worker.behind.pending
        assert broker.committed(GROUP) == before  # nothing past the window read again
    finally:
        worker._writer and worker._writer.shutdown(wait=True)


def test_a_topic_found_not_keyed_by_the_partition_key_turns_event_time_alignment_on(
        accounts: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    """Trial E: with SD_ENTITY_PARTITION_KEY naming a field the producer did not key by, the worker
    logged an ERROR and went on computing that key's history in fetch order, partition after
    partition (3,245 alerts of 6,000 against 31 offline). Now (SD_ALIGN_EVENT_TIME=auto) the
    partitions are aligned in event time from the next batch, as for a key shared across partitions;
    a topic keyed right leaves alignment off."""
    import logging

    from stream_detector.pipeline.align import AlignedSource

    events = _raw(600, seed=45)
    for keyed in (True, False):
        broker, worker, _source = _worker(accounts, flush_ms=1)
        try:
            if keyed:
                _append(broker, events)
            else:  # keyed by event id: an account's events on every partition
                broker.append([OutMessage(TOPIC, str(e["event_id"]).encode(), orjson.dumps(e), []) for e in events])
            with caplog.at_level(logging.INFO):
                _drain(worker)
            assert worker.behind is not None and worker.behind.unkeyed is not keyed
            assert isinstance(worker.source, AlignedSource) is not keyed
            if not keyed:
                assert "the input topic is not keyed by account_id" in caplog.text
                assert "aligns the partitions in event time from the next batch" in caplog.text
                assert "event-time alignment on (auto: model" in caplog.text
            assert broker.committed(GROUP) == broker.end_offsets(TOPIC)
        finally:
            worker.close()
        caplog.clear()


@pytest.mark.parametrize("sole", [True, False], ids=["sole-owner", "terminals-every-batch"])
def test_a_worker_the_group_has_moved_past_gives_its_batch_up_unpublished(sole: bool) -> None:
    """Trial V (2026-12-07): a worker frozen past its session timeout (SIGSTOP), whose partitions
    another worker took and drained, resumed (SIGCONT) and scored the batch it had fetched before
    learning it was evicted: its terminals, read from Redis, already held those events, the
    replay log no longer did (trimmed by the other worker's commits), so their features came from
    the current state and it published 117 alerts offline scoring does not raise. Here worker A
    handles the first half of the stream (its window open); B, in the same group, drains the whole
    stream and commits it; then A polls the second half. A must publish nothing of it: the group's
    committed offsets are past its batch, so the batch and the window are given up."""
    events = _raw(600, seed=46)
    for i, e in enumerate(events):  # the second half's terminals are new to A: read from the store
        e["terminal_id"] = f"T{i % 7}" if i < 300 else f"U{i % 5}"
    spec = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400), max_distinct=8)
    shared = entity_bundle(spec, events[:300], epochs=1)
    control = MemoryControl()
    control.publish(shared)
    broker, a, _ = _worker(shared, control=control, align_idle_ms=0, entity_sole_owner=sole)
    b = None
    try:
        _append(broker, events[:300])
        _drain(a)
        assert a.behind is not None and a.behind.pending and a.behind.sole is sole
        assert not broker.committed(GROUP)  # A's window: open
        _, b, _ = _worker(shared, broker, control, flush_ms=1, align_idle_ms=0)
        _append(broker, events[300:])
        _drain(b)
        assert broker.committed(GROUP) == broker.end_offsets(TOPIC)
        published = len(broker.read(ALERTS))
        assert published  # B's alerts
        a.run_once()  # A's stale batch: the second half, which B has handled and committed
        assert a.stats.abandoned_batches == 1 and len(broker.read(ALERTS)) == published
        assert a.enricher is not None and a.enricher.log_misses > 0  # what gave it away
        assert not a.behind.pending and broker.committed(GROUP) == broker.end_offsets(TOPIC)
    finally:
        a.close()
        if b is not None:
            b.close()


@pytest.mark.parametrize("sole", [True, False], ids=["sole-owner", "terminals-every-batch"])
def test_a_sole_owners_partition_heads_move_on_once_its_window_is_written(sole: bool) -> None:
    """With event-time alignment a partition's head (``AlignedSource.settled``: what a peer that
    joins may release its own records up to) moves on once the batch's shared records (a
    terminal's) are in the store. A worker writing them with every batch moves it at delivery; a
    worker holding every partition (``SD_ENTITY_SOLE_OWNER``) keeps them in its window, so its heads
    move on only once the window is written and committed: moved at delivery, a worker that joined
    while the window was dropped (a rebalance whose hook could not write it) would release events
    past the ones this worker then reads again and applies late to the terminals."""
    from stream_detector.pipeline.align import AlignedSource

    events = _raw(300, seed=47)
    for i, e in enumerate(events):
        e["terminal_id"] = f"T{i % 7}"
    spec = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400), max_distinct=8)
    shared = entity_bundle(spec, events, epochs=1)
    control = MemoryControl()
    control.publish(shared)
    broker, a, _ = _worker(shared, control=control, align_idle_ms=0, entity_sole_owner=sole)
    try:
        _append(broker, events)
        _drain(a)
        assert isinstance(a.source, AlignedSource) and a.behind is not None and a.behind.sole is sole
        assert a.behind.pending and not broker.committed(GROUP)  # the window: open
        assert bool(a.source._settled) is not sole  # noqa: SLF001 - the heads a peer would read
        a._flush_and_commit()  # noqa: SLF001 - the window written and committed
        assert broker.committed(GROUP) == broker.end_offsets(TOPIC)
        assert set(a.source._settled) == {tp.partition for tp in broker.end_offsets(TOPIC)}  # noqa: SLF001
    finally:
        a.close()
