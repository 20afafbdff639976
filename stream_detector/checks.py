"""``stream-detector check-config``: can a worker with these settings run here, now?

Reads nothing but the settings (already validated by pydantic when this runs) and then asks the
real services: Kafka (reachable, the three topics exist, their partitions) and Redis (reachable,
an active model that loads and warms on ``SD_DEVICE``, a threshold that belongs to it). Each check
is one line of the report; ``failed`` ones make the command exit 1, ``warn`` ones do not.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .redis_client import redact
from .settings import Settings, unknown_settings

if TYPE_CHECKING:
    from .store import ControlPlane

Status = Literal["ok", "warn", "fail"]
TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Check:
    status: Status
    name: str
    detail: str


def run_checks(settings: Settings, timeout_ms: int = TIMEOUT_MS) -> list[Check]:
    """Every check, in order; later checks of a service are skipped when it is unreachable. A
    model that runs as one worker per group (``scaling_check``'s WARN) replaces the partition
    count's "at most N busy workers" line (a trial read the two as a contradiction)."""
    checks = [*_settings_checks(settings), *_kafka_checks(settings, timeout_ms), *_redis_checks(settings)]
    if any(c.name == "scaling" and c.status == "warn" for c in checks):
        checks = [c for c in checks if not (c.name == "scaling" and c.status == "ok")]
    return checks


def report(checks: list[Check]) -> str:
    lines = [f"  {c.status.upper():5} {c.name:14} {c.detail}" for c in checks]
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    lines.append(f"result: {'FAILED' if failed else 'OK'} ({failed} failed, {warned} warnings, "
                 f"{len(checks)} checks)")
    return "\n".join(lines)


def _settings_checks(s: Settings) -> Iterator[Check]:
    for typo in unknown_settings():  # ignored, so the setting meant keeps its default: a failure here
        yield Check("fail", "settings", typo)
    yield Check("ok", "settings", f"kafka {s.kafka_bootstrap} ({s.kafka_security_protocol}), group "
                f"{s.group_id}, redis {redact(s.redis_url)} prefix {s.redis_prefix}, device {s.device}, "
                f"delivery {s.delivery}"
                + (f", entity copies {s.entity_copies:,} (SD_ENTITY_COPIES)" if s.entity_copies else "")
                + (f", write-behind {s.entity_partition_key} every {s.entity_flush_ms} ms (SD_ENTITY_PARTITION_KEY)"
                   + (", shared keys' features in the replay log (SD_ENTITY_REPLAY_LOG)" if s.entity_replay_log
                      else ", models with a shared key commit every batch (SD_ENTITY_REPLAY_LOG=false)")
                   if s.entity_partition_key and s.entity_flush_ms and s.delivery == "at_least_once"
                   and s.stage == "whole"  # stage 2 writes every batch; stage 1 is exactly once
                   else ", entity state written every batch"))
    if s.stage != "whole":
        yield _stage_check(s)
    if s.kafka_security_protocol.startswith("SASL") and not (
            s.kafka_sasl_username and s.kafka_sasl_password.get_secret_value()):
        yield Check("fail", "security", "SASL needs SD_KAFKA_SASL_USERNAME and SD_KAFKA_SASL_PASSWORD")
    if s.kafka_ssl_cafile:
        if not Path(s.kafka_ssl_cafile).is_file():
            yield Check("fail", "security", f"SD_KAFKA_SSL_CAFILE {s.kafka_ssl_cafile} is not a file")
    if s.retrain_spool_dir:  # the retrainer's setting, checked where it is set (docs/retraining.md)
        problem = spool_problem(s.retrain_spool_dir)
        yield Check("fail" if problem else "ok", "spool", problem or f"retraining history spooled in "
                    f"{s.retrain_spool_dir} (SD_RETRAIN_SPOOL_DIR)")
    if s.transport == "confluent":
        yield _transport_check()
    if s.metrics_port == 0:
        yield Check("warn", "metrics", "SD_METRICS_PORT=0: no /metrics, /healthz, /readyz (production: 9400)")
    else:
        yield Check("ok", "metrics", f"/metrics, /healthz, /readyz on {s.metrics_addr}:{s.metrics_port}")
    if s.device.startswith("cuda"):
        import torch

        from .model.bundle import device_problem

        problem = device_problem(s.device)  # what the worker refuses to start with
        if problem is not None:
            yield Check("fail", "device", f"SD_DEVICE={s.device}: {problem}")
        else:
            yield Check("ok", "device", f"{s.device}: {torch.cuda.get_device_name(torch.device(s.device))}")


def _stage_check(s: Settings) -> Check:
    """Two stages (``SD_STAGE``): what the worker refuses at start, said before it starts."""
    if s.stage == "repartition" and s.delivery != "exactly_once":
        return Check("fail", "stage", "SD_STAGE=repartition needs SD_DELIVERY=exactly_once (the worker refuses to "
                     "start): a batch forwarded twice would apply its events twice in stage 2")
    if s.stage == "repartition":
        return Check("ok", "stage", f"stage 1: {s.input_topic} keyed by {s.entity_partition_key or '?'} → "
                     f"{s.repartition_topic_name}, group {s.group_id}.repartition, exactly once")
    return Check("ok", "stage", f"stage 2: {s.repartition_topic_name} ({s.repartition_buckets} buckets of "
                 f"{s.repartition_key}), group {s.group_id}; run a number of stage-2 workers that divides "
                 f"{s.repartition_buckets}")


def spool_problem(directory: str | Path | None) -> str | None:
    """Why the retraining history cannot be spooled in ``directory`` (None: the system temp
    folder), or None when a file can be written there — checked by writing one, so a read-only
    file system or a missing folder shows up before any history is read."""
    parent = Path(directory) if directory else Path(tempfile.gettempdir())
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        return f"cannot spool the retraining history in {parent} (SD_RETRAIN_SPOOL_DIR): {exc.strerror or exc}"
    return None


def _transport_check() -> Check:
    from .errors import ConfigError
    from .transport.factory import confluent_transport

    try:
        module = confluent_transport()
    except ConfigError as exc:
        return Check("fail", "transport", str(exc))
    return Check("ok", "transport", f"confluent-kafka {module.ck_version()} (librdkafka {module.ck_libversion()})")


def _kafka_checks(s: Settings, timeout_ms: int) -> Iterator[Check]:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    from .pipeline.repartition import stage_settings

    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # the report says it once, kafka-python 20 times
    try:
        admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers, client_id="stream-detector-check",
                                 request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms,
                                 **s.kafka_security())
    except (KafkaError, OSError, ValueError) as exc:
        yield Check("fail", "kafka", f"cannot reach {s.kafka_bootstrap}: {exc!r}")
        return
    try:
        existing = set(admin.list_topics())
        yield Check("ok", "kafka", f"reached {s.kafka_bootstrap}")
        partitions: dict[str, int] = {}
        for role, topic in (("input", s.input_topic), ("alerts", s.alerts_topic), ("dead letters", s.dlq_topic)):
            if topic not in existing:
                if s.create_topics:
                    yield Check("warn", "topic", f"{role} {topic}: missing (workers create it with "
                                f"{s.topic_partitions} partitions: SD_CREATE_TOPICS=true)")
                else:
                    yield Check("fail", "topic", f"{role} {topic}: missing and SD_CREATE_TOPICS=false")
                continue
            count = len(admin.describe_topics([topic])[0]["partitions"])
            partitions[topic] = count
            yield Check("ok", "topic", f"{role} {topic}: {count} partitions")
        if s.feedback_topic in existing:
            count = len(admin.describe_topics([s.feedback_topic])[0]["partitions"])
            yield Check("ok", "topic", f"feedback {s.feedback_topic}: {count} partitions (label ingesters: at "
                        f"most {count} busy, group {stage_settings(s).label_group})")
        else:
            yield Check("warn", "topic", f"feedback {s.feedback_topic}: missing — delayed labels have nowhere to "
                        f"arrive (label features, the retrainer's and the console's labels; docs/feedback.md)"
                        + (": workers with a label model create it" if s.create_topics else ""))
        if s.shadow_topic in existing:
            count = len(admin.describe_topics([s.shadow_topic])[0]["partitions"])
            yield Check("ok", "topic", f"shadow {s.shadow_topic}: {count} partitions (a challenger's shadow records)")
        elif s.create_topics:
            yield Check("ok", "topic", f"shadow {s.shadow_topic}: not created yet (`model shadow` creates it)")
        else:
            yield Check("warn", "topic", f"shadow {s.shadow_topic}: missing and SD_CREATE_TOPICS=false — "
                        "`model shadow` refuses until it exists (docs/retraining.md)")
        if s.stage != "whole" and s.input_topic in partitions:
            yield _repartition_topic_check(s, admin, existing, partitions[s.input_topic])
        elif s.input_topic in partitions:
            yield Check("ok", "scaling", f"at most {partitions[s.input_topic]} busy workers in group "
                        f"{s.group_id} (one per input partition; KEDA maxReplicaCount)")
    except KafkaError as exc:
        yield Check("fail", "kafka", f"{s.kafka_bootstrap}: {exc!r}")
    finally:
        admin.close()


