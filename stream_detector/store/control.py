"""``ControlPlane`` (the operator's API) and ``WorkerView`` (what a worker may touch).

No network I/O in constructors. Reads and writes raise ``redis.RedisError`` / ``OSError`` when
Redis is unreachable; registry reads raise ``NoActiveModel`` / ``ModelError`` as documented there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis
from redis.cluster import RedisCluster

from ..entity.labels import RedisLabels
from ..entity.replay_log import RedisFeatureLog
from ..entity.state import RedisClusterState, RedisState, StateStore
from ..errors import ConfigError
from ..model.artifacts import ArtifactStore, DirArtifacts
from ..model.bundle import Bundle
from ..model.registry import shadow_incompatibility
from ..model.signing import Signer, Verifier
from ..redis_client import entity_cluster_client, redis_client
from .base import Keys, Snapshot, Threshold
from .registry import BundleReader, ModelRegistry
from .shadow import ShadowStore
from .telemetry import Telemetry
from .thresholds import KEEP, ThresholdStore
from .watermarks import RedisWatermarks

if TYPE_CHECKING:
    from ..settings import Settings


class WorkerView:
    """A worker's read-only view of the control plane (it never writes a threshold or a model):
    snapshots, verified bundles, telemetry writes, change notices, and its entity state store."""

    def __init__(self, client: redis.Redis, prefix: str, verifier: Verifier | None = None,
                 entity_cluster: Callable[[], RedisCluster] | None = None) -> None:
        self._r = client
        self._entity_cluster = entity_cluster
        self.keys = Keys(prefix)
        self._thresholds = ThresholdStore(client, self.keys)
        self._bundles = BundleReader(client, self.keys, verifier)
        self.telemetry = Telemetry(client, self.keys)

    def snapshot(self) -> Snapshot:
        return self._thresholds.snapshot()

    def fetch_bundle(self, version: str) -> Bundle:
        return self._bundles.fetch_bundle(version)

    def active_bundle(self) -> Bundle:
        return self._bundles.active_bundle()

    def watermarks(self, group: str, topic: str, grace_ms: int, stale_ms: int, partitions: int) -> RedisWatermarks:
        """The consumer group's shared event-time watermarks (``store/watermarks.py``)."""
        return RedisWatermarks(self._r, self.keys.prefix, group, topic, grace_ms, stale_ms, partitions)

    def label_store(self) -> RedisLabels:
        """The feedback labels attached to entities (``entity/labels.py``), beside the control plane."""
        return RedisLabels(self._r, self.keys.prefix)

    def replay_log(self, topic: str, store: StateStore) -> RedisFeatureLog:
        """The replay log of ``topic``'s partitions (``entity/replay_log.py``), where ``store`` (this
        view's ``entity_state``) keeps its records: beside them, on the cluster when there is one."""
        assert isinstance(store, RedisState)
        return RedisFeatureLog(store.client, self.keys.prefix, topic)

    def entity_state(self, copies: int = 0) -> StateStore:
        """The per-entity history store of this prefix (``entity/state.py``): on the Redis Cluster
        of ``SD_ENTITY_REDIS_CLUSTER`` when one is configured, else beside the control plane;
        ``copies``: how many of the records it wrote the store keeps in memory (``SD_ENTITY_COPIES``)."""
        if self._entity_cluster is not None:
            return RedisClusterState(self._entity_cluster, self.keys.prefix, copies)
        return RedisState(self._r, self.keys.prefix, copies)


