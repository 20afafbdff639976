"""``kafka_util.owners_of``: which member holds each partition, from kafka-python's DescribeGroups answer
(the shape below is what kafka-python 3.0.12 returned for a real broker's group, 2026-12-07)."""

from __future__ import annotations

import pytest
from kafka.errors import KafkaError

from stream_detector.kafka_util import Member, owners_of


def _member(name: str, assigned: dict[str, list[int]]) -> dict[str, object]:
    return {"client_host": "/10.0.0.7", "client_id": "stream-detector-g", "group_instance_id": None,
            "member_id": f"stream-detector-g-{name}",
            "member_assignment": {"assigned_partitions": [{"topic": t, "partitions": ps} for t, ps in assigned.items()],
                                  "user_data": ""},
            "member_metadata": {"topics": list(assigned), "user_data": ""}}


def _group(state: str, *members: dict[str, object], error: str | None = None) -> dict[str, object]:
    return {"error": error, "group_id": "g", "group_state": state, "members": list(members),
            "protocol_data": "cooperative-sticky", "protocol_type": "consumer"}


def test_each_partition_of_the_topic_names_its_member() -> None:
    owners = owners_of(_group("Stable", _member("a", {"tx": [0, 1], "other": [0]}), _member("b", {"tx": [2, 3]})), "tx")
    a = Member("stream-detector-g-a", "10.0.0.7", "stream-detector-g")
    assert (owners.state, owners.members, owners.rebalancing) == ("Stable", 2, False)
    assert owners.owners[0] == owners.owners[1] == [a] and {m.member_id for m in owners.owners[2]} == {
        "stream-detector-g-b"} and sorted(owners.owners) == [0, 1, 2, 3]
    assert owners.idle == ()


def test_a_member_holding_no_partition_is_named() -> None:
    """A trial scaled five consumers onto four partitions: lag counted five members and named four."""
    owners = owners_of(_group("Stable", *(_member(n, {"tx": [k]}) for k, n in enumerate("abcd")),
                              _member("e", {"other": [0]})), "tx")
    assert [m.member_id for m in owners.idle] == ["stream-detector-g-e"] and owners.members == 5


def test_a_partition_two_members_claim_names_both() -> None:
    """The review of the first version: the last member won, hiding the conflict lag exists to show."""
    owners = owners_of(_group("Stable", _member("a", {"tx": [0, 1]}), _member("b", {"tx": [1, 2]})), "tx")
    assert [m.member_id for m in owners.owners[1]] == ["stream-detector-g-a", "stream-detector-g-b"]


def test_no_such_group_is_dead_and_a_group_error_is_raised() -> None:
    gone = owners_of(_group("Dead", error="[Error 69] GroupIdNotFoundError: Group g not found."), "tx")
    assert (gone.state, gone.members, gone.owners) == ("Dead", 0, {})
    with pytest.raises(KafkaError, match="CoordinatorNotAvailable"):  # was: "no member now"
        owners_of(_group("", error="[Error 15] CoordinatorNotAvailableError"), "tx")
    assert owners_of(_group("PreparingRebalance", _member("a", {})), "tx").rebalancing
