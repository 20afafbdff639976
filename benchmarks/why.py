"""Why an alert fired: does ``top_features`` name the field that made the event unusual?

Two rankings of an alert's fields, on the same model and events:

* **error** (the rule before 2026-12-07): each field's reconstruction error, largest first;
* **why** (now, ``Scorer.why``): the fields whose typical values (a number's median over the
  model's validation rows, a category's most frequent value) lower the score most, chosen one at
  a time until the score is under the threshold (greedy occlusion): often one or two fields, at
  most three.

An autoencoder reconstructs an unusual value partly into the other columns, so the largest errors
can sit on ordinary fields (a new-user trial: an event whose only unusual field was
``tx_count_1h`` alerted with three other fields named).

Part 1, **one field made unusual**: fresh legit events of the simulator, one field changed at a
time (a number to its training 99.9th percentile times ``--moderate`` or ``--strong``, except
``seconds_since_last`` set to 1 s; a boolean flipped; a category to a value never seen); of the
changed events that alert, the share whose changed field each rule names first, and among its
top 3. Part 2, **the simulator's injected frauds**: for each pattern, the share of its alerts whose
top 3 holds a field the pattern changes (``simulate.py``), how many fields are named, and the
fields named most often. Part 3, **the demo's models with account and terminal history and
labels**: how often the fields named clear the alert, and which is named first for a compromised
terminal's frauds, with each history feature a unit of its own and with a key's history and its
known frauds one unit each (``EntitySpec.history_units``). Also the cost: ``why`` scores each alerted row once per field it tries,
on this model and on one with account and terminal history (69 fields).

No services: in-process (the worker's ``Scorer``); the model is trained as ``train --label-column
label --normal-label legit --exclude pattern`` would (the simulator's legit events, quantile
threshold).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

from benchmarks.results import write_section
from stream_detector.model.bundle import build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.pipeline.score import WHY_CANDIDATES, WHY_LATER, Scorer
from stream_detector.simulate import Simulator

# the fields each injected pattern changes (simulate.py, Simulator.batch)
PATTERN_FIELDS = {
    "card_testing": {"amount", "amount_to_avg", "channel", "card_present", "merchant_category", "tx_count_1h",
                     "seconds_since_last"},
    "account_takeover": {"device_new", "country", "distance_from_home_km", "amount", "amount_to_avg", "channel",
                         "card_present", "tx_count_1h"},
    "unusual_merchant_country": {"merchant_category", "country", "distance_from_home_km", "channel", "card_present"},
    "amount_spike": {"amount", "amount_to_avg"},
}


def say(msg: str) -> None:
    print(f"[why] {msg}", file=sys.stderr, flush=True)


def rankings(scorer: Scorer, events: list[dict[str, Any]], threshold: float, candidates: int = WHY_CANDIDATES
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """For the alerting rows of ``events``: their indices, the three fields each rule names
    (n_alerts × 3, field indices, first first; -1: ``why`` named fewer), and the seconds ``why``
    took."""
    x, bad = scorer.bundle.spec.transform(events)
    assert not bad, bad
    per_column = scorer.errors(x)
    scores = per_column.mean(axis=1, dtype=np.float64)
    alerted = np.flatnonzero(scores > threshold)
    errors = scorer.field_errors(per_column[alerted])
    started = time.perf_counter()
    why = scorer.why(x[alerted], scores[alerted], threshold, 3, per_column[alerted], candidates)
    took = time.perf_counter() - started
    assert why is not None, "the model has typical values"
    # as field indices (a unit is named after its field; an entity feature of a field's value is in its unit)
    # (a key's history, one unit, has no field of its name: numbered after the fields)
    fields = scorer.fields
    named = np.array([[(fields.index(why.units[j]) if why.units[j] in fields else len(fields) + j) if j >= 0 else -1
                       for j in row] for row in why.named], dtype=np.int64).reshape(why.named.shape)
    return alerted, np.argsort(-errors, axis=1, kind="stable")[:, :3], named, took


def _entity_cost(epochs: int, budget: float) -> str:
    """``why``'s cost per alert on a model with account and terminal history (raw simulated card
    events, windows 1h/1d/7d/30d), on its own alerts among 20,000 events with 1 % frauds."""
    from stream_detector.entity import EntitySpec, enrich_history

    spec = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400, 7 * 86_400, 30 * 86_400))
    events, patterns = Simulator(seed=7, accounts=2000, run_id="whye", raw=True).batch(
        20_000, 0.01, now_ms=1_790_000_000_000, span_ms=14 * 86_400_000)
    for n, event in enumerate(events):
        event["terminal_id"] = f"t{n % 500}"
    rows = enrich_history(spec, events)
    legit = [r for r, p_ in zip(rows, patterns, strict=True) if p_ == "legit"]
    bundle = build_bundle(train(legit, TrainConfig(epochs=epochs, threshold_method="quantile", target_fpr=budget),
                                entity=spec))
    scorer = Scorer(bundle)
    alerted, _, named, took = rankings(scorer, rows, bundle.threshold)
    return (f"{1e6 * took / max(len(alerted), 1):,.0f} µs per alert for a {len(scorer.fields)}-field model with "
            f"account and terminal history ({len(alerted):,} alerts of 20,000 events, "
            f"{(named >= 0).sum(axis=1).mean():.1f} fields named on average)")


def per_feature_units(scorer: Scorer) -> None:
    """The baseline of Part 3: ``scorer``'s why units as before 2026-12-07 evening, each entity
    feature of a key's history a unit of its own (those computed from an input field's value
    still join that field's unit)."""
    spec = scorer.bundle.entity
    assert spec is not None
    derived = spec.derived_from()
    fields = scorer.fields
    owner = [derived[f] if f in derived and derived[f] in fields else f for f in fields]
    units = list(dict.fromkeys(owner))
    of_field = np.array([units.index(o) for o in owner], dtype=np.int64)
    scorer.units, scorer.column_unit = units, of_field[scorer.column_field]
    scorer.unit_fields = [np.flatnonzero(of_field == u).tolist() for u in range(len(units))]
    scorer._unit_matrix = np.zeros((scorer.bundle.spec.width, len(units)), dtype=np.float64)
    scorer._unit_matrix[np.arange(scorer.bundle.spec.width), scorer.column_unit] = 1.0


