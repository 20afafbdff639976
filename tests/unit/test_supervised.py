"""The supervised head (``model/supervised.py``): better ranking than the autoencoder where labels
exist, calibrated, one TorchScript call, and the decision rule (either part above its threshold)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from stream_detector.entity import EntitySpec, enrich_history
from stream_detector.errors import TrainingError
from stream_detector.feedback import Label, Verdicts, parse_label
from stream_detector.model.bundle import build_bundle, bundle_from_files
from stream_detector.model.supervised import HeadConfig, expected_calibration_error, rows_for_head, train_head
from stream_detector.model.train import TrainConfig, train
from stream_detector.offline import score_events
from stream_detector.pipeline.score import Scorer, scores_of
from stream_detector.pipeline.threshold import Decision
from stream_detector.simulate import HandbookSimulator
from stream_detector.store import Threshold

DAY = 86_400_000


SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(86_400, 7 * 86_400), distinct_fields=(),
                  label_keys=("terminal_id", "account_id"))


@pytest.fixture(scope="module")
def labelled() -> tuple[list[dict[str, Any]], np.ndarray, list[Label]]:
    """Handbook-like card events with their delayed labels: compromised terminals look like any
    other transaction, to an autoencoder and to history alone; the terminal's known frauds (label
    features) and the labels (the head) reveal them."""
    sim = HandbookSimulator(seed=11, customers=300, terminals=1000, run_id="sup")
    batch = sim.generate(6000, now_ms=1_790_000_000_000, span_ms=20 * DAY)
    fraud = np.array([p != "legit" for p in batch.patterns()])
    labels = [lab for lab in map(parse_label, batch.labels()) if isinstance(lab, Label)]
    assert 300 < fraud.sum() < 1000
    return batch.events(), fraud, labels  # type: ignore[return-value]


def _trained(events: list[dict[str, Any]], fraud: np.ndarray) -> Any:
    normal = [e for e, f in zip(events, fraud.tolist(), strict=True) if not f]
    return train(normal, TrainConfig(epochs=4, seed=0, threshold_method="quantile", target_fpr=0.02), entity=SPEC)


def test_the_head_ranks_frauds_better_than_the_autoencoder_and_is_calibrated(labelled: Any) -> None:
    """Trained on the first 4,000 events (point-in-time features, labels as known), evaluated on
    the 2,000 after them."""
    events, fraud, labels = labelled
    rows = enrich_history(SPEC, events, labels=labels)
    result = _trained(rows[:4000], fraud[:4000])
    x, y = rows_for_head(result.spec, result.schema, rows[:4000], fraud[:4000].tolist())
    module, entry = train_head(result.head, x, y, HeadConfig(target_fpr=0.02, seed=0), lambda _m: None)
    result.head, result.calibration["supervised"] = module, entry
    bundle = bundle_from_files(build_bundle(result).files)  # exported and verified like a published one
    assert bundle.supervised is not None and bundle.head_threshold == entry["threshold"]
    scored = score_events(bundle, events, labels=labels)
    assert scored.probability is not None and ((scored.probability >= 0) & (scored.probability <= 1)).all()
    later = slice(4000, None)
    ap_head = average_precision_score(fraud[later], scored.probability[later])
    ap_ae = average_precision_score(fraud[later], scored.scores[later])
    assert ap_head > ap_ae + 0.1, (ap_head, ap_ae)
    v = entry["validation"]
    assert v["expected_calibration_error"] < 0.05 and abs(v["mean_probability"] - v["fraud_share"]) < 0.03
    assert v["flag_rate_legit"] <= 0.02  # at most --target-fpr of the held-back legit rows (docs/feedback.md)
    # one call: the same per-feature errors as the autoencoder's own head, the probability after them
    errors, probability = Scorer(bundle).outputs(x[:50])
    plain = build_bundle(_trained(rows[:4000], fraud[:4000]))  # same seed, same rows: the same autoencoder
    np.testing.assert_array_equal(errors, Scorer(plain).errors(x[:50]))
    assert probability is not None and probability.shape == (50,)


def test_the_heads_threshold_counts_the_alerted_events_nobody_labelled_as_legit_as_far_as_it_believes(
        labelled: Any) -> None:
    """benchmarks retrain-budget --supervised: calibrated on its labelled and clean rows alone, each
    retrained head alerted again on what the one before had alerted (legit alert rate 1.18 % → 1.94,
    2.53, 2.91, 3.68 % for a 1 % budget of two parts). ``traffic`` rows (the alerted events nobody
    labelled) now count, each weighted by 1 − its probability: a legit-looking one (a false positive
    of the model before) fully, a fraud-looking one (a chargeback still on its way) hardly."""
    events, fraud, labels = labelled
    rows = enrich_history(SPEC, events, labels=labels)
    result = _trained(rows[:4000], fraud[:4000])
    x, y = rows_for_head(result.spec, result.schema, rows[:4000], fraud[:4000].tolist())
    config = HeadConfig(target_fpr=0.02, seed=0)
    _, plain = train_head(result.head, x, y, config, lambda _m: None)
    _, same = train_head(result.head, x, y, config, lambda _m: None, np.zeros((0, x.shape[1]), np.float32))
    assert "traffic" not in plain and same["threshold"] == plain["threshold"]
    frauds = np.repeat(x[y][:40], 10, axis=0)  # 400 fraud-looking rows: each counts as legit about 1 - p
    _, fraudish = train_head(result.head, x, y, config, lambda _m: None, frauds)
    traffic = fraudish["traffic"]
    assert traffic["alerted_events"] == 400 and traffic["threshold_on_rows"] == plain["threshold"]
    assert fraudish["threshold"] >= plain["threshold"]
    # counted whole, 400 rows against a 2 % budget of ~3,000 legit rows would push the threshold past most of
    # them; weighted by how legit the head believes they are, it still alerts most of them
    assert traffic["alerted_above_threshold"] >= 0.8 * traffic["alerted_above_rows_threshold"] > 0, traffic
    # older than the retrainer's label delay, nobody labelled them: legit, each counts whole (SD_RETRAIN_LABEL_DELAY_S)
    _, known = train_head(result.head, x, y, config, lambda _m: None, frauds, np.ones(len(frauds), dtype=bool))
    assert known["traffic"]["known_legit"] == 400 and traffic["known_legit"] == 0
    assert known["threshold"] > fraudish["threshold"]
    assert known["traffic"]["alerted_above_threshold"] < traffic["alerted_above_threshold"]


def test_either_part_above_its_threshold_flags_the_event_and_says_which() -> None:
    scores = np.array([0.5, 3.0, 0.5, 3.0])
    probability = np.array([0.01, 0.01, 0.9, 0.9])
    decision = Decision.of(scores, "m", Threshold(1.0, 7, "m", head=0.5), probability)
    assert decision.rows.tolist() == [1, 2, 3]
    assert [decision.fired(r) for r in decision.rows.tolist()] == [["autoencoder"], ["supervised"],
                                                                   ["autoencoder", "supervised"]]
    alone = Decision.of(scores, "m", Threshold(1.0, 7, "m"), None)  # no head: the autoencoder alone
    assert alone.rows.tolist() == [1, 3] and alone.fired(1) == ["autoencoder"]
    no_head_threshold = Decision.of(scores, "m", Threshold(1.0, 7, "m", head=None), probability)
    assert no_head_threshold.rows.tolist() == [1, 3]
    assert (scores_of(np.ones((2, 3), dtype=np.float32)) == 1.0).all()


def test_too_few_frauds_leave_the_autoencoder_alone(labelled: Any) -> None:
    events, fraud, _ = labelled
    rows = enrich_history(SPEC, events[:1500])
    result = _trained(rows, fraud[:1500])
    x, y = rows_for_head(result.spec, result.schema, rows, [False] * 1490 + [True] * 10)
    with pytest.raises(TrainingError, match="at least 100"):
        train_head(result.head, x, y, HeadConfig(), lambda _m: None)


def test_expected_calibration_error_is_zero_for_a_calibrated_forecast() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = rng.uniform(0, 1, p.size) < p
    assert expected_calibration_error(p, y) < 0.01
    assert expected_calibration_error(np.full(1000, 0.9), np.zeros(1000, dtype=bool)) == pytest.approx(0.9)


def test_train_supervised_and_score_from_the_command_line(labelled: Any, tmp_path: Any,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The README's flow on a small file: the bundle has a head; train and score report its
    figures; score writes one probability per row and flags by the worker's rule."""
    import csv

    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.model.bundle import load_bundle

    events, _fraud, labels = labelled
    write_csv(tmp_path / "h.csv", events)
    (tmp_path / "fb.jsonl").write_bytes(b"".join(lab.to_json() + b"\n" for lab in labels))
    assert main(["train", "--input", str(tmp_path / "h.csv"), "--out", str(tmp_path / "m"), "--feedback",
                 str(tmp_path / "fb.jsonl"), "--entity-key", "account_id", "--entity-key", "terminal_id",
                 "--entity-windows", "1d,7d", "--entity-distinct", "", "--label-key", "terminal_id", "--supervised",
                 "--threshold-method", "quantile", "--target-fpr", "0.02", "--epochs", "2"]) == 0
    bundle = load_bundle(tmp_path / "m")
    assert bundle.supervised is not None and bundle.entity is not None and bundle.entity.label_keys == ("terminal_id",)
    assert "the supervised head on it: rows=6000" in capsys.readouterr().err
    assert main(["score", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "h.csv"), "--out",
                 str(tmp_path / "s.csv"), "--feedback", str(tmp_path / "fb.jsonl")]) == 0
    err = capsys.readouterr().err
    assert "the supervised head against them: rows=6000" in err
    with open(tmp_path / "s.csv") as handle:
        rows = list(csv.DictReader(handle))
    # the decision line is the worker's rule against the labels: the written flags and the file's verdicts
    verdicts = Verdicts(labels)
    truth = [bool(verdicts.verdict(e["event_id"])) for e in events]
    alerted = [r["is_anomaly"] == "1" for r in rows]
    tp = sum(a and t for a, t in zip(alerted, truth, strict=True))
    assert (f"the decision (alert when either fires, as the worker does) against them: alerts={sum(alerted)}, "
            f"precision={tp / sum(alerted):.4f}, recall={tp / sum(truth):.4f}") in err
    assert len(rows) == 6000 and all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)
    head, threshold = bundle.head_threshold, bundle.threshold
    assert head is not None
    assert all(r["is_anomaly"] == str(int(float(r["score"]) > threshold or float(r["probability"]) > head)) for r in rows)
    assert any(float(r["probability"]) > head and float(r["score"]) <= threshold for r in rows)  # the head alone


