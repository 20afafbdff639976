"""One training job: clean window events → train → calibrate → gate → a candidate bundle.

The newest ``SD_RETRAIN_HOLDOUT_FRACTION`` of the clean events (by record time) are held back:
never trained on, they (with the alerted events of their span) are what the gate compares
candidate and active model on, and what the candidate's drift reference (score quantiles, stored
in its ``calibration.json``) is taken from. Training itself is ``model.train.train`` with the
settings' epochs and target alert rate, and the bundle is ``model.bundle.build_bundle`` — the
same code as ``stream-detector train``; the threshold is then raised to the alert budget's
quantile of the training span's traffic, the alerted events included (``_calibrate_on_traffic``).

The bundle metadata records what went in: counts per exclusion reason and the sha256 of the
sorted ids of the clean events and of the training events (so an audit can prove that no alerted
or fraud-labelled event was trained on without storing every id), plus the gate decision.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from ..entity import EntitySpec
from ..entity.history import enrich_selected
from ..errors import TrainingError
from ..feedback import Verdicts
from ..model.bundle import Bundle, build_bundle, watched_fields
from ..model.reference import REFERENCE_KEY, reference_from_scores
from ..model.supervised import HeadConfig, rows_for_head, too_few_labels, train_head
from ..model.train import TrainConfig, row_errors, traffic_threshold, train
from ..offline import OfflineScorer, OfflineScores, score_events
from ..pipeline.compute import Fields
from ..settings import Settings
from .gate import GateDecision, GatePolicy, Scoring, decide, evaluate
from .history import History
from .window import FRAUD, Selection, WindowEntry

Progress = Callable[[str], None]


@dataclass
class Candidate:
    """A trained, gated bundle — or why there is none (``bundle is None``)."""

    bundle: Bundle | None
    decision: GateDecision | None
    counts: dict[str, Any] = field(default_factory=dict)
    message: str = ""


def ids_digest(ids: Iterable[str]) -> str:
    """sha256 of the sorted ids, one per line: equal sets give equal digests."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(ids)).encode()).hexdigest()


def split_holdout(clean: list[WindowEntry], fraction: float) -> tuple[list[WindowEntry], list[WindowEntry]]:
    """(train, holdout): the newest ``fraction`` of the entries (by record time) are held back."""
    ordered = sorted(clean, key=lambda e: (e.timestamp_s, e.partition, e.offset))
    n_hold = max(1, int(len(ordered) * fraction))
    return ordered[:-n_hold], ordered[-n_hold:]