def history_units(cards: int, epochs: int) -> list[str]:
    """Part 3: the demo's two models (``stream_detector/demo.py``: Handbook-style raw events,
    account and terminal history, windows 1d/7d/30d; *labels* adds both keys' label features;
    trained on the third week's legit rows as the demo does, autoencoder only) score every event
    with the labels due by the end (point in time); of each model's alerts, the share the fields
    named clear, and per pattern the unit named first, with each history feature a unit of its
    own (the baseline) and with a key's history and its frauds one unit each."""
    from stream_detector.demo import DAY_MS, DemoConfig
    from stream_detector.entity import EntitySpec, enrich_history
    from stream_detector.feedback import Label, parse_label
    from stream_detector.offline import score_events
    from stream_detector.simulate import HandbookSimulator, LabelDelays

    config = DemoConfig(cards=cards, terminals=2 * cards)
    end = 1_796_000_000_000
    train_from = end - 21 * DAY_MS
    world = HandbookSimulator(seed=config.seed, customers=cards, terminals=2 * cards, run_id="whyh",
                              scenarios=config.scenarios()).generate(cards * 70, now_ms=end, span_ms=35 * DAY_MS)
    events, patterns = world.events(), world.patterns()
    due = world.label_columns(LabelDelays())[3] <= end
    labels = [lab for lab in map(parse_label, [r for r, d in zip(world.labels(), due.tolist(), strict=True) if d])
              if isinstance(lab, Label)]
    week = (world.timestamp >= train_from) & (world.timestamp < train_from + 7 * DAY_MS)
    base: dict[str, Any] = dict(keys=("account_id", "terminal_id"), windows=(86_400, 7 * 86_400, 30 * 86_400),
                                distinct_fields=())
    lines = [f"Part 3: the demo's models (`stream_detector/demo.py`, {cards:,} cards, {2 * cards:,} terminals, "
             f"{len(events):,} Handbook-style raw events over 35 days; *history*: account and terminal history, "
             "windows 1d/7d/30d; *labels*: the same and both keys' label features; autoencoders trained on the third "
             "week's legit events, quantile threshold at 0.5 %), every event scored with the labels due by the end. "
             "*each feature a unit*: a key's history features made typical one at a time (the rule before "
             "2026-12-07 evening); *a key's history one unit*: `KEY__history` and `KEY__frauds` (now). *cleared*: the "
             "share of the model's alerts whose named units, made typical, take the score to the threshold or under.",
             "", "| model | rule | alerts | cleared | units named | first named, compromised terminals "
             "| first named, compromised cards | first named, legit alerts |", "|---|---|---:|---:|---:|---|---|---|"]
    for name, spec in {"history": EntitySpec(**base),
                       "labels": EntitySpec(**base, label_keys=("terminal_id", "account_id"))}.items():
        rows = enrich_history(spec, events, labels=labels if spec.label_keys else ())
        normal = [r for r, w, p_ in zip(rows, week.tolist(), patterns, strict=True) if w and p_ == "legit"]
        say(f"Part 3: training '{name}' on {len(normal):,} legit events of the training week")
        bundle = build_bundle(train(normal, TrainConfig(epochs=epochs, seed=config.seed, threshold_method="quantile",
                                                        target_fpr=config.target_fpr), entity=spec))
        scored = score_events(bundle, events, labels=labels if spec.label_keys else (), keep_errors=True)
        assert scored.features is not None and scored.per_feature is not None
        alerted = np.flatnonzero(scored.scores > bundle.threshold)
        of = np.array(patterns, dtype=object)[alerted]
        for rule in ("each feature a unit", "a key's history one unit"):
            scorer = Scorer(bundle)
            if rule == "each feature a unit":
                per_feature_units(scorer)
            why = scorer.why(scored.features[alerted], scored.scores[alerted], bundle.threshold, 3,
                             scored.per_feature[alerted])
            assert why is not None
            count = (why.named >= 0).sum(axis=1)
            last = why.after[np.arange(len(alerted)), count - 1]
            cells = []
            for pattern in ("compromised_terminal", "compromised_card", "legit"):
                mine = np.flatnonzero(of == pattern)
                top = Counter(why.units[j] for j in why.named[mine, 0].tolist()).most_common(3)
                cells.append(f"{len(mine):,}: " + ", ".join(f"{u} {n / max(len(mine), 1):.0%}" for u, n in top))
            lines.append(f"| {name} | {rule} | {len(alerted):,} | {(last <= bundle.threshold).mean():.0%} | "
                         f"{count.mean():.2f} | {' | '.join(cells)} |")
            say(lines[-1])
    return lines


