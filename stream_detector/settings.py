"""Runtime settings: frozen pydantic-settings, read from ``SD_*`` environment variables.

Grouped by who uses them — ``KafkaSettings``, ``RedisSettings``, ``WorkerSettings``,
``RetrainSettings``, ``ConsoleSettings``, ``SecuritySettings`` — and composed into one
``Settings`` (every group is a base class, so a ``Settings`` is each of them and every variable
keeps its flat ``SD_`` name). A component that needs one group is typed with that group.

The variables documented in the README are part of the public contract. Every field carries a
description, which ``stream-detector check-config`` and the README table are built from.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError


class _Group(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SD_", frozen=True, extra="ignore")


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
# SD_DEVICE / --device: torch's device names this project scores on. ``cpu:N`` is torch's too (the
# index is ignored on CPU); a trial found ``--device cpu:0`` refused (2026-12-06), and the next one
# ``cpu:01`` and a 20-digit index taken here and refused by torch after the file was read: an index
# is written as torch parses it, without a leading zero, at most 4 digits.
DEVICE_NAME = r"(?:cpu|cuda)(?::(?:0|[1-9]\d{0,3}))?"


def topic_name(value: str) -> str:
    """``value`` if Kafka accepts it as a topic name (1-249 of ``A-Z a-z 0-9 . _ -``, not ``.`` or
    ``..``: the broker's rule, ``org.apache.kafka.common.internals.Topic.validate``), else ``ValueError``."""
    if not _TOPIC.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"not a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -), got {value!r}")
    return value