def test_the_heads_attributions_are_the_log_odds_each_unit_takes_off_and_name_the_label_features(
        labelled: Any) -> None:
    """``Scorer.head_attributions`` (the alerts' ``head_top_features``): per why-unit, the head's
    calibrated log-odds of the row less those with the unit at its typical value, through the
    exported TorchScript module; a row of typical values has none. Trial M found gradient × input
    at 246 log-odds on an event of probability 0.04; these stay within the log-odds' range. A
    bundle without typical values keeps gradient × input of the eager head's logit per field. On
    this data, where compromised terminals show only through their known frauds, the frauds the
    head flags are mostly explained by the terminal's frauds."""
    import dataclasses

    import torch

    events, fraud, labels = labelled
    rows = enrich_history(SPEC, events, labels=labels)
    result = _trained(rows[:4000], fraud[:4000])
    x, y = rows_for_head(result.spec, result.schema, rows[:4000], fraud[:4000].tolist())
    result.head, result.calibration["supervised"] = train_head(result.head, x, y, HeadConfig(target_fpr=0.02, seed=0),
                                                               lambda _m: None)
    bundle = bundle_from_files(build_bundle(result).files)
    scorer = Scorer(bundle)
    names, got = scorer.head_attributions(x[:64])
    assert names == scorer.units and got.shape == (64, len(scorer.units))
    assert "terminal_id__frauds" in names
    _, p0 = scorer.outputs(x[:64])
    assert p0 is not None
    for row in (0, 17, 63):
        for u in range(len(names)):
            occluded = np.where(scorer.column_unit == u, scorer.typical, x[row])[None, :].astype(np.float32)
            _, p1 = scorer.outputs(occluded)
            assert p1 is not None
            logit = [np.log(v) - np.log1p(-v) for v in np.clip([float(p0[row]), float(p1[0])], 1e-7, 1 - 1e-7)]
            assert got[row, u] == pytest.approx(logit[0] - logit[1], rel=1e-5, abs=1e-5)
    assert np.abs(got).max() < 40  # within the clipped log-odds' range, not first-order terms that cancel
    assert scorer.typical is not None
    _, none = scorer.head_attributions(np.repeat(scorer.typical[None, :], 3, axis=0))
    assert np.abs(none).max() < 1e-6  # the typical row: nothing to take off

    old = Scorer(dataclasses.replace(bundle, calibration={k: v for k, v in bundle.calibration.items()
                                                          if k not in ("column_means", "column_medians")}))
    old_names, by_gradient = old.head_attributions(x[:64])
    t = torch.from_numpy(x[:64].copy()).requires_grad_(True)
    (grad,) = torch.autograd.grad(result.head.supervised.logit(t, result.head.errors(t)).sum(), t)
    expected = np.add.reduceat((grad * t).detach().numpy().astype(np.float64), old.group_starts, axis=1)
    assert old_names == old.fields and by_gradient.shape == (64, len(old.fields))
    np.testing.assert_allclose(by_gradient, expected, rtol=1e-4, atol=1e-6)

    later_x, later_y = rows_for_head(result.spec, result.schema, rows[4000:], fraud[4000:].tolist())
    _errors, p = scorer.outputs(later_x)
    assert p is not None
    # the fixture's world again (same seed, same call): which scenario each fraud belongs to
    patterns = np.array(HandbookSimulator(seed=11, customers=300, terminals=1000, run_id="sup").generate(
        6000, now_ms=1_790_000_000_000, span_ms=20 * DAY).patterns())[4000:]
    assert len(later_y) == len(patterns)  # no row refused: the rows line up
    unit_names, parts = scorer.head_attributions(later_x)
    top = np.array(unit_names)[np.argmax(parts, axis=1)]
    terminal = (patterns == "compromised_terminal") & (p > bundle.head_threshold)
    card = (patterns == "compromised_card") & (p > bundle.head_threshold)
    on_terminal_labels = float(np.mean([f.startswith("terminal_id__fraud") for f in top[terminal]]))
    on_amount = float(np.mean(["amount" in f for f in top[card]]))
    assert terminal.sum() >= 20 and on_terminal_labels >= 0.8, (int(terminal.sum()), on_terminal_labels)
    assert card.sum() >= 5 and on_amount >= 0.7, (int(card.sum()), on_amount)


def test_train_supervised_without_labels_is_refused_before_reading(tmp_path: Any,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 with one line at once (the input does not even exist), not after an autoencoder's training."""
    from stream_detector.cli import main

    assert main(["train", "--input", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "m"),
                 "--supervised"]) == 2
    assert capsys.readouterr().err.strip() == ("stream-detector train: error: --supervised needs labels: "
                                               "--feedback FILE or --label-column C")
