"""Settings → transport: the one place that reads ``Settings`` for Kafka clients.

``transport_config`` builds the ``Connection`` and ``ClientTuning`` every adapter renders into
its own option names; ``make_source`` / ``make_sink`` pick the adapter of ``SD_TRANSPORT``
(kafka-python or confluent) and the delivery mode of ``SD_DELIVERY``. The in-memory transport
(``memory.py``) has no setting: tests build it directly around a ``MemoryBroker``.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import ConfigError
from ..settings import Settings
from .base import ClientTuning, Connection, Publisher, Source, TransportConfig

# Settings.kafka_security() option -> Connection field
SECURITY_FIELDS = {
    "security_protocol": "security_protocol",
    "sasl_mechanism": "sasl_mechanism",
    "sasl_plain_username": "sasl_username",
    "sasl_plain_password": "sasl_password",
    "ssl_cafile": "ssl_cafile",
}


def connection_of(settings: Settings, client_id: str | None = None) -> Connection:
    """Bootstrap servers, client id (default ``stream-detector-{group_id}``) and TLS/SASL of
    ``settings``; a security option this transport cannot carry is a ``ConfigError``."""
    security: dict[str, str] = {}
    for key, value in settings.kafka_security().items():
        if key not in SECURITY_FIELDS:  # a new security option must not be dropped silently
            raise ConfigError(f"Kafka security option {key} has no transport equivalent here "
                              f"(SD_TRANSPORT={settings.transport})")
        security[SECURITY_FIELDS[key]] = value
    return Connection(bootstrap_servers=tuple(settings.bootstrap_servers),
                      client_id=client_id or f"stream-detector-{settings.group_id}", **security)


def tuning_of(settings: Settings) -> ClientTuning:
    return ClientTuning(
        batch_size=settings.batch_size,
        batch_max_wait_ms=settings.batch_max_wait_ms,
        auto_offset_reset=settings.auto_offset_reset,
        cooperative=settings.assignment == "cooperative",
        acks="all" if settings.producer_acks == "all" else int(settings.producer_acks),
        delivery_timeout_s=settings.delivery_timeout_s,
        transaction_timeout_s=settings.transaction_timeout_s,
        metadata_max_age_ms=settings.metadata_max_age_ms,
    )


def transport_config(settings: Settings) -> TransportConfig:
    """The worker's transport configuration: input topic, group, slot's transactional id."""
    return TransportConfig(connection=connection_of(settings), tuning=tuning_of(settings),
                           topic=settings.input_topic, group_id=settings.group_id,
                           transactional_id=f"{settings.group_id}-{settings.worker_id}")


def confluent_transport() -> ModuleType:
    """``transport.confluent``, or a ``ConfigError`` saying how to install it (SD_TRANSPORT=confluent)."""
    try:
        from . import confluent
    except ImportError as exc:
        if not (exc.name or "").startswith("confluent_kafka"):
            raise
        raise ConfigError("SD_TRANSPORT=confluent needs confluent-kafka, which is not installed: "
                          "pip install 'stream-detector[confluent]' (or SD_TRANSPORT=kafka-python)") from None
    return confluent


def make_source(settings: Settings) -> Source:
    """The consumer side of ``settings.transport``."""
    config = transport_config(settings)
    if settings.transport == "confluent":
        source: Source = confluent_transport().ConfluentSource(config)
        return source
    from .kafka_python import KafkaSource

    return KafkaSource(config)


def make_sink(settings: Settings) -> Publisher:
    """The publisher (steps 6 and 7) of ``settings.delivery`` on ``settings.transport``."""
    config = transport_config(settings)
    exactly_once = settings.delivery == "exactly_once"
    if settings.transport == "confluent":
        confluent_transport()
        from . import confluent_out

        if exactly_once:
            return confluent_out.ConfluentTransactionalPublisher(config)
        return confluent_out.ConfluentPublisher(config)
    from . import kafka_python_out

    if exactly_once:
        return kafka_python_out.KafkaTransactionalPublisher(config)
    return kafka_python_out.KafkaPublisher(config)