class KafkaSettings(_Group):
    """Kafka: brokers, topics, consumer group, client tuning, delivery mode, client library."""

    kafka_bootstrap: str = Field("localhost:9092", description="Kafka bootstrap servers, comma separated.")
    input_topic: str = Field("transactions", description="Topic the workers consume events from.")
    alerts_topic: str = Field("alerts", description="Topic flagged events are published to.")
    dlq_topic: str = Field("transactions.dlq", description="Dead-letter topic for events that cannot be scored.")
    shadow_topic: str = Field("alerts.shadow", description="Topic of a challenger's shadow records: each event "
                              "the champion or the challenger in shadow would alert, with both models' scores "
                              "(docs/retraining.md, \"Challenger in shadow\"); nobody is alerted from it.")
    group_id: str = Field("stream-detector", description="Consumer group of the workers.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts reading."
    )
    create_topics: bool = Field(True, description="Create missing topics on start (partitions below).")
    topic_partitions: int = Field(4, ge=1, description="Partitions for topics this tool creates.")
    topic_replication: int = Field(0, ge=0, le=32, description="Replication factor for topics this tool "
                                   "creates (0 = the brokers' default.replication.factor).")
    delivery_timeout_s: float = Field(30.0, gt=0, description="Deadline for alert/dead-letter acknowledgements.")
    producer_acks: Literal["all", "1", "0"] = Field("all", description="acks for alert and dead-letter producers.")
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: commit offsets after alerts are acknowledged; exactly_once: alerts, "
        "dead letters and offsets in one Kafka transaction per batch (read alerts with read_committed).",
    )
    transaction_timeout_s: float = Field(
        30.0, gt=0, description="Broker-side timeout of an open transaction (a killed worker's is aborted then)."
    )
    metadata_max_age_ms: int = Field(
        300_000, ge=100, description="How often the consumers refresh the topics' metadata: partitions added "
        "to the input topic are consumed within this (both clients' default: 5 min).",
    )
    assignment: Literal["cooperative", "eager"] = Field(
        "cooperative", description="Rebalance protocol: cooperative-sticky (incremental) or eager range/round-robin."
    )
    stage: Literal["whole", "repartition", "repartitioned"] = Field(
        "whole", description="Which part of a two-stage deployment this worker runs (docs/entity-features.md, "
        "'Scaling out: the repartition topic'): whole = all of it, one stage (default); repartition = stage 1: "
        "reads SD_INPUT_TOPIC, computes the history of SD_ENTITY_PARTITION_KEY (the topic's key) and forwards every "
        "event with those features to the repartition topic keyed by SD_REPARTITION_KEY, in one Kafka transaction "
        "per batch (needs SD_DELIVERY=exactly_once), as consumer group SD_GROUP_ID + '.repartition'; repartitioned = "
        "stage 2: reads the repartition topic, computes the history of SD_REPARTITION_KEY, scores and alerts. Run a "
        "number of stage-2 workers that divides SD_REPARTITION_BUCKETS: each then owns whole buckets, and every "
        "entity's events are applied in event-time order as one worker would (stage 2 waits for the marks stage 1 "
        "writes with each batch, and for its idle marks).")
    repartition_key: str = Field("", description="Two stages (SD_STAGE): the event field the repartition topic is "
                                 "keyed by (a terminal, a merchant): the model's other entity key.")
    repartition_buckets: int = Field(12, ge=1, le=10_000, description="Two stages: buckets of SD_REPARTITION_KEY "
                                     "values; the repartition topic has buckets x the input topic's partitions "
                                     "(12: whole buckets for 1, 2, 3, 4, 6 or 12 stage-2 workers).")
    repartition_topic: str = Field("", description="Two stages: the repartition topic (empty: SD_GROUP_ID + '.' + "
                                   "SD_INPUT_TOPIC + '.by-' + SD_REPARTITION_KEY: one per deployment, as Kafka "
                                   "Streams names its repartition topics after the application id).")
    repartition_purge_ms: int = Field(30_000, ge=0, description="Two stages: how often stage 2 deletes the "
                                      "repartition topic's records below its committed offsets (Kafka's "
                                      "DeleteRecords, as Kafka Streams' repartition.purge.interval.ms); 0: never "
                                      "(the topic's retention alone bounds it).")
    transport: Literal["kafka-python", "confluent"] = Field(
        "kafka-python", description="Kafka client library of the worker's consumer and alert producer: kafka-python "
        "(pure Python, default) or confluent (librdkafka, parses records in C: more events/s per worker; needs the "
        "confluent extra). Same delivery semantics either way.",
    )

    @field_validator("input_topic", "alerts_topic", "dlq_topic", "shadow_topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        return topic_name(value)

    @field_validator("group_id")
    @classmethod
    def _group_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("a consumer group needs a name, got an empty one")
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, value: str) -> str:
        _check_addresses(value.split(","), value)
        return value

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap.split(",")]



def _check_addresses(servers: list[str], value: str) -> None:
    """Each of ``servers`` is host:port with a TCP port (1-65535); raises ``ValueError`` naming
    ``value`` otherwise (a port out of range was accepted, and the client then failed at connect
    time with an error that did not name the setting: a new-user trial)."""
    for server in servers:
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit() or "/" in host or ":" in host:
            raise ValueError(f"expected host:port[,host:port...] (no scheme, no IPv6 literal), got {value!r}")
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"port {int(port)} of {server.strip()!r} is not a TCP port (1-65535)")

