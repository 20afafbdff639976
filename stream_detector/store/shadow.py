"""The challenger in shadow, in Redis: which model it is, its figures, and the decisions taken.

    {p}:model:challenger       string  the version in shadow beside the active model (absent: none)
    {p}:shadow:{version}       hash    its period: started_at, set_by, min_events, max_seconds, its
                                       bundle thresholds; and the figures every worker adds
                                       (pipeline/shadow.shadow_counts: events, alerts of each model,
                                       both, score bins)
    {p}:shadow:decisions       list    JSON decisions (promoted / refused / stopped), newest first

Starting or ending a shadow period announces it on ``{p}:events`` (workers load or drop the
challenger between batches). Promotion is the registry's atomic activation flip followed by the
end of the period: a rollback afterwards is the same one pointer flip as for any promotion.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis

from ..errors import ConfigError
from ..pipeline.shadow import N_BINS
from .base import Keys, text

DECISIONS_LIMIT = 100


class ShadowStore:
    """Raises ``redis.RedisError`` / ``OSError`` when Redis is unreachable."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self.keys = keys

    def challenger(self) -> str | None:
        value: Any = self._r.get(self.keys.key("model", "challenger"))
        return text(value) if value else None

    def start(self, version: str, threshold: float, head: float | None, set_by: str, min_events: int,
              max_seconds: float, note: str = "") -> None:
        """Make ``version`` (stored in the registry) the challenger with fresh figures. The caller
        ends a period still running first (``ControlPlane.start_shadow``: refused, or ``replaced``)."""
        k = self.keys.key
        config = {"version": version, "started_at": repr(time.time()), "set_by": set_by, "note": note,
                  "min_events": str(int(min_events)), "max_seconds": repr(float(max_seconds)),
                  "threshold": repr(float(threshold)), "head_threshold": "" if head is None else repr(float(head))}
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(k("shadow", version))
        pipe.hset(k("shadow", version), mapping=config)  # type: ignore[arg-type]
        pipe.set(k("model", "challenger"), version)
        pipe.publish(self.keys.events_channel, orjson.dumps({"type": "challenger", "model_version": version,
                                                             "started": True}))
        pipe.execute()

    def figures(self, version: str | None = None) -> dict[str, Any] | None:
        """The period of ``version`` (default: the current challenger) with its summed figures and
        derived rates: ``age_s``, alert rates per model, ``agreement`` (share of events both models
        decide alike), ``alert_overlap`` (both / either); None when it has no period."""
        version = version or self.challenger()
        if version is None:
            return None
        raw: Any = self._r.hgetall(self.keys.key("shadow", version))
        if not raw or b"started_at" not in raw:
            return None
        return derive({text(key): text(v) for key, v in raw.items()})

    def note_judgement(self, version: str, judgement: dict[str, Any]) -> None:
        """Keep the retrainer's latest judgement of a period still running (an extension), for the
        console (``figures()["judgement"]``)."""
        key = self.keys.key("shadow", version)
        if self._r.exists(key):
            self._r.hset(key, "judgement", orjson.dumps({**judgement, "at": time.time()}))

    def end(self, version: str, outcome: str, decision: dict[str, Any], set_by: str) -> dict[str, Any]:
        """End ``version``'s period: the pointer goes (if it still names it), the figures are kept in
        the decision record (``{p}:shadow:decisions``), the live hash is deleted. Returns the record."""
        k = self.keys.key
        figures = self.figures(version)
        if figures is None:
            raise ConfigError(f"model {version} is not in shadow")
        record = {"version": version, "outcome": outcome, "set_by": set_by, "ended_at": time.time(),
                  "figures": figures, **decision}
        pipe = self._r.pipeline(transaction=True)
        pipe.lpush(k("shadow", "decisions"), orjson.dumps(record))
        pipe.ltrim(k("shadow", "decisions"), 0, DECISIONS_LIMIT - 1)
        pipe.delete(k("shadow", version))
        pipe.execute()
        # the pointer only if it still names this version (a newer start may have replaced it)
        self._r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
                     1, k("model", "challenger"), version)
        self._r.publish(self.keys.events_channel, orjson.dumps({"type": "challenger", "model_version": version,
                                                                "ended": outcome}))
        return record

    def decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        """Ended shadow periods with their figures and reasons, newest first."""
        return [orjson.loads(x) for x in self._r.lrange(self.keys.key("shadow", "decisions"), 0, limit - 1)]


def derive(raw: dict[str, str]) -> dict[str, Any]:
    """A period's hash fields (strings) → typed figures with the derived rates (pure)."""
    counts = {name: int(v) for name, v in raw.items()
              if name in ("events", "challenger_scored", "champion_alerts", "challenger_alerts", "both_alerts")
              or "_bin_" in name}
    events = counts.get("events", 0)
    champ, chall, both = (counts.get(n, 0) for n in ("champion_alerts", "challenger_alerts", "both_alerts"))
    either = champ + chall - both
    started = float(raw["started_at"])
    return {
        "version": raw.get("version"), "started_at": started, "age_s": max(0.0, time.time() - started),
        "set_by": raw.get("set_by"), "note": raw.get("note", ""),
        "min_events": int(raw.get("min_events", "0")), "max_seconds": float(raw.get("max_seconds", "0")),
        "threshold": float(raw["threshold"]) if raw.get("threshold") else None,
        "head_threshold": float(raw["head_threshold"]) if raw.get("head_threshold") else None,
        "events": events, "challenger_scored": counts.get("challenger_scored", 0),
        "champion_alerts": champ, "challenger_alerts": chall, "both_alerts": both,
        "champion_alert_rate": champ / events if events else None,
        "challenger_alert_rate": chall / events if events else None,
        "agreement": (events - (either - both)) / events if events else None,
        "alert_overlap": both / either if either else None,
        "bins": {name: [counts.get(f"{name}_bin_{i}", 0) for i in range(N_BINS)]
                 for name in ("champion", "challenger")},
        "judgement": orjson.loads(raw["judgement"]) if raw.get("judgement") else None,
    }