class InContext:
    """The events of a ``History`` a retraining needs, enriched in the context of all of it (every
    entity's earlier events and every label, point in time), and their scores as a worker fed that
    history in order would give them. Used as the gate's ``score`` for entity models.

    The history is read once, a chunk at a time (``entity.history.enrich_selected``): kept are the
    first occurrence of each ``wanted`` id (the window's events) and of each labelled event whose
    numeric ``timestamp`` (epoch ms) lies in ``span`` (the head's rows); nothing else of the history
    stays in memory. ``rows`` (events + ``spec.all_fields``) equal ``enrich_history`` of the whole
    history at those positions, bit for bit."""

    def __init__(self, history: History, spec: EntitySpec, wanted: set[str],
                 span: tuple[float, float] = (math.inf, -math.inf), progress: Progress | None = None) -> None:
        self.history, self.spec = history, spec
        labelled = {label.event_id for label in history.labels}
        seen: set[str] = set()

        def keep(_position: int, event: dict[str, Any]) -> bool:
            event_id = str(event["event_id"])
            if event_id in seen:
                return False
            if event_id in wanted:
                seen.add(event_id)
                return True
            if event_id in labelled:
                seen.add(event_id)
                return _within(event.get("timestamp"), *span)
            return False

        started = time.monotonic()
        self.selected = enrich_selected(spec, _reporting(history, progress), keep,
                                        history.labels if spec.label_keys else ())
        self.index = {str(row["event_id"]): i for i, row in enumerate(self.selected.rows)}
        if progress is not None:
            progress(f"history enriched point in time: {len(history):,} events, {len(self.index):,} kept, "
                     f"{time.monotonic() - started:.0f}s")
        self._scored: dict[str, OfflineScores] = {}

    def __contains__(self, event_id: object) -> bool:
        return event_id in self.index

    def row(self, event_id: str) -> dict[str, Any]:
        """The enriched row of an event (its first occurrence in the history)."""
        return self.selected.rows[self.index[event_id]]

    def event(self, event_id: str) -> dict[str, Any]:
        """The event as read (without the features)."""
        return self.selected.events[self.index[event_id]]

    def __call__(self, bundle: Bundle, events: Sequence[dict[str, Any]]) -> OfflineScores:
        scored = self._scored.get(bundle.version)
        if scored is None:
            scored = self._scored[bundle.version] = self._score_kept(bundle)
        return scored.take([self.index[str(e["event_id"])] for e in events])

    def _score_kept(self, bundle: Bundle) -> OfflineScores:
        """Scores of every kept row by ``bundle``: with this context's entity spec, its features are
        the ones computed (no second pass); with another, the history is scored again in order
        (``OfflineScorer``, state carried from chunk to chunk) and the kept rows picked out."""
        kept = self.selected.events
        if bundle.entity == self.spec:
            scorer = OfflineScorer(bundle)
            values, fields = self.selected.values, self.spec.all_fields

            def enrich(_typed: Sequence[dict[str, Any]], indices: list[int],
                       _fields: Fields) -> tuple[list[str], np.ndarray]:
                return fields, values[np.asarray(indices, dtype=np.int64)]

            scorer.enrich = enrich
            return scorer.score(kept)
        scorer = OfflineScorer(bundle, labels=self.history.labels if bundle.entity is not None else ())
        parts, at, positions = [], 0, self.selected.positions
        for chunk in self.history.chunks():
            done = scorer.score(chunk)
            lo, hi = np.searchsorted(positions, [at, at + len(chunk)])
            parts.append(done.take((positions[lo:hi] - at).tolist()))
            at += len(chunk)
        return OfflineScores(np.concatenate([p.scores for p in parts]) if parts else np.zeros(0),
                             [r for p in parts for r in p.rejected], [m for p in parts for m in p.messages], None,
                             None if bundle.supervised is None else
                             np.concatenate([p.probability for p in parts if p.probability is not None]))


def _reporting(history: History, progress: Progress | None) -> Iterator[list[dict[str, Any]]]:
    """The history's chunks, with a progress line every 30 s on a long one."""
    started = reported = time.monotonic()
    done = 0
    for chunk in history.chunks():
        yield chunk
        done += len(chunk)
        if progress is not None and time.monotonic() - reported > 30:
            reported = time.monotonic()
            rate = done / (reported - started)
            progress(f"enriching the history: {done:,}/{len(history):,} events, "
                     f"{(len(history) - done) / max(rate, 1e-9):.0f}s left")


