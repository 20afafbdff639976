"""The confluent-kafka transport without a broker: the setting, the librdkafka configuration
(security mapping included), the missing-package error and how refused commits are classified."""

from __future__ import annotations

import sys

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as CTopicPartition

from stream_detector import cli
from stream_detector.checks import _settings_checks
from stream_detector.errors import ConfigError, DeliveryError
from stream_detector.settings import Settings, load_settings
from stream_detector.transport import confluent
from stream_detector.transport.base import TopicPartition
from stream_detector.transport.confluent import ConfluentSource
from stream_detector.transport.confluent import confluent_consumer_config as consumer_options
from stream_detector.transport.confluent import confluent_producer_config as producer_options
from stream_detector.transport.confluent import librdkafka_security as security_options
from stream_detector.transport.confluent_out import ConfluentPublisher, ConfluentTransactionalPublisher
from stream_detector.transport.factory import connection_of, make_sink, make_source, transport_config
from stream_detector.transport.kafka_python import KafkaSource
from stream_detector.transport.kafka_python_out import KafkaPublisher, KafkaTransactionalPublisher


def librdkafka_security(settings: Settings) -> dict[str, str]:
    return security_options(connection_of(settings))


def confluent_consumer_config(settings: Settings, **overrides: object) -> dict[str, object]:
    return consumer_options(transport_config(settings), **overrides)


def confluent_producer_config(settings: Settings) -> dict[str, object]:
    return producer_options(transport_config(settings))

SASL_SSL = dict(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                kafka_sasl_username="detector", kafka_sasl_password="s3cret", kafka_ssl_cafile="/etc/ca.pem")


def test_transport_setting_defaults_to_kafka_python_and_reads_sd_transport(monkeypatch):
    assert load_settings().transport == "kafka-python"
    monkeypatch.setenv("SD_TRANSPORT", "confluent")
    assert load_settings().transport == "confluent"
    monkeypatch.setenv("SD_TRANSPORT", "librdkafka")
    with pytest.raises(ConfigError, match="SD_TRANSPORT"):
        load_settings()
    assert Settings.model_fields["transport"].description


def test_factories_pick_the_transport():
    plain, fast = Settings(), Settings(transport="confluent")
    assert type(make_source(plain)) is KafkaSource and type(make_source(fast)) is ConfluentSource
    assert type(make_sink(plain)) is KafkaPublisher and type(make_sink(fast)) is ConfluentPublisher
    assert type(make_sink(plain.model_copy(update={"delivery": "exactly_once"}))) is KafkaTransactionalPublisher
    eos = make_sink(fast.model_copy(update={"delivery": "exactly_once"}))
    assert type(eos) is ConfluentTransactionalPublisher and eos.transactional


@pytest.fixture
def without_confluent_kafka(monkeypatch):
    """As if confluent-kafka were not installed: importing it fails."""
    import stream_detector.transport

    monkeypatch.setitem(sys.modules, "confluent_kafka", None)
    for name in ("confluent", "confluent_out"):
        monkeypatch.delitem(sys.modules, f"stream_detector.transport.{name}", raising=False)
        monkeypatch.delattr(stream_detector.transport, name, raising=False)


