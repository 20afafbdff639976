"""The Redis control plane: active model pointer, model artifacts, versioned threshold.

Keys (all under ``SD_REDIS_PREFIX``)::

    {p}:model:{version}      hash  file name → bytes (the bundle, written first)
    {p}:models               zset  version → created epoch seconds
    {p}:model:active         str   active model version (flipped last)
    {p}:threshold            hash  value, version, model_version, set_at, set_by, note
    {p}:threshold:seq        int   last threshold version
    {p}:threshold:history    list  JSON audit lines, newest first (bounded)

Changes of threshold (and of the active model with its threshold) run as one Lua script, so
readers see either the old pair or the new pair, never a mix, and versions only grow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from .errors import NoActiveModel
from .model.bundle import Bundle, bundle_from_files

HISTORY_LIMIT = 1000

_SET_THRESHOLD = """
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'version', version, 'model_version', ARGV[2],
           'set_at', ARGV[3], 'set_by', ARGV[4], 'note', ARGV[5])
local line = cjson.encode({value=tonumber(ARGV[1]), version=version, model_version=ARGV[2],
                           set_at=ARGV[3], set_by=ARGV[4], note=ARGV[5], old_value=ARGV[7]})
redis.call('LPUSH', KEYS[3], line)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[8]) - 1)
if ARGV[6] ~= '' then redis.call('SET', KEYS[4], ARGV[6]) end
return version
"""


@dataclass(frozen=True)
class Threshold:
    value: float
    version: int
    model_version: str


@dataclass(frozen=True)
class Snapshot:
    """What a worker reads each refresh, in one round trip."""

    threshold: Threshold | None
    active_model: str | None


class ControlPlane:
    """Small typed wrapper over Redis; no network I/O in the constructor."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.p = prefix
        self._set_threshold = client.register_script(_SET_THRESHOLD)

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout_s: float = 2.0) -> ControlPlane:
        return cls(redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s), prefix)

    def key(self, *parts: str) -> str:
        return ":".join((self.p, *parts))

    # ---- reads -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        pipe = self.r.pipeline(transaction=True)
        pipe.hgetall(self.key("threshold"))
        pipe.get(self.key("model", "active"))
        raw, active = pipe.execute()
        return Snapshot(_threshold(raw), active.decode() if active else None)

    def threshold(self) -> Threshold | None:
        return _threshold(self.r.hgetall(self.key("threshold")))

    def active_model(self) -> str | None:
        value = self.r.get(self.key("model", "active"))
        return value.decode() if value else None

    def fetch_bundle(self, version: str) -> Bundle:
        files = self.r.hgetall(self.key("model", version))
        if not files:
            raise NoActiveModel(f"model {version} is not in the registry")
        return bundle_from_files({k.decode(): v for k, v in files.items()})

    def active_bundle(self) -> Bundle:
        version = self.active_model()
        if version is None:
            raise NoActiveModel("no active model: run `stream-detector publish DIR` first")
        return self.fetch_bundle(version)

    def threshold_history(self, limit: int = 20) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.r.lrange(self.key("threshold", "history"), 0, limit - 1)]

    def model_versions(self) -> list[str]:
        return [v.decode() for v in self.r.zrange(self.key("models"), 0, -1)]

    # ---- writes ----------------------------------------------------------------------------
    def set_threshold(self, value: float, model_version: str, set_by: str, note: str = "",
                      activate_model: str | None = None) -> int:
        """Write a new threshold version (and optionally flip the active model) atomically."""
        old = self.threshold()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        version = self._set_threshold(
            keys=[self.key("threshold"), self.key("threshold", "seq"), self.key("threshold", "history"),
                  self.key("model", "active")],
            args=[repr(float(value)), model_version, now, set_by, note, activate_model or "",
                  "" if old is None else repr(old.value), HISTORY_LIMIT],
        )
        return int(version)

    def publish(self, bundle: Bundle, set_by: str) -> int:
        """Store the artifact first, then flip active model and threshold together."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key("model", bundle.version), mapping=bundle.files)  # type: ignore[arg-type]
        pipe.zadd(self.key("models"), {bundle.version: time.time()})
        pipe.execute()
        return self.set_threshold(bundle.threshold, bundle.version, set_by,
                                  note=f"publish {bundle.version}", activate_model=bundle.version)


def _threshold(raw: dict[bytes, bytes]) -> Threshold | None:
    if not raw:
        return None
    return Threshold(float(raw[b"value"]), int(raw[b"version"]), raw[b"model_version"].decode())
