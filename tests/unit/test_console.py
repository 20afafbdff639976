"""The console's pure parts: what-if arithmetic, the token and Host checks, the score feed's weights."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import SecretStr
from sklearn.metrics import roc_curve

from stream_detector.console.auth import check_token, host_allowed
from stream_detector.console.whatif import Sample, alerts_per_hour, confusion, curves, histogram, what_if


def test_alerts_per_hour_sums_weights_strictly_above_over_the_span() -> None:
    sample = Sample(np.array([0.1, 0.5, 0.9, 2.0]), np.array([10.0, 10.0, 5.0, 1.0]), list("abcd"), span_s=60.0)
    assert alerts_per_hour(sample, 0.5) == pytest.approx((5.0 + 1.0) * 60)  # 0.5 itself is not above
    assert alerts_per_hour(sample, 0.0) == pytest.approx(26.0 * 60)
    assert alerts_per_hour(sample, 5.0) == 0.0
    assert alerts_per_hour(Sample.empty(), 0.1) == 0.0


def test_precision_recall_from_labels() -> None:
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.8, 0.9])
    fraud = np.array([False, True, False, True, True, False])
    c = confusion(scores, fraud, 0.5)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 2, 1, 1)
    assert c.precision == pytest.approx(0.5)
    assert c.recall == pytest.approx(2 / 3)
    assert c.fpr == pytest.approx(2 / 3)
    nothing = confusion(scores, fraud, 1.0)
    assert nothing.precision is None and nothing.recall == 0.0


def test_roc_points_match_sklearn_and_need_both_classes() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(300)
    fraud = rng.random(300) < scores * 0.5
    got = np.array(curves(scores, fraud, max_points=10_000)["roc"])
    fpr, tpr, _ = roc_curve(fraud, scores, drop_intermediate=False)
    assert np.allclose(got, np.c_[fpr, tpr])
    assert curves(scores, np.zeros(300, dtype=bool)) == {"roc": [], "pr": []}
    assert len(curves(scores, fraud, max_points=50)["roc"]) <= 51


def test_what_if_bundles_numbers_and_labels() -> None:
    sample = Sample(np.array([1.0, 2.0, 3.0]), np.ones(3), ["a", "b", "c"], span_s=3600.0)
    out = what_if(sample, 1.5, np.array([1.0, 3.0]), np.array([False, True]), current=2.5)
    assert out["alerts_per_hour"] == 2.0 and out["current_alerts_per_hour"] == 1.0
    assert out["events_per_hour"] == 3.0 and out["labelled"] == 2 and out["labelled_fraud"] == 1
    assert out["confusion"]["precision"] == 1.0 and out["confusion"]["recall"] == 1.0
    assert "confusion" not in what_if(sample, 1.5, np.zeros(0), np.zeros(0, dtype=bool), None)


def test_histogram_is_weighted_and_spans_the_threshold() -> None:
    h = histogram(np.array([0.01, 0.01, 0.1]), np.array([2.0, 3.0, 4.0]), threshold=10.0, bins=10)
    assert sum(h["counts"]) == pytest.approx(9.0)
    assert h["edges"][0] < -2 and h["edges"][-1] > 1 and h["log_threshold"] == pytest.approx(1.0)
    assert histogram(np.zeros(0), np.zeros(0), None)["counts"] == []


def test_token_check() -> None:
    assert not check_token(SecretStr(""), "anything").allowed  # no token configured: read-only
    assert "read-only" in check_token(SecretStr(""), None).reason
    assert not check_token(SecretStr("s3cret"), None).allowed
    assert not check_token(SecretStr("s3cret"), "s3cre").allowed
    assert check_token(SecretStr("s3cret"), "s3cret").allowed


@pytest.mark.parametrize(("bound", "header", "ok"), [
    ("127.0.0.1", "127.0.0.1:8050", True), ("127.0.0.1", "localhost:8050", True),
    ("127.0.0.1", "[::1]:8050", True), ("::1", "localhost", True),
    ("127.0.0.1", "evil.example:8050", False), ("127.0.0.1", None, False),
    ("0.0.0.0", "console.internal:8050", True),
])
def test_host_header_check_on_loopback(bound: str, header: str | None, ok: bool) -> None:
    assert host_allowed(bound, header) is ok


class _Telemetry:
    """Records the feed entries a ScoreFeed writes (the Redis side is store/telemetry.py's)."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    def add_feed_entry(self, fields: dict[str, str], maxlen: int) -> None:
        self.entries.append(fields)


def test_score_feed_weights_stand_for_every_scored_event() -> None:
    import orjson

    from stream_detector.pipeline.score_feed import ScoreFeed
    from stream_detector.settings import Settings
    from stream_detector.store import Threshold

    telemetry = _Telemetry()
    feed = ScoreFeed(telemetry, Settings(score_feed_sample=50, worker_id="w1"), seed=1)  # type: ignore[arg-type]
    threshold = Threshold(0.5, 7, "m1")
    rng = np.random.default_rng(0)
    for n in (30, 400, 1000):  # under the cap, then over it
        scores = rng.random(n)
        events = [{"event_id": f"e{n}-{i}"} for i in range(n)]
        feed.observe(events, scores, np.flatnonzero(scores > 0.5), threshold, list(range(n)), list(range(n)))
    feed.flush()
    (entry,) = telemetry.entries
    samples = orjson.loads(entry["samples"])
    assert entry["n"] == "1430" and entry["worker"] == "w1" and entry["threshold_version"] == "7"
    assert len(samples["ids"]) == 50 == len(samples["scores"]) == len(samples["weights"])
    assert sum(samples["weights"]) == pytest.approx(1430)
    assert all(f == (s > 0.5) for f, s in zip(samples["flagged"], samples["scores"], strict=True))
    assert int(entry["alerts"]) > 0 and float(entry["at"]) >= float(entry["since"])
    feed.flush()
    assert len(telemetry.entries) == 1, "nothing new, nothing written"


def test_sample_of_keeps_the_active_model_and_spans_its_entries() -> None:
    from stream_detector.console.sources import FeedEntry, sample_of

    def entry(model: str, since: float, at: float, scores: list[float]) -> FeedEntry:
        return FeedEntry("w", model, 1, 0.5, since, at, len(scores) * 2, 0, [f"{model}{s}" for s in scores],
                         np.asarray(scores), np.full(len(scores), 2.0))

    entries = [entry("old", 0.0, 1.0, [9.0]), entry("m", 10.0, 11.0, [0.1, 0.7]), entry("m", 11.0, 13.0, [0.9])]
    sample = sample_of(entries, "m")
    assert sample.span_s == 3.0 and sample.ids == ["m0.1", "m0.7", "m0.9"] and sample.events == 6.0
    assert alerts_per_hour(sample, 0.5) == pytest.approx(4.0 * 3600 / 3.0)
    assert sample_of(entries, "none").scores.size == 0