def _repartition_topic_check(s: Settings, admin: Any, existing: set[str], upstream: int) -> Check:
    """Two stages: the repartition topic has buckets × the input topic's partitions (a worker refuses
    another size), or is missing and the first worker makes it."""
    topic, want = s.repartition_topic_name, upstream * s.repartition_buckets
    if topic not in existing:
        if s.create_topics:
            return Check("warn", "topic", f"repartition {topic}: missing (the first worker of either stage creates "
                         f"it with {want} partitions: {upstream} x SD_REPARTITION_BUCKETS={s.repartition_buckets})")
        return Check("fail", "topic", f"repartition {topic}: missing and SD_CREATE_TOPICS=false (create it with "
                     f"{want} partitions)")
    have = len(admin.describe_topics([topic])[0]["partitions"])
    if have != want:
        return Check("fail", "topic", f"repartition {topic}: {have} partitions, not {want} ({upstream} of "
                     f"{s.input_topic} x SD_REPARTITION_BUCKETS={s.repartition_buckets}): the worker refuses it; "
                     "delete it, or set SD_REPARTITION_TOPIC")
    return Check("ok", "topic", f"repartition {topic}: {have} partitions ({upstream} x {s.repartition_buckets} "
                 "buckets)")


def _redis_checks(s: Settings) -> Iterator[Check]:
    import redis

    from .errors import StreamDetectorError
    from .store import ControlPlane
    from .store.base import threshold_problem

    control = ControlPlane.from_settings(s)
    try:
        control.ping()
    except (redis.RedisError, OSError) as exc:
        yield Check("fail", "redis", f"cannot reach {redact(s.redis_url)}: {exc}")
        if s.entity_redis_cluster:
            yield _cluster_check(s)
        return
    yield Check("ok", "redis", f"reached {redact(s.redis_url)}")
    try:
        snap = control.snapshot()
        if snap.active_model is None:
            yield Check("fail", "model", f"no active model under prefix {s.redis_prefix}: "
                        "run `stream-detector publish DIR`")
        else:
            # loaded on the CPU where the device is unusable: that is the device check's line, not a second one
            from .model.bundle import device_problem

            device = s.device if device_problem(s.device) is None else "cpu"
            loaded = _try("model", lambda: _load(control, snap.active_model or "", device))
            yield loaded
            if loaded.status == "ok":
                scaling = scaling_check(control.fetch_bundle(snap.active_model), s)
                if scaling is not None:
                    yield scaling
        if snap.threshold is None:
            yield Check("fail", "threshold", "no threshold: publish a model (or `stream-detector threshold set`)")
        elif threshold_problem(snap.threshold.value, snap.threshold.head) is not None:
            yield Check("fail", "threshold", f"v{snap.threshold.version} is unusable: "
                        f"{threshold_problem(snap.threshold.value, snap.threshold.head)}; set a new one")
        elif snap.threshold.model_version != snap.active_model:
            yield Check("fail", "threshold", f"v{snap.threshold.version} belongs to model "
                        f"{snap.threshold.model_version}, active is {snap.active_model}")
        else:
            yield Check("ok", "threshold", f"{snap.threshold.value:.6g} (version {snap.threshold.version})")
    except (redis.RedisError, OSError, StreamDetectorError) as exc:
        yield Check("fail", "redis", f"{exc}")
    if s.entity_redis_cluster:
        yield _cluster_check(s)