class RedisSettings(_Group):
    """Redis: where the control plane and the entity state live, and how to log in."""

    redis_url: str = Field("redis://localhost:6379/0", description="Redis holding threshold and models.")
    redis_prefix: str = Field("stream-detector", description="Key prefix, so deployments can share one Redis.")
    redis_sentinels: str = Field("", description="Redis Sentinels, host:port[,host:port...]; when set, clients "
                                 "follow the primary they report (SD_REDIS_URL then gives only db, TLS, password).")
    redis_sentinel_master: str = Field("stream-detector", description="Name the Sentinels monitor the primary by.")
    entity_redis_cluster: str = Field("", description="Redis Cluster nodes, host:port[,host:port...]: when set, "
                                      "per-entity history (entity features) lives there, spread over the cluster's "
                                      "slots; thresholds and models stay on SD_REDIS_URL (docs/entity-features.md).")
    entity_copies: int = Field(0, ge=0, le=100_000_000, description="Entity records a worker keeps in memory "
                               "after writing them, so its next batches need not read them again (about 0.8 KB "
                               "each; 0: always read, the default). Another writer's change is caught by the "
                               "compare-and-set write (docs/entity-features.md).")
    entity_partition_key: str = Field(
        "account_id", description="The event field the input topic's producers key by (`stream-detector produce` keys "
        "by this field): one worker owns each such entity, so its history is kept in the worker's memory and written "
        "to Redis once per SD_ENTITY_FLUSH_MS, the offsets committed after that write (write-behind; a key shared "
        "across partitions, a terminal, is written every batch with its features logged: SD_ENTITY_REPLAY_LOG; "
        "docs/entity-features.md). A record with events from two partitions turns it off with an ERROR, and "
        "event-time alignment on (auto). Empty: every record is written on every batch. Off with "
        "SD_DELIVERY=exactly_once.")
    entity_flush_ms: int = Field(
        1000, ge=0, le=600_000, description="Write-behind entity state (SD_ENTITY_PARTITION_KEY): how often it is "
        "written to Redis and the offsets committed; a crash re-reads at most this much of the stream. 0: every batch "
        "(write-behind off).")
    entity_flush_async: bool = Field(
        True, description="Write-behind (SD_ENTITY_FLUSH_MS): a window's records are written by a thread of their own "
        "while the worker reads and scores the next batches, and the window's offsets committed once the write has "
        "landed (a write that fails or finds a record changed reads everything since the last commit again). false: "
        "written on the worker's thread, the batch in hand waiting for it (docs/entity-features.md, Write-behind).")
    entity_replay_log: bool = Field(
        True, description="With write-behind (SD_ENTITY_PARTITION_KEY) and a model that also has a key shared "
        "across partitions (a terminal): log that key's features of every batch in Redis until the window's offsets "
        "are committed, so the window commits once per SD_ENTITY_FLUSH_MS and a crash replays it exactly "
        "(docs/entity-features.md). false: such a model's batches are written and committed one by one.")
    entity_sole_owner: bool = Field(
        True, description="With write-behind and the replay log: while this worker holds every partition of the "
        "input topic (one worker in its group) it is the only writer of every record, so the shared keys' records "
        "(a terminal) are kept in its window too and written once per SD_ENTITY_FLUSH_MS, their replay-log entries "
        "first, instead of read, logged and written with every batch. A rebalance that takes a partition writes and "
        "commits the window first (or reads it again) and ends it (docs/entity-features.md, Write-behind). false: "
        "the shared keys' records are read and written with every batch, however many partitions the worker holds.")
    redis_username: str = Field("", description="Redis ACL user (or put it in SD_REDIS_URL).")
    redis_password: SecretStr = Field(SecretStr(""), description="Redis AUTH password (from a Secret, never "
                                      "logged; overrides one in SD_REDIS_URL).")

    @field_validator("redis_sentinels", "entity_redis_cluster")
    @classmethod
    def _sentinels_have_ports(cls, value: str) -> str:
        _check_addresses(value.split(",") if value.strip() else [], value)
        return value.strip()

    @field_validator("redis_prefix")
    @classmethod
    def _prefix_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("an empty prefix would put this deployment's keys beside every other's: name it")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected redis://host:port/db, got {value!r}")
        return value


