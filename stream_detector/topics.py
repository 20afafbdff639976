"""Topic administration: create the input, alerts and dead-letter topics when missing."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .settings import Settings


def ensure_topics(settings: Settings, names: Iterable[str], partitions: int | None = None,
                  ready_timeout_s: float = 10.0, configs: Mapping[str, str] | None = None) -> list[str]:
    """Create the topics that do not exist yet; returns the names created. ``configs``: topic
    configs for the ones created (e.g. ``{"message.timestamp.type": "LogAppendTime"}``).

    Returns once the brokers describe every created topic with a leader for each partition (or
    after ``ready_timeout_s``): a consumer that subscribes right after (a worker with
    ``SD_CREATE_TOPICS``) must see the topic in its first metadata, else kafka-python joins the
    group with no partitions until its next metadata refresh (minutes)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stream-detector-admin",
                             **settings.kafka_security())
    try:
        existing = set(admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return []
        new = [NewTopic(n, partitions or settings.topic_partitions, settings.topic_replication or -1,
                        topic_configs=dict(configs or {})) for n in wanted]
        try:
            admin.create_topics(new)
        except TopicAlreadyExistsError:  # another process won the race: fine
            pass
        deadline = time.monotonic() + ready_timeout_s
        while not _described(admin, wanted) and time.monotonic() < deadline:
            threading.Event().wait(0.05)  # the controller has the topic; the brokers catch up
        return wanted
    finally:
        admin.close()


def _described(admin: KafkaAdminClient, names: list[str]) -> bool:
    """Every topic in ``names`` is known with a leader for each of its partitions."""
    try:
        found = admin.describe_topics(names)
    except KafkaError:
        return False
    return len(found) == len(names) and all(
        t.get("error_code") == 0 and t.get("partitions") and all(p.get("leader_id", -1) >= 0 for p in t["partitions"])
        for t in found)


def topic_partitions(settings: Settings, topic: str) -> int:
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stream-detector-admin",
                             **settings.kafka_security())
    try:
        meta = admin.describe_topics([topic])
        return len(meta[0]["partitions"])
    finally:
        admin.close()


def topic_exists(settings: Settings, topic: str) -> bool:
    """Whether the cluster has ``topic`` (one metadata request)."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id="stream-detector-admin",
                             **settings.kafka_security())
    try:
        return topic in set(admin.list_topics())
    finally:
        admin.close()
