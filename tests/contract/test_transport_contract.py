"""The transport contract (``stream_detector/transport/base.py``): the same tests on every adapter —
the in-memory broker, kafka-python and confluent-kafka on a real broker. The worker relies on each
of these; an adapter that passes them can carry it."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from stream_detector.errors import DeliveryError
from stream_detector.transport.base import Membership, OutMessage, TopicPartition
from tests.contract.conftest import Harness, MemoryHarness, poll_until, positions


def test_poll_returns_batches_in_offset_order_per_partition(harness: Harness) -> None:
    topic, group = harness.topic(2), harness.group()
    harness.produce(topic, [b"a0", b"a1", b"a2"], partition=0)
    harness.produce(topic, [b"b0", b"b1"], partition=1)
    source = harness.source(topic, group)
    batches = poll_until(source, 5)
    got = positions(batches)
    assert sorted(got) == [(0, 0, b"a0"), (0, 1, b"a1"), (0, 2, b"a2"), (1, 0, b"b0"), (1, 1, b"b1")]
    for partition in (0, 1):
        offsets = [o for p, o, _ in got if p == partition]
        assert offsets == sorted(offsets), "records of a partition come in offset order"
    first = batches[0]
    assert first.topic == topic and isinstance(first.group, Membership) and first.polled_at > 0
    assert all(ts > 0 for b in batches for ts in b.timestamps)
    assert len(first.keys) == len(first.headers) == len(first.timestamps) == len(first)
    ends: dict[TopicPartition, int] = {}
    for b in batches:
        ends.update(b.next_offsets())
    assert ends == {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 2}
    assert source.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}


def test_a_new_member_resumes_after_the_committed_offsets(harness: Harness) -> None:
    topic, group = harness.topic(1), harness.group()
    harness.produce(topic, [b"r0", b"r1", b"r2", b"r3"])
    first = harness.source(topic, group)
    batch = poll_until(first, 4)[0]
    publisher = harness.publisher(transactional=False)
    publisher.commit(first, {TopicPartition(topic, 0): 2}, batch.group)
    assert harness.committed(group) == {TopicPartition(topic, 0): 2}
    first.close()
    harness.produce(topic, [b"r4"])
    second = harness.source(topic, group)
    assert [(o, v) for _, o, v in positions(poll_until(second, 3))] == [(2, b"r2"), (3, b"r3"), (4, b"r4")]


def test_paused_partitions_return_nothing_until_resumed(harness: Harness) -> None:
    topic, group = harness.topic(2), harness.group()
    harness.produce(topic, [b"a0"], partition=0)
    harness.produce(topic, [b"b0"], partition=1)
    source = harness.source(topic, group)
    poll_until(source, 2)
    source.pause_all()
    assert source.paused() == source.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
    harness.produce(topic, [b"a1"], partition=0)
    harness.produce(topic, [b"b1"], partition=1)
    source.poll_while_paused(100)  # keeps membership, consumes nothing
    assert source.paused() == source.assignment()
    assert not len(source.poll_batch())
    source.resume_all()
    assert source.paused() == set()
    assert sorted(positions(poll_until(source, 2))) == [(0, 1, b"a1"), (1, 1, b"b1")]


def test_rewind_to_committed_rereads_what_was_not_committed(harness: Harness) -> None:
    topic, group = harness.topic(2), harness.group()
    harness.produce(topic, [b"a0", b"a1", b"a2", b"a3"], partition=0)
    harness.produce(topic, [b"b0"], partition=1)
    source = harness.source(topic, group)
    batches = poll_until(source, 5)
    source.commit({TopicPartition(topic, 0): 2})
    for batch in batches:
        source.rewind_to_committed(batch)
    again = sorted(positions(poll_until(source, 3)))
    assert again == [(0, 2, b"a2"), (0, 3, b"a3"), (1, 0, b"b0")], "p1 had no commit: back to its beginning"


def test_backlog_counts_what_the_client_has_still_to_hand_out(harness: Harness) -> None:
    """Event-time alignment decides from ``backlog`` whether a partition may still deliver older
    records (``pipeline/align.py``). kafka-python caches a partition's high watermark only once it
    hands that partition out, so asked, the source learns the others' ends from the broker."""
    topic, group = harness.topic(2), harness.group()
    harness.produce(topic, [b"a0", b"a1", b"a2", b"a3", b"a4"], partition=0)
    harness.produce(topic, [b"b0", b"b1", b"b2"], partition=1)
    source = harness.source(topic, group)
    first = poll_until(source, 1)
    handed = {p: sum(1 for q, _, _ in positions(first) if q == p) for p in (0, 1)}
    assert source.backlog(ask=True) == {0: 5 - handed[0], 1: 3 - handed[1]}
    poll_until(source, 8 - sum(handed.values()))
    assert source.backlog() == source.backlog(ask=True) == {0: 0, 1: 0}
    # a second backlog on both, after the client has drained and cached both ends: asked, neither end is the
    # old one (kafka-python kept a partition's stale cached end while it handed out the other's records, and
    # a two-stage run sent idle marks for a partition with thousands left: trial O)
    harness.produce(topic, [b"a%d" % i for i in range(5, 205)], partition=0)
    harness.produce(topic, [b"b%d" % i for i in range(3, 203)], partition=1)
    again = poll_until(source, 1)
    handed = {p: sum(1 for q, _, _ in positions(again) if q == p) for p in (0, 1)}
    assert source.backlog(ask=True) == {0: 200 - handed[0], 1: 200 - handed[1]}