class ControlPlane:
    """Thresholds, registry and telemetry of one ``SD_REDIS_PREFIX`` (CLI, console, retrainer).

    The parts are ``thresholds``, ``registry`` and ``telemetry``; the methods below are the
    operator's verbs, each one call into a part.
    """

    def __init__(self, client: redis.Redis, prefix: str, artifacts: ArtifactStore | None = None,
                 signer: Signer | None = None, verifier: Verifier | None = None,
                 entity_cluster: Callable[[], RedisCluster] | None = None) -> None:
        self._r = client
        self._entity_cluster = entity_cluster  # connects on the entity store's first use
        self.keys = Keys(prefix)
        self.thresholds = ThresholdStore(client, self.keys)
        self.registry = ModelRegistry(client, self.keys, self.thresholds, artifacts, signer, verifier)
        self.telemetry = Telemetry(client, self.keys)
        self.shadow = ShadowStore(client, self.keys)

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
                   Verifier.from_file(settings.verify_key_file) if settings.verify_key_file else None,
                   (lambda: entity_cluster_client(settings)) if settings.entity_redis_cluster else None)

    def worker_view(self) -> WorkerView:
        """The same Redis and prefix, read-only for thresholds and models."""
        return WorkerView(self._r, self.keys.prefix, self.registry.verifier, self._entity_cluster)

    def ping(self) -> None:
        """Raises ``redis.RedisError`` / ``OSError`` when Redis cannot be reached."""
        self._r.ping()

    @property
    def artifacts(self) -> ArtifactStore:
        return self.registry.artifacts

    @property
    def events_channel(self) -> str:
        return self.keys.events_channel

    def key(self, *parts: str) -> str:
        return self.keys.key(*parts)

    # ---- thresholds --------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return self.thresholds.snapshot()

    def threshold(self) -> Threshold | None:
        return self.thresholds.current()

    def threshold_history(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.thresholds.history(limit)

    def version_threshold(self, version: str) -> float | None:
        return self.thresholds.of_version(version)

    def set_threshold(self, value: float, model_version: str, set_by: str, note: str = "",
                      activate_model: str | None = None, head: float | None | object = KEEP) -> int:
        """A new threshold version; ``head``: the supervised head's threshold (``KEEP``: unchanged)."""
        return self.thresholds.set(value, model_version, set_by, note, activate_model, head=head)

    # ---- registry ----------------------------------------------------------------------------
    def active_model(self) -> str | None:
        return self.registry.active_model()

    def fetch_bundle(self, version: str) -> Bundle:
        return self.registry.fetch_bundle(version)

    def active_bundle(self) -> Bundle:
        return self.registry.active_bundle()

    def model_versions(self) -> list[str]:
        return self.registry.versions()

    def model_history(self) -> list[str]:
        return self.registry.history()

    def has_version(self, version: str) -> bool:
        return self.registry.has_version(version)

    def previous_model(self) -> str | None:
        return self.registry.previous_model()

    def model_info(self, version: str) -> dict[str, Any]:
        return self.registry.info(version)

    def store(self, bundle: Bundle, gate: dict[str, Any] | None = None) -> None:
        self.registry.store(bundle, gate)

    def publish(self, bundle: Bundle, set_by: str, gate: dict[str, Any] | None = None) -> int:
        seq = self.registry.publish(bundle, set_by, gate)
        self._activated(bundle.version, set_by, "publish")
        return seq

    def activate(self, version: str, set_by: str, note: str = "") -> int:
        seq = self.registry.activate(version, set_by, note)
        self._activated(version, set_by, "promote")
        return seq

    def rollback(self, set_by: str) -> str:
        target = self.registry.rollback(set_by)
        self._activated(target, set_by, "rollback")
        return target

    def _activated(self, version: str, set_by: str, how: str) -> None:
        """A shadow period is measured against the model that was active when it began: when the
        challenger itself becomes active (promote, rollback into it) the period ends as
        ``promoted``; when another model does, it ends as ``stopped`` (its figures would mix two
        champions)."""
        challenger = self.shadow.challenger()
        if challenger is None or self.shadow.figures(challenger) is None:
            return
        if challenger == version:
            record = self.shadow.end(challenger, "promoted", {"reasons": [f"made active by {how}"]}, set_by)
        else:
            record = self.shadow.end(challenger, "stopped", {"reasons": [
                f"the active model changed to {version} ({how}): the period's figures were measured against "
                "the previous one"]}, set_by)
        self.registry.attach_shadow_decision(challenger, record)

    def delete_version(self, version: str) -> None:
        self.registry.delete(version)

    def prune(self, keep: int) -> list[str]:
        return self.registry.prune(keep)

    # ---- a challenger in shadow (store/shadow.py, docs/retraining.md) ---------------------------
    def challenger(self) -> str | None:
        return self.shadow.challenger()

    def start_shadow(self, bundle: Bundle, set_by: str, min_events: int, max_seconds: float,
                     gate: dict[str, Any] | None = None, note: str = "", replace: bool = False) -> str | None:
        """Store ``bundle`` (not active) and make it the challenger in shadow with fresh figures.
        Raises ``ConfigError`` without an active model, for the active model itself, for a bundle
        the workers could not shadow-score (``shadow_incompatibility``), for limits out of range,
        and while a challenger is in shadow unless ``replace`` (its period then ends as
        ``replaced``; returned)."""
        if min_events < 1 or not max_seconds > 0:
            raise ConfigError(f"a shadow period needs min events >= 1 and max seconds > 0 (got {min_events}, "
                              f"{max_seconds})")
        active = self.active_model()
        if active is None:
            raise ConfigError("no active model: a challenger is scored beside one (publish a model first)")
        if bundle.version == active:
            raise ConfigError(f"model {bundle.version} is the active model: it cannot be its own challenger")
        problem = shadow_incompatibility(self.registry.fetch_bundle(active), bundle)
        if problem:
            raise ConfigError(f"model {bundle.version} cannot be shadow-scored beside {active}: {problem}")
        current = self.shadow.challenger()
        figures = self.shadow.figures(current) if current else None
        if figures is not None and not replace:
            same = "it is" if current == bundle.version else f"model {current} is"
            raise ConfigError(f"{same} already in shadow ({figures['events']} events scored): "
                              "`model shadow-stop` first, or --replace to end that period")
        if figures is not None and current is not None:
            self.shadow.end(current, "replaced", {"reasons": [f"replaced by {bundle.version}"]}, set_by)
        self.registry.store(bundle, gate)
        self.shadow.start(bundle.version, bundle.threshold, bundle.head_threshold, set_by, min_events,
                          max_seconds, note)
        return current if figures is not None else None

    def shadow_figures(self, version: str | None = None) -> dict[str, Any] | None:
        return self.shadow.figures(version)

    def end_shadow(self, outcome: str, decision: dict[str, Any], set_by: str) -> dict[str, Any]:
        """End the current challenger's period; ``outcome`` ``promoted`` activates it first (the
        registry's atomic flip, its own thresholds), ``refused`` / ``stopped`` leave the champion.
        Returns the decision record; ``ConfigError`` without a challenger."""
        version = self.shadow.challenger()
        if version is None:
            raise ConfigError("no challenger in shadow")
        if outcome == "promoted":  # the registry's flip itself: the period ends here, not in _activated
            reasons = "; ".join(decision.get("reasons") or []) or "every rule of the shadow gate passed"
            self.registry.activate(version, set_by, note=f"promoted from shadow: {reasons}")
        record = self.shadow.end(version, outcome, decision, set_by)
        self.registry.attach_shadow_decision(version, record)  # model show / list: the evidence it was decided on
        return record

    def shadow_decisions(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.shadow.decisions(limit)

    # ---- telemetry ---------------------------------------------------------------------------
    def record_rejection(self, gate: dict[str, Any], limit: int = 100) -> None:
        self.telemetry.record_rejection(gate, limit)

    def add_score_summary(self, fields: dict[str, str], maxlen: int) -> None:
        self.telemetry.add_score_summary(fields, maxlen)

    def score_summaries(self, after: str = "-", count: int = 10_000) -> list[tuple[str, dict[str, str]]]:
        return self.telemetry.score_summaries(after, count)