def build_candidate(selection: Selection, settings: Settings, active: Bundle | None, reason: str,
                    progress: Progress | None = None, history: History | None = None) -> Candidate:
    """Train, calibrate and gate a candidate of the active model's kind.

    * autoencoder only (or no active model): on the window's clean events;
    * with entity features (and label features): ``history`` (``retrain/history.py``, read from
      Kafka by time) is enriched point in time with the active model's ``EntitySpec`` — the same
      code as ``stream-detector train`` on a time-ordered file — and the window's clean events are
      trained on with those features; the gate scores both models in the context of that history;
    * with a supervised head: the head is trained again (``model/supervised.py``) on the training
      span's events: fraud where the winning label known now says fraud, legit where it says legit
      or where the event is clean (not alerted, not labelled: silence reads as legit); alerted
      events nobody labelled are left out of the head's rows. Fewer than ``MIN_FRAUDS`` labelled
      frauds: no candidate (one without the head would drop it unseen).

    Without ``history`` an entity model is skipped (said in the message)."""
    say = progress or (lambda _m: None)
    counts: dict[str, Any] = {"clean": len(selection.clean), "labelled": len(selection.labelled),
                              **{f"left_out_{k}": v for k, v in sorted(selection.left_out.items())}}
    spec = active.entity if active is not None else None
    if len(selection.clean) < settings.retrain_min_events:  # whatever the model's kind: too few events first
        return Candidate(None, None, counts, _too_few(len(selection.clean), selection, settings))
    if spec is not None and history is None:
        return Candidate(None, None, counts, "the active model uses entity features and no history was read "
                                             "for it (the retrainer reads it from the input topic by time)")
    context: InContext | None = None
    clean = selection.clean
    labelled_entries = selection.labelled
    if spec is not None and history is not None:
        window = [*selection.clean, *(e for e, _ in selection.labelled), *selection.alerted]
        times = [t for t in (orjson.loads(e.raw).get("timestamp") for e in selection.clean)
                 if isinstance(t, (int, float)) and not isinstance(t, bool)]
        span = (float(min(times)), float(max(times))) if times else (-math.inf, math.inf)
        context = InContext(history, spec, {e.event_id for e in window}, span, say)
        clean = [e for e in clean if e.event_id in context]
        labelled_entries = [(e, lab) for e, lab in labelled_entries if e.event_id in context]
        counts["left_out_not_in_history"] = len(selection.clean) - len(clean)
        counts["history_events"] = len(history)
        counts["history_labels"] = len(history.labels)
    if len(clean) < settings.retrain_min_events:
        return Candidate(None, None, counts, _too_few(len(clean), selection, settings))
    train_entries, holdout_entries = split_holdout(clean, settings.retrain_holdout_fraction)
    alerted = [e for e in selection.alerted if context is None or e.event_id in context]
    end = _key(train_entries[-1]) if train_entries else None
    alerted_trained = [e for e in alerted if end is not None and _key(e) <= end]  # the training span's
    alerted_held = [e for e in alerted if end is None or _key(e) > end]  # the held-back span's
    # the deployment's alert budget (the gate below enforces it), not the train command's fence
    budget, budget_from = alert_budget(settings, active)
    counts.update(alert_budget=budget, alert_budget_from=budget_from)
    config = TrainConfig(epochs=settings.retrain_epochs or None, threshold_method="quantile", target_fpr=budget)
    head_labels: tuple[list[str], dict[str, bool]] | None = None
    if active is not None and active.supervised is not None:  # asked before the autoencoder is trained
        head_labels = _head_labels(train_entries, selection, context)
        frauds = sum(head_labels[1].values())
        problem = too_few_labels(frauds, len(head_labels[0]) - frauds, HeadConfig())
        if problem:
            counts.update(head_rows=len(head_labels[0]), head_frauds=frauds)
            return Candidate(None, None, counts, f"{HEAD_REFUSED}: {problem}")
    # the gate's labelled events: those the candidate is not trained on (a trial: legit-labelled events of the
    # training span were trained on and then counted in the candidate's precision, "held back" in the docs)
    trained = {e.event_id for e in train_entries}.union(head_labels[0] if head_labels is not None else ())
    held = [(e, label) for e, label in labelled_entries if e.event_id not in trained]
    counts["labelled_trained_on"] = len(labelled_entries) - len(held)
    labelled_entries = held
    say(f"training on {len(train_entries)} events ({reason}); {len(holdout_entries)} held back; alert budget "
        f"{budget:.3%}, {budget_from}")
    schema = active.schema if active is not None else None  # a type a user set (``train --field``) survives
    if context is not None and spec is not None:
        by_id: Callable[[str], dict[str, Any]] = context.row
        rows = [by_id(e.event_id) for e in train_entries]
        _say_lacking(rows, active, counts, say)
        result = train(rows, config, progress=say, entity=spec, schema=schema)
        holdout = [context.event(e.event_id) for e in [*holdout_entries, *alerted_held]]
        labelled = [context.event(e.event_id) for e, _ in labelled_entries]
    else:
        parsed = {e.event_id: orjson.loads(e.raw) for e in train_entries}
        by_id = parsed.__getitem__
        _say_lacking(list(parsed.values()), active, counts, say)
        result = train(list(parsed.values()), config, progress=say, schema=schema)
        holdout = _events([*holdout_entries, *alerted_held])
        labelled = [orjson.loads(e.raw) for e, _ in labelled_entries]
    def rows_of(entries: list[WindowEntry]) -> list[dict[str, Any]]:  # as trained on: with the entity fields
        return [context.row(e.event_id) for e in entries] if context is not None else _events(entries)

    _calibrate_on_traffic(result, rows_of(alerted_trained), len(train_entries), budget,
                          alerted_weights(alerted_trained, selection, counts, say), counts, say)
    if head_labels is not None:
        silent = [e for e in alerted_trained if e.event_id not in head_labels[1]]  # alerted, nobody labelled
        problem = _retrain_head(result, head_labels, by_id, selection, context, budget, counts, say, rows_of(silent),
                                [selection.matured(e) for e in silent])
        if problem:
            return Candidate(None, None, counts, problem)
    draft = build_bundle(result)
    is_fraud = np.array([label == FRAUD for _, label in labelled_entries], dtype=bool)
    policy = GatePolicy(budget, settings.gate_max_alert_rate_ratio,
                        settings.gate_recall_tolerance, settings.gate_min_labels,
                        parts=2 if draft.head_threshold is not None else 1)
    score: Scoring = context if context is not None else score_events
    # settled: a clean held-back event, or an alerted one labelled legit or older than the label delay (an alerted
    # one nobody labelled yet may be a fraud whose chargeback is on its way: a trial's gate refused a better
    # candidate for catching those)
    legit = selection.legit_ids()
    settled = np.array([True] * len(holdout_entries)
                       + [e.event_id in legit or selection.matured(e) for e in alerted_held], dtype=bool)
    decision = decide(evaluate(draft, holdout, labelled, is_fraud, score, settled),
                      evaluate(active, holdout, labelled, is_fraud, score, settled) if active is not None else None,
                      policy)
    if decision.active is not None and active is not None:
        decision.active["version"] = active.version
        _note_smaller_training(decision, active, result.metrics.get("train_rows"))
    scores = score(draft, holdout[:len(holdout_entries)]).scores  # the drift reference: clean traffic, as before
    reference = reference_from_scores(scores[~np.isnan(scores)])
    counts.update(train_events=len(train_entries), holdout_events=len(holdout_entries),
                  holdout_alerted_events=len(alerted_held),
                  clean_ids_sha256=ids_digest(e.event_id for e in clean),
                  train_ids_sha256=ids_digest(e.event_id for e in train_entries),
                  oldest_timestamp_s=train_entries[0].timestamp_s if train_entries else None,
                  newest_timestamp_s=holdout_entries[-1].timestamp_s)
    final = replace(result, calibration={**result.calibration, REFERENCE_KEY: reference})
    bundle = build_bundle(final, {"trained_by": "retrainer", "retrain_reason": reason, "training": counts,
                                  "gate": decision.to_dict()})
    return Candidate(bundle, decision, counts, "passed" if decision.passed else "; ".join(decision.reasons))


