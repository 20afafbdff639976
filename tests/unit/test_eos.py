"""``eos.ExactlyOnce`` over a scripted transactional client, and the memory transport's group
semantics the worker relies on (eviction, fencing) — no broker."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from stream_detector.errors import DeliveryError
from stream_detector.transport.base import (
    Batch,
    CommitRefused,
    Membership,
    Offsets,
    OutMessage,
    Source,
    TopicPartition,
    commit_or_drop,
)
from stream_detector.transport.eos import ExactlyOnce
from stream_detector.transport.memory import (
    MemoryBroker,
    MemoryPublisher,
    MemorySource,
    MemoryTransactionalPublisher,
)


class _Client:
    """Records the calls; ``fail`` names the call that raises ``DeliveryError``."""

    transactional_id = "g-0"

    def __init__(self, fail: str = "") -> None:
        self.fail = fail
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail:
            raise DeliveryError(f"{name} failed")

    def start(self) -> None:
        self._call("start")

    def publish(self, messages: Sequence[OutMessage]) -> None:
        self._call("publish")

    def reset(self) -> None:
        self._call("reset")

    def close(self) -> None:
        self._call("close")

    def begin(self) -> None:
        self._call("begin")

    def send_offsets(self, source: Source, offsets: Offsets, group: Membership | None) -> None:
        self._call("send_offsets")

    def commit(self) -> None:
        self._call("commit")

    def abort(self) -> None:
        self._call("abort")


MESSAGE = [OutMessage("alerts", None, b"a", [])]


def test_a_batch_is_begin_publish_send_offsets_commit() -> None:
    client = _Client()
    eos = ExactlyOnce(client)
    eos.publish(MESSAGE)
    eos.commit(None, {TopicPartition("tx", 0): 5})  # type: ignore[arg-type]  # the client ignores the source
    eos.close()
    assert client.calls == ["begin", "publish", "send_offsets", "commit", "close"]
    assert eos.transactional and eos.transactional_id == "g-0"


@pytest.mark.parametrize("fail", ["publish", "send_offsets", "commit"])
def test_a_failure_before_the_commit_returns_aborts_once(fail: str) -> None:
    client = _Client(fail)
    eos = ExactlyOnce(client)
    with pytest.raises(DeliveryError):
        eos.publish(MESSAGE)
        eos.commit(None, {})  # type: ignore[arg-type]
    eos.abandon()
    eos.close()
    assert client.calls.count("abort") == 1 and client.calls[-2:] == ["abort", "close"]


def test_abandon_aborts_an_open_transaction_and_a_failed_abort_is_only_logged(caplog) -> None:
    client = _Client("abort")
    eos = ExactlyOnce(client)
    eos.publish([])
    eos.abandon()
    assert client.calls == ["begin", "abort"] and "abort failed" in caplog.text
    eos.reset()
    eos.start()
    assert client.calls[-2:] == ["reset", "start"]


def test_memory_eviction_makes_a_batch_stale_and_its_commit_is_dropped_or_fenced() -> None:
    broker = MemoryBroker()
    broker.create_topic("tx", 2)
    broker.produce("tx", [b"a", b"b"], partition=1)
    source = MemorySource(broker, "tx", "g")
    source.start()
    batch = source.poll_batch()
    assert source.still_member(batch) and batch.next_offsets() == {TopicPartition("tx", 1): 2}
    broker.evict("g")
    assert not source.still_member(batch)
    MemoryPublisher(broker).commit(source, batch.next_offsets(), batch.group)  # refused: logged, dropped
    assert broker.committed("g") == {}
    eos = MemoryTransactionalPublisher(broker)
    eos.publish([OutMessage("alerts", None, b"zombie", [])])
    with pytest.raises(DeliveryError, match="fenced"):
        eos.commit(source, batch.next_offsets(), batch.group)
    assert broker.read("alerts") == [] and broker.committed("g") == {}
    again = source.poll_batch()  # the next poll rejoins at the committed offsets
    assert again.offsets == [0, 1] and source.still_member(again)


class _KeptThroughRebalance:
    """A consumer whose commit a rebalance refuses while it keeps its partitions (cooperative-sticky):
    records what it is asked to rewind."""

    def __init__(self) -> None:
        self.rewound: list[tuple[str, list[int]]] = []

    def commit(self, offsets: Offsets) -> None:
        raise CommitRefused("REBALANCE_IN_PROGRESS")

    def rewind_to_committed(self, batch: Batch) -> None:
        self.rewound.append((batch.topic, sorted(set(batch.partitions))))


def test_a_commit_refused_by_a_rebalance_rewinds_every_partition_of_the_batch(caplog) -> None:
    """Dropping the refused commit alone left a partition the worker kept positioned past the
    batch: nothing committed it again and a finite backlog never drained (CI, 2026-12-03)."""
    source = _KeptThroughRebalance()
    offsets = {TopicPartition("tx", 3): 9, TopicPartition("tx", 0): 5, TopicPartition("other", 1): 2}
    commit_or_drop(source, offsets)  # type: ignore[arg-type]
    assert sorted(source.rewound) == [("other", [1]), ("tx", [0, 3])]
    assert "not committed" in caplog.text


def test_a_batch_naming_partitions_rewinds_them_and_holds_no_record() -> None:
    named = Batch.naming("tx", [2, 0, 2])
    assert named.partitions == [0, 2] and named.next_offsets() == {TopicPartition("tx", 0): 1,
                                                                   TopicPartition("tx", 2): 1}
    assert named.values == [None, None] and len(named.headers) == len(named.keys) == 2
