"""The kafka-python transport's pure helpers (its Kafka paths are tested on the real broker)."""

from __future__ import annotations


def test_an_unreadable_record_is_logged_at_error_once_then_at_debug(caplog) -> None:
    """The retrainer reads its history on every run: each unreadable record in it was one more ERROR
    line per run. Now the first read of a position logs at ERROR and every later one at DEBUG."""
    import logging

    from stream_detector.transport import kafka_python

    exc = ValueError("zstd codec missing")
    with caplog.at_level(logging.DEBUG, logger=kafka_python.log.name):
        for _ in range(3):
            kafka_python._log_unreadable("t-once", 0, 7, exc)
        kafka_python._log_unreadable("t-once", 1, 7, exc)  # another position: ERROR again
    levels = [(r.levelno, r.getMessage().split(",")[0]) for r in caplog.records if "t-once" in r.getMessage()]
    assert levels == [(logging.ERROR, "unreadable record at t-once[0] offset 7"),
                      (logging.DEBUG, "unreadable record at t-once[0] offset 7"),
                      (logging.DEBUG, "unreadable record at t-once[0] offset 7"),
                      (logging.ERROR, "unreadable record at t-once[1] offset 7")]


def test_a_commit_refused_by_a_rebalance_is_commit_refused_as_on_confluent() -> None:
    """kafka-python raises ``RebalanceInProgressError`` itself when it commits while it knows the
    group is rebalancing. It was a retriable ``TransportError`` (the worker's DeliveryError), while
    the confluent transport calls REBALANCE_IN_PROGRESS a refusal (``COMMIT_REFUSED``): a written
    write-behind window then stayed open past the rebalance (a CI run, 2026-12-04). Every refusal
    of the group is now ``CommitRefused`` on both transports; other errors stay ``TransportError``."""
    import pytest
    from kafka.errors import (
        CommitFailedError,
        FencedInstanceIdError,
        IllegalGenerationError,
        KafkaTimeoutError,
        RebalanceInProgressError,
        UnknownMemberIdError,
    )

    from stream_detector.transport.base import CommitRefused, TopicPartition, TransportError
    from stream_detector.transport.kafka_python import KafkaSource

    class _Refusing:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def commit(self, offsets: object) -> None:
            raise self.exc

    for exc in (RebalanceInProgressError("rebalancing"), CommitFailedError("moved"), IllegalGenerationError(),
                UnknownMemberIdError(), FencedInstanceIdError()):
        source = KafkaSource(None)  # type: ignore[arg-type]  # never started: only its commit is called
        source.consumer = _Refusing(exc)  # type: ignore[assignment]
        with pytest.raises(CommitRefused):
            source.commit({TopicPartition("t", 0): 5})
    source.consumer = _Refusing(KafkaTimeoutError())  # type: ignore[assignment]
    with pytest.raises(TransportError) as raised:
        source.commit({TopicPartition("t", 0): 5})
    assert not isinstance(raised.value, CommitRefused)


def test_a_topic_whose_metadata_refresh_fails_as_unknown_is_not_known_yet() -> None:
    """kafka-python's ``partitions_for_topic`` raises a refresh's ``UnknownTopicOrPartitionError``
    when a subscribed topic does not exist yet (a CI run, 2026-12-05, lost the label ingester's
    catch-up to it). ``known_partitions`` calls that "no partitions yet" and ``partitions_of`` keeps
    waiting for the topic; an error that is not retriable is raised."""
    import pytest
    from kafka.errors import TopicAuthorizationFailedError, UnknownTopicOrPartitionError

    from stream_detector.kafka_util import known_partitions, partitions_of

    class Consumer:
        def __init__(self, answers: list[object]) -> None:
            self.answers = answers

        def partitions_for_topic(self, topic: str) -> object:
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    consumer = Consumer([UnknownTopicOrPartitionError("t"), None, {1, 0}])
    assert known_partitions(consumer, "t") == set()  # type: ignore[arg-type]
    assert partitions_of(consumer, "t", timeout_s=5.0) == [0, 1]  # type: ignore[arg-type]
    assert consumer.answers == []
    with pytest.raises(TopicAuthorizationFailedError):
        known_partitions(Consumer([TopicAuthorizationFailedError("t")]), "t")  # type: ignore[arg-type]
    with pytest.raises(TimeoutError):
        partitions_of(Consumer([UnknownTopicOrPartitionError("t")] * 3 + [set()] * 100), "t", timeout_s=0.15)  # type: ignore[arg-type]