class WorkerSettings(_Group):
    """The worker: batching, scoring device, threshold refresh, alerts, health, telemetry, logs."""

    batch_size: int = Field(8192, ge=1, le=100_000, description="Largest batch a worker scores at once "
                            "(8192 measured fastest: publish and commit round trips spread over more events).")
    align_event_time: Literal["auto", "on", "off"] = Field(
        "auto", description="Release a worker's partitions in event-time order (pipeline/align.py): auto = on when "
        "the active model (at start, or swapped in) has entity features keyed by a field other than "
        "SD_ENTITY_PARTITION_KEY (a terminal's events come from many partitions); once on, until the worker restarts.")
    align_idle_ms: int = Field(2000, ge=0, le=600_000, description="Event-time alignment's idle time: a partition "
                               "at its end holds the others at its newest event time until it has delivered nothing "
                               "for this long. Two stages: stage 1 writes an idle mark for an input partition at its "
                               "end and quiet this long (again every 5x this); stage 2 waits for it instead.")
    align_max_buffered: int = Field(0, ge=0, le=10_000_000, description="Event-time alignment's buffer cap in "
                                    "records (0: 8 batches or 200,000, whichever is more); past it the oldest are "
                                    "released anyway (best effort, never a stall).")
    align_max_jump_ms: int = Field(
        3_600_000, ge=0, le=31_557_600_000, description="Event-time alignment: a record whose event time is more "
        "than this past its partition's clock moves the clock only when the partition's next timed record is that far "
        "ahead too; a lone one (a wrong device clock) keeps it, so the rest of its partition is not held back. "
        "0: every advance waits for the next record to confirm it; the maximum (a year) in effect turns the rule off.")
    align_peer_grace_ms: int = Field(
        0, ge=0, le=86_400_000, description="Several workers of one group (alignment on): a worker releases a "
        "record only while its event time is at most this far past every other partition's next record, so a "
        "shared entity's events are applied at most this far out of order and clamped by the late-event rule, and "
        "once such an entity sees about one event per grace most alerts differ from offline scoring (measured in "
        "docs/entity-features.md); 0: exact "
        "order, the workers taking turns about one event at a time (slow; the default since 2026-12-04, 2000 before). "
        "One worker per group is exact and fast.")
    label_ingest: bool = Field(True, description="With a model that has label-derived features, run the label "
                               "ingester thread: feedback topic → labels attached to entities in Redis "
                               "(label_ingest.py, docs/feedback.md).")
    align_peer_stale_ms: int = Field(30_000, ge=1000, le=3_600_000, description="Several workers: a partition whose "
                                     "owner published nothing for this long (a dead worker) stops holding others back.")
    compute_chunk: int = Field(1024, ge=1, le=100_000, description="Rows decoded, featurised and scored per step "
                               "inside a batch; chunk k is scored on a second thread while chunk k+1 is decoded "
                               "(512-1024 measured fastest: the chunk stays in cache).")
    batch_max_wait_ms: int = Field(20, ge=0, le=60_000, description="Longest wait to fill a batch (latency bound).")
    device: str = Field("cpu", description="Torch device for scoring: cpu, cuda or cuda:N.")
    torch_threads: int | None = Field(
        None, ge=0, description="Intra-op threads for CPU scoring (unset: 1, the worker's scoring thread beside "
        "its decode thread; torch's default of one per core oversubscribes a shared host: up to 3.2x slower, "
        "benchmarks/RESULTS.md 'Scoring threads'), and for the retrainer's training when it has no --threads "
        "(unset: torch's default). 0 = torch's default for both.")
    threshold_refresh_s: float = Field(1.0, gt=0, description="How often workers re-read threshold and model.")
    threshold_max_staleness_s: float = Field(
        60.0, gt=0, description="How long a worker scores with a cached threshold while Redis is unreachable."
    )
    max_event_bytes: int = Field(65536, ge=64, description="Larger events go to the dead-letter topic (oversize).")
    top_features: int = Field(3, ge=1, le=50, description="How many fields an alert names as why (top_features: "
                              "the largest parts in its score first).")
    why_candidates: int = Field(10, ge=0, le=1000, description="The fields an alert's why (top_features) tries "
                                "first, those with the largest errors: each costs one scoring of the alerted row "
                                "(docs/alerts.md, Why). 0: name the fields with the largest errors instead (no "
                                "extra scoring).")
    worker_id: str = Field(
        default_factory=lambda: __import__("socket").gethostname(),
        description="Stable id of this worker slot (pod name / ordinal); names its transactional id.",
    )
    slot_dir: str = Field("", description="Where exactly-once workers lock their worker slots on this host "
                          "(stream_detector/slot.py; empty: <temp dir>/stream-detector-slots).")
    metrics_port: int = Field(0, ge=0, le=65535, description="Port of /metrics, /healthz and /readyz "
                              "(0 = no server; the container images and manifests use 9400).")
    metrics_addr: str = Field("0.0.0.0", description="Address the metrics and health server binds.")
    score_summary_interval_s: float = Field(10.0, gt=0, description="How often workers publish score "
                                            "histograms to {prefix}:score-summaries.")
    score_summaries_max: int = Field(1000, ge=10, description="Length bound of the score-summaries stream.")
    score_feed_sample: int = Field(200, ge=0, le=10_000, description="Scored events each worker samples "
                                   "per feed interval into {prefix}:recent-scores (0 = no feed).")
    score_feed_interval_s: float = Field(1.0, gt=0, description="How often workers append their sample "
                                         "to the recent-scores stream.")
    score_feed_max: int = Field(2000, ge=10, description="Length bound (entries) of the recent-scores stream.")
    log_level: str = Field("INFO", description="Python log level: CRITICAL, ERROR, WARNING, INFO or DEBUG.")
    log_json: bool = Field(False, description="Emit logs as JSON lines.")
    log_progress_s: float = Field(30.0, ge=0, le=86_400, description="A worker logs one INFO line this often while it "
                                  "handles events: events, events/s, alerts and dead letters since the last "
                                  "line (0 = never).")

    @field_validator("device")
    @classmethod
    def _torch_device(cls, value: str) -> str:
        if not re.fullmatch(DEVICE_NAME, value):
            raise ValueError(f"expected cpu, cpu:N, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(value.upper(), value.upper())  # logging's aliases
        if level not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}, got {value!r}")
        return level

    @property
    def scoring_threads(self) -> int:
        """Intra-op threads a worker scores with (``SD_TORCH_THREADS``; unset: 1; 0: torch's default)."""
        return 1 if self.torch_threads is None else self.torch_threads