def _cluster_check(s: Settings) -> Check:
    """The entity state's Redis Cluster: reachable, and every slot served (``cluster_state:ok``)."""
    from redis.exceptions import RedisClusterException, RedisError

    from .redis_client import entity_cluster_client

    try:
        client = entity_cluster_client(s)
        info = client.cluster_info()
    except (RedisError, RedisClusterException, OSError) as exc:
        return Check("fail", "entity cluster", f"cannot reach {s.entity_redis_cluster}: {exc}")
    state = info.get("cluster_state") if isinstance(info, dict) else None
    if state != "ok":
        return Check("fail", "entity cluster", f"{s.entity_redis_cluster}: cluster_state is {state}")
    return Check("ok", "entity cluster", f"{len(client.get_primaries())} primaries at "  # type: ignore[no-untyped-call]
                 f"{s.entity_redis_cluster}, all slots served")


def scaling_check(bundle: Any, s: Settings) -> Check | None:
    """A WARN when the active model's history is keyed by a field other than the topic's key
    (``EntitySpec.shared_keys``): such a model runs as one worker per consumer group (several are
    exact only at ``SD_ALIGN_PEER_GRACE_MS=0``, a few hundred events/s; docs/operations.md,
    *Partitions and workers*), or in two stages. None for a model without such history; in two
    stages (``SD_STAGE``), a FAIL when the model cannot run in them (``stage_problem``), else None."""
    spec = getattr(bundle, "entity", None)
    if s.stage != "whole":
        from .pipeline.repartition import stage_problem

        problem = stage_problem(spec, s.entity_partition_key, s.repartition_key)
        return Check("fail", "stage", f"model {bundle.version} cannot run in two stages: {problem}") \
            if problem else None
    shared = spec.shared_keys(s.entity_partition_key) if spec is not None else ()
    if not shared:
        return None
    return Check("warn", "scaling", f"model {bundle.version} has history keyed by {', '.join(shared)}, not only by "
                 f"the topic's key ({s.entity_partition_key or 'SD_ENTITY_PARTITION_KEY unset'}): run one worker in "
                 f"group {s.group_id}, or two stages to scale out (SD_STAGE, SD_REPARTITION_KEY); several whole "
                 "workers are exact only at SD_ALIGN_PEER_GRACE_MS=0, a few hundred events/s (docs/operations.md, "
                 "'Partitions and workers')")


def _load(control: ControlPlane, version: str, device: str) -> str:
    from .pipeline.score import Scorer

    scorer = Scorer(control.fetch_bundle(version), device)
    scorer.warm()
    return f"{version} loads and scores on {device} ({len(scorer.fields)} fields)"


def _try(name: str, run: Callable[[], str]) -> Check:
    try:
        return Check("ok", name, run())
    except Exception as exc:  # noqa: BLE001 - a model that does not load is a finding, not a crash
        return Check("fail", name, f"{type(exc).__name__}: {exc}")


