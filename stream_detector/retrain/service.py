"""The retrainer service: ingest → (schedule | drift | label volume | on demand) → train → gate → publish → prune.

Kafka inputs:

* the input topic, in its own consumer group (``SD_RETRAIN_GROUP_ID``): valid events go into the
  bounded ``TrainingWindow``. Run one retrainer per deployment: a second member of the group
  would see only part of the traffic.
* the alerts and feedback topics, read by a group-less consumer from ``now - window`` (so a
  restart relearns the exclusions that matter for the window) into ``Exclusions``.

Before each training run the side topics are read to their end and the worker group's committed
input offsets are fetched: only events the workers have decided *and* whose alerts are therefore
already in the alerts topic (alerts are acknowledged before offsets move) are trained on.

A candidate that passes the gate is published (artifact first, pointer last, through
``ControlPlane.publish``) with its gate record, then old versions are pruned (``SD_MODEL_KEEP``);
a refused candidate is stored too, with its gate record, but not activated (``model show`` says why;
an operator may still `model promote` it), and its decision goes to ``{p}:gate:rejected``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from redis import RedisError

from ..checks import spool_problem
from ..errors import ConfigError, ModelError, StreamDetectorError
from ..feedback import Label, Verdicts
from ..kafka_util import committed_offsets, partitions_of
from ..label_ingest import read_label
from ..model.bundle import Bundle
from ..model.reference import reference_bins
from ..pipeline.decode import decode_batch
from ..schema import RejectReason
from ..settings import Settings
from ..stopping import Stopping, check
from ..store import ControlPlane
from ..topics import ensure_topics
from ..transport.factory import transport_config
from ..transport.kafka_python import consumer_config, poll_readable
from .drift import DriftReport, summarize
from .gate import GatePolicy, decide_shadow, shadow_outcomes
from .history import read_history, read_shadow, remove_stale_spools
from .job import build_candidate
from .metrics import RetrainerMetrics
from .window import Exclusions, TrainingWindow, WindowEntry

log = logging.getLogger("stream_detector.retrain")
Progress = Callable[[str], None]
T = TypeVar("T")


@dataclass
class RetrainOutcome:
    status: str  # promoted | rejected | skipped | shadow (a challenger in shadow: started or kept)
    message: str
    version: str | None = None
    gate: dict[str, Any] | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    pruned: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """``retrain --once``'s report: ``counts`` once (the gate's record holds the same, as ``model
        show`` gives it; trial M: printed twice)."""
        gate = self.gate if self.gate is None or self.gate.get("counts") is not self.counts else {
            k: v for k, v in self.gate.items() if k != "counts"}
        return {"status": self.status, "message": self.message, "version": self.version,
                "gate": gate, "counts": self.counts, "pruned": self.pruned}


class Retrainer:
    """Explicit ``start``/``close``; no network I/O in the constructor."""

    def __init__(self, settings: Settings, control: ControlPlane | None = None,
                 progress: Progress | None = None, stopping: Stopping | None = None) -> None:
        """``stopping`` (``retrain --once``): a signal is raised between two Kafka client calls, and
        at once while a candidate trains (``stream_detector/stopping.py``)."""
        self.settings = settings
        self.stopping = stopping
        self.control = control or ControlPlane.from_settings(settings)
        self.progress = progress or log.info
        self.window = TrainingWindow(settings.retrain_window_events, settings.retrain_window_seconds)
        self.exclusions = Exclusions(settings.retrain_exclude_max)
        self._refused: set[RejectReason] = set()  # feedback refusal reasons already logged
        self._left_out: set[RejectReason] = set()  # input rejection reasons already logged
        self._decided: dict[int, int] = {}  # the worker group's committed offsets, as the last run read them
        self.input_rejected: Counter[str] = Counter()  # input events left out of the window since start, by reason
        self.stop_event = threading.Event()
        self.input: KafkaConsumer | None = None
        self.side: KafkaConsumer | None = None
        self._drift_cursor = "-"
        self._drift_counts: list[dict[str, str]] = []
        self._active: Bundle | None = None  # the active bundle, fetched once per version
        self.new_frauds = 0  # events whose verdict became fraud since the last run (SD_RETRAIN_ON_FRAUDS)
        # labels published before this process started are relearned, not new: they do not count
        self._new_since_ms = time.time() * 1000.0
        self._last_commit = time.monotonic()
        self.metrics = RetrainerMetrics()

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        problem = spool_problem(s.retrain_spool_dir)  # before anything is read: fail at once, not at the first run
        if problem is not None:
            raise ConfigError(problem)
        removed = remove_stale_spools(Path(s.retrain_spool_dir or tempfile.gettempdir()))
        if removed:
            log.warning("removed %d history spool(s) left by retraining runs that did not finish: %s",
                        len(removed), ", ".join(str(p) for p in removed))
        if s.metrics_port and self.metrics.port == 0:
            self.metrics.serve(s.metrics_port, s.metrics_addr)
        if s.create_topics:
            ensure_topics(s, [s.input_topic, s.alerts_topic, s.feedback_topic])
        self.input = KafkaConsumer(**consumer_config(
            transport_config(s), group_id=s.retrainer_group, client_id=f"stream-detector-retrainer-{s.group_id}",
            max_poll_records=5000, max_poll_interval_ms=1_800_000))
        try:  # the topic's partitions known before joining (a fresh topic: the assignor found none, and warned)
            partitions_of(self.input, s.input_topic, timeout_s=10.0)
        except TimeoutError:
            log.warning("input topic %s: no partitions known after 10 s; the retrainer subscribes anyway",
                        s.input_topic)
        self.input.subscribe([s.input_topic])
        self.side = KafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False,
                                  isolation_level="read_committed", client_id="stream-detector-retrainer-side",
                                  **s.kafka_security())
        tps = [TopicPartition(t, p) for t in (s.alerts_topic, s.feedback_topic) for p in self._partitions(t)]
        self.side.assign(tps)
        since_ms = int((time.time() - s.retrain_window_seconds) * 1000)
        for tp, found in self.side.offsets_for_times({tp: since_ms for tp in tps}).items():
            if found is None:
                self.side.seek_to_end(tp)
            else:
                self.side.seek(tp, found.offset)
        self.metrics.ready = True

    def close(self, commit: bool = True) -> None:
        """Stop; with ``commit`` the window consumer's position is saved (a failed ``--once`` run
        leaves it where it was, so the next run reads the same events again)."""
        if self.input is not None:
            if commit:
                self._commit(force=True)
            self.input.close(autocommit=False)
            self.input = None
        if self.side is not None:
            self.side.close(autocommit=False)
            self.side = None
        self.metrics.ready = False
        self.metrics.close()

    def stop(self) -> None:
        self.stop_event.set()

    # ---- modes -----------------------------------------------------------------------------------
    def run_once(self, timeout_s: float = 120.0) -> RetrainOutcome:
        """``retrain --once``: with a challenger in shadow, decide it (``judge_shadow``); else
        consume what is in the topics now, train, gate, publish (or start a shadow period)."""
        judged = self.judge_shadow(timeout_s)
        if judged is not None:
            return judged
        self.start()
        done = False
        try:
            self.catch_up(timeout_s)
            outcome = self.retrain("on demand")
            done = True
            return outcome
        finally:
            # the window dies with this run: a skipped run commits nothing (its events, too few yet,
            # count towards the next run), and no run commits what the workers have not decided yet
            if done and outcome.status != "skipped" and self.input is not None:
                self._commit_decided()
            self.close(commit=False)

    def _commit_decided(self) -> None:
        """Commit the window consumer's position, but on each partition no further than the worker
        group's committed offset as the run read it (``_decided``): the events a ``--once`` run left
        out as undecided are read again by the next run instead of being skipped for good."""
        from kafka.structs import OffsetAndMetadata

        assert self.input is not None
        offsets = {}
        for tp in self.input.assignment():
            position = self.input.position(tp)
            cap = self._decided.get(tp.partition)
            if cap is None:
                continue  # the workers committed nothing here: nothing of it is decided
            offsets[tp] = OffsetAndMetadata(min(position, cap), "", -1)
        if not offsets:
            return
        try:
            self.input.commit(offsets)
        except KafkaError as exc:
            log.warning("retrainer offset commit failed: %s", exc)

    def run(self) -> None:
        """Service mode until ``stop()``: retrain on schedule and when drift passes the bound."""
        s = self.settings
        self.start()
        try:
            next_train = time.monotonic() + s.retrain_interval_s
            next_drift = time.monotonic() + s.drift_check_interval_s
            while not self.stop_event.is_set():
                self.ingest(500)
                now = time.monotonic()
                reason = None
                if now >= next_drift:
                    next_drift = now + s.drift_check_interval_s
                    judged = self._survive(self.judge_shadow)
                    if judged is not None and judged.status == "shadow":
                        continue  # a challenger in shadow: no new candidate until it is decided
                    report = self._survive(self.check_drift)
                    if report is not None and report.exceeds(s.drift_psi_bound):
                        reason = f"drift: psi {report.psi:.3f} > {s.drift_psi_bound} on {report.events} scores"
                if reason is None and s.retrain_on_frauds and self.new_frauds >= s.retrain_on_frauds:
                    reason = f"labels: {self.new_frauds} new confirmed frauds (SD_RETRAIN_ON_FRAUDS)"
                if reason is None and now >= next_train:
                    reason = "schedule"
                if reason is not None:
                    self._survive(functools.partial(self.retrain, reason))
                    next_train = time.monotonic() + s.retrain_interval_s
        finally:
            self.close()

    # ---- steps -----------------------------------------------------------------------------------
    def ingest(self, timeout_ms: int) -> int:
        """One poll of the input topic into the window, and of alerts/feedback into exclusions."""
        added = 0
        polled = poll_readable(self._input(), timeout_ms, 5000)  # an unreadable record: no stall
        # typed by the active model's field schema, as a worker decodes: what a worker dead-letters
        # (a text amount, an implausible timestamp) never enters the window
        active = self._active_bundle() if polled else None
        schema = active.schema if active is not None else None
        for records in polled.values():
            decoded = decode_batch([r.value for r in records], self.settings.max_event_bytes, schema=schema)
            entries = [WindowEntry(records[i].timestamp / 1000.0, records[i].partition, records[i].offset,
                                   str(event["event_id"]), records[i].value)
                       for event, i in zip(decoded.events, decoded.indices, strict=True)]
            self.window.add(entries)
            added += len(entries)
            for rejected in decoded.rejected:  # counted, and logged once per reason (the workers dead-letter them)
                if rejected.reason not in self._left_out:
                    self._left_out.add(rejected.reason)
                    log.warning("input event left out of the training window (%s): %s; further ones are only "
                                "counted: counts.input_rejected_since_start in the gate record and the --once "
                                "report, metric stream_detector_retrain_input_rejected",
                                rejected.reason.value, rejected.message)
                self.metrics.input_rejected.labels(rejected.reason.value).inc()
                self.input_rejected[rejected.reason.value] += 1
        self._read_side(0)
        self.metrics.ingested.inc(added)
        self.metrics.window.set(len(self.window))
        self.metrics.excluded.set(len(self.exclusions.alerted) + len(self.exclusions.labels))
        self._commit()
        return added

    def catch_up(self, timeout_s: float) -> None:
        """Ingest until the input and side topics are read to their end offsets as of now."""
        consumer = self._input()
        ends = consumer.end_offsets([TopicPartition(self.settings.input_topic, p)
                                     for p in self._partitions(self.settings.input_topic)])
        deadline = time.monotonic() + timeout_s
        while True:
            check(self.stopping)
            self.ingest(200)
            assigned = consumer.assignment()
            if (assigned or not any(ends.values())) and all(
                    consumer.position(tp) >= end for tp, end in ends.items() if tp in assigned):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"retrainer could not read {self.settings.input_topic} to its end "
                                   f"within {timeout_s}s")
        self._read_side(timeout_s)

    def _live_threshold_note(self, active: Bundle | None, candidate: Bundle) -> str:
        """A note when the live threshold is not the active model's calibrated one (an operator's
        ``threshold set``): the promotion replaces it with the candidate's, and the window was
        decided at it. A trial raised it to 7.0 (calibrated 5.004) and then to 1e6; each next
        promotion put a calibrated threshold back, and nothing said so."""
        live = self.control.threshold()
        if active is None or live is None or live.model_version != active.version:
            return ""
        if math.isclose(live.value, active.threshold, rel_tol=1e-6) and (
                live.head is None or active.head_threshold is None
                or math.isclose(live.head, active.head_threshold, rel_tol=1e-6)):
            return ""
        history = self.control.threshold_history(1)
        who = history[0] if history else {}
        set_by = f" by {who.get('set_by')}" + (f" ({who.get('note')!r})" if who.get("note") else "") if who else ""
        raised = live.value > active.threshold
        effect = ("fewer alerts: events its calibrated threshold would have alerted were trained on as clean" if raised
                  else "more alerts: more events were left out of training")
        return (f"the live threshold {live.value:g} (version {live.version}, set{set_by}) is not the active model "
                f"{active.version}'s calibrated {active.threshold:g}: the window was decided at it ({effect}); "
                f"promoting {candidate.version} sets its calibrated {candidate.threshold:g} in its place (threshold "
                "set after the promotion to adjust it again)")

    def retrain(self, reason: str) -> RetrainOutcome:
        """Train on the clean, decided part of the window; publish if the gate passes."""
        started = time.monotonic()
        self.new_frauds = 0  # counted afresh from this run on, whatever triggered it
        try:
            outcome = self._retrain(reason)
        except Exception:
            self.metrics.run_finished("failed", time.monotonic() - started)
            raise
        self.metrics.run_finished(outcome.status, time.monotonic() - started)
        return outcome

    def _retrain(self, reason: str) -> RetrainOutcome:
        s = self.settings
        self._read_side(60.0)
        decided = {tp.partition: off for tp, off in committed_offsets(s, s.group_id, s.input_topic).items()}
        self._decided = decided
        selection = self.window.select(self.exclusions, decided, s.retrain_label_delay_s)
        active = self._active_bundle()
        history = None
        if active is not None and active.entity is not None and (selection.clean or selection.labelled):
            # the entity features need each entity's events over the spec's horizon before the
            # window, and every label: read from the topics by time (retrain/history.py)
            spec = active.entity
            oldest_s = min(e.timestamp_s for e in [*selection.clean, *(e for e, _ in selection.labelled)])
            lookback_ms = spec.horizon_ms + (spec.label_within_s * 1000 if spec.label_keys else 0)
            history = read_history(s, int(oldest_s * 1000) - lookback_ms, decided, progress=self.progress,
                                   stop=functools.partial(check, self.stopping),
                                   schema=active.schema)
            self.metrics.history_events.set(len(history))
        try:
            with self.stopping.immediate() if self.stopping is not None else contextlib.nullcontext():
                candidate = build_candidate(selection, s, active, reason, self.progress, history=history)
        finally:
            if history is not None:
                history.close()  # the spool goes with the run
        # what the window never took (a worker dead-letters it), since this retrainer started
        candidate.counts["input_rejected_since_start"] = dict(sorted(self.input_rejected.items()))
        if candidate.bundle is None or candidate.decision is None:
            log.warning("retraining (%s) skipped: %s", reason, candidate.message)
            return RetrainOutcome("skipped", candidate.message, counts=candidate.counts)
        bundle = candidate.bundle
        said = self._live_threshold_note(active, bundle)
        if said:
            candidate.decision.policy["notes"].append(said)
            log.warning("%s", said)
        record = {**candidate.decision.to_dict(), "version": bundle.version, "reason": reason,
                  "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "counts": candidate.counts}
        if not candidate.decision.passed:
            # kept, not activated: `model show` has why, and an operator may
            # still `model promote` it (as a challenger refused in shadow is kept)
            self.control.store(bundle, gate=record)
            self.control.record_rejection(record)
            pruned = self.control.prune(s.model_keep)
            log.warning("candidate %s refused by the gate (%s): %s; stored, not active (the whole record: "
                        "stream-detector model show %s)", bundle.version, reason, candidate.decision.summary(),
                        bundle.version)
            log.debug("candidate %s: gate record %s", bundle.version, orjson.dumps(record).decode())
            return RetrainOutcome("rejected", candidate.message, bundle.version, record, candidate.counts, pruned)
        if s.retrain_shadow_events:  # first a challenger on live traffic (docs/retraining.md)
            if s.create_topics:
                ensure_topics(s, [s.shadow_topic])
            self.control.start_shadow(bundle, f"retrainer@{socket.gethostname()}", s.retrain_shadow_events,
                                      s.retrain_shadow_max_seconds, gate=record, note=reason)
            log.info("candidate %s passed the gate (%s): in shadow until %d events are scored (at most %.0fs)",
                     bundle.version, reason, s.retrain_shadow_events, s.retrain_shadow_max_seconds)
            return RetrainOutcome("shadow", f"offline gate passed: the challenger in shadow until "
                                  f"{s.retrain_shadow_events} events are scored (the shadow gate decides then)",
                                  bundle.version, record, candidate.counts)
        self.control.publish(bundle, set_by=f"retrainer@{socket.gethostname()}", gate=record)
        pruned = self.control.prune(s.model_keep)
        log.info("candidate %s promoted (%s; older versions pruned: %s): gate passed: %s (the whole record: "
                 "stream-detector model show %s)", bundle.version, reason, ", ".join(pruned) or "none",
                 candidate.decision.summary(), bundle.version)
        log.debug("candidate %s: gate record %s", bundle.version, orjson.dumps(record).decode())
        return RetrainOutcome("promoted", f"gate passed: {candidate.decision.summary()}", bundle.version, record,
                              candidate.counts, pruned)

    def judge_shadow(self, timeout_s: float = 120.0) -> RetrainOutcome | None:
        """Decide the challenger in shadow, if there is one (``gate.decide_shadow``): promoted (the
        registry's activation flip, then the period ends), refused (the champion stays), or kept in
        shadow (``extended``). Every decision but an extension is recorded in
        ``{p}:shadow:decisions``; None without a challenger."""
        s = self.settings
        version = self.control.challenger()
        figures = self.control.shadow_figures(version) if version else None
        if version is None or figures is None:
            return None
        if version == self.control.active_model():  # activated outside the shadow path: nothing to judge
            record = self.control.shadow.end(version, "stopped", {"reasons": ["the challenger is the active model"]},
                                             f"retrainer@{socket.gethostname()}")
            return RetrainOutcome("skipped", "the challenger is the active model: its period ended", version, record)
        records, labels = read_shadow(s, version, int(figures["started_at"] * 1000), timeout_s,
                                      stop=functools.partial(check, self.stopping))
        verdicts = Verdicts(labels)
        outcomes = shadow_outcomes(records, lambda event_id: verdicts.verdict(event_id))
        policy = GatePolicy(s.retrain_target_fpr, s.gate_max_alert_rate_ratio, s.gate_recall_tolerance,
                            s.gate_min_labels, parts=2 if figures["head_threshold"] is not None else 1)
        decision = decide_shadow(figures, outcomes, policy, figures["min_events"], figures["max_seconds"])
        self.metrics.shadow_decided(decision.outcome)
        if decision.outcome == "extended":
            self.control.shadow.note_judgement(version, decision.to_dict())
            log.info("challenger %s stays in shadow: %s", version, "; ".join(decision.reasons))
            return RetrainOutcome("shadow", "; ".join(decision.reasons), version, decision.to_dict())
        record = self.control.end_shadow(decision.outcome, decision.to_dict(), f"retrainer@{socket.gethostname()}")
        for note in decision.numbers.get("notes") or ():
            log.warning("challenger %s: %s", version, note)
        log.info("challenger %s %s on its shadow figures: %s; numbers: %s", version, decision.outcome,
                 "; ".join(decision.reasons) or "every rule passed", orjson.dumps(decision.numbers).decode())
        if decision.outcome == "promoted":
            return RetrainOutcome("promoted", "shadow figures passed", version, record,
                                  pruned=self.control.prune(s.model_keep))
        self.control.record_rejection({**record, "passed": False, "reasons": decision.reasons})
        return RetrainOutcome("rejected", "; ".join(decision.reasons), version, record)

    def check_drift(self) -> DriftReport | None:
        """Add new worker summaries; once ``SD_DRIFT_MIN_EVENTS`` scores of the active model are
        in, judge them against its reference (and start collecting afresh)."""
        active = self._active_bundle()
        new = self.control.score_summaries(self._drift_cursor)
        if new:
            self._drift_cursor = new[-1][0]
            self._drift_counts.extend(fields for _, fields in new)
        if active is None:
            self._drift_counts.clear()
            return None
        # only the active model's summaries count; bounded like the stream they come from
        self._drift_counts = [f for f in self._drift_counts if f.get("model_version") == active.version
                              ][-self.settings.score_summaries_max:]
        edges, expected = reference_bins(active.calibration)
        report = summarize(active.version, edges, expected, self._drift_counts)
        if report is None or report.events < self.settings.drift_min_events:
            return None
        self._drift_counts.clear()
        self.metrics.drift_judged(report.psi, report.ks, report.model_version)
        log.info("drift of %s: psi %.4f, ks %.4f on %d scores", report.model_version, report.psi, report.ks,
                 report.events)
        return report

    # ---- helpers ---------------------------------------------------------------------------------
    def _survive(self, step: Callable[[], T]) -> T | None:
        """Service mode outlives a failed run (Redis or Kafka away, a training error): log, go on."""
        try:
            return step()
        except (StreamDetectorError, RedisError, KafkaError, OSError, TimeoutError, ValueError) as exc:
            log.error("retrainer step failed, retrying at the next trigger: %s: %s", type(exc).__name__, exc)
            return None

    def _input(self) -> KafkaConsumer:
        if self.input is None or self.side is None:
            raise RuntimeError("retrainer not started")
        return self.input

    def _read_side(self, timeout_s: float) -> None:
        """Alerts → excluded ids; feedback → labels. With ``timeout_s`` > 0, read to the end."""
        side = self.side
        if side is None:
            return
        ends = side.end_offsets(list(side.assignment())) if timeout_s > 0 else {}
        deadline = time.monotonic() + timeout_s
        while True:
            check(self.stopping)
            for tp, records in poll_readable(side, 100 if ends else 0, 10_000).items():
                for r in records:
                    self._side_record(tp.topic, r.value, r.timestamp)
            if not ends or all(side.position(tp) >= end for tp, end in ends.items()):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("retrainer could not read the alerts/feedback topics to their end")

    def _side_record(self, topic: str, value: bytes | None, timestamp_ms: float | None = None) -> None:
        if topic == self.settings.alerts_topic:
            try:
                self.exclusions.add_alert(str(orjson.loads(value or b"")["event_id"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.debug("ignoring unreadable record on %s", topic)
            return
        label = read_label(value, timestamp_ms)
        if isinstance(label, Label):
            became_fraud = self.exclusions.add_label(label)
            if became_fraud and (timestamp_ms is None or timestamp_ms >= self._new_since_ms):
                self.new_frauds += 1
            return
        reason, message = label  # counted, and logged once per reason (the retrainer only reads the topic)
        if reason not in self._refused:
            self._refused.add(reason)
            log.warning("feedback record refused (%s): %s; further ones only counted in "
                        "stream_detector_retrain_feedback_rejected", reason.value, message)
        self.metrics.feedback_rejected.labels(reason.value).inc()

    def _active_bundle(self) -> Bundle | None:
        version = self.control.active_model()
        if version is None:
            return None
        if self._active is not None and self._active.version == version:
            return self._active
        try:
            self._active = self.control.fetch_bundle(version)
        except ModelError as exc:
            log.error("active model %s is not loadable (%s); gating without it", version, exc)
            return None
        return self._active

    def _partitions(self, topic: str, timeout_s: float = 30.0) -> list[int]:
        consumer = self.side if self.side is not None else self.input
        assert consumer is not None
        return partitions_of(consumer, topic, timeout_s)

    def _commit(self, force: bool = False) -> None:
        if self.input is None or (not force and time.monotonic() - self._last_commit < 5.0):
            return
        self._last_commit = time.monotonic()
        try:
            self.input.commit()
        except KafkaError as exc:  # progress marker only: the window lives in memory anyway
            log.warning("retrainer offset commit failed: %s", exc)