def changed(event: dict[str, Any], name: str, ceiling: dict[str, float], factor: float) -> dict[str, Any]:
    out = dict(event)
    value = event.get(name)
    if isinstance(value, bool):
        out[name] = not value
    elif isinstance(value, (int, float)):
        out[name] = 1.0 if name == "seconds_since_last" else ceiling[name] * factor
    else:
        out[name] = "never_seen"
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks why", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=3000, help="fresh legit events changed per field")
    p.add_argument("--moderate", type=float, default=1.5, help="moderate: the 99.9th percentile times this")
    p.add_argument("--strong", type=float, default=5.0, help="strong: the 99.9th percentile times this")
    p.add_argument("--epochs", type=int, default=20, help="training epochs")
    p.add_argument("--budget", type=float, default=0.005, help="the model's quantile threshold (share of legit)")
    p.add_argument("--cards", type=int, default=1000, help="Part 3: the demo's cards (0: no Part 3)")
    p.add_argument("--demo-epochs", type=int, default=8, help="Part 3: training epochs (the demo's)")
    p.add_argument("--write", action="store_true", help="write the why section of RESULTS.md")
    args = p.parse_args(argv)
    started = time.monotonic()
    history, patterns = Simulator(seed=5, accounts=2000, run_id="why").batch(20_000, 0.01)
    legit = [e for e, pattern in zip(history, patterns, strict=True) if pattern == "legit"]
    say(f"training on {len(legit):,} legit events")
    bundle = build_bundle(train(legit, TrainConfig(epochs=args.epochs, threshold_method="quantile",
                                                   target_fpr=args.budget)))
    scorer = Scorer(bundle)
    fields = scorer.fields
    fresh, _ = Simulator(seed=6, accounts=2000, run_id="fresh").batch(args.events, 0.0)
    numbers = [c.name for c in bundle.spec.numeric]
    ceiling = {name: float(np.quantile([float(e[name]) for e in legit], 0.999))  # type: ignore[arg-type]
               for name in numbers}
    lines = [f"Simulated card traffic (`Simulator`, velocity fields), a model trained on {len(legit):,} legit "
             f"events ({args.epochs} epochs, quantile threshold at {args.budget:.1%}). Part 1: {args.events:,} fresh "
             "legit events, one field changed at a time; *alerts*: the changed events that alert; *first* / *top 3*: "
             "the share of them whose changed field the rule names first / at all (of at most three); *fields named*: how "
             "many the rule names on average (the error rule always three).", "",
             "| field changed | how | alerts | error: first | error: named | why: first | why: named | "
             "why: fields named |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    took = rows = 0.0
    for name in fields:
        sample = fresh[0].get(name)
        hows = ([("flipped", 0.0)] if isinstance(sample, bool) else [("set to 1 s", 0.0)]
                if name == "seconds_since_last" else [(f"p99.9 × {args.moderate:g}", args.moderate),
                                                      (f"p99.9 × {args.strong:g}", args.strong)]
                if name in numbers else [("a value never seen", 0.0)])
        for how, factor in hows:
            alerted, by_error, by_part, seconds = rankings(scorer, [changed(e, name, ceiling, factor) for e in fresh],
                                                           bundle.threshold)
            took, rows = took + seconds, rows + len(alerted)
            if not len(alerted):
                lines.append(f"| {name} | {how} | 0 | | | | | |")
                continue
            j = fields.index(name)
            cells = [f"{(ranked[:, 0] == j).mean():.0%} | {(ranked[:, :3] == j).any(axis=1).mean():.0%}"
                     for ranked in (by_error, by_part)]
            lines.append(f"| {name} | {how} | {len(alerted):,} | {cells[0]} | {cells[1]} | "
                         f"{(by_part >= 0).sum(axis=1).mean():.1f} |")
            say(lines[-1])
    lines += ["", f"Part 2: the simulator's injected frauds ({sum(p != 'legit' for p in patterns):,} of the "
              "20,000 history events, scored by the same model); *a changed field named*: the share of the "
              "pattern's alerts of which the rule names at least one field the pattern changes; then how many "
              "fields `why` names, and the three fields each rule names most often.", "",
              "| pattern | alerts | error: a changed field named | why: a changed field named | why: fields named "
              "| error: named most | why: named most |", "|---|---:|---:|---:|---:|---|---|"]
    for pattern, changes in PATTERN_FIELDS.items():
        events = [e for e, p_ in zip(history, patterns, strict=True) if p_ == pattern]
        alerted, by_error, by_part, seconds = rankings(scorer, events, bundle.threshold)
        took, rows = took + seconds, rows + len(alerted)
        hits, common = [], []
        for ranked in (by_error, by_part):
            top = [[fields[j] for j in row[:3] if j >= 0] for row in ranked.tolist()]
            hits.append(np.mean([bool(changes & set(t)) for t in top]) if top else float("nan"))
            counted = Counter(f for t in top for f in t).most_common(3)
            common.append(", ".join(f"{f} ({n})" for f, n in counted))
        lines.append(f"| {pattern} | {len(alerted):,} | {hits[0]:.0%} | {hits[1]:.0%} | "
                     f"{(by_part >= 0).sum(axis=1).mean():.1f} | {common[0]} | {common[1]} |")
        say(lines[-1])
    if args.cards:
        lines += ["", *history_units(args.cards, args.demo_epochs)]
    per_alert = 1e6 * took / max(rows, 1)
    entity_cost = _entity_cost(args.epochs, args.budget)
    lines += ["", f"Cost of `why` (one extra scoring of each alerted row per field tried: first the "
              f"{WHY_CANDIDATES} with the largest errors, then at each further step the first step's "
              f"{WHY_LATER} runners-up not yet made typical, then one fewer), on the worker's `Scorer`, one thread: "
              f"{per_alert:,.0f} µs per alert for this {len(fields)}-field model ({rows:,.0f} alerts); "
              f"{entity_cost}.",
              "", f"Run in {time.monotonic() - started:.0f}s."]
    body = "\n".join(lines)
    print(body)
    if args.write:
        flags = " ".join(a for a in argv if a != "--write")
        write_section("why", "Why an alert fired: the fields named by their errors vs the fields that clear it "
                             f"(`python -m benchmarks why{' ' + flags if flags else ''}`)", body)
    return 0
