"""kafka-python 3.0.12's group rejoin after a metadata change, on the real broker: the workaround
``transport.kafka_python.finish_rejoin`` (the worker-level test is in ``test_pipeline.py``:
partitions added to the input topic are consumed by the running worker, on both clients)."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic
from kafka.errors import KafkaError

from stream_detector.settings import Settings
from stream_detector.topics import ensure_topics
from stream_detector.transport.base import TopicPartition as OurTopicPartition
from stream_detector.transport.factory import transport_config
from stream_detector.transport.kafka_python import KEEPS_FINISHED_JOINS, KafkaSource, poll_readable
from tests.helpers import wait_until
from tests.services import Services

pytestmark = pytest.mark.integration


def test_kafka_python_finishes_the_rejoin_after_partitions_are_added_even_on_short_polls(services: Services) -> None:
    """The kafka-python 3.0.12 bug, made likely: 5 ms polls, so the poll times
    out before the JoinGroup/SyncGroup round trip ends. Without ``finish_rejoin`` the consumer stays
    REBALANCING: every commit failed for 40 s and partitions 1-3 were never assigned (reproduced
    every time); with it, the four partitions are assigned and commits succeed again at once."""
    topic = f"grow-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=services.kafka)
    producer = KafkaProducer(bootstrap_servers=services.kafka)
    consumer = KafkaConsumer(bootstrap_servers=services.kafka, group_id=f"group-{topic}", enable_auto_commit=False,
                             auto_offset_reset="earliest", metadata_max_age_ms=500)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
        consumer.subscribe([topic])
        wait_until(lambda: poll_readable(consumer, 100) is not None and bool(consumer.assignment()),
                   message="partition 0 assigned")
        admin.create_partitions({topic: NewPartitions(total_count=4)})

        def committed_on_four() -> bool:
            for partition in range(4):
                producer.send(topic, b"x", partition=partition)
            poll_readable(consumer, 5)
            try:
                consumer.commit()
            except KafkaError:  # RebalanceInProgressError while the rejoin is not finished
                return False
            return len(consumer.assignment()) == 4

        wait_until(committed_on_four, timeout_s=30, interval_s=0.0,
                   message="the four partitions assigned and a commit accepted")
        assert sorted(tp.partition for tp in consumer.assignment()) == [0, 1, 2, 3]
        assert consumer._coordinator.rebalance_in_progress() is False  # STABLE, not left REBALANCING

        def committed_everywhere() -> dict[int, int | None]:
            poll_readable(consumer, 50)  # the added partitions' records read, then committed
            consumer.commit()
            return {p: consumer.committed(TopicPartition(topic, p)) for p in range(4)}

        wait_until(lambda: all(o is not None and o >= 1 for o in committed_everywhere().values()),
                   message="a record of every partition read and committed")
        committed = committed_everywhere()
        assert all(committed[p] is not None and committed[p] >= 1 for p in range(4)), committed
    finally:
        consumer.close(autocommit=False)
        producer.close(timeout=10)
        admin.close()


def test_kafka_python_applies_a_join_that_finished_between_polls(services: Services) -> None:
    """The second kafka-python 3.0.12 bug (``transport.kafka_python.keep_finished_joins``): a join
    whose round trip ends while no ``poll`` awaits it was dropped and a new JoinGroup sent, so the
    group rebalanced again (a second generation here; two members doing so kept rebalancing).
    Made certain: polls that wait 0 ms, and no poll while a join is in flight (the first JoinGroup
    of a new member fails by design, MEMBER_ID_REQUIRED: the next one is started by a poll)."""
    assert KEEPS_FINISHED_JOINS, "the patch no longer fits this kafka-python: check whether it still has the bug"
    topic = f"join-{uuid.uuid4().hex[:10]}"
    admin = KafkaAdminClient(bootstrap_servers=services.kafka)
    consumer = KafkaConsumer(bootstrap_servers=services.kafka, group_id=f"group-{topic}", enable_auto_commit=False,
                             auto_offset_reset="earliest")
    try:
        admin.create_topics([NewTopic(topic, 2, 1)])
        wait_until(lambda: consumer.partitions_for_topic(topic), message=f"metadata of {topic}")
        consumer.subscribe([topic])
        coordinator = consumer._coordinator

        def joined_off_poll() -> bool:
            poll_readable(consumer, 0)
            task = coordinator._join_task
            assert not consumer.assignment(), "a join was awaited by a 0 ms poll: nothing left to test"
            if task is None:
                return False
            wait_until(lambda: task.is_done, message="the join's round trip ended, with no poll awaiting it")
            return task.exception is None

        wait_until(joined_off_poll, interval_s=0.0, message="a join that succeeded between polls")
        poll_readable(consumer, 0)
        assert sorted(tp.partition for tp in consumer.assignment()) == [0, 1]
        assert consumer.group_metadata().generation_id == 1, "the finished join applied, not a new one sent"
        assert coordinator.rebalance_in_progress() is False
    finally:
        consumer.close(autocommit=False)
        admin.close()


def test_a_member_whose_rebalance_hook_stalled_past_its_session_commits_nothing_of_what_it_lost(
        services: Services) -> None:
    """A helper's trial (2026-12-07): member A's rebalance hook stalls past its session timeout
    (a slow state write, say) while B joins; the group evicts A and gives B its partitions. kafka-
    python 3.0.12 then rejoined A under a new member id still holding them (no
    ``on_partitions_lost``), and had them *revoked* as a member of the new generation: A's hook
    returned its old offsets and the broker accepted them, behind B's (3 runs of 4). Here A's hook
    returns offsets 1 for every partition it is asked to revoke (its stale window), and B commits
    50 on every partition it holds: the group's committed offsets must end B's, and A's hook be
    told of every partition it held before the stall as lost, or not at all."""
    topic = f"stall-{uuid.uuid4().hex[:10]}"
    group = f"group-{topic}"
    settings = Settings(kafka_bootstrap=services.kafka, input_topic=topic, group_id=group)
    ensure_topics(settings, [topic], 2)
    base = transport_config(settings)
    config = dataclasses.replace(base, tuning=dataclasses.replace(base.tuning, session_timeout_ms=6000,
                                                                  heartbeat_interval_ms=1000))
    a, b = KafkaSource(config, idle_poll_ms=100), KafkaSource(config, idle_poll_ms=100)
    calls: list[tuple[set[int], bool]] = []
    stalled = threading.Event()

    def a_revokes(partitions: set[OurTopicPartition], lost: bool) -> dict[OurTopicPartition, int]:
        calls.append(({tp.partition for tp in partitions}, lost))
        if not lost and not stalled.is_set():  # the first revoke stalls past the session timeout
            stalled.set()
            time.sleep(9)
            return {}
        return {} if lost else {tp: 1 for tp in partitions}

    a.on_revoke = a_revokes
    stop = threading.Event()
    errors: list[BaseException] = []

    def poll_a() -> None:
        try:
            while not stop.is_set():
                a.poll_batch(fill=False, wait_ms=50)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    a.start()
    thread = threading.Thread(target=poll_a, daemon=True)
    try:
        thread.start()
        wait_until(lambda: len(a.assignment()) == 2, timeout_s=30, message="A holds both partitions")
        held_before = {tp.partition for tp in a.assignment()}
        b.start()

        def b_commits() -> bool:
            b.poll_batch(fill=False, wait_ms=50)
            mine = {tp for tp in b.assignment()}
            if mine:
                try:
                    b.commit({tp: 50 for tp in mine})
                except Exception:  # noqa: BLE001 - refused while the group moves: tried again
                    return False
            return stalled.is_set() and len(mine) >= 1 and len(a.assignment()) + len(mine) == 2

        wait_until(b_commits, timeout_s=60, interval_s=0.0, message="A stalled and the group settled")
        # A wakes (9 s), learns what it lost and rejoins; the group settles again, B committing
        wait_until(lambda: b_commits() and len(calls) > 1 and not a.assignment() & b.assignment(), timeout_s=60,
                   interval_s=0.0, message="A told of its partitions after the stall, the group settled")
        assert not errors, errors
        after_stall = calls[1:]
        revoked_live = [parts & held_before for parts, lost in after_stall if not lost]
        assert not any(revoked_live), f"A was asked to revoke, not told it lost, partitions it held before: {calls}"
        committed = b.committed_offsets(range(2))
        mine = {tp.partition for tp in b.assignment()}
        assert all(committed.get(p) == 50 for p in mine), (committed, calls)
    finally:
        stop.set()
        thread.join(timeout=30)
        a.close()
        b.close()