def _note_smaller_training(decision: GateDecision, active: Bundle, rows: Any) -> None:
    """A note in the decision when the candidate learnt from less than half the rows the active
    model did (both: the metadata's ``metrics.train_rows``): a trial's candidate learnt from one
    week of the window (6,037 events), the model it replaced from five (38,444), and the report did
    not say so."""
    before = (active.metadata.get("metrics") or {}).get("train_rows")
    if isinstance(before, int) and isinstance(rows, int) and before > 2 * rows:
        decision.policy["notes"].append(
            f"the candidate learnt from {rows:,} rows of the window, the active model {active.version} from "
            f"{before:,} (metrics.train_rows): the window (SD_RETRAIN_WINDOW_EVENTS, SD_RETRAIN_WINDOW_SECONDS) "
            "holds less history than the active model was trained on (a retrain --once trains on the events "
            "since the previous one: docs/retraining.md)")


def _key(entry: WindowEntry) -> tuple[float, int, int]:
    """An entry's place in ``split_holdout``'s order."""
    return entry.timestamp_s, entry.partition, entry.offset


COARSE_ROWS = 5  # _calibrate_on_traffic: fewer validation rows above the threshold than this is said


MIN_LABELLED_ALERTS = 20  # alerted_weights: fewer labelled alerts in the window, and their legit share is not used


