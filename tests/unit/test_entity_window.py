"""The write-behind window through a rebalance (``Worker._revoking`` / ``_revoke_done``,
``base.Source.on_revoke_done``), on the in-memory transport: the window written and committed in
the rebalance hook, or its commit refused there, with a batch of the same worker delivered while
the hook ran (kafka-python runs the hook on its I/O thread, beside the worker thread). Every
event's account features must be offline enrichment's, whichever events are read twice."""

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


@pytest.mark.parametrize("refused", [False, True], ids=["committed", "commit-refused"])
def test_a_batch_delivered_while_the_rebalance_hook_commits_the_window_keeps_offlines_features(
        accounts: Bundle, refused: bool) -> None:
    """Window W (300 events, uncommitted: a 10-minute flush interval) is open when a rebalance
    starts during batch B's delivery; the hook writes W and its offsets go to the commit.

    * committed: B joins a window of its own (its records' undo is the state before B, not
      before W). The eager rejoin reads B again from W's end, against B's records: before
      2026-12-05 they kept W's undo (pinned: the hook never learned the commit's outcome), so
      B was replayed from the state before W without W's events — approximate features.
    * refused: W is open again and taken; the next batch drops it and everything is read again
      from the committed offsets (none) against the stored records, which keep W's undo."""
    events = _raw(600, seed=42)
    broker = MemoryBroker()
    broker.create_topic(TOPIC, 4)
    for topic in (ALERTS, DLQ):
        broker.create_topic(topic)
    control = MemoryControl()
    control.publish(accounts)
    settings = Settings(input_topic=TOPIC, alerts_topic=ALERTS, dlq_topic=DLQ, group_id=GROUP, create_topics=False,
                        metrics_port=0, score_feed_sample=0, batch_size=64, threshold_refresh_s=0.05, worker_id="w",
                        entity_partition_key="account_id", entity_flush_ms=600_000)
    source = MemorySource(broker, TOPIC, GROUP, settings.batch_size)
    worker = Worker(settings, control, source, MemoryPublisher(broker))
    worker.start()
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
    offline = enrich_history(SPEC, events)
    assert len(seen) == len(events)
    different = [e["event_id"] for e in offline if seen[e["event_id"]] != e]
    assert not different, f"{len(different)} events differ from offline enrichment, e.g. {different[:3]}"
    assert broker.committed(GROUP) == broker.end_offsets(TOPIC)  # the window committed at close
