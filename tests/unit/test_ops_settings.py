"""Security settings reach every Kafka client; check-config's report and redaction."""

from __future__ import annotations

import pytest

from stream_detector.checks import Check, report
from stream_detector.errors import ConfigError
from stream_detector.redis_client import redact
from stream_detector.settings import Settings, load_settings
from stream_detector.transport.factory import transport_config
from stream_detector.transport.kafka_python import consumer_config as consumer_options
from stream_detector.transport.kafka_python_out import producer_config as producer_options


def consumer_config(settings: Settings) -> dict[str, object]:
    return consumer_options(transport_config(settings))


def producer_config(settings: Settings) -> dict[str, object]:
    return producer_options(transport_config(settings))


def test_plaintext_adds_nothing_and_sasl_ssl_reaches_consumer_and_producer():
    assert Settings().kafka_security() == {}
    assert "security_protocol" not in consumer_config(Settings())
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="detector", kafka_sasl_password="s3cret", kafka_ssl_cafile="/etc/ca.pem")
    expected = {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                "sasl_plain_username": "detector", "sasl_plain_password": "s3cret", "ssl_cafile": "/etc/ca.pem"}
    assert s.kafka_security() == expected
    for config in (consumer_config(s), producer_config(s)):
        assert {k: config[k] for k in expected} == expected
    assert "s3cret" not in repr(s), "the password never shows in reprs or logs"
    tls = Settings(kafka_security_protocol="SSL")
    assert tls.kafka_security() == {"security_protocol": "SSL"}


def test_bad_security_values_are_config_errors():
    with pytest.raises(ConfigError, match="SD_KAFKA_SECURITY_PROTOCOL"):
        load_settings(kafka_security_protocol="TLS")
    with pytest.raises(ConfigError, match="SD_METRICS_PORT"):
        load_settings(metrics_port=70000)


def test_report_counts_failures_and_redacts_passwords():
    text = report([Check("ok", "kafka", "reached"), Check("warn", "metrics", "off"), Check("fail", "model", "x")])
    assert text.splitlines()[-1] == "result: FAILED (1 failed, 1 warnings, 3 checks)"
    assert "FAIL  model" in text
    assert report([Check("ok", "a", "b")]).endswith("result: OK (0 failed, 0 warnings, 1 checks)")
    assert redact("rediss://default:hunter2@redis.prod:6380/0") == "rediss://default:***@redis.prod:6380/0"
    assert redact("redis://localhost:6379/0") == "redis://localhost:6379/0"


@pytest.mark.parametrize("value", ["redis://127.0.0.1:7001", "nonsense", "[::1]:7001", "host:port"])
def test_node_lists_take_host_and_port_only(value: str) -> None:
    """A URL where host:port belongs (written in SD_REDIS_URL's style) is a settings error
    naming the variable, not a connection failure later."""
    with pytest.raises(ConfigError, match="SD_ENTITY_REDIS_CLUSTER"):
        load_settings(entity_redis_cluster=value)
    assert load_settings(entity_redis_cluster="10.0.0.1:7001,10.0.0.2:7001").entity_redis_cluster


@pytest.mark.parametrize(("name", "value"), [
    ("kafka_bootstrap", "localhost:99999"), ("kafka_bootstrap", "localhost:9092,b:0"),
    ("redis_sentinels", "s1:26379,s2:65536"), ("entity_redis_cluster", "n1:70001"),
])
def test_an_address_list_takes_tcp_ports_only(name: str, value: str) -> None:
    """A port out of 1-65535 (a new-user trial: SD_KAFKA_BOOTSTRAP=localhost:99999 was accepted and
    the client failed later, without naming the setting) is a settings error naming the
    variable and the port; the highest port is taken."""
    with pytest.raises(ConfigError, match=f"SD_{name.upper()}: port [0-9]+ of '[^']+' is not a TCP port") as raised:
        load_settings(**{name: value})
    assert "Value error" not in str(raised.value)  # pydantic's prefix (a new-user trial)
    assert getattr(load_settings(**{name: "h1:65535,h2:1"}), name) == "h1:65535,h2:1"


