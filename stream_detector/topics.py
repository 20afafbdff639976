"""Topic administration: create the input, alerts and dead-letter topics when missing."""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from .settings import Settings


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the names created."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stream-detector-admin",
                             **settings.kafka_security())
    try:
        existing = set(admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return []
        new = [NewTopic(n, partitions or settings.topic_partitions, settings.topic_replication or -1) for n in wanted]
        try:
            admin.create_topics(new)
        except TopicAlreadyExistsError:  # another process won the race: fine
            pass
        return wanted
    finally:
        admin.close()


def topic_partitions(settings: Settings, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stream-detector-admin",
                             **settings.kafka_security())
    try:
        meta = admin.describe_topics([topic])
        return len(meta[0]["partitions"])
    finally:
        admin.close()
