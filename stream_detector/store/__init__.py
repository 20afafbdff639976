"""The Redis control plane, split by who uses it: thresholds, the model registry, telemetry.

* ``thresholds.ThresholdStore`` — the versioned threshold and the atomic threshold/active-model
  flip (one Lua script), its audit history;
* ``registry.ModelRegistry`` — artifacts, index, activation stack, promote / rollback / prune,
  signing and verification;
* ``telemetry.Telemetry`` — score summaries (drift), the console's score feed, gate refusals,
  the change-notice channel;
* ``ControlPlane`` — the operator's API (CLI, console, retrainer, tests): the three together;
* ``WorkerView`` — what a worker may do: read the snapshot and bundles, write telemetry, hold
  its entity state. No module outside ``store/`` touches a raw Redis handle.

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

from .base import HISTORY_LIMIT, Keys, Snapshot, Threshold
from .control import ControlPlane, WorkerView
from .registry import ModelRegistry
from .telemetry import Telemetry
from .thresholds import ThresholdStore
from .view import ControlView, TelemetrySink

__all__ = ["HISTORY_LIMIT", "ControlPlane", "ControlView", "Keys", "ModelRegistry", "Snapshot", "Telemetry",
           "TelemetrySink", "Threshold", "ThresholdStore", "WorkerView"]
