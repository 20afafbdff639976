"""The promotion gate: a candidate replaces the active model only if it does no worse.

Both models are scored with the worker's own code path (``offline.score_events``) on the same
held-back data: the held-back traffic (the newest clean events of the window, never trained on,
and the events of their span that the workers alerted and no label says are fraud: silence reads
as legit) and, where analysts labelled events in the window, those labelled events. Each model is
judged at its own threshold. Both ``alert_rate`` figures are then rates on the same traffic, the
active model's about its live one (before 2026-12-07 the held-back events were the clean ones
alone, which by construction the active model had not alerted: its rate read about 0).

Rules (all must hold; every number is kept in the decision record):

1. the candidate scores (finitely) at least 99 % of the held-back events it is given;
2. its alert rate on the held-back events whose verdict is settled (``settled_alert_rate``: clean,
   or alerted and labelled legit; not the alerted events nobody has labelled yet, many of them
   frauds whose chargeback is on its way — a trial's gate refused a better candidate for them) is
   at most ``target · parts · max_ratio`` plus three binomial standard errors (small held-back
   sets are noisy). ``parts`` is 2 for a bundle with a
   supervised head: each part is calibrated to the target on its own and an event alerts when
   either fires, so the union's budget is the sum of the two;
3. with at least ``min_labels`` fraud labels and an active model whose own alert rate on the same
   held-back events is within the bound of rule 2 (a model alerting far past the budget catches
   frauds by alerting everything, so its recall is no reference: the decision's policy notes
   say so): its recall and its precision
   on the labelled events are each at most ``tolerance`` below the active model's, plus two
   standard errors of the difference (labels are few; a handful of flagged events must not
   decide a promotion on noise). Precision is compared only when both models flag at least
   ``min_labels`` labelled events.

Error quantiles are reported relative to each model's threshold: raw errors of two models live
on different scales, their position against the threshold does not.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model.bundle import Bundle
from ..offline import OfflineScores, score_events


@dataclass(frozen=True)
class GatePolicy:
    """``target_rate``: each part's alert budget on legit traffic (share of events; silence reads
    as legit); ``parts``: the decision's parts, 1 (autoencoder) or 2 (autoencoder or supervised
    head): the budget of the decision is ``target_rate · parts``."""

    target_rate: float
    max_ratio: float = 2.0
    tolerance: float = 0.05
    min_labels: int = 5
    parts: int = 1

    @property
    def budget(self) -> float:
        return self.target_rate * self.parts


@dataclass
class GateDecision:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    candidate: dict[str, Any] = field(default_factory=dict)
    active: dict[str, Any] | None = None
    policy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "candidate": self.candidate,
                "active": self.active, "policy": self.policy}

    def summary(self) -> str:
        """The decision in one readable line: the held-back events, each figure candidate vs active,
        the reasons of a refusal and the notes (a trial found them inside a 2,865-character JSON log
        line, and a recall that fell from 0.742 to 0.587 said nowhere a reader would look)."""
        c, a = self.candidate, self.active or {}
        parts = [f"{int(c.get('rows', 0)):,} held-back events, {int(c.get('frauds', 0)):,} labelled frauds"]
        # fixed decimals, the refusal reasons' too (significant digits printed 0.96 beside 0.9608, a trial)
        for key, label, f in (("alert_rate", "alert rate", ".4f"), ("recall", "recall", ".3f"),
                              ("precision", "precision", ".3f")):
            if key in c:
                versus = f" vs active {a[key]:{f}}" if key in a else ""
                bound = (f" (bound {self.policy['alert_rate_bound']:{f}})"
                         if key == "alert_rate" and "alert_rate_bound" in self.policy else "")
                parts.append(f"{label} {c[key]:{f}}{versus}{bound}")
        text = "; ".join(parts)
        if self.reasons:
            text += " — refused: " + "; ".join(self.reasons)
        notes = self.policy.get("notes") or []
        if notes:
            text += " — notes: " + "; ".join(notes)
        return text


Scoring = Callable[[Bundle, Sequence[dict[str, Any]]], OfflineScores]


def evaluate(bundle: Bundle, holdout: Sequence[dict[str, Any]], labelled: Sequence[dict[str, Any]],
             is_fraud: np.ndarray, score: Scoring = score_events, settled: np.ndarray | None = None) -> dict[str, Any]:
    """A model's numbers on the held-back traffic (clean and alerted-unlabelled events) and on the
    labelled events. ``score`` scores events with a bundle (default ``offline.score_events``, from
    no history; a model with entity features is scored in the context of its history,
    ``job.InContext``). An alert is the worker's decision: error above the threshold, or with a
    supervised head, probability above its own.

    ``settled`` (bool[len(holdout)]): the held-back events whose verdict is settled — clean (not
    alerted) or labelled legit; an alerted event nobody has labelled yet may be a fraud whose
    chargeback is on its way. ``alert_rate`` is over every held-back event, ``settled_alert_rate``
    (over ``settled_rows``) over the settled ones: the figure rule 2 bounds."""
    threshold = bundle.threshold
    scored = score(bundle, holdout)
    ok = scored.valid
    scores = scored.scores[ok]
    flagged = scored.flagged(threshold, bundle.head_threshold)
    alerts = flagged[ok]
    sure = ok & (settled if settled is not None else np.ones(len(holdout), dtype=bool))
    out: dict[str, Any] = {
        "threshold": threshold, "head_threshold": bundle.head_threshold, "rows": len(holdout),
        "scored": int(ok.sum()), "finite": bool(np.isfinite(scores).all()),
        "alert_rate": float(alerts.mean()) if scores.size else 0.0,
        "settled_rows": int(sure.sum()),
        "settled_alert_rate": float(flagged[sure].mean()) if sure.any() else 0.0,
        "score_to_threshold_quantiles": {
            str(q): float(np.quantile(scores, q) / threshold) if scores.size and threshold > 0 else None
            for q in (0.5, 0.9, 0.99)},
    }
    if len(labelled):
        lab = score(bundle, labelled)
        flagged = lab.valid & lab.flagged(threshold, bundle.head_threshold)
        tp = int((flagged & is_fraud).sum())
        out.update(labelled=len(labelled), frauds=int(is_fraud.sum()), flagged=int(flagged.sum()),
                   recall=tp / max(1, int(is_fraud.sum())),
                   precision=tp / int(flagged.sum()) if flagged.any() else 0.0)
    return out


def decide(candidate: dict[str, Any], active: dict[str, Any] | None, policy: GatePolicy) -> GateDecision:
    """Apply the rules above to two evaluations (pure: unit-tested on numbers)."""
    reasons: list[str] = []
    if candidate["rows"] == 0 or candidate["scored"] < 0.99 * candidate["rows"] or not candidate["finite"]:
        reasons.append(f"candidate scored {candidate['scored']} of {candidate['rows']} held-back events")
    rate_key = "settled_alert_rate" if "settled_alert_rate" in candidate else "alert_rate"
    bound = alert_rate_bound(policy, int(candidate.get("settled_rows", candidate["rows"])))
    if candidate[rate_key] > bound:
        reasons.append(f"alert rate {candidate[rate_key]:.4f} above bound {bound:.4f} "
                       f"(target {policy.budget:.4f}" + (f" = {policy.parts} parts × {policy.target_rate:.4f}"
                                                         if policy.parts > 1 else "") + ")"
                       + (" on the held-back events whose verdict is settled" if rate_key != "alert_rate" else ""))
    frauds = int(candidate.get("frauds", 0))
    notes: list[str] = []
    if active is not None and rate_key == "settled_alert_rate" and active["alert_rate"] > active[rate_key]:
        # trial I read "candidate 0.77 % vs active 0 %" as a worse candidate
        notes.append(f"the active model's settled_alert_rate ({active[rate_key]:.4f}) is low by construction: its "
                     "settled held-back events are those it did not alert, or labelled legit; the two models compare "
                     f"on alert_rate ({candidate['alert_rate']:.4f} vs {active['alert_rate']:.4f}); rule 2 bounds "
                     "the candidate's settled rate, not a comparison")
    if active is not None and active.get(rate_key, 0.0) > bound:
        # an active model that alerts far past the budget catches frauds by alerting everything:
        # its recall and precision are no reference for the candidate (rule 3 does not apply)
        notes.append(f"active model's alert rate {active[rate_key]:.4f} is above the bound {bound:.4f}: "
                     "recall and precision not compared")
        if "recall" in active and "recall" in candidate and candidate["recall"] < active["recall"]:
            notes.append(f"the candidate catches fewer of the held-back frauds: recall {candidate['recall']:.3f} "
                         f"vs the active model's {active['recall']:.3f}, which alerts at {active['alert_rate']:.4f}")
    elif active is not None and frauds < policy.min_labels:  # a trial: rule 3 off for a head model, no word
        notes.append(f"{frauds} labelled fraud(s) the candidate was not trained on (held back), fewer than "
                     f"{policy.min_labels} (SD_GATE_MIN_LABELS): recall and precision not compared")
    elif active is not None and "recall" in active:
        for metric, n_key in (("recall", "frauds"), ("precision", "flagged")):
            n_c, n_a = int(candidate.get(n_key, 0)), int(active.get(n_key, 0))
            if metric == "precision" and min(n_c, n_a) < policy.min_labels:
                continue
            margin = policy.tolerance + 2.0 * _diff_se(candidate[metric], n_c, active[metric], n_a)
            if candidate[metric] < active[metric] - margin:
                reasons.append(f"{metric} {candidate[metric]:.3f} below active {active[metric]:.3f} "
                               f"- {margin:.3f}")
            elif candidate[metric] < active[metric]:  # a trial: "gate passed", and both figures were lower
                notes.append(f"{metric} {candidate[metric]:.3f} is below the active model's {active[metric]:.3f}, "
                             f"within the margin {margin:.3f} (SD_GATE_RECALL_TOLERANCE and two standard errors): "
                             "no worse by the gate's rule, not better")
        legit = int(active.get("labelled", 0)) - int(active.get("frauds", 0))
        if "precision" in active and legit < int(active.get("frauds", 0)):
            notes.append(f"precision counts labelled events only ({legit} legit, {int(active.get('frauds', 0))} "
                         "fraud): where legit events are labelled by sample it reads higher than on traffic, "
                         "where silence is legit (score --feedback's precision)")
    return GateDecision(not reasons, reasons, candidate, active,
                        {"target_rate": policy.target_rate, "parts": policy.parts, "max_ratio": policy.max_ratio,
                         "tolerance": policy.tolerance, "min_labels": policy.min_labels,
                         "alert_rate_bound": bound, "notes": notes})


def _diff_se(p1: float, n1: int, p2: float, n2: int) -> float:
    """Standard error of the difference of two proportions."""
    return math.sqrt(p1 * (1 - p1) / max(1, n1) + p2 * (1 - p2) / max(1, n2))


def alert_rate_bound(policy: GatePolicy, rows: int) -> float:
    """Rule 2's bound on a candidate's alert rate over ``rows`` held-back events (a share)."""
    p = policy.budget
    return p * policy.max_ratio + 3.0 * math.sqrt(p * (1 - p) / max(1, rows))


# ---- a challenger in shadow on live traffic (pipeline/shadow.py, store/shadow.py) --------------


@dataclass
class ShadowDecision:
    """``outcome``: ``promoted``, ``refused`` or ``extended`` (kept in shadow: too few events or
    labelled frauds yet); ``reasons``: why (refusals) or what it waits for (extensions);
    ``numbers``: the figures it was decided on."""

    outcome: str
    reasons: list[str]
    numbers: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reasons": self.reasons, "numbers": self.numbers}


def shadow_outcomes(records: Sequence[dict[str, Any]], is_fraud: Callable[[str], bool | None]) -> dict[str, Any]:
    """Each model's would-be alerts in the shadow records of one challenger (``records``: the
    shadow topic's JSON, redelivered duplicates collapsed by event id, last wins) against the labels
    known now (``is_fraud(event_id)``: True fraud, False legit, None unlabelled — read as legit,
    as fraud teams read silence): alerts, frauds and labelled events among them, precision (None
    until one of its alerts has a label). The frauds neither model
    alerted are not in the records, so recall is compared as caught frauds (same denominator)."""
    last = {str(r["event_id"]): r for r in records}
    out: dict[str, Any] = {}
    for model in ("champion", "challenger"):
        alerted = [event_id for event_id, r in last.items() if r[model]["alert"]]
        verdicts = [is_fraud(event_id) for event_id in alerted]
        frauds = sum(1 for v in verdicts if v)
        labelled = sum(1 for v in verdicts if v is not None)
        out[model] = {"alerts": len(alerted), "frauds": frauds, "labelled": labelled,
                      # no label on any of its alerts yet: no precision (not 0)
                      "precision": frauds / len(alerted) if alerted and labelled else None}
    return out


def decide_shadow(figures: dict[str, Any], outcomes: dict[str, Any], policy: GatePolicy,
                  min_events: int, max_seconds: float) -> ShadowDecision:
    """Promote, refuse or extend a challenger on its shadow figures (``store/shadow.derive``) and
    labelled outcomes (``shadow_outcomes``). Pure; rules, in order:

    1. **wait** (``extended``) while it has fewer than ``min_events`` events, unless ``age_s`` is
       past ``max_seconds`` (then it is decided on what there is; with no events at all it is
       refused);
    2. it scored (finitely) at least 99 % of the events;
    3. its alert rate on live traffic is within ``alert_rate_bound`` (the budget of its parts) or
       within the champion's own live alert rate (× 1 + ``tolerance``, plus three standard errors):
       live traffic holds the frauds too, which the budget of clean traffic does not count;
    4. labels: with at least ``policy.min_labels`` frauds among either model's alerts, it must
       catch at least the champion's frauds less ``tolerance`` of them and two Poisson standard
       errors (not where the champion alerts above ``alert_rate_bound`` and the challenger within
       it: as in the offline gate's rule 3, an over-budget champion's catch is no reference, and
       the decision's notes say so; a new-user trial saw a challenger at 0.042 with precision 0.54
       refused beside a champion at 0.125 with 0.30), and (both with ``min_labels`` alerts) its
       precision must be at most ``tolerance`` plus two standard errors below the champion's. With
       fewer labelled frauds it waits for labels until ``max_seconds``, then is decided on rules 2-3.

    Analysts review only the champion's alerts: their verdicts favour it, so the comparison is
    conservative (chargebacks reach both models' frauds alike)."""
    events, age = int(figures.get("events", 0)), float(figures.get("age_s", 0.0))
    expired = age >= max_seconds
    champ, chall = outcomes["champion"], outcomes["challenger"]
    numbers = {"events": events, "age_s": round(age, 1), "min_events": min_events, "max_seconds": max_seconds,
               "champion_alert_rate": figures.get("champion_alert_rate"),
               "challenger_alert_rate": figures.get("challenger_alert_rate"),
               "agreement": figures.get("agreement"), "alert_overlap": figures.get("alert_overlap"),
               "champion": champ, "challenger": chall}
    if events < min_events and not expired:
        return ShadowDecision("extended", [f"{events} of {min_events} events scored in shadow"], numbers)
    if events == 0:
        return ShadowDecision("refused", [f"no events scored in shadow within {max_seconds:.0f}s"], numbers)
    reasons: list[str] = []
    scored = int(figures.get("challenger_scored", 0))
    if scored < 0.99 * events:
        reasons.append(f"challenger scored {scored} of {events} events")
    # live traffic holds the frauds too: a rate past the budget's bound is refused only when it is
    # also past the champion's own live rate (plus tolerance and three standard errors)
    bound = alert_rate_bound(policy, events)
    rate = float(figures.get("challenger_alert_rate") or 0.0)
    champ_rate = float(figures.get("champion_alert_rate") or 0.0)
    beside = champ_rate * (1 + policy.tolerance) + 3.0 * math.sqrt(max(champ_rate * (1 - champ_rate), 1e-12) / events)
    numbers["alert_rate_bound"], numbers["champion_rate_bound"] = bound, beside
    numbers["notes"] = []
    if rate > bound and champ_rate > bound:  # rule 3 lets the challenger through beside such a champion: say so
        numbers["notes"].append(
            f"both models alert above the budget's bound {bound:.4f} on live traffic (challenger {rate:.4f}, "
            f"champion {champ_rate:.4f}): live traffic holds frauds the budget does not count, but this far "
            "above it the budget (SD_RETRAIN_TARGET_FPR) or both models may be off")
    if rate > bound and rate > beside:
        reasons.append(f"alert rate {rate:.4f} on live traffic above bound {bound:.4f} and above the champion's "
                       f"{champ_rate:.4f} (+ tolerance and noise: {beside:.4f})")
    frauds = max(champ["frauds"], chall["frauds"])
    if frauds >= policy.min_labels:
        margin = policy.tolerance * champ["frauds"] + 2.0 * math.sqrt(max(1, champ["frauds"]))
        if champ_rate > bound >= rate:  # rule 3 of the offline gate: an over-budget catch is no reference
            numbers["notes"].append(
                f"the champion alerts above the budget's bound {bound:.4f} on live traffic ({champ_rate:.4f}) and "
                f"the challenger within it ({rate:.4f}): the champion's {champ['frauds']} labelled frauds are "
                "bought by alerting more, so the challenger's catch is not held against them (its precision is)")
        elif chall["frauds"] < champ["frauds"] - margin:
            reasons.append(f"caught {chall['frauds']} labelled frauds, champion {champ['frauds']} "
                           f"(allowed {champ['frauds'] - margin:.1f})")
        if min(champ["alerts"], chall["alerts"]) >= policy.min_labels and champ["precision"] is not None \
                and chall["precision"] is not None:
            p_margin = policy.tolerance + 2.0 * _diff_se(chall["precision"], chall["alerts"], champ["precision"],
                                                         champ["alerts"])
            if chall["precision"] < champ["precision"] - p_margin:
                reasons.append(f"precision {chall['precision']:.3f} below champion {champ['precision']:.3f} "
                               f"- {p_margin:.3f}")
    elif not reasons and not expired:
        return ShadowDecision("extended", [f"{frauds} labelled frauds among the alerts, waiting for "
                                           f"{policy.min_labels}"], numbers)
    return ShadowDecision("refused" if reasons else "promoted", reasons, numbers)