class RetrainSettings(_Group):
    """The retrainer, its promotion gate, drift checks and the model registry (docs/retraining.md)."""

    retrain_group_id: str = Field("", description="Consumer group of the retrainer on the input topic "
                                  "(empty: <group_id>-retrainer).")
    feedback_topic: str = Field("feedback", description="Analyst labels: {event_id, label: fraud|legit}.")

    @field_validator("feedback_topic")
    @classmethod
    def _feedback_topic_name(cls, value: str) -> str:
        return topic_name(value)
    retrain_window_events: int = Field(100_000, ge=10, description="Most events the training window keeps.")
    retrain_window_seconds: float = Field(86_400.0, gt=0, description="Oldest event age the window keeps.")
    retrain_exclude_max: int = Field(500_000, ge=100, description="Most alerted/fraud event ids remembered.")
    retrain_interval_s: float = Field(3600.0, gt=0, description="Scheduled retraining period (service mode).")
    retrain_on_frauds: int = Field(0, ge=0, description="Retrain (service mode) once this many events have become "
                                   "fraud by their winning label since the last run (0 = off): new confirmed "
                                   "frauds, e.g. a wave of chargebacks.")
    retrain_spool_dir: str = Field("", description="Folder for the history a retraining of an entity model "
                                   "reads from Kafka (spooled to disk, deleted after the run: the records' "
                                   "bytes). Empty: the system temp folder.")
    retrain_min_events: int = Field(500, ge=10, description="Fewest clean events a retraining needs.")
    retrain_holdout_fraction: float = Field(0.2, gt=0, lt=0.9, description="Newest share of clean events "
                                            "held back from training for the promotion gate.")
    retrain_epochs: int = Field(0, ge=0, description="Training epochs (0 = derived from the row count).")
    retrain_target_fpr: float = Field(0.01, gt=0, lt=0.5, description="Target alert rate of a retrained model.")
    retrain_label_delay_s: float = Field(0.0, ge=0, description="Age (Kafka record time, seconds) by which an "
                                         "alerted fraud's label, a chargeback or a review, has arrived (0 = "
                                         "unknown). Set, an older alert nobody labelled counts as legit in a "
                                         "candidate's threshold calibration and the gate, and the fraud labels "
                                         "of the older alerts give the legit share of the newer unlabelled ones "
                                         "(docs/retraining.md, The alert budget).")
    gate_max_alert_rate_ratio: float = Field(2.0, ge=1.0, description="A candidate may alert on at most this "
                                             "multiple of the target rate on held-back data (plus noise).")
    gate_recall_tolerance: float = Field(0.05, ge=0, le=1, description="How much precision/recall on labelled "
                                         "events a candidate may lose against the active model.")
    gate_min_labels: int = Field(5, ge=1, description="Fewest fraud labels before precision/recall gate.")
    retrain_shadow_events: int = Field(0, ge=0, description="A candidate that passes the gate is first a "
                                       "challenger in shadow on live traffic until the workers scored this many "
                                       "events, then promoted, refused or kept in shadow on its shadow figures "
                                       "(0 = off: promoted at once, as the gate decides).")
    retrain_shadow_max_seconds: float = Field(86_400.0, gt=0, description="Longest a challenger stays in shadow "
                                              "waiting for SD_RETRAIN_SHADOW_EVENTS events or "
                                              "SD_GATE_MIN_LABELS labelled frauds among the alerts; then it is "
                                              "decided on the figures there are.")
    drift_psi_bound: float = Field(0.2, gt=0, description="PSI of live scores vs the reference that triggers "
                                   "a retraining.")
    drift_min_events: int = Field(1000, ge=10, description="Fewest scored events before drift is judged.")
    drift_check_interval_s: float = Field(60.0, gt=0, description="How often the retrainer checks drift.")
    model_store: Literal["redis", "dir"] = Field("redis", description="Where model artifacts go: Redis "
                                                 "(small models) or a directory (SD_MODEL_DIR).")
    model_dir: str = Field("models", description="Artifact directory for SD_MODEL_STORE=dir (a shared "
                           "volume mounted at the same path on every pod).")
    model_keep: int = Field(10, ge=2, description="Model versions kept; active and previous always are.")


