"""The one place a Redis client is built from settings: a plain URL, or a Sentinel-managed primary;
and the Redis Cluster client of the entity state (``SD_ENTITY_REDIS_CLUSTER``).

With ``SD_REDIS_SENTINELS`` set, the client asks the Sentinels for the current primary of
``SD_REDIS_SENTINEL_MASTER`` and asks again whenever a connection fails or a write meets a
demoted primary (``READONLY``), so the worker, retrainer and console follow a failover without a
restart. During the failover itself (Sentinel's ``down-after-milliseconds`` plus the election,
a few seconds) every call raises ``redis.ConnectionError``; callers already treat that as a
retriable outage (the worker holds its batch and retries it, see docs/RELIABILITY.md).
``SD_REDIS_URL`` still supplies the database number, the TLS choice (``rediss://``) and,
unless ``SD_REDIS_PASSWORD`` is set, the password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlparse

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from .settings import RedisSettings

try:  # redis-py's optional C parser (a dependency of this project: pyproject.toml), packing too since 2.0
    import hiredis

    HIREDIS_PACK = hasattr(hiredis, "pack_command")
except ImportError:  # pragma: no cover - installed with the project
    HIREDIS_PACK = False


def sentinel_addresses(spec: str) -> list[tuple[str, int]]:
    """``host:port,host:port`` → ``[(host, port), ...]`` (validated by the settings)."""
    out = []
    for item in spec.split(","):
        host, _, port = item.strip().rpartition(":")
        out.append((host, int(port)))
    return out


def connection_options(settings: RedisSettings, timeout_s: float = 2.0) -> dict[str, Any]:
    """Keyword arguments for a Redis connection: timeouts, database, auth and TLS from the settings."""
    url = urlparse(settings.redis_url)
    options: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    db = url.path.lstrip("/")
    options["db"] = int(db) if db.isdigit() else 0
    if url.scheme == "rediss":
        options["ssl"] = True
    if url.password:
        options["password"] = unquote(url.password)
    if url.username:
        options["username"] = unquote(url.username)
    if settings.redis_password.get_secret_value():
        options["password"] = settings.redis_password.get_secret_value()
    if settings.redis_username:
        options["username"] = settings.redis_username
    return options


def redis_client(settings: RedisSettings, timeout_s: float = 2.0) -> redis.Redis:
    """A client for the deployment's Redis: Sentinel-managed when ``SD_REDIS_SENTINELS`` is set."""
    if not settings.redis_sentinels:
        # redis-py lets credentials in the URL win over keyword arguments; the settings' must win.
        auth = {k: v for k, v in connection_options(settings, timeout_s).items() if k in ("password", "username")}
        url = urlparse(settings.redis_url)
        bare = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()
        return redis.Redis.from_url(bare, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **auth)
    options = connection_options(settings, timeout_s)
    sentinel = Sentinel(sentinel_addresses(settings.redis_sentinels),  # type: ignore[no-untyped-call,unused-ignore]
                        sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s},
                        **options)
    client: redis.Redis = sentinel.master_for(settings.redis_sentinel_master,  # type: ignore[no-untyped-call,unused-ignore]
                                              **options)
    return client


def entity_cluster_client(settings: RedisSettings, timeout_s: float = 2.0) -> RedisCluster:
    """The Redis Cluster of ``SD_ENTITY_REDIS_CLUSTER`` (per-entity history), connected: it learns
    the slot map from the first reachable node and follows MOVED/ASK redirections. Credentials and
    TLS as for the control plane's Redis; the database number does not apply (a cluster has only
    database 0). Raises ``RedisClusterException`` / ``redis.RedisError`` when no node answers."""
    if not settings.entity_redis_cluster:
        raise ValueError("SD_ENTITY_REDIS_CLUSTER is not set")
    options = {k: v for k, v in connection_options(settings, timeout_s).items() if k != "db"}
    nodes = [ClusterNode(host, port)  # type: ignore[no-untyped-call,unused-ignore]
             for host, port in sentinel_addresses(settings.entity_redis_cluster)]
    return RedisCluster(startup_nodes=nodes, **options)


def redact(url: str) -> str:
    """redis://user:secret@host → redis://user:***@host (passwords never reach a report)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def packed_call(client: redis.Redis, *args: str | bytes | int | float) -> Any:
    """One command with many arguments (an entity batch's MGET, its compare-and-set's EVALSHA:
    hundreds to thousands of names and values) on ``client``, packed into the Redis protocol by
    hiredis in one C call, then sent and answered on a pooled connection under the client's own
    retry policy (``Retry.call_with_retry``; the connection dropped and connected again on each
    failure, as redis-py does); the reply as the connection's parser returns it (no response
    callback: MGET → list of bytes or None, EVALSHA → the script's reply). Raises what the command
    raises (``redis.RedisError``: ``NoScriptError`` for an unknown script included).

    Why: redis-py's own packer (``HiredisRespSerializer.pack``) runs a Python generator and an
    encode call per argument before hiredis packs them: 0.68 ms of a 700-name MGET's 0.82 ms on
    this project's host, against 0.08 ms for ``hiredis.pack_command`` alone (measured by hand;
    the worker: benchmarks/RESULTS.md, *the entity state's round trips packed by hiredis …*). Without hiredis,
    a single-connection client, or another client class (a cluster): ``execute_command``, as before."""
    if not HIREDIS_PACK or client.connection is not None or type(client) is not redis.Redis:
        return client.execute_command(*args)  # type: ignore[no-untyped-call]
    packed = [hiredis.pack_command(args)]  # type: ignore[arg-type]  # hiredis's stub: a tuple of any length
    pool = client.connection_pool
    conn = pool.get_connection()

    def once() -> Any:
        conn.send_packed_command(packed)  # type: ignore[no-untyped-call]
        return conn.read_response()

    try:
        return conn.retry.call_with_retry(once, lambda _error: conn.disconnect())  # type: ignore[no-untyped-call]
    finally:
        pool.release(conn)
