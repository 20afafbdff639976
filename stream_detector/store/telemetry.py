"""Telemetry in Redis: what workers report and the console and retrainer read.

    {p}:score-summaries   stream  per-worker score histograms (bounded), read by drift checks
    {p}:recent-scores     stream  the console's sampled score feed (bounded)
    {p}:gate:rejected     list    JSON gate decisions of refused candidates, newest first (bounded)
    {p}:shadow:{version}  hash    a challenger's shadow figures, summed by every worker (store/shadow.py)
    {p}:events            pub/sub one JSON message per threshold / active-model change

Telemetry is best effort for writers: callers on the hot path catch failures and drop entries.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis

from .base import Keys, text

FEED_KEY = "recent-scores"


# HINCRBY each (field, n) pair, only while the period's hash exists (atomic: a flush racing the end
# of a period cannot leave a stray hash behind)
_ADD_SHADOW = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


class Telemetry:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self._r = client
        self.keys = keys
        self._add_shadow = client.register_script(_ADD_SHADOW)

    # ---- a challenger in shadow (pipeline/shadow.py) -------------------------------------------
    def add_shadow_counts(self, version: str, counts: dict[str, int]) -> None:
        """Add a worker's counts to the challenger's figures (``HINCRBY`` each, one round trip).
        Only while ``version`` is the challenger (the hash exists): a worker that has not yet seen
        the end of a shadow period does not write figures that outlive it."""
        args: list[str | int] = []
        for name, n in counts.items():
            args += [name, int(n)]
        self._add_shadow(keys=[self.keys.key("shadow", version)], args=args)

    # ---- score summaries (drift) -------------------------------------------------------------
    def add_score_summary(self, fields: dict[str, str], maxlen: int) -> None:
        self._r.xadd(self.keys.key("score-summaries"), fields, maxlen=maxlen,  # type: ignore[arg-type]
                     approximate=True)

    def score_summaries(self, after: str = "-", count: int = 10_000) -> list[tuple[str, dict[str, str]]]:
        """Summaries newer than id ``after`` (exclusive), oldest first."""
        start = "-" if after == "-" else f"({after}"
        entries: Any = self._r.xrange(self.keys.key("score-summaries"), start, "+", count=count)
        return [(text(i), {text(k): text(v) for k, v in f.items()}) for i, f in entries]

    def latest_summaries(self, limit: int = 2000) -> list[dict[str, str]]:
        """The newest ``limit`` summaries, oldest first."""
        raw: Any = self._r.xrevrange(self.keys.key("score-summaries"), "+", "-", count=limit)
        return [{text(k): text(v) for k, v in fields.items()} for _, fields in reversed(raw)]

    # ---- the console's score feed ----------------------------------------------------------------
    def add_feed_entry(self, fields: dict[str, str], maxlen: int) -> None:
        self._r.xadd(self.keys.key(FEED_KEY), fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]

    def feed(self, limit: int) -> list[dict[bytes, bytes]]:
        """The newest ``limit`` feed entries' fields, oldest first."""
        raw: Any = self._r.xrevrange(self.keys.key(FEED_KEY), "+", "-", count=limit)
        return [fields for _, fields in reversed(raw)]

    # ---- gate refusals ---------------------------------------------------------------------------
    def record_rejection(self, gate: dict[str, Any], limit: int = 100) -> None:
        k = self.keys.key("gate", "rejected")
        pipe = self._r.pipeline(transaction=True)
        pipe.lpush(k, orjson.dumps(gate))
        pipe.ltrim(k, 0, limit - 1)
        pipe.execute()

    def rejections(self, limit: int = 20) -> list[dict[str, Any]]:
        """Gate decisions of candidates the retrainer did not promote, newest first."""
        raw: Any = self._r.lrange(self.keys.key("gate", "rejected"), 0, limit - 1)
        out = []
        for line in raw:
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue
        return out

    # ---- change notices --------------------------------------------------------------------------
    def subscribe(self) -> Any:
        """A pub/sub subscription to the change-notice channel (``get_message``, ``close``)."""
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call,unused-ignore]
        pubsub.subscribe(self.keys.events_channel)
        return pubsub