def alerted_weights(alerted: Sequence[WindowEntry], selection: Selection, counts: dict[str, Any],
                    say: Progress) -> np.ndarray:
    """How much each of ``alerted`` (the training span's alerted events no label says are fraud)
    counts as legit traffic in the calibration (float64[len(alerted)]): 1 for one labelled legit,
    and with a label delay (``SD_RETRAIN_LABEL_DELAY_S``, ``Selection.matured_before_s``) 1 for
    one old enough for its label to have arrived. One nobody has labelled yet counts as the legit
    share of alerts (``alerted_legit_share``; ``alerted_legit_share_from`` says where it came from):

    * with a label delay and at least ``MIN_LABELLED_ALERTS`` alerts older than it: the share of
      those no label says is fraud (every fraud among them has its label by then), applied to the
      newer alerts — the newer alerts expected legit less those labelled legit, over those nobody
      labelled, clipped to [0, 1] (``benchmarks retrain-budget --labels sampled --label-delay
      0.5``: recall 42-59 % counted whole, see RESULTS);
    * else the legit share of the window's reviewed alerts (labelled by any source but
      ``chargeback``, which only ever says fraud: trial I's 133 chargebacks of 142 labelled alerts
      put the share at 0.02 while every unlabelled alert was legit) — analysts review the alert
      queue, and an alert not reviewed yet is as likely legit as the reviewed ones (counted whole,
      the unlabelled frauds of a deployment whose fraud rate is above its budget took the budget:
      recall 99 % → 25 % at a 0.1 % budget, benchmarks retrain-budget);
    * with fewer than ``MIN_LABELLED_ALERTS`` of either the share is unknown and they count whole:
      the budget then caps the alerts on all traffic, frauds included — said."""
    legit = selection.legit_ids()
    labelled, reviewed = selection.reviewed_legit, selection.reviewed_legit + selection.reviewed_fraud
    old = [e for e in selection.alerted if selection.matured(e)]
    old_total = len(old) + selection.fraud_alerts_matured
    if selection.matured_before_s is not None and old_total >= MIN_LABELLED_ALERTS:
        old_share = len(old) / old_total
        young = [e for e in selection.alerted if not selection.matured(e)]
        young_legit = sum(e.event_id in legit for e in young)
        young_unlabelled = len(young) - young_legit
        expected = old_share * (len(young) + selection.fraud_alerts_young)
        share = min(1.0, max(0.0, (expected - young_legit) / young_unlabelled)) if young_unlabelled else old_share
        source = (f"{len(old)} of the window's {old_total} alerts older than the label delay have no fraud label "
                  f"(share {old_share:.3f}); applied to the {len(young) + selection.fraud_alerts_young} newer ones, "
                  f"{young_legit} labelled legit and {selection.fraud_alerts_young} fraud; the {len(old)} older "
                  "ones nobody labelled count whole")
        if not young and not selection.fraud_alerts_young:  # trial K: a 30-s delay made every alert "older"
            say(f"note: every one of the window's {old_total} alerts is older than SD_RETRAIN_LABEL_DELAY_S, and "
                f"{len(old)} of them have no fraud label: they count as legit. Is the delay as long as chargebacks "
                "take? Set shorter, frauds whose chargebacks have not come are counted as legit traffic and the "
                "threshold is set higher than the budget needs (docs/retraining.md)")
    elif reviewed >= MIN_LABELLED_ALERTS:
        share, source = labelled / reviewed, (f"{labelled} of the window's {reviewed} reviewed alerts are legit "
                                              "(labels of any source but chargeback)")
    else:
        share, source = 1.0, (f"{reviewed} reviewed alerts in the window (labels of any source but chargeback), "
                              f"fewer than {MIN_LABELLED_ALERTS}: unknown")
        if selection.matured_before_s is not None:
            source += f"; {old_total} alerts older than the label delay, fewer than {MIN_LABELLED_ALERTS}"
        pending = sum(1 for e in alerted if e.event_id not in legit and not selection.matured(e))
        if pending:
            say(f"note: {pending:,} alerted events of the training span nobody labelled, and {reviewed} reviewed "
                "alerts in the window: whether they were frauds is unknown, so they count as legit traffic and "
                "the alert budget caps the candidate's alerts on all traffic, frauds included (analysts' "
                "verdicts on the feedback topic, docs/feedback.md, or SD_RETRAIN_LABEL_DELAY_S with "
                "chargebacks, let it count only the legit ones)")
    counts.update(alerted_legit_share=share, alerted_legit_share_from=source)
    return np.array([1.0 if e.event_id in legit or selection.matured(e) else share for e in alerted],
                    dtype=np.float64)


