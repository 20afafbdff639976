"""The Redis control plane: active model pointer, model artifacts, versioned threshold.

Keys (all under ``SD_REDIS_PREFIX``)::

    {p}:model:{version}      hash  file name → bytes (the bundle, written first)
    {p}:models               zset  version → created epoch seconds
    {p}:model:active         str   active model version (flipped last)
    {p}:threshold            hash  value, version, model_version, set_at, set_by, note
    {p}:threshold:seq        int   last threshold version
    {p}:threshold:history    list  JSON audit lines, newest first (bounded)
    {p}:model:history        list  activation stack, newest first (rollback pops it; bounded)
    {p}:model:{version}:threshold  str  last threshold that version ran with (restored on rollback)
    {p}:model:{version}:gate       str  JSON promotion-gate decision and its numbers
    {p}:gate:rejected        list  JSON gate decisions of refused candidates, newest first (bounded)
    {p}:score-summaries      stream  per-worker score histograms (bounded), read by drift checks
    {p}:events               pub/sub channel: one JSON message per threshold / active-model change

Changes of threshold (and of the active model with its threshold) run as one Lua script, so
readers see either the old pair or the new pair, never a mix, and versions only grow. The same
script maintains the activation stack and publishes the change on ``{p}:events``, so workers
learn of it at once (they also poll, in case a message is missed).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import redis

from .errors import ConfigError, ModelError, NoActiveModel
from .model.artifacts import ArtifactStore, DirArtifacts, RedisArtifacts, delete_artifact, resolve_files
from .model.bundle import METADATA_FILE, Bundle, bundle_from_files
from .model.registry import check_compatible, retention_victims, rollback_target
from .model.signing import SIGNATURE_FIELD, Signer, Verifier
from .redis_client import redis_client

if TYPE_CHECKING:
    from .settings import Settings

HISTORY_LIMIT = 1000

_SET_THRESHOLD = """
if ARGV[10] == 'pop' and redis.call('LINDEX', KEYS[6], 0) ~= ARGV[11] then
  return redis.error_reply('STALE: the active model changed meanwhile; run the rollback again')
end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'version', version, 'model_version', ARGV[2],
           'set_at', ARGV[3], 'set_by', ARGV[4], 'note', ARGV[5])