class ConsoleSettings(_Group):
    """The operator console (docs/console.md)."""

    console_host: str = Field("127.0.0.1", description="Address `stream-detector console` binds (loopback "
                              "unless told otherwise).")
    console_port: int = Field(8050, ge=0, le=65535, description="Port of the operator console.")


class SecuritySettings(_Group):
    """Credentials and protection: Kafka TLS/SASL, artifact signing, the console token, alert
    redaction (docs/operations.md)."""

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol of every client (consumer, producer, admin).")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism when the protocol is SASL_*.")
    kafka_sasl_username: str = Field("", description="SASL user name (SASL_* protocols).")
    kafka_sasl_password: SecretStr = Field(SecretStr(""), description="SASL password (SASL_* protocols; "
                                           "from a Secret, never logged).")
    kafka_ssl_cafile: str = Field("", description="CA bundle to verify the brokers (SSL protocols; empty: "
                                  "the system trust store). Redis TLS: use a rediss:// SD_REDIS_URL.")
    signing_key_file: str = Field("", description="Ed25519 private key (PEM) the publisher and retrainer sign "
                                  "model artifacts with; never stored in Redis.")
    verify_key_file: str = Field("", description="Ed25519 public key (PEM); when set, workers refuse unsigned "
                                 "or mismatched model artifacts before loading them.")
    console_token: SecretStr = Field(SecretStr(""), description="Token the console requires to change the "
                                     "threshold or roll back (empty: the console is read-only).")
    alert_redact_fields: str = Field("", description="Comma-separated event fields replaced by \"[redacted]\" "
                                     "in alerts (e.g. card_number,email).")

    def kafka_security(self) -> dict[str, str]:
        """kafka-python options for TLS/SASL, merged into every Kafka client's configuration."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return {}
        out: dict[str, str] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            out.update(sasl_mechanism=self.kafka_sasl_mechanism, sasl_plain_username=self.kafka_sasl_username,
                       sasl_plain_password=self.kafka_sasl_password.get_secret_value())
        if self.kafka_security_protocol.endswith("SSL") and self.kafka_ssl_cafile:
            out["ssl_cafile"] = self.kafka_ssl_cafile
        return out

    @property
    def redacted_fields(self) -> frozenset[str]:
        return frozenset(f.strip() for f in self.alert_redact_fields.split(",") if f.strip())


class Settings(KafkaSettings, RedisSettings, WorkerSettings, RetrainSettings, ConsoleSettings, SecuritySettings):
    """All knobs of workers and tools: every group composed. Frozen: a running process never
    changes its settings."""

    model_config = SettingsConfigDict(env_prefix="SD_", frozen=True, extra="ignore")

    @property
    def repartition_topic_name(self) -> str:
        """Two stages (``SD_STAGE``): the topic stage 1 writes and stage 2 reads. By default named after
        the deployment's consumer group as well as the input topic and key: two deployments on one
        input topic (two models, as ``make demo`` runs) each get their own. Named after the input
        topic alone (before 2026-12-05), they shared one, and each read the other's records (a
        new-user trial: 10,409 alerts offline scoring does not raise, no warning)."""
        return self.repartition_topic or f"{self.group_id}.{self.input_topic}.by-{self.repartition_key}"

    @property
    def stage_1_group(self) -> str:
        """Stage 1's consumer group on the input topic in a two-stage deployment (``SD_STAGE``):
        ``SD_GROUP_ID.repartition`` (``pipeline.repartition.stage_settings``); stage 2 keeps
        ``SD_GROUP_ID``."""
        return f"{self.group_id}.repartition"

    @property
    def label_group(self) -> str:
        """The label ingesters' consumer group (``label_ingest.py``). Of a stage's settings
        (``pipeline.repartition.stage_settings``): stage 1's is ``SD_GROUP_ID.repartition-labels``."""
        return f"{self.group_id}-labels"

    @property
    def retrainer_group(self) -> str:
        return self.retrain_group_id or f"{self.group_id}-retrainer"

    @model_validator(mode="after")
    def _topics_apart(self) -> Settings:
        """The input, alerts, dead-letter, shadow and feedback topics are five topics: one used twice
        would have workers read their own alerts or dead letters as events."""
        roles = {"SD_INPUT_TOPIC": self.input_topic, "SD_ALERTS_TOPIC": self.alerts_topic,
                 "SD_DLQ_TOPIC": self.dlq_topic, "SD_SHADOW_TOPIC": self.shadow_topic,
                 "SD_FEEDBACK_TOPIC": self.feedback_topic}
        if self.stage != "whole":
            if not self.repartition_key:
                raise ValueError(f"SD_STAGE={self.stage} needs SD_REPARTITION_KEY: the entity key other than "
                                 f"SD_ENTITY_PARTITION_KEY ({self.entity_partition_key!r}) that stage 2 is keyed by")
            if self.repartition_key == self.entity_partition_key:
                raise ValueError(f"SD_REPARTITION_KEY={self.repartition_key} is SD_ENTITY_PARTITION_KEY too: stage 2 "
                                 "is keyed by the model's other entity key (a terminal, a merchant)")
            try:
                topic_name(self.repartition_topic_name)
            except ValueError as exc:
                raise ValueError(f"the repartition topic's name {self.repartition_topic_name!r} (SD_GROUP_ID."
                                 f"SD_INPUT_TOPIC.by-SD_REPARTITION_KEY) is {exc}: set SD_REPARTITION_TOPIC") from None
            roles["SD_REPARTITION_TOPIC"] = self.repartition_topic_name
        seen: dict[str, str] = {}
        for name, topic in roles.items():
            if topic in seen:
                raise ValueError(f"{name} and {seen[topic]} name the same topic {topic!r}: each role needs its own")
            seen[topic] = name
        return self