def _calibrate_on_traffic(result: Any, alerted: Sequence[dict[str, Any]], clean: int, budget: float,
                          alerted_weight: np.ndarray, counts: dict[str, Any], say: Progress) -> None:
    """Raise ``result``'s threshold (quantile, trained on ``clean`` clean events) so that it alerts
    on at most ``budget`` of the training span's legit traffic: the clean events, which its
    validation rows stand for (each one ``clean / validation rows`` of them), and ``alerted``, the
    span's events the workers alerted and no label says are fraud (``Selection.alerted``: silence
    reads as legit; rows with the active model's fields). Calibrated on the clean events alone, a
    candidate alerted on its budget of them *and* on most of the events its predecessor had
    alerted (anomalous by construction, and never seen): each retraining added about one budget
    to the live alert rate (docs/retraining.md, *The alert budget*). Said, and kept in the
    bundle's ``calibration.traffic``."""
    validation = result.validation_errors
    if validation is None or validation.size == 0 or not clean or result.calibration.get("method") != "quantile":
        return
    extra = row_errors(result, alerted)
    if extra.size != len(alerted_weight):  # rows the schema refused are left out: weigh the rest at their mean
        alerted_weight = np.full(extra.size, float(alerted_weight.mean()) if len(alerted_weight) else 1.0)
    counted = np.clip(alerted_weight, 1e-6, 1.0)
    clean_only = result.threshold  # never lowered below the clean events' own quantile
    threshold = traffic_threshold(validation, clean / validation.size, extra, counted, budget, clean_only)
    above, above_clean = int((extra > threshold).sum()), int((extra > clean_only).sum())
    share = (float((validation > threshold).mean()) * clean + float(counted[extra > threshold].sum())) / (
        clean + float(counted.sum()))
    result.calibration["traffic"] = {
        "budget": budget, "clean_events": clean, "alerted_events": int(extra.size),
        "threshold_on_clean_events": clean_only, "threshold": threshold,
        "alerted_above_clean_threshold": above_clean, "alerted_above_threshold": above,
        "validation_rows": int(validation.size), "validation_rows_above": int((validation > threshold).sum()),
        "share_of_clean_events_above": float((validation > threshold).mean()), "share_of_traffic_above": share}
    counts["calibrated_with_alerted"] = int(extra.size)
    counts["traffic_calibration"] = result.calibration["traffic"]  # in the metadata: `model show` has it
    rows_above = result.calibration["traffic"]["validation_rows_above"]
    if rows_above == 0 and threshold > clean_only:  # trial I: "rests on the 0 highest" said nothing
        say(f"note: the threshold is above every clean validation row: the whole {budget:.3%} budget goes to the "
            "alerted events (unlabelled frauds among them count as legit here)")
    elif rows_above < COARSE_ROWS:  # a trial (H): 423 validation rows, 5 alerted events moved it 5.41 -> 7.59
        say(f"note: the threshold rests on the {rows_above} highest of {validation.size} validation errors (a "
            f"{budget:.3%} budget of {clean:,} clean events): it moves by whole rows, and a few alerted events move it "
            "far; a larger window (SD_RETRAIN_WINDOW_EVENTS, SD_RETRAIN_WINDOW_SECONDS) steadies it")
    if threshold > clean_only:
        result.threshold = result.calibration["threshold"] = threshold
        result.calibration["validation_flag_rate"] = float((validation > threshold).mean())
        if result.training_errors is not None:  # a trial: left at the clean-only threshold's, 3x the validation's
            result.calibration["train_flag_rate"] = float((result.training_errors > threshold).mean())
        say(f"threshold {threshold:.6g} for a {budget:.3%} budget of the training span's traffic: its "
            f"{clean:,} clean events and the {extra.size:,} the workers alerted without a fraud label "
            f"({above_clean:,} of them above {clean_only:.6g}, the clean events' own quantile)")