local line = cjson.encode({value=tonumber(ARGV[1]), version=version, model_version=ARGV[2],
                           set_at=ARGV[3], set_by=ARGV[4], note=ARGV[5], old_value=ARGV[7]})
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

    def __init__(self, client: redis.Redis, prefix: str, artifacts: ArtifactStore | None = None,
                 signer: Signer | None = None, verifier: Verifier | None = None) -> None:
        self.r = client
        self.p = prefix
        self.artifacts: ArtifactStore = artifacts or RedisArtifacts()
        self.signer = signer
        self.verifier = verifier
        self._set_threshold = client.register_script(_SET_THRESHOLD)

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout_s: float = 2.0,
                 artifacts: ArtifactStore | None = None) -> ControlPlane:
        return cls(redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s), prefix,
                   artifacts)

    @classmethod
    def from_settings(cls, settings: Settings) -> ControlPlane:
        """A control plane that writes artifacts where ``SD_MODEL_STORE`` says (readers need not care)."""
        artifacts = DirArtifacts(settings.model_dir) if settings.model_store == "dir" else None
        return cls(redis_client(settings), settings.redis_prefix, artifacts,
                   Signer.from_file(settings.signing_key_file) if settings.signing_key_file else None,
                   Verifier.from_file(settings.verify_key_file) if settings.verify_key_file else None)

    @property
    def events_channel(self) -> str:
        return self.key("events")

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
        raw: Any = self.r.hgetall(self.key("threshold"))
        return _threshold(raw)

    def active_model(self) -> str | None:
        value: Any = self.r.get(self.key("model", "active"))
        return _text(value) if value else None

    def fetch_bundle(self, version: str) -> Bundle:
        files: Any = self.r.hgetall(self.key("model", version))
        if not files:
            raise NoActiveModel(f"model {version} is not in the registry")
        fields: dict[str, bytes] = {_text(k): v for k, v in files.items()}
        signature = fields.pop(SIGNATURE_FIELD, None)
        bundle = bundle_from_files(resolve_files(fields))  # sha256 of every file checked here
        if self.verifier is not None:  # before anything deserialises the TorchScript
            self.verifier.verify(bundle.version, bundle.sha256, signature)
        return check_compatible(bundle)

    def active_bundle(self) -> Bundle:
        version = self.active_model()
        if version is None:
            raise NoActiveModel("no active model: run `stream-detector publish DIR` first")
        return self.fetch_bundle(version)

    def threshold_history(self, limit: int = 20) -> list[dict[str, Any]]:
        return [orjson.loads(x) for x in self.r.lrange(self.key("threshold", "history"), 0, limit - 1)]

    def model_versions(self) -> list[str]:
        versions: Any = self.r.zrange(self.key("models"), 0, -1)
        return [_text(v) for v in versions]

    # ---- writes ----------------------------------------------------------------------------
    def set_threshold(self, value: float, model_version: str, set_by: str, note: str = "",
                      activate_model: str | None = None, _rollback_from: str | None = None) -> int:
        """Write a new threshold version (and optionally flip the active model) atomically.

        Also remembers the value as that model version's threshold, pushes an activation on the
        activation stack (or pops it for a rollback), and announces the change on ``{p}:events``.
        """
        old = self.threshold()
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            version = self._set_threshold(
                keys=[self.key("threshold"), self.key("threshold", "seq"), self.key("threshold", "history"),
                      self.key("model", "active"), self.key("model", model_version, "threshold"),
                      self.key("model", "history")],
                args=[repr(float(value)), model_version, now, set_by, note, activate_model or "",
                      "" if old is None else repr(old.value), HISTORY_LIMIT, self.events_channel,
                      "pop" if _rollback_from else "push", _rollback_from or ""],
            )
        except redis.ResponseError as exc:
            if "STALE" in str(exc):
                raise ConfigError(str(exc)) from None
            raise
        return int(version)

    def publish(self, bundle: Bundle, set_by: str, gate: dict[str, Any] | None = None) -> int:
        """Store the artifact first, then flip active model and threshold together."""
        self.store(bundle, gate)
        return self.set_threshold(bundle.threshold, bundle.version, set_by,
                                  note=f"publish {bundle.version}", activate_model=bundle.version)

    # ---- registry ----------------------------------------------------------------------------
    def store(self, bundle: Bundle, gate: dict[str, Any] | None = None) -> None:
        """Write the artifact (bytes, then index entry and gate record) without activating it."""
        fields = self.artifacts.put(bundle)
        if self.signer is not None:
            fields = {**fields, SIGNATURE_FIELD: self.signer.sign(bundle.version, bundle.sha256)}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key("model", bundle.version), mapping=fields)  # type: ignore[arg-type]
        if gate is not None:
            pipe.set(self.key("model", bundle.version, "gate"), orjson.dumps(gate))
        pipe.zadd(self.key("models"), {bundle.version: time.time()})
        pipe.execute()

    def record_rejection(self, gate: dict[str, Any], limit: int = 100) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.lpush(self.key("gate", "rejected"), orjson.dumps(gate))
        pipe.ltrim(self.key("gate", "rejected"), 0, limit - 1)
        pipe.execute()

    def model_history(self) -> list[str]:
        return [_text(v) for v in self.r.lrange(self.key("model", "history"), 0, -1)]

    def has_version(self, version: str) -> bool:
        return self.r.zscore(self.key("models"), version) is not None

    def version_threshold(self, version: str) -> float | None:
        raw = self.r.get(self.key("model", version, "threshold"))
        return float(raw) if raw is not None else None

    def previous_model(self) -> str | None:
        return rollback_target(self.model_history(), self.has_version)

    def model_info(self, version: str) -> dict[str, Any]:
        """Index entry of one version: metadata, gate decision, its threshold, where the bytes are."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hget(self.key("model", version), METADATA_FILE)
        pipe.hget(self.key("model", version), "_location")
        pipe.get(self.key("model", version, "gate"))
        pipe.zscore(self.key("models"), version)
        metadata, location, gate, created = pipe.execute()
        if metadata is None:
            raise ModelError(f"model {version} is not in the registry")
        threshold = self.version_threshold(version)
        return {"version": version, "active": version == self.active_model(),
                "stored_at": created, "store": "dir" if location else "redis",
                "location": location.decode() if location else None,
                "threshold": threshold,  # None until the version has been active
                "metadata": orjson.loads(metadata), "gate": orjson.loads(gate) if gate else None}

    def activate(self, version: str, set_by: str, note: str = "") -> int:
        """Make a stored version active with its own threshold (verified before the flip)."""
        bundle = self.fetch_bundle(version)
        value = self.version_threshold(version)
        return self.set_threshold(bundle.threshold if value is None else value, version, set_by,
                                  note=note or f"promote {version}", activate_model=version)

    def rollback(self, set_by: str) -> str:
        """Re-activate the previous version and its threshold: one atomic flip. Returns it."""
        history = self.model_history()
        target = rollback_target(history, self.has_version)
        if target is None:
            raise ConfigError("nothing to roll back to: no earlier activated version is stored")
        bundle = self.fetch_bundle(target)
        value = self.version_threshold(target)
        self.set_threshold(bundle.threshold if value is None else value, target, set_by,
                           note=f"rollback {history[0]} -> {target}", activate_model=target,
                           _rollback_from=history[0])
        return target

    def delete_version(self, version: str) -> None:
        if version in (self.active_model(), self.previous_model()):
            raise ConfigError(f"model {version} is active or the rollback target; it is kept")
        raw: Any = self.r.hgetall(self.key("model", version))
        fields: dict[str, bytes] = {_text(k): v for k, v in raw.items()}
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.key("models"), version)
        pipe.delete(self.key("model", version), self.key("model", version, "gate"),
                    self.key("model", version, "threshold"))
        pipe.lrem(self.key("model", "history"), 0, version)
        pipe.execute()
        delete_artifact(version, fields)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions; the active and the previous always stay."""
        protected = {v for v in (self.active_model(), self.previous_model()) if v}
        victims = retention_victims(self.model_versions(), keep, protected)
        for version in victims:
            self.delete_version(version)
        return victims

    # ---- score summaries (drift) -------------------------------------------------------------
    def add_score_summary(self, fields: dict[str, str], maxlen: int) -> None:
        self.r.xadd(self.key("score-summaries"), fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]

    def score_summaries(self, after: str = "-", count: int = 10_000) -> list[tuple[str, dict[str, str]]]:
        """Summaries newer than id ``after`` (exclusive), oldest first."""
        start = "-" if after == "-" else f"({after}"
        entries: Any = self.r.xrange(self.key("score-summaries"), start, "+", count=count)
        return [(_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in entries]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _threshold(raw: dict[bytes, bytes]) -> Threshold | None:
    if not raw:
        return None
    return Threshold(float(raw[b"value"]), int(raw[b"version"]), raw[b"model_version"].decode())
