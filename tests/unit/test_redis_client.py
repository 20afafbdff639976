"""SD_REDIS_SENTINELS / SD_REDIS_SENTINEL_MASTER → the Redis client every service builds (no I/O:
a client connects on first use)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from redis.sentinel import SentinelConnectionPool

from stream_detector.redis_client import connection_options, redis_client, sentinel_addresses
from stream_detector.settings import Settings


def test_sentinel_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SD_REDIS_SENTINELS", "127.0.0.1:26379, 127.0.0.1:26380,127.0.0.2:26381")
    monkeypatch.setenv("SD_REDIS_SENTINEL_MASTER", "fraud-primary")
    settings = Settings()
    assert sentinel_addresses(settings.redis_sentinels) == [("127.0.0.1", 26379), ("127.0.0.1", 26380),
                                                            ("127.0.0.2", 26381)]
    assert settings.redis_sentinel_master == "fraud-primary"


def test_sentinel_client_follows_the_named_primary_with_url_db_and_password() -> None:
    settings = Settings(redis_url="redis://:from-url@ignored:1/3", redis_sentinels="127.0.0.1:26379",
                        redis_sentinel_master="fraud-primary")
    client = redis_client(settings, timeout_s=1.5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "fraud-primary" and pool.is_master
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "from-url"
    assert pool.connection_kwargs["socket_timeout"] == 1.5


def test_password_setting_overrides_the_url_and_tls_is_kept() -> None:
    settings = Settings(redis_url="rediss://user:url-pw@h:6380/0", redis_password="secret",  # type: ignore[arg-type]
                        redis_sentinels="127.0.0.1:26379")
    options = connection_options(settings)
    assert options["password"] == "secret" and options["username"] == "user" and options["ssl"] is True


def test_without_sentinels_the_url_is_used_as_before() -> None:
    client = redis_client(Settings(redis_url="redis://127.0.0.1:6390/2"))
    assert not isinstance(client.connection_pool, SentinelConnectionPool)
    assert client.connection_pool.connection_kwargs["port"] == 6390
    assert client.connection_pool.connection_kwargs["db"] == 2


@pytest.mark.parametrize("bad", ["127.0.0.1", "host:port", ":26379"])
def test_malformed_sentinel_lists_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        Settings(redis_sentinels=bad)


def test_topic_replication_defaults_to_the_brokers_default() -> None:
    assert Settings().topic_replication == 0
    assert Settings(topic_replication=3).topic_replication == 3


def test_password_setting_wins_over_the_url_without_sentinels_too() -> None:
    settings = Settings(redis_url="redis://user:url-pw@127.0.0.1:6390/1", redis_password="secret")  # type: ignore[arg-type]
    kwargs = redis_client(settings).connection_pool.connection_kwargs
    assert kwargs["password"] == "secret" and kwargs["username"] == "user" and kwargs["db"] == 1
    assert redis_client(Settings(redis_url="redis://:url-pw@127.0.0.1:6390/0")).connection_pool.connection_kwargs[
        "password"] == "url-pw"