def test_alignment_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="SD_ALIGN_EVENT_TIME"):
        load_settings(align_event_time="maybe")
    assert load_settings(align_event_time="off").align_event_time == "off"


def test_a_misspelled_setting_is_named_with_the_one_it_resembles(monkeypatch: pytest.MonkeyPatch) -> None:
    """SD_INPUT_TOPICS=x passed check-config with OK and the worker read the default topic (a
    new-user trial): a variable that nearly spells a setting fails check-config and is a warning
    line for every other command; SD_* names of the scripts and tests (SD_SOAK_RATE) are not settings
    and are left alone."""
    from stream_detector.checks import _settings_checks
    from stream_detector.settings import unknown_settings

    env = {"SD_INPUT_TOPICS": "x", "SD_BATCHSIZE": "5", "SD_SOAK_RATE": "3", "SD_INPUT_TOPIC": "y", "PATH": "/bin"}
    assert unknown_settings(env) == [
        "SD_BATCHSIZE is not a setting and is ignored (did you mean SD_BATCH_SIZE?)",
        "SD_INPUT_TOPICS is not a setting and is ignored (did you mean SD_INPUT_TOPIC?)"]
    monkeypatch.setenv("SD_GROUPID", "g")
    checks = list(_settings_checks(load_settings()))
    assert checks[0] == Check("fail", "settings", "SD_GROUPID is not a setting and is ignored (did you mean SD_GROUP_ID?)")



def test_other_clients_names_for_the_addresses_are_named_too() -> None:
    """Found by a new-user trial: SD_KAFKA_BOOTSTRAP_SERVERS=bogus:1 (Kafka's own name), SD_REDIS_HOST
    and SD_KAFKA_BROKERS are too far from SD_KAFKA_BOOTSTRAP / SD_REDIS_URL for the spelling rule:
    check-config said OK and every command reached localhost. The services script's own
    SD_KAFKA_PORT / SD_REDIS_PORT stay unreported."""
    from stream_detector.settings import unknown_settings

    env = {"SD_KAFKA_BOOTSTRAP_SERVERS": "bogus:1", "SD_REDIS_HOST": "r", "SD_KAFKA_BROKERS": "b:1",
           "SD_KAFKA_PORT": "9092", "SD_REDIS_PORT": "6379", "SD_SERVICES_DIR": "/x"}
    assert unknown_settings(env) == [
        "SD_KAFKA_BOOTSTRAP_SERVERS is not a setting and is ignored (did you mean SD_KAFKA_BOOTSTRAP?)",
        "SD_KAFKA_BROKERS is not a setting and is ignored (did you mean SD_KAFKA_BOOTSTRAP?)",
        "SD_REDIS_HOST is not a setting and is ignored (did you mean SD_REDIS_URL?)"]


def test_a_worker_scores_with_one_intra_op_thread_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found while timing workers taking turns: with torch's default (one intra-op thread per core)
    the worker's scoring thread, its decode thread and torch's second thread oversubscribed two
    shared cores: the scoring step of a two-event batch took 18 ms instead of 1 (benchmarks/RESULTS.md,
    *Scoring threads*). Unset, a worker scores with 1 thread and the retrainer keeps torch's default;
    ``SD_TORCH_THREADS=0`` is torch's default for both, N is N."""
    monkeypatch.delenv("SD_TORCH_THREADS", raising=False)
    assert Settings().torch_threads is None and Settings().scoring_threads == 1
    monkeypatch.setenv("SD_TORCH_THREADS", "0")
    assert load_settings().scoring_threads == 0
    monkeypatch.setenv("SD_TORCH_THREADS", "3")
    assert load_settings().scoring_threads == 3 and load_settings().torch_threads == 3