# Names other clients use for the two addresses, which difflib does not find close enough
# (a new-user trial: SD_KAFKA_BOOTSTRAP_SERVERS=bogus:1 passed check-config and every command
# reached localhost:9092). The services script's own SD_KAFKA_PORT / SD_REDIS_PORT are not here.
OTHER_CLIENTS_NAMES = {
    **dict.fromkeys(("SD_KAFKA_BOOTSTRAP_SERVERS", "SD_KAFKA_BOOTSTRAP_SERVER", "SD_BOOTSTRAP_SERVERS",
                     "SD_BOOTSTRAP_SERVER", "SD_BOOTSTRAP", "SD_KAFKA_BROKERS", "SD_KAFKA_BROKER", "SD_BROKERS",
                     "SD_KAFKA_SERVERS", "SD_KAFKA_SERVER", "SD_KAFKA_HOST", "SD_KAFKA_URL", "SD_KAFKA"),
                    "SD_KAFKA_BOOTSTRAP"),
    **dict.fromkeys(("SD_REDIS_HOST", "SD_REDIS", "SD_REDIS_URI", "SD_REDIS_ADDRESS", "SD_REDIS_SERVER",
                     "SD_REDIS_ADDR", "SD_REDIS_HOSTS", "SD_REDIS_HOSTNAME", "SD_REDIS_PASSWORD", "SD_REDIS_USER",
                     "SD_REDIS_USERNAME", "SD_REDIS_DB"), "SD_REDIS_URL"),  # the password goes in the URL
    **dict.fromkeys(("SD_TOPIC", "SD_TOPICS", "SD_INPUT"), "SD_INPUT_TOPIC"),
    **dict.fromkeys(("SD_GROUP", "SD_CONSUMER_GROUP", "SD_CONSUMER_GROUP_ID"), "SD_GROUP_ID"),
}