LACKING_SHARE = 0.05  # a model input absent from at least this share of the training events is said


def _say_lacking(rows: Sequence[dict[str, Any]], active: Bundle | None, counts: dict[str, Any],
                 say: Callable[[str], None]) -> None:
    """Count the training events lacking each input the active model reads (``watched_fields``,
    and its entity keys): ``counts["training_events_lacking"]`` (field → events, those lacking any)
    in the bundle's metadata, and a warning through ``say`` for a field absent from at least
    ``LACKING_SHARE`` of them: the window then holds events of another producer or shape, which
    the candidate learns as normal traffic with that field missing. A trial: a quarter of a window
    were the README walkthrough's velocity events, without ``terminal_id``, unsaid."""
    if active is None or not rows:
        return
    fields = dict.fromkeys([*watched_fields(active), *(active.entity.keys if active.entity is not None else ())])
    lacking = {f: sum(1 for row in rows if row.get(f) in (None, "")) for f in fields}
    lacking = {f: n for f, n in lacking.items() if n}
    if not lacking:
        return
    counts["training_events_lacking"] = lacking
    loud = {f: n for f, n in lacking.items() if n >= LACKING_SHARE * len(rows)}
    if loud:
        shown = ", ".join(f"{f} ({n:,})" for f, n in sorted(loud.items(), key=lambda x: -x[1])[:6])
        say(f"warning: of {len(rows):,} training events, some lack fields the active model reads: {shown}. Events of "
            "another producer or shape in the input topic? The candidate learns them as normal traffic with those "
            "fields missing (the retrain report's training.training_events_lacking)")


BUDGET_FLOOR, BUDGET_CEILING = 0.0005, 0.49  # a budget taken from the active model's flag rate stays within these


def alert_budget(settings: Settings, active: Bundle | None) -> tuple[float, str]:
    """The alert budget a candidate is calibrated and gated to (share of clean events), and where it
    came from: ``SD_RETRAIN_TARGET_FPR`` when set; else the active model's own — its quantile's
    ``target_fpr``, or (a fence, k-std or capped threshold) the share of its validation rows it
    flagged, kept within [``BUDGET_FLOOR``, ``BUDGET_CEILING``]; else the setting's default. A
    trial: a model published with a 0.2 % budget was replaced by a retrained one alerting at 5x
    that, under the default 1 %, and nothing said so."""
    if "retrain_target_fpr" in settings.model_fields_set or active is None:
        return settings.retrain_target_fpr, "SD_RETRAIN_TARGET_FPR" + (
            "" if "retrain_target_fpr" in settings.model_fields_set else " (default; no active model)")
    calibration = active.calibration or {}
    target = calibration.get("target_fpr")
    if calibration.get("method") == "quantile" and calibration.get("max_alert_rate") is None \
            and isinstance(target, (int, float)) and 0 < target < 0.5:
        return float(target), f"the active model {active.version}'s (quantile, target {target:g})"
    rate = calibration.get("validation_flag_rate")
    if isinstance(rate, (int, float)) and math.isfinite(rate):
        kept = min(max(float(rate), BUDGET_FLOOR), BUDGET_CEILING)
        return kept, (f"the active model {active.version}'s ({calibration.get('method', 'its rule')} flagged "
                      f"{rate:.3%} of its validation rows)")
    return settings.retrain_target_fpr, "SD_RETRAIN_TARGET_FPR (default; the active model records no budget)"


def _too_few(clean: int, selection: Selection, settings: Settings) -> str:
    """Why there are too few events, with what the window left out (undecided: no worker has
    committed them yet)."""
    left = ", ".join(f"{v:,} {k}" for k, v in sorted(selection.left_out.items()) if v)
    total = clean + len(selection.labelled) + sum(selection.left_out.values())
    why = (f"; left out: {left}" if left else "") + (
        " (undecided: the worker group has not committed them yet)" if selection.left_out.get("undecided") else "")
    if not total:
        why = "; the window is empty (no event since the retrainer group's committed position)"
    need = settings.retrain_min_events
    return f"only {clean:,} clean events in the window, need {need:,} (SD_RETRAIN_MIN_EVENTS){why}"


