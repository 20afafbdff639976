"""The versioned threshold: read, set (atomically with an active-model flip), audit history.

A change of threshold (and of the active model with its threshold) runs as one Lua script, so
readers see either the old pair or the new pair, never a mix, and versions only grow. The same
script maintains the activation stack and publishes the change on ``{p}:events``, so workers
learn of it at once (they also poll, in case a message is missed).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis

from ..errors import ConfigError
from .base import HISTORY_LIMIT, Keys, Snapshot, Threshold, parse_threshold, threshold_problem

KEEP = object()  # ThresholdStore.set: keep the supervised head's threshold as it is

_SET_THRESHOLD = """
local value, head = tonumber(ARGV[1]), tonumber(ARGV[12])
if not value or value ~= value or value < 0 or value == math.huge
   or (ARGV[12] ~= '' and (not head or head ~= head or head < 0 or head > 1)) then
  return redis.error_reply('INVALID: a threshold must be a finite number >= 0 and a head threshold in [0, 1]')
end
if ARGV[10] == 'pop' and redis.call('LINDEX', KEYS[6], 0) ~= ARGV[11] then
  return redis.error_reply('STALE: the active model changed meanwhile; run the rollback again')
end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'version', version, 'model_version', ARGV[2],
           'set_at', ARGV[3], 'set_by', ARGV[4], 'note', ARGV[5])
if ARGV[12] ~= '' then
  redis.call('HSET', KEYS[1], 'head', ARGV[12])
  redis.call('SET', KEYS[7], ARGV[12])
else
  redis.call('HDEL', KEYS[1], 'head')
end
-- the audit line is JSON written by the client (ARGV[7]: the fields after the version), so its
-- numbers keep every digit (cjson writes 14 significant digits at most)
local line = '{"version":' .. version .. ',' .. ARGV[7]
redis.call('LPUSH', KEYS[3], line)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[8]) - 1)
redis.call('SET', KEYS[5], ARGV[1])
if ARGV[6] ~= '' then
  local current = redis.call('GET', KEYS[4])
  redis.call('SET', KEYS[4], ARGV[6])
  if ARGV[10] == 'pop' then
    while redis.call('LLEN', KEYS[6]) > 0 and redis.call('LINDEX', KEYS[6], 0) ~= ARGV[6] do
      redis.call('LPOP', KEYS[6])
    end
  elseif redis.call('LLEN', KEYS[6]) == 0 and current and current ~= ARGV[6] then
    redis.call('LPUSH', KEYS[6], current)
  end
  if redis.call('LINDEX', KEYS[6], 0) ~= ARGV[6] then
    redis.call('LPUSH', KEYS[6], ARGV[6])
    redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[8]) - 1)
  end
end
redis.call('PUBLISH', ARGV[9], cjson.encode({type='threshold', threshold_version=version,
           model_version=ARGV[2], activated=ARGV[6]}))
return version
"""


class ThresholdStore:
    """Thresholds in Redis. Raises ``redis.RedisError`` / ``OSError`` when Redis is unreachable,
    ``ConfigError`` when a rollback raced with another activation."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self.keys = keys
        self._set_threshold = client.register_script(_SET_THRESHOLD)

    def snapshot(self) -> Snapshot:
        """Threshold, active model version and challenger in shadow, read in one transaction."""
        k = self.keys.key
        pipe = self._r.pipeline(transaction=True)
        pipe.hgetall(k("threshold"))
        pipe.get(k("model", "active"))
        pipe.get(k("model", "challenger"))
        raw, active, challenger = pipe.execute()
        return Snapshot(parse_threshold(raw), active.decode() if active else None,
                        challenger.decode() if challenger else None)

    def current(self) -> Threshold | None:
        raw: Any = self._r.hgetall(self.keys.key("threshold"))
        return parse_threshold(raw)

    def history(self, limit: int = 20) -> list[dict[str, Any]]:
        """Audit lines, newest first (JSON objects: version, value, model_version, set_at, set_by, note,
        old_value (null for the first), head (null without a supervised head); numbers as floats with
        every digit — lines written before December 2026 have 14 significant digits and
        ``old_value`` as text)."""
        return [orjson.loads(x) for x in self._r.lrange(self.keys.key("threshold", "history"), 0, limit - 1)]

    def of_version(self, version: str) -> float | None:
        """The threshold ``version`` last ran with (restored when it is activated again)."""
        raw = self._r.get(self.keys.key("model", version, "threshold"))
        return float(raw) if raw is not None else None

    def of_version_head(self, version: str) -> float | None:
        """The supervised head's threshold ``version`` last ran with (None: never set, or no head)."""
        raw = self._r.get(self.keys.key("model", version, "head_threshold"))
        return float(raw) if raw is not None else None

    def set(self, value: float, model_version: str, set_by: str, note: str = "",
            activate_model: str | None = None, rollback_from: str | None = None,
            head: float | None | object = KEEP) -> int:
        """Write a new threshold version (and optionally flip the active model) atomically.

        Also remembers the value as that model version's threshold, pushes an activation on the
        activation stack (or pops it for a rollback), and announces the change on ``{p}:events``.
        ``head``: the supervised head's threshold of this version (``KEEP``: the current one when it is
        the same model's, else the one that model last ran with; None: no head threshold).
        Returns the new threshold version.
        """
        problem = threshold_problem(value, None if head is KEEP else head)  # type: ignore[arg-type]
        if problem is not None:  # nothing is written (the script checks again before its first write)
            raise ConfigError(problem)
        k = self.keys.key
        old = self.current()
        if head is KEEP:
            head = old.head if old is not None and old.model_version == model_version else \
                self.of_version_head(model_version)
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        audit = orjson.dumps({"value": float(value), "model_version": model_version, "set_at": now, "set_by": set_by,
                              "note": note, "old_value": None if old is None else old.value,
                              "head": None if head is None else float(head)})  # type: ignore[arg-type]
        try:
            version = self._set_threshold(
                keys=[k("threshold"), k("threshold", "seq"), k("threshold", "history"), k("model", "active"),
                      k("model", model_version, "threshold"), k("model", "history"),
                      k("model", model_version, "head_threshold")],
                args=[repr(float(value)), model_version, now, set_by, note, activate_model or "",
                      audit[1:].decode(),  # the audit line's fields after the version (the script adds it)
                      HISTORY_LIMIT, self.keys.events_channel,
                      "pop" if rollback_from else "push", rollback_from or "",
                      "" if head is None else repr(float(head))],  # type: ignore[arg-type]
            )
        except redis.ResponseError as exc:
            if "STALE" in str(exc) or "INVALID" in str(exc):
                raise ConfigError(str(exc)) from None
            raise
        return int(version)