def unknown_settings(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``SD_*`` variables of ``environ`` (default ``os.environ``) that are not settings but
    nearly spell one (``difflib`` ratio >= 0.85: ``SD_INPUT_TOPICS``, ``SD_BATCHSIZE``) or are
    another client's name for one (``OTHER_CLIENTS_NAMES``: ``SD_KAFKA_BOOTSTRAP_SERVERS``,
    ``SD_REDIS_HOST``), each as a sentence naming the setting it resembles. Such a variable is
    ignored like any other, so the setting it meant keeps its default; other ``SD_*`` names (the
    services script's, the tests') are not reported."""
    known = {f"SD_{name.upper()}" for name in Settings.model_fields}
    env = os.environ if environ is None else environ
    out = []
    for name in sorted(env):
        if not name.startswith("SD_") or name in known:
            continue
        close = [OTHER_CLIENTS_NAMES[name]] if name in OTHER_CLIENTS_NAMES else difflib.get_close_matches(
            name, known, n=1, cutoff=0.85)
        if close:
            out.append(f"{name} is not a setting and is ignored (did you mean {close[0]}?)")
    return out


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; invalid values become one clear ``ConfigError``."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(
            f"SD_{'_'.join(str(p) for p in err['loc']).upper()}: {str(err['msg']).removeprefix('Value error, ')}"
            if err["loc"] else str(err["msg"]).removeprefix("Value error, ") for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
