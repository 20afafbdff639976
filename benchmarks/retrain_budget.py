"""Generations of retraining: the live alert rate with the threshold calibrated on traffic vs on
the clean events alone (the rule before 2026-12-07).

The retrainer never trains on the events the workers alerted (``retrain/window.py``). Before,
it then calibrated a candidate's threshold on the clean events alone: a candidate alerted on its
budget of them *and* on most of what its predecessor had alerted. Now the threshold is the
budget's quantile of the training span's traffic, the alerted events no label says are fraud
included (``retrain/job.py::_calibrate_on_traffic``).

Each chain starts from the same model (trained on a first window's legit events, quantile threshold
at the budget). Each generation: a new window of simulated card traffic (``Simulator``, its frauds
included and unlabelled: silence reads as legit, as the retrainer reads it) is scored by the active
model; its alerts are left out of training as the workers' alerts are; ``retrain.job.build_candidate``
trains, calibrates and gates the candidate, which becomes the active model (whether the gate
passed is recorded). The baseline chain is the same code given no alerted events
(``Selection.alerted`` empty), which is exactly the rule before. Every model of both chains is
measured on the same fresh traffic: its alert rate over all events, over the legit ones (the false
positive rate the budget is for), and its recall of the frauds.

With ``--supervised`` every model also has the supervised head (``model/supervised.py``): the
first is trained on the first window's labels, and in each window every fraud is labelled fraud
(its chargeback has arrived) and one legit event in twenty labelled legit (an analyst's sample);
the rest is silence. The head is calibrated on its own rows, as the retrainer does it (unchanged
by the traffic calibration, which is the autoencoder's).

No services: in-process (``offline.score_events``, the worker's scoring code).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import orjson

from benchmarks.results import write_section
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.supervised import HeadConfig, rows_for_head, train_head
from stream_detector.model.train import TrainConfig, train
from stream_detector.offline import score_events
from stream_detector.retrain.job import build_candidate
from stream_detector.retrain.window import Selection, WindowEntry
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator


def say(msg: str) -> None:
    print(f"[retrain-budget] {msg}", file=sys.stderr, flush=True)


def rates(bundle: Bundle, events: list[dict[str, Any]], fraud: np.ndarray) -> dict[str, float]:
    """Alert rate over all ``events``, over the legit ones, and the frauds' recall."""
    scored = score_events(bundle, events)
    flagged = scored.flagged(bundle.threshold, bundle.head_threshold) & scored.valid
    return {"all": float(flagged.mean()), "legit": float(flagged[~fraud].mean()),
            "recall": float(flagged[fraud].mean()) if fraud.any() else float("nan")}