def test_a_poll_told_not_to_wait_returns_what_was_fetched_at_once(harness: Harness) -> None:
    """``poll_batch(wait_ms=0)`` (the alignment step waiting for another worker's partition polls
    its client so, ``pipeline/align.py``) hands out what the client has fetched and, with nothing
    there, returns without waiting ``idle_poll_ms`` (200 ms in this harness)."""
    topic, group = harness.topic(1), harness.group()
    harness.produce(topic, [b"x0", b"x1"])
    source = harness.source(topic, group)
    poll_until(source, 2)
    quick = []
    for _ in range(3):  # the quickest of three: one slow call on a loaded machine says nothing
        start = time.monotonic()
        assert not len(source.poll_batch(fill=False, wait_ms=0))
        quick.append(time.monotonic() - start)
    assert min(quick) < 0.1
    harness.produce(topic, [b"x2"])
    assert [v for b in poll_until(source, 1) for v in b.values] == [b"x2"]


def test_end_offsets_are_the_brokers_now(harness: Harness) -> None:
    """``end_offsets`` (event-time alignment checks another worker's idle claim with it): the
    offset the next record appended to each partition gets, asked of the broker, not what the
    client has fetched."""
    topic, group = harness.topic(2), harness.group()
    harness.produce(topic, [b"a0", b"a1", b"a2"], partition=0)
    source = harness.source(topic, group)
    poll_until(source, 3)
    assert source.end_offsets([0, 1]) == {0: 3, 1: 0}
    harness.produce(topic, [b"b0"], partition=1)
    assert source.end_offsets([1]) == {1: 1}  # appended since the last poll


def test_committed_offsets_are_the_groups_not_the_positions(harness: Harness) -> None:
    """``committed_offsets`` (a worker with a batch of already-applied events asks whether the group
    has moved past it: ``Worker._overtaken``): the group's committed offsets, asked of the
    coordinator, whatever the client's positions; a partition without a commit is left out."""
    topic, group = harness.topic(3), harness.group()
    harness.produce(topic, [b"a0", b"a1", b"a2", b"a3"], partition=0)
    harness.produce(topic, [b"b0", b"b1"], partition=1)
    source = harness.source(topic, group)
    batch = poll_until(source, 6)[0]
    assert source.committed_offsets([0, 1, 2]) == {}
    harness.publisher(transactional=False).commit(source, {TopicPartition(topic, 0): 3, TopicPartition(topic, 1): 1},
                                                  batch.group)
    assert source.committed_offsets([0, 1, 2]) == {0: 3, 1: 1}  # the positions are at 4 and 2
    assert source.committed_offsets([1]) == {1: 1}


def test_still_member_until_the_membership_moves(harness: Harness) -> None:
    topic, group = harness.topic(1), harness.group()
    harness.produce(topic, [b"x"])
    source = harness.source(topic, group)
    batch = poll_until(source, 1)[0]
    assert source.still_member(batch)
    harness.move_membership(source, group)
    assert not source.still_member(batch), "a batch of an older membership must not be committed"


