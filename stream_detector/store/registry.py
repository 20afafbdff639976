"""The model registry: artifacts, the version index, the activation stack, promote / rollback.

The artifact is written first, then the index entry; activation is the threshold store's
atomic flip, so a reader never sees an active version whose bytes are not there yet. Every
fetch checks each file's sha256 and, with a verify key, the signature, before anything
deserialises the TorchScript.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import redis

from ..errors import ConfigError, ModelError, NoActiveModel
from ..model.artifacts import ArtifactStore, RedisArtifacts, delete_artifact, resolve_files
from ..model.bundle import CALIBRATION_FILE, METADATA_FILE, Bundle, bundle_from_files
from ..model.registry import check_compatible, retention_victims, rollback_target
from ..model.signing import SIGNATURE_FIELD, Signer, Verifier
from .base import Keys, text
from .thresholds import ThresholdStore


class BundleReader:
    """Read side of the registry (what a worker needs): the active version and verified bundles.
    Raises ``NoActiveModel`` for an unknown version, ``ModelError`` for an altered or unsigned one."""

    def __init__(self, client: redis.Redis, keys: Keys, verifier: Verifier | None = None) -> None:
        self._r = client
        self.keys = keys
        self.verifier = verifier

    def active_model(self) -> str | None:
        value: Any = self._r.get(self.keys.key("model", "active"))
        return text(value) if value else None

    def fetch_bundle(self, version: str) -> Bundle:
        files: Any = self._r.hgetall(self.keys.key("model", version))
        if not files:
            raise NoActiveModel(f"model {version} is not in the registry")
        fields: dict[str, bytes] = {text(k): v for k, v in files.items()}
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


class ModelRegistry(BundleReader):
    """The whole registry: store, activate, roll back, inspect, prune (CLI, console, retrainer)."""

    def __init__(self, client: redis.Redis, keys: Keys, thresholds: ThresholdStore,
                 artifacts: ArtifactStore | None = None, signer: Signer | None = None,
                 verifier: Verifier | None = None) -> None:
        super().__init__(client, keys, verifier)
        self.thresholds = thresholds
        self.artifacts: ArtifactStore = artifacts or RedisArtifacts()
        self.signer = signer

    def versions(self) -> list[str]:
        """Stored versions, oldest first."""
        versions: Any = self._r.zrange(self.keys.key("models"), 0, -1)
        return [text(v) for v in versions]

    def history(self) -> list[str]:
        """The activation stack, newest first."""
        return [text(v) for v in self._r.lrange(self.keys.key("model", "history"), 0, -1)]

    def has_version(self, version: str) -> bool:
        return self._r.zscore(self.keys.key("models"), version) is not None

    def previous_model(self) -> str | None:
        return rollback_target(self.history(), self.has_version)

    def store(self, bundle: Bundle, gate: dict[str, Any] | None = None) -> None:
        """Write the artifact (bytes, then index entry and gate record) without activating it."""
        k = self.keys.key
        fields = self.artifacts.put(bundle)
        if self.signer is not None:
            fields = {**fields, SIGNATURE_FIELD: self.signer.sign(bundle.version, bundle.sha256)}
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(k("model", bundle.version), mapping=fields)  # type: ignore[arg-type]
        if gate is not None:
            pipe.set(k("model", bundle.version, "gate"), orjson.dumps(gate))
        pipe.zadd(k("models"), {bundle.version: time.time()}, nx=True)  # stored again (model shadow VERSION,
        # a re-publish): its stored_at, and so its place in `model list` and in retention, stays
        pipe.execute()

    def publish(self, bundle: Bundle, set_by: str, gate: dict[str, Any] | None = None) -> int:
        """Store the artifact first, then flip active model and threshold together."""
        self.store(bundle, gate)
        return self.thresholds.set(bundle.threshold, bundle.version, set_by,
                                   note=f"publish {bundle.version}", activate_model=bundle.version,
                                   head=bundle.head_threshold)

    def activate(self, version: str, set_by: str, note: str = "") -> int:
        """Make a stored version active with its own threshold (verified before the flip)."""
        bundle = self.fetch_bundle(version)
        value, head = self.thresholds.of_version(version), self.thresholds.of_version_head(version)
        return self.thresholds.set(bundle.threshold if value is None else value, version, set_by,
                                   note=note or f"promote {version}", activate_model=version,
                                   head=bundle.head_threshold if head is None else head)

    def rollback(self, set_by: str) -> str:
        """Re-activate the previous version and its threshold: one atomic flip. Returns it."""
        history = self.history()
        target = rollback_target(history, self.has_version)
        if target is None:
            top = f" {history[0]}" if history else ""
            raise ConfigError(f"nothing to roll back to: no stored version was active before{top} (rollback "
                              "undoes activations, newest first, and a rollback is not undone by another; "
                              "`model promote VERSION` makes any stored version active)")
        bundle = self.fetch_bundle(target)
        value, head = self.thresholds.of_version(target), self.thresholds.of_version_head(target)
        self.thresholds.set(bundle.threshold if value is None else value, target, set_by,
                            note=f"rollback {history[0]} -> {target}", activate_model=target,
                            rollback_from=history[0], head=bundle.head_threshold if head is None else head)
        return target

    def info(self, version: str) -> dict[str, Any]:
        """Index entry of one version: metadata, gate decision, its threshold, where the bytes are."""
        k = self.keys.key
        pipe = self._r.pipeline(transaction=False)
        pipe.hget(k("model", version), METADATA_FILE)
        pipe.hget(k("model", version), "_location")
        pipe.get(k("model", version, "gate"))
        pipe.zscore(k("models"), version)
        pipe.hget(k("model", version), CALIBRATION_FILE)
        metadata, location, gate, created, calibration = pipe.execute()
        if metadata is None:
            raise ModelError(f"model {version} is not in the registry")
        return {"version": version, "active": version == self.active_model(),
                "stored_at": created, "store": "dir" if location else "redis",
                "location": location.decode() if location else None,
                "threshold": self.thresholds.of_version(version),  # None until the version has been active
                "head_threshold": self.thresholds.of_version_head(version),  # None: never active, or no head
                "calibrated_threshold": _calibrated(calibration, location),
                "calibrated_head_threshold": _calibrated(calibration, location, head=True),
                "metadata": orjson.loads(metadata), "gate": orjson.loads(gate) if gate else None}

    def challenger(self) -> str | None:
        value: Any = self._r.get(self.keys.key("model", "challenger"))
        return text(value) if value else None

    def attach_shadow_decision(self, version: str, record: dict[str, Any]) -> None:
        """Add a shadow period's decision to ``version``'s gate record (``model show``, the console).
        A verdict (``promoted``, ``refused``) sets whether the gate passed it; a promotion by hand
        (``by_hand``, ``model promote``) only adds its reason, leaving the gate's own verdict."""
        key = self.keys.key("model", version, "gate")
        raw: Any = self._r.get(key)
        gate = orjson.loads(raw) if raw else {}
        gate["shadow"] = record
        if record.get("by_hand"):
            gate["reasons"] = [*gate.get("reasons", []), *[f"shadow: {r}" for r in record.get("reasons", [])]]
        elif record.get("outcome") in ("promoted", "refused"):
            gate["passed"] = record["outcome"] == "promoted"
            gate.setdefault("reasons", [])
            gate["reasons"] = [*gate["reasons"], *[f"shadow: {r}" for r in record.get("reasons", [])]]
        self._r.set(key, orjson.dumps(gate))

    def delete(self, version: str) -> None:
        """Remove a version's index entry and bytes; ``ConfigError`` for the active one, the rollback
        target and the challenger in shadow."""
        if version in (self.active_model(), self.previous_model(), self.challenger()):
            raise ConfigError(f"model {version} is active, the rollback target or in shadow; it is kept")
        k = self.keys.key
        raw: Any = self._r.hgetall(k("model", version))
        fields: dict[str, bytes] = {text(key): v for key, v in raw.items()}
        pipe = self._r.pipeline(transaction=True)
        pipe.zrem(k("models"), version)
        pipe.delete(k("model", version), k("model", version, "gate"), k("model", version, "threshold"))
        pipe.lrem(k("model", "history"), 0, version)
        pipe.execute()
        delete_artifact(version, fields)

    def prune(self, keep: int) -> list[str]:
        """Delete all but the ``keep`` newest versions; the active, the previous and the challenger in
        shadow always stay."""
        protected = {v for v in (self.active_model(), self.previous_model(), self.challenger()) if v}
        victims = retention_victims(self.versions(), keep, protected)
        for version in victims:
            self.delete(version)
        return victims


def _calibrated(inline: bytes | None, location: bytes | None, head: bool = False) -> float | None:
    """The threshold a version's bundle was calibrated with (``calibration.json``, from its Redis
    hash or its directory), for display: what ``model promote`` activates for a version never
    active before; with ``head``, its supervised head's probability threshold (None without a
    head). None where the file cannot be read; the bundle's digests are checked when it is
    fetched to be used, not here."""
    raw = inline
    if raw is None and location is not None:
        try:
            raw = (Path(location.decode()) / CALIBRATION_FILE).read_bytes()
        except OSError:
            return None
    try:
        entry = orjson.loads(raw) if raw is not None else None
        if head and entry is not None:
            entry = entry.get("supervised")
        value = entry.get("threshold") if isinstance(entry, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None