def test_confluent_without_the_package_is_one_clear_config_error(without_confluent_kafka, monkeypatch, capsys):
    s = Settings(transport="confluent")
    for make in (make_source, make_sink):
        with pytest.raises(ConfigError, match=r"SD_TRANSPORT=confluent needs confluent-kafka.*stream-detector\[confluent\]"):
            make(s)
    assert type(make_source(Settings())) is KafkaSource, "the default transport does not need it"
    assert [c.status for c in _settings_checks(s) if c.name == "transport"] == ["fail"]

    monkeypatch.setenv("SD_TRANSPORT", "confluent")
    monkeypatch.setenv("SD_REDIS_URL", "redis://127.0.0.1:1/0")
    assert cli.main(["worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stream-detector worker: error: SD_TRANSPORT=confluent needs confluent-kafka")
    assert "\n" not in err and "Traceback" not in err


def test_check_config_names_the_librdkafka_version():
    checks = [c for c in _settings_checks(Settings(transport="confluent")) if c.name == "transport"]
    assert [c.status for c in checks] == ["ok"] and "librdkafka" in checks[0].detail
    assert not [c for c in _settings_checks(Settings()) if c.name == "transport"]


def test_security_settings_map_to_librdkafka_names():
    assert librdkafka_security(Settings()) == {}
    expected = {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": "detector",
                "sasl.password": "s3cret", "ssl.ca.location": "/etc/ca.pem"}
    s = Settings(**SASL_SSL)
    assert librdkafka_security(s) == expected
    for config in (confluent_consumer_config(s), confluent_producer_config(s)):
        assert {k: config[k] for k in expected} == expected
        assert not {"security_protocol", "sasl_plain_password", "ssl_cafile"} & set(config)
    # no CA file: left to librdkafka, whose wheels probe the system trust store
    assert librdkafka_security(Settings(kafka_security_protocol="SSL")) == {"security.protocol": "SSL"}
    assert librdkafka_security(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u")) == {
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanisms": "PLAIN", "sasl.username": "u", "sasl.password": ""}


def test_a_security_option_without_a_librdkafka_name_is_refused(monkeypatch):
    monkeypatch.setattr(Settings, "kafka_security", lambda self: {"ssl_certfile": "/x.pem"})
    with pytest.raises(ConfigError, match="ssl_certfile"):
        librdkafka_security(Settings())


def test_consumer_config_keeps_the_kafka_python_semantics():
    s = Settings(group_id="g", auto_offset_reset="latest", batch_max_wait_ms=35)
    c = confluent_consumer_config(s)
    assert c["group.id"] == "g" and c["auto.offset.reset"] == "latest"
    assert c["enable.auto.commit"] is False and c["enable.auto.offset.store"] is False
    assert c["isolation.level"] == "read_committed"
    assert c["partition.assignment.strategy"] == "cooperative-sticky"
    assert confluent_consumer_config(s.model_copy(update={"assignment": "eager"}))[
        "partition.assignment.strategy"] == "range,roundrobin"
    assert (c["session.timeout.ms"], c["heartbeat.interval.ms"], c["max.poll.interval.ms"]) == (10_000, 2_000, 300_000)
    assert (c["fetch.max.bytes"], c["max.partition.fetch.bytes"], c["fetch.wait.max.ms"]) == (
        64 * 1024 * 1024, 16 * 1024 * 1024, 35)
    assert confluent_consumer_config(s.model_copy(update={"batch_max_wait_ms": 0}))["fetch.wait.max.ms"] == 1
    assert confluent_consumer_config(s, **{"fetch.wait.max.ms": 5})["fetch.wait.max.ms"] == 5


def test_producer_configs_keep_acks_idempotence_and_timeouts():
    s = Settings(group_id="g", worker_id="slot-3", delivery_timeout_s=12, transaction_timeout_s=45)
    p = confluent_producer_config(s)
    assert (p["acks"], p["enable.idempotence"], p["delivery.timeout.ms"]) == ("all", True, 12_000)
    assert p["message.max.bytes"] == 16 * 1024 * 1024 and p["linger.ms"] <= 5
    one = confluent_producer_config(s.model_copy(update={"producer_acks": "1"}))
    assert (one["acks"], one["enable.idempotence"]) == (1, False)
    txn = ConfluentTransactionalPublisher(transport_config(s))
    t = txn.client._config()
    assert txn.transactional_id == KafkaTransactionalPublisher(transport_config(s)).transactional_id == "g-slot-3"
    assert (t["transactional.id"], t["transaction.timeout.ms"], t["acks"], t["enable.idempotence"]) == (
        "g-slot-3", 45_000, "all", True)
    capped = ConfluentTransactionalPublisher(transport_config(s.model_copy(update={"delivery_timeout_s": 60}))).client._config()
    assert capped["delivery.timeout.ms"] == 45_000, "librdkafka refuses a delivery timeout above the transaction's"


def test_librdkafka_accepts_every_property():
    """Creating the clients validates every property name and value (no connection is needed)."""
    s = Settings(kafka_bootstrap="127.0.0.1:1", kafka_security_protocol="SASL_PLAINTEXT",
                 kafka_sasl_mechanism="SCRAM-SHA-256", kafka_sasl_username="u", kafka_sasl_password="p")
    for settings in (s, s.model_copy(update={"assignment": "eager", "producer_acks": "0"})):
        Consumer(confluent_consumer_config(settings)).close()
        Producer(confluent_producer_config(settings))
        Producer(ConfluentTransactionalPublisher(transport_config(settings)).client._config())
    with pytest.raises(KafkaException):
        Consumer(confluent_consumer_config(s, **{"no.such.property": 1}))


class _RefusingConsumer:
    """Refuses every commit; holds partition 0 of ``tx`` (committed offset 3) and records seeks."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.seeks: list[tuple[str, int, int]] = []

    def commit(self, offsets: list[object], asynchronous: bool) -> None:
        raise KafkaException(KafkaError(self.code))

    def assignment(self) -> list[CTopicPartition]:
        return [CTopicPartition("tx", 0)]

    def committed(self, partitions: list[CTopicPartition], timeout: float) -> list[CTopicPartition]:
        return [CTopicPartition(tp.topic, tp.partition, 3) for tp in partitions]

    def seek(self, tp: CTopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def _Refusing(code: int) -> ConfluentSource:  # noqa: N802 - stands where the fake source class stood
    """A source whose librdkafka consumer refuses every commit with ``code``."""
    source = ConfluentSource(transport_config(Settings()))
    source.consumer = _RefusingConsumer(code)  # type: ignore[assignment]
    return source


@pytest.mark.parametrize("code", [KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
                                  KafkaError.UNKNOWN_MEMBER_ID])
def test_a_commit_refused_by_a_rebalance_is_logged_and_the_partitions_still_held_rewound(code, caplog):
    source = _Refusing(code)
    ConfluentPublisher(transport_config(Settings())).commit(source, {TopicPartition("tx", 0): 5,
                                                                     TopicPartition("tx", 1): 7})
    assert "not committed" in caplog.text
    assert source.consumer.seeks == [("tx", 0, 3)]  # type: ignore[union-attr]  # held: back to its committed offset


def test_other_commit_failures_are_delivery_errors():
    with pytest.raises(DeliveryError, match="offset commit failed"):
        ConfluentPublisher(transport_config(Settings())).commit(_Refusing(KafkaError.COORDINATOR_NOT_AVAILABLE),
                                                                {TopicPartition("tx", 0): 5})
    assert KafkaError.REBALANCE_IN_PROGRESS in confluent.COMMIT_REFUSED


def test_librdkafka_log_lines_repeat_at_most_every_interval(monkeypatch):
    """While a broker is down librdkafka logs a failed connect per retry: one line per 10 s passes."""
    clock = [100.0]
    monkeypatch.setattr(confluent.time, "monotonic", lambda: clock[0])
    once = confluent._OncePerInterval()

    def line(fac: str, client: str = "consumer-1") -> bool:
        record = confluent.RDKAFKA_LOG.makeRecord("stream_detector.librdkafka", 40, __file__, 1, "%s [%s] %s",
                                                  (fac, client, "Connect failed"), None)
        return once.filter(record)

    assert line("FAIL") and not line("FAIL") and line("FAIL", "producer-1") and line("GETPID")
    clock[0] += confluent.ERROR_LOG_INTERVAL_S
    assert line("FAIL")


class _RefusesToBegin:
    """A kafka-python producer left in a fatal transaction state: ``begin_transaction`` raises."""

    def begin_transaction(self) -> None:
        from kafka.errors import IllegalStateError

        raise IllegalStateError("TransactionalId t: Invalid transition attempted from state FATAL_ERROR")


def test_a_refused_begin_transaction_is_a_delivery_error_not_a_crash():
    publisher = KafkaTransactionalPublisher(transport_config(Settings(delivery="exactly_once")))
    publisher.client.producer = _RefusesToBegin()  # type: ignore[assignment]
    with pytest.raises(DeliveryError, match="begin_transaction failed"):  # the worker holds the batch and resets
        publisher.publish([])
    assert not publisher._open


class _Msg:
    """The parts of a consumed librdkafka message that ``ConfluentSource._consume`` reads."""

    def __init__(self, offset: int, value: bytes | None = b"{}", error: KafkaError | None = None) -> None:
        self._offset, self._value, self._error = offset, value, error

    def topic(self) -> str:
        return "tx"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> KafkaError | None:
        return self._error


class _Consumer:
    def __init__(self, messages: list[_Msg]) -> None:
        self.messages = messages

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        return self.messages


def test_a_message_librdkafka_cannot_read_stands_in_the_batch_as_unreadable() -> None:
    from stream_detector.pipeline.decode import decode_batch
    from stream_detector.schema import RejectReason

    source = ConfluentSource(transport_config(Settings()))
    source.consumer = _Consumer([_Msg(4), _Msg(5, None, KafkaError(KafkaError._BAD_COMPRESSION)),
                                 _Msg(6, None, KafkaError(KafkaError._PARTITION_EOF)), _Msg(7)])  # type: ignore[assignment]
    got = source._consume(10, 0)
    assert [m.offset() for m in got] == [4, 5, 7]
    decoded = decode_batch([m.value() for m in got], 1000)
    assert [(r.index, r.reason) for r in decoded.rejected if r.index == 1] == [(1, RejectReason.UNREADABLE)]
    assert got[1].value() == b"" and got[1].key() is None