def chain(first: Bundle, windows: list[tuple[list[dict[str, Any]], list[str]]], settings: Settings,
          on_traffic: bool, fresh: list[dict[str, Any]], fraud: np.ndarray, labels: str,
          delay: float = 0.0, delay_known: bool = False) -> list[dict[str, Any]]:
    """One chain of generations; per generation its figures on ``fresh``, and its gate's. ``labels``:
    ``none``; ``sampled``: each window's frauds labelled fraud and every 20th legit event legit;
    ``reviewed``: every fraud and every alerted event labelled (analysts review the alert queue);
    ``queue``: every fraud labelled by its chargeback, and one alerted event in four reviewed by an
    analyst (fraud or legit; trial P's deployment: the alerts nobody labelled are all legit).
    ``delay``: the newest share of each window has no label yet (chargebacks and reviews come
    later): its frauds read as silence, trained on where no alert left them out. ``delay_known``:
    the retrainer is told that delay (``SD_RETRAIN_LABEL_DELAY_S``), as ``TrainingWindow.select``
    tells it: the labelled part's alerts have their labels."""
    active, out = first, []
    for n, (window, patterns) in enumerate(windows, 1):
        labelled_before = int(round(len(window) * (1.0 - delay)))
        scored = score_events(active, window)
        alerted = scored.flagged(active.threshold, active.head_threshold) & scored.valid
        selection = Selection(left_out={"alerted": int(alerted.sum())})
        if delay_known:
            selection.matured_before_s = float(labelled_before)  # entry i's record time is i
        for i, (event, hit, pattern) in enumerate(zip(window, alerted.tolist(), patterns, strict=True)):
            entry = WindowEntry(float(i), 0, i, str(event["event_id"]), orjson.dumps(event))
            label = None
            if i >= labelled_before:
                pass  # not labelled yet
            elif labels != "none" and pattern != "legit":
                label = "fraud"
            elif (labels == "sampled" and i % 20 == 0) or (labels == "reviewed" and hit) or (
                    labels == "queue" and hit and i % 4 == 0):
                label = "legit"
            if label is not None:
                selection.labelled.append((entry, label))
                # a review of an alert: any label of "reviewed"; of "sampled", the analyst's legit sample (its
                # fraud labels are chargebacks, which only ever say fraud and are no review); of "queue", every
                # fourth alert, a fraud's verdict too
                if hit and (labels == "reviewed" or label == "legit" or (labels == "queue" and i % 4 == 0)):
                    if label == "fraud":
                        selection.reviewed_fraud += 1
                    else:
                        selection.reviewed_legit += 1
            if label == "fraud":
                if hit and selection.matured(entry):
                    selection.fraud_alerts_matured += 1
                elif hit:
                    selection.fraud_alerts_young += 1
                continue  # left out of training and of the budget's traffic
            if not hit:
                selection.clean.append(entry)
            elif on_traffic:
                selection.alerted.append(entry)
        candidate = build_candidate(selection, settings, active, f"generation {n}")
        if candidate.bundle is None or candidate.decision is None:
            raise SystemExit(f"generation {n}: no candidate ({candidate.message})")
        gate = candidate.decision.to_dict()
        active = candidate.bundle
        out.append({**rates(active, fresh, fraud), "passed": gate["passed"],
                     "gate_candidate": gate["candidate"]["alert_rate"],
                     "gate_active": (gate["active"] or {}).get("alert_rate", float("nan"))})
        say(f"{'traffic' if on_traffic else 'clean only'} generation {n}: {out[-1]}")
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks retrain-budget", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generations", type=int, default=4, help="retrainings per chain")
    p.add_argument("--window", type=int, default=20_000, help="events per retraining window")
    p.add_argument("--budget", type=float, default=0.005, help="the alert budget (share of legit traffic)")
    p.add_argument("--fraud-rate", type=float, default=0.002, help="the simulator's fraud share")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of every model")
    p.add_argument("--supervised", action="store_true", help="every model with the supervised head (labels as above)")
    p.add_argument("--labels", choices=["none", "sampled", "reviewed", "queue"], default=None,
                   help="the windows' labels: none (default), sampled (frauds and one legit event in twenty; the "
                        "default with --supervised), reviewed (frauds and every alerted event), queue (frauds by "
                        "their chargebacks, and one alerted event in four reviewed)")
    p.add_argument("--label-delay", type=float, default=0.0,
                   help="the newest share of each window (0-1) has no label yet: chargebacks and reviews arrive "
                        "later, its frauds read as silence (default 0: every label known)")
    p.add_argument("--delay-known", action="store_true",
                   help="with --label-delay: the retrainer is told the delay (SD_RETRAIN_LABEL_DELAY_S), so an older "
                        "alert nobody labelled is legit and the older alerts' labels give the newer ones' legit share")
    p.add_argument("--write", action="store_true", help="write the retrain-budget section of RESULTS.md")
    args = p.parse_args(argv)
    started = time.monotonic()
    sim = Simulator(seed=1, accounts=3000, run_id="budget")
    events, patterns = sim.batch(args.window, args.fraud_rate)
    legit = [e for e, pattern in zip(events, patterns, strict=True) if pattern == "legit"]
    result = train(legit, TrainConfig(epochs=args.epochs, threshold_method="quantile", target_fpr=args.budget))
    if args.supervised:
        x, y = rows_for_head(result.spec, result.schema, events, [p != "legit" for p in patterns])
        result.head, result.calibration["supervised"] = train_head(result.head, x, y,
                                                                   HeadConfig(target_fpr=args.budget), say)
    first = build_bundle(result)
    windows = [sim.batch(args.window, args.fraud_rate) for _ in range(args.generations)]
    fresh, fresh_patterns = Simulator(seed=2, accounts=3000, run_id="fresh").batch(2 * args.window, args.fraud_rate)
    fraud = np.array([pattern != "legit" for pattern in fresh_patterns])
    settings = Settings(**{"retrain_epochs": args.epochs, "retrain_target_fpr": args.budget})
    zero = rates(first, fresh, fraud)
    labels = args.labels or ("sampled" if args.supervised else "none")
    if not 0.0 <= args.label_delay < 1.0:
        p.error("--label-delay is a share of the window, from 0 to below 1")
    if args.delay_known and not args.label_delay:
        p.error("--delay-known needs --label-delay")
    runs = {name: chain(first, windows, settings, name == "traffic", fresh, fraud, labels, args.label_delay,
                        args.delay_known)
            for name in ("clean only", "traffic")}
    lines = [f"Simulated card traffic (`Simulator`, 3,000 accounts, {args.fraud_rate:.1%} frauds, "
             f"labels: {labels}), "
             f"windows of {args.window:,} events, alert budget {args.budget:.2%}, {args.epochs} epochs; every model "
             f"measured on the same fresh {len(fresh):,} events ({int(fraud.sum())} frauds). Generation 0 is the "
             f"first model (trained on a first window's legit events): alert rate {zero['all']:.2%}, on legit events "
             f"{zero['legit']:.2%}, recall {zero['recall']:.0%}. *clean only (before)*: the threshold calibrated on "
             "the clean events alone (the same code given no alerted events); *traffic*: on the training span's "
             "traffic, the alerted events included. *gate*: the held-back alert rates the gate compared (candidate "
             "/ active)." + (" Every model has the supervised head (each part calibrated to the budget: the "
                             "decision's budget is twice it)." if args.supervised else "")
             + {"none": " No labels: silence reads as legit.",
                "sampled": " Frauds labelled, one legit event in twenty labelled.",
                "reviewed": " Frauds labelled, and every alerted event (analysts review the alert queue).",
                "queue": " Frauds labelled (chargebacks), and one alerted event in four reviewed by an analyst: the "
                         "alerts nobody labelled are legit."}[labels]
             + (f" Labels delayed: the newest {args.label_delay:.0%} of each window has none yet (its frauds read as "
                "silence: trained on where no alert left them out)." if args.label_delay else "")
             + (" The retrainer is told the delay (`SD_RETRAIN_LABEL_DELAY_S`): an older alert nobody labelled is "
                "legit, and the older alerts' labels give the newer unlabelled ones' legit share." if args.delay_known
                else ""),
             "",
             "| generation | threshold on | alert rate, all | alert rate, legit | recall | gate passed | "
             "gate: candidate / active |", "|---:|---|---:|---:|---:|---|---|"]
    for n in range(args.generations):
        for name in ("clean only", "traffic"):
            r = runs[name][n]
            label = "clean events only (before)" if name == "clean only" else "traffic"
            lines.append(f"| {n + 1} | {label} | {r['all']:.2%} | {r['legit']:.2%} | {r['recall']:.0%} | "
                         f"{'yes' if r['passed'] else 'no'} | {r['gate_candidate']:.4f} / {r['gate_active']:.4f} |")
    lines += ["", f"Run in {time.monotonic() - started:.0f}s."]
    body = "\n".join(lines)
    print(body)
    if args.write:
        flags = " ".join(a for a in argv if a != "--write")
        name = "retrain-budget" + ("-supervised" if args.supervised else "") + (
            f"-{args.labels}" if args.labels else "") + ("-delayed" if args.label_delay else "") + ("-known" if args.delay_known else "")
        write_section(name, "Retraining generations: the alert budget on traffic vs on clean events "
                            f"(`python -m benchmarks retrain-budget{' ' + flags if flags else ''}`)", body)
    return 0