HEAD_REFUSED = "the active model has a supervised head and its candidate cannot have one"


def _head_labels(train_entries: list[WindowEntry], selection: Selection,
                 context: InContext | None) -> tuple[list[str], dict[str, bool]]:
    """The head's rows: the training events and the labelled ones (ids, in a deterministic order),
    and the verdict of each labelled one (fraud True); an id without a verdict is legit."""
    verdict: dict[str, bool] = {}
    if context is not None:  # every label read from the feedback topic, the winner as known now
        verdicts = Verdicts(context.history.labels)
        times = [context.row(e.event_id).get("timestamp") for e in train_entries]
        numeric = [float(t) for t in times if isinstance(t, (int, float)) and not isinstance(t, bool)]
        first, last = (min(numeric), max(numeric)) if numeric else (-math.inf, math.inf)
        for row in context.selected.rows:  # history order: the head's rows are deterministic
            event_id = str(row["event_id"])
            fraud = verdicts.verdict(event_id) if event_id in verdicts else None
            if fraud is not None and _within(row.get("timestamp"), first, last):
                verdict.setdefault(event_id, fraud)
    else:  # the labelled events of the training span only: later ones are the gate's (a trial: the head
        # learnt every label, the held-back span's too, and the gate was left with none)
        end = max(((e.timestamp_s, e.partition, e.offset) for e in train_entries), default=None)
        verdict = {e.event_id: label == FRAUD for e, label in selection.labelled
                   if end is not None and (e.timestamp_s, e.partition, e.offset) <= end}
    return list(dict.fromkeys([e.event_id for e in train_entries] + list(verdict))), verdict


def _retrain_head(result: Any, head_labels: tuple[list[str], dict[str, bool]],
                  by_id: Callable[[str], dict[str, Any]], selection: Selection, context: InContext | None,
                  budget: float, counts: dict[str, Any], say: Progress,
                  traffic: Sequence[dict[str, Any]] = (), traffic_legit: Sequence[bool] = ()) -> str:
    """Train the supervised head into ``result`` on ``_head_labels``' rows (see ``build_candidate``);
    returns why not, or "". ``traffic``: the training span's alerted events nobody labelled, its
    threshold's traffic; ``traffic_legit``: which of them are older than the label delay (legit,
    weighing 1: ``Selection.matured``)."""
    ids, verdict = head_labels
    if context is None:
        raw = {e.event_id: e for e, _ in selection.labelled}
        rows = [by_id(i) if i not in raw else orjson.loads(raw[i].raw) for i in ids]
    else:
        rows = [by_id(i) for i in ids]
    x, y = rows_for_head(result.spec, result.schema, rows, [verdict.get(i, False) for i in ids])
    counts.update(head_rows=int(len(y)), head_frauds=int(y.sum()))
    extra = rows_for_head(result.spec, result.schema, list(traffic), [False] * len(traffic))[0] if traffic else None
    known = np.asarray(traffic_legit, dtype=bool)
    # a row rows_for_head refused leaves the mask unaligned: then every row is weighed by the head (1 - p)
    legit = known if extra is not None and any(traffic_legit) and len(known) == len(extra) else None
    try:
        result.head, result.calibration["supervised"] = train_head(
            result.head, x, y, HeadConfig(target_fpr=budget), say, extra, legit)
    except TrainingError as exc:  # rows_for_head left out rows the counts before training had
        return f"{HEAD_REFUSED}: {exc}"
    return ""


def _within(timestamp: Any, first_ms: float, last_ms: float) -> bool:
    """Whether an event's numeric ``timestamp`` (epoch ms) lies in the training span [first_ms,
    last_ms] (the training events' own times); an event with another timestamp form is in the span
    (the history read placed it by its record time)."""
    if isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool):
        return first_ms <= timestamp <= last_ms
    return True


def _events(entries: list[WindowEntry]) -> list[dict[str, Any]]:
    return [orjson.loads(e.raw) for e in entries]