class _Metadata:
    """The cluster metadata the sticky assignor reads: the topics and their partition numbers."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def topics(self) -> set[str]:
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.partitions[topic])) if topic in self.partitions else None


def _join(member_id: str, topic: str, owned: list[int]) -> object:
    """A JoinGroup member as the group's leader gets it: its id and its subscription naming the
    partitions it claims to own (KIP-429's owned partitions)."""
    from types import SimpleNamespace

    from kafka.protocol.consumer.metadata import ConsumerProtocolSubscription

    owned_partitions = [ConsumerProtocolSubscription.TopicPartition(topic=topic, partitions=owned)] if owned else []
    return SimpleNamespace(member_id=member_id, metadata=ConsumerProtocolSubscription(
        version=1, topics=[topic], user_data=b"", owned_partitions=owned_partitions))


def test_a_partition_two_members_claim_is_assigned_to_neither_until_its_holder_gives_it_up() -> None:
    """kafka-python 3.0.12's cooperative assignor took a partition two members claimed as owned by
    the one it read last and could assign it there at once, while the member holding it lost it in
    the same generation: a worker woken past its session timeout got its partitions back before the
    other worker's rebalance hook had committed them, and wrote account records over that worker's
    last window (``tests/chaos/test_entity_freeze.py``, 3 runs of 12). A contested partition now
    goes to nobody in that generation; once its holder has given it up (the next join claims it
    once), it is assigned, to one member."""
    from stream_detector.transport.kafka_python import ExclusiveCooperativeStickyAssignor, _assignors

    assert _assignors(True) == (ExclusiveCooperativeStickyAssignor,)
    assert ExclusiveCooperativeStickyAssignor.name == "cooperative-sticky"  # the same protocol as other members'
    cluster = _Metadata({"tx": 4})
    assignor = ExclusiveCooperativeStickyAssignor()
    for woke_first in (True, False):  # kafka-python's assignor gave "a" partition 2 at once when "b" joined first
        # "b" took every partition while "a" was frozen; "a" wakes and claims 0 and 2 again
        joins = [_join("a", "tx", [0, 2]), _join("b", "tx", [0, 1, 2, 3])]
        first = assignor.assign(cluster, joins if woke_first else joins[::-1])
        given = {m: sorted(p for _t, ps in a.assigned_partitions for p in ps) for m, a in first.items()}
        assert given["a"] == [] and set(given["b"]) <= {1, 3}, given
        # the next generation: each member claims what it was given (b gave 0 and 2 up in its hook)
        second = assignor.assign(cluster, [_join("a", "tx", given["a"]), _join("b", "tx", given["b"])])
        after = {m: sorted(p for _t, ps in a.assigned_partitions for p in ps) for m, a in second.items()}
        assert sorted(after["a"] + after["b"]) == [0, 1, 2, 3], after  # 0 and 2 too now, each to one member
    # uncontested claims are the base assignor's: a member keeps what only it claims
    calm = assignor.assign(cluster, [_join("a", "tx", [0, 2]), _join("b", "tx", [1, 3])])
    assert {m: sorted(p for _t, ps in a.assigned_partitions for p in ps) for m, a in calm.items()} == \
        {"a": [0, 2], "b": [1, 3]}


def test_a_member_that_lost_its_partitions_claims_none_of_them_when_it_rejoins() -> None:
    """kafka-python 3.0.12 builds a member's JoinGroup claims from its assignor's last assignment,
    which eviction (``on_partitions_lost``: the subscription emptied) does not clear, so a worker
    woken past its session timeout claimed the partitions another worker held by then. The
    patched ``ConsumerCoordinator.group_protocols`` claims what the subscription holds, as the
    Java client does."""
    from types import SimpleNamespace

    from kafka import TopicPartition as KTopicPartition
    from kafka.consumer.subscription_state import SubscriptionState
    from kafka.coordinator.consumer import ConsumerCoordinator

    from stream_detector.transport.kafka_python import CLAIMS_HELD, ExclusiveCooperativeStickyAssignor

    assert CLAIMS_HELD
    subscription = SubscriptionState()
    subscription.subscribe(topics=["tx"])
    assignor = ExclusiveCooperativeStickyAssignor()
    coordinator = SimpleNamespace(_subscription=subscription, _assignors={assignor.name: assignor})
    held = [KTopicPartition("tx", 0), KTopicPartition("tx", 2)]
    subscription.assign_from_subscribed(held)
    assignor.member_assignment = list(held)

    def claims() -> list[int]:
        [(name, metadata)] = ConsumerCoordinator.group_protocols(coordinator)
        assert name == "cooperative-sticky"
        return sorted(p for tp in metadata.owned_partitions for p in tp.partitions)

    assert claims() == [0, 2]  # still held: claimed, so they stay where they are
    subscription.assign_from_subscribed([])  # evicted: kafka-python empties the subscription, not the assignor
    assert claims() == []
    subscription.assign_from_subscribed([held[1]])
    assignor.member_assignment = list(held)
    assert claims() == [2]


def test_partitions_revoked_under_a_new_member_id_are_lost_and_nothing_of_them_is_committed(caplog) -> None:
    """A helper's trial (2026-12-07): a member whose rebalance hook stalled past its session timeout
    rejoined under a new member id still holding its partitions (kafka-python 3.0.12 retries a
    JoinGroup refused with UnknownMemberId without ``on_partitions_lost``) and had them revoked as a
    member of the new generation: the hook committed its old offsets behind their new owner's.
    Revoked under another member id than they were assigned under, they are now lost: the hook is
    told so and no commit is made; partitions assigned under the current id are revoked as before."""
    import asyncio
    import logging
    from types import SimpleNamespace

    from kafka import TopicPartition as KTopicPartition

    from stream_detector.transport.base import TopicPartition
    from stream_detector.transport.kafka_python import _Rebalance

    hooks: list[tuple[set[int], bool]] = []
    commits: list[dict[int, int]] = []
    member = {"id": "m-1"}

    class Consumer:
        def group_metadata(self) -> object:
            return SimpleNamespace(member_id=member["id"])

        async def commit_async(self, offsets: dict[KTopicPartition, object]) -> None:
            commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})

    def on_revoke(partitions: set[TopicPartition], lost: bool) -> dict[TopicPartition, int]:
        hooks.append(({tp.partition for tp in partitions}, lost))
        return {} if lost else {tp: 100 + tp.partition for tp in partitions}

    consumer = Consumer()
    source = SimpleNamespace(_c=lambda: consumer, on_revoke=on_revoke, on_revoke_done=lambda o, c: None, _ends={})
    listener = _Rebalance(source)  # type: ignore[arg-type]
    tps = [KTopicPartition("tx", p) for p in range(4)]
    asyncio.run(listener.on_partitions_assigned(set(tps[:2])))
    asyncio.run(listener.on_partitions_revoked({tps[0]}))  # a plain revoke: committed
    assert hooks == [({0}, False)] and commits == [{0: 100}]
    member["id"] = "m-2"  # evicted and rejoined, never told
    asyncio.run(listener.on_partitions_assigned({tps[2]}))
    with caplog.at_level(logging.WARNING, logger="stream_detector.source"):
        asyncio.run(listener.on_partitions_revoked({tps[1], tps[2]}))
    assert hooks[1:] == [({1}, True), ({2}, False)]  # 1 lost (assigned under m-1), 2 revoked as before
    assert commits[1:] == [{2: 102}]
    assert "revoked under a new member id" in caplog.text and "[1]" in caplog.text