def test_a_rebalance_commits_what_the_revoke_hook_returns_and_says_whether_it_did(harness: Harness) -> None:
    """``on_revoke`` is called with the partitions a rebalance takes while they are still this
    member's; what it returns is committed, and ``on_revoke_done`` is then told so, on the hook's
    thread (the worker keeps its write-behind window unchanged in between: ``Worker._revoking``)."""
    topic, group = harness.topic(2), harness.group()
    harness.produce(topic, [b"a0"], partition=0)
    harness.produce(topic, [b"b0"], partition=1)
    source = harness.source(topic, group)
    poll_until(source, 2)
    calls: list[tuple[Any, ...]] = []

    def revoke(partitions: set[TopicPartition], lost: bool) -> dict[TopicPartition, int]:
        calls.append(("revoke", threading.get_ident(), lost, partitions))
        return {} if lost or calls[:-1] else {min(partitions): 1}  # which one goes is the assignor's choice

    def done(offsets: dict[TopicPartition, int], committed: bool) -> None:
        calls.append(("done", threading.get_ident(), offsets, committed))

    source.on_revoke, source.on_revoke_done = revoke, done
    harness.rebalance(source, topic, group, until=lambda: any(c[0] == "done" for c in calls))
    hook = calls[0]
    assert hook[0] == "revoke" and hook[2] is False and hook[3], calls
    gone = min(hook[3])
    assert calls[1] == ("done", hook[1], {gone: 1}, True), "told on the hook's own thread, after the commit"
    assert harness.committed(group).get(gone) == 1


def test_publish_returns_once_every_message_is_stored(harness: Harness) -> None:
    topic = harness.topic(1)
    publisher = harness.publisher(transactional=False)
    assert not publisher.transactional
    publisher.publish([])
    publisher.publish([OutMessage(topic, b"k1", b"v1", [("h", b"1")]),
                       OutMessage(topic, b"k2", None, [("reason", b"tombstone")]),  # a null value stays null
                       OutMessage(topic, b"k3", b"v3", [])])
    assert harness.read(topic) == [(b"k1", b"v1", [("h", b"1")]), (b"k2", None, [("reason", b"tombstone")]),
                                   (b"k3", b"v3", [])]


def test_a_transaction_is_atomic_and_an_abort_leaves_nothing(harness: Harness) -> None:
    source_topic, out, group = harness.topic(1), harness.topic(1), harness.group()
    harness.produce(source_topic, [b"e0", b"e1"])
    source = harness.source(source_topic, group)
    publisher = harness.publisher(transactional=True)
    assert publisher.transactional
    batch = poll_until(source, 2)[0]
    publisher.publish([OutMessage(out, None, b"alert-0", [])])
    publisher.commit(source, batch.next_offsets(), batch.group)
    assert harness.read(out) == [(None, b"alert-0", [])]
    assert harness.committed(group) == {TopicPartition(source_topic, 0): 2}

    harness.produce(source_topic, [b"e2"])
    batch = poll_until(source, 1)[0]
    publisher.publish([OutMessage(out, None, b"alert-2", [])])
    publisher.abandon()  # the worker's abort: alerts and offsets of the batch go together
    assert harness.read(out) == [(None, b"alert-0", [])], "a read_committed reader sees no aborted alert"
    assert harness.committed(group) == {TopicPartition(source_topic, 0): 2}

    publisher.publish([OutMessage(out, None, b"alert-2b", [])])  # the next transaction works again
    publisher.commit(source, batch.next_offsets(), batch.group)
    assert [v for _, v, _ in harness.read(out)] == [b"alert-0", b"alert-2b"]
    assert harness.committed(group) == {TopicPartition(source_topic, 0): 3}


def test_an_injected_send_failure_on_the_memory_transport_is_a_delivery_error() -> None:
    """Fault injection is memory-only (for worker unit tests); it raises what the Kafka adapters raise,
    and the failed transaction leaves nothing behind."""
    harness = MemoryHarness()
    topic, group = harness.topic(1), harness.group()
    harness.produce(topic, [b"e0"])
    source = harness.source(topic, group)
    batch = poll_until(source, 1)[0]
    publisher = harness.publisher(transactional=True)
    harness.broker.fail_sends = 1
    with pytest.raises(DeliveryError, match="injected"):
        publisher.publish([OutMessage(topic, None, b"lost", [])])
    publisher.publish([OutMessage(topic, None, b"kept", [])])
    publisher.commit(source, batch.next_offsets(), batch.group)
    assert [v for _, v, _ in harness.read(topic)] == [b"e0", b"kept"]
    assert harness.committed(group) == {TopicPartition(topic, 0): 1}
