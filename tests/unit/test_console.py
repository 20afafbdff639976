"""The console's pure parts: what-if arithmetic, the token and Host checks, the score feed's weights."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import SecretStr
from sklearn.metrics import roc_curve

from stream_detector.console.auth import check_token, host_allowed
from stream_detector.console.whatif import (
    Sample,
    alerts_per_hour,
    confusion,
    curves,
    fired,
    histogram,
    parts_per_hour,
    what_if,
)


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


def test_what_if_without_a_head_is_the_autoencoders_alone_exactly() -> None:
    """No head threshold: the same keys and numbers as before heads existed, whether or not the
    sample carries probabilities (they are ignored)."""
    scores, weights = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.0])
    plain = Sample(scores, weights, list("abcd"), span_s=1800.0)
    with_probs = Sample(scores, weights, list("abcd"), span_s=1800.0, probs=np.array([0.9, 0.9, 0.1, np.nan]))
    labelled, fraud = np.array([1.0, 2.0, 3.0, 4.0]), np.array([True, False, True, False])
    expected = {
        "threshold": 2.0, "alerts_per_hour": 14.0, "current_threshold": 3.0, "current_alerts_per_hour": 8.0,
        "events_per_hour": 20.0, "sampled": 4, "span_s": 1800.0, "labelled": 4, "labelled_fraud": 2,
        "confusion": {"tp": 1, "fp": 1, "fn": 1, "tn": 1, "precision": 0.5, "recall": 0.5, "fpr": 0.5},
        "curves": curves(labelled, fraud),
    }
    assert what_if(plain, 2.0, labelled, fraud, 3.0) == expected
    assert what_if(with_probs, 2.0, labelled, fraud, 3.0) == expected
    assert what_if(with_probs, 2.0, labelled, fraud, 3.0, labelled_probs=np.full(4, 0.99)) == expected
    assert alerts_per_hour(with_probs, 2.0) == alerts_per_hour(plain, 2.0) == alerts_per_hour(plain, 2.0, head=0.5)


def test_the_union_rule_counts_each_part_and_both_strictly_above() -> None:
    scores = np.array([0.5, 2.0, 0.5, 2.0, 1.0, 0.5, 3.0])
    probs = np.array([0.1, 0.1, 0.9, 0.9, 0.7, 0.5, np.nan])  # NaN: never above the head threshold
    weights = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    autoencoder, head = fired(scores, 1.0, probs, 0.5)
    assert autoencoder.tolist() == [False, True, False, True, False, False, True]  # 1.0 is not above 1.0
    assert head.tolist() == [False, False, True, True, True, False, False]  # 0.5 is not above 0.5
    sample = Sample(scores, weights, list("abcdefg"), span_s=3600.0, probs=probs)
    parts = parts_per_hour(sample, 1.0, 0.5)
    assert parts == {"union": 94.0, "autoencoder": 74.0, "head": 28.0, "both": 8.0,
                     "autoencoder_only": 66.0, "head_only": 20.0}
    assert parts["union"] == parts["autoencoder_only"] + parts["head_only"] + parts["both"]
    assert alerts_per_hour(sample, 1.0, 0.5) == 94.0 and alerts_per_hour(sample, 1.0) == 74.0
    assert fired(scores, 1.0, None, 0.5)[1].sum() == 0 and fired(scores, 1.0, probs, None)[1].sum() == 0
    assert parts_per_hour(Sample(scores, weights, list("abcdefg"), 3600.0), 1.0, 0.5)["head"] == 0.0  # no probs

    y = np.array([False, True, True, False, True, True, False])
    c = confusion(scores, y, 1.0, probs, 0.5)  # flagged: 1, 2, 3, 4, 6
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 2, 1, 1)
    assert confusion(scores, y, 1.0) == confusion(scores, y, 1.0, probs, None)  # no head: the autoencoder's


def test_what_if_with_a_head_threshold() -> None:
    sample = Sample(np.array([0.5, 2.0, 0.5, 2.0]), np.ones(4), list("abcd"), span_s=3600.0,
                    probs=np.array([0.1, 0.1, 0.9, np.nan]))
    labelled, fraud = np.array([0.5, 2.0, 0.5, 0.5]), np.array([True, False, True, False])
    lprobs = np.array([0.9, 0.2, np.nan, 0.1])
    out = what_if(sample, 1.0, labelled, fraud, 3.0, head=0.5, current_head=0.95, labelled_probs=lprobs)
    assert out["alerts_per_hour"] == 3.0 and out["current_alerts_per_hour"] == 0.0
    assert out["parts"] == {"union": 3.0, "autoencoder": 2.0, "head": 1.0, "both": 0.0,
                            "autoencoder_only": 2.0, "head_only": 1.0}
    assert out["head_threshold"] == 0.5 and out["current_head_threshold"] == 0.95
    assert out["head_sampled"] == 3 and out["labelled_with_probability"] == 3
    assert out["confusion"] == confusion(labelled, fraud, 1.0, lprobs, 0.5).to_dict()
    assert (out["confusion"]["tp"], out["confusion"]["fp"], out["confusion"]["fn"]) == (1, 1, 1)
    assert out["curves_head"] == curves(lprobs[[0, 1, 3]], fraud[[0, 1, 3]])
    assert out["curves"] == curves(labelled, fraud)  # the autoencoder score's curves, unchanged
    lower = what_if(sample, 1.0, labelled, fraud, 3.0, head=0.05, current_head=None, labelled_probs=lprobs)
    assert lower["alerts_per_hour"] == 4.0 and lower["parts"]["head"] == 3.0  # the NaN sample: not by the head
    assert lower["parts"]["both"] == 1.0 and lower["parts"]["autoencoder_only"] == 1.0
    assert lower["current_alerts_per_hour"] == 0.0  # no head threshold in force: the autoencoder's at 3.0


def test_what_if_on_an_empty_sample_with_a_head() -> None:
    out = what_if(Sample.empty(), 1.0, np.zeros(0), np.zeros(0, dtype=bool), None, head=0.5)
    assert out["alerts_per_hour"] == 0.0 and out["current_alerts_per_hour"] is None
    assert out["parts"] == dict.fromkeys(("union", "autoencoder", "head", "both", "autoencoder_only",
                                          "head_only"), 0.0)
    assert out["head_sampled"] == 0 and out["labelled_with_probability"] == 0 and out["sampled"] == 0
    assert "confusion" not in out and "curves_head" not in out


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
    assert "probs" not in samples  # a model without a head
    feed.flush()
    assert len(telemetry.entries) == 1, "nothing new, nothing written"


def test_score_feed_keeps_the_heads_probability_of_each_kept_row() -> None:
    from stream_detector.console.sources import FeedEntry
    from stream_detector.pipeline.score_feed import ScoreFeed
    from stream_detector.settings import Settings
    from stream_detector.store import Threshold

    telemetry = _Telemetry()
    feed = ScoreFeed(telemetry, Settings(score_feed_sample=50, worker_id="w1"), seed=2)  # type: ignore[arg-type]
    threshold = Threshold(0.5, 3, "m1", head=0.8)
    rng = np.random.default_rng(1)
    for n in (30, 400):  # under the cap, then over it (thinned twice)
        scores = rng.random(n)
        probability = scores / 2  # a row's probability is known from its score
        events = [{"event_id": f"e{n}-{i}"} for i in range(n)]
        feed.observe(events, scores, np.flatnonzero(scores > 0.5), threshold, list(range(n)), list(range(n)),
                     probability)
    feed.flush()
    (entry,) = telemetry.entries
    samples = orjson.loads(entry["samples"])
    assert len(samples["probs"]) == len(samples["scores"]) == 50
    assert samples["probs"] == [s / 2 for s in samples["scores"]]  # same rows, same order
    parsed = FeedEntry.parse({k.encode(): v.encode() for k, v in entry.items()})
    assert parsed.probs is not None and np.array_equal(parsed.probs, parsed.scores / 2)
    without = {**entry, "samples": orjson.dumps({k: v for k, v in samples.items() if k != "probs"}).decode()}
    assert FeedEntry.parse({k.encode(): v.encode() for k, v in without.items()}).probs is None  # older entries


@pytest.mark.parametrize("flat", [False, True])
def test_score_feed_ids_are_those_of_the_kept_rows_and_a_flat_batch_is_not_parsed(flat: bool) -> None:
    """Each sampled id goes with its own score, and a batch read flat (``LazyEvents``) is left
    unparsed by the sample: its ids are read at the flush, from the feed's own copy of its rows."""
    from stream_detector.pipeline.decode import LazyEvents
    from stream_detector.pipeline.score_feed import ScoreFeed
    from stream_detector.settings import Settings
    from stream_detector.store import Threshold

    telemetry = _Telemetry()
    feed = ScoreFeed(telemetry, Settings(score_feed_sample=50, worker_id="w1"), seed=3)  # type: ignore[arg-type]
    threshold = Threshold(0.5, 1, "m1")
    score_of: dict[str, float] = {}
    batches = []
    for b, n in enumerate((30, 400, 120)):  # under the cap, over it, under it: thinned at the flush
        ids = [f"b{b}-{i}" for i in range(n)]
        scores = np.random.default_rng(b).random(n)
        score_of.update(zip(ids, scores.tolist(), strict=True))
        texts = [orjson.dumps({"event_id": i, "amount": 1.0}) for i in ids]
        events = LazyEvents(texts) if flat else [orjson.loads(t) for t in texts]
        batches.append(events)
        feed.observe(events, scores, np.flatnonzero(scores > 0.5), threshold, list(range(n)), list(range(n)))
    if flat:
        assert all(not events._parsed for events in batches)  # type: ignore[union-attr]  # nothing parsed
    feed.flush()
    (entry,) = telemetry.entries
    samples = orjson.loads(entry["samples"])
    assert len(samples["ids"]) == 50 == len(set(samples["ids"]))
    assert [score_of[i] for i in samples["ids"]] == samples["scores"]  # each id with its own row's score
    if flat:
        assert all(not events._parsed for events in batches)  # type: ignore[union-attr]  # the worker's untouched


def test_score_feed_says_so_when_a_sampled_event_has_no_readable_id(caplog: pytest.LogCaptureFixture) -> None:
    """Ids are read at the flush: a sampled event that has none (a bug upstream: scored events carry
    one) drops that pool's entry with a WARNING, never an exception into the worker's threads."""
    from stream_detector.pipeline.decode import LazyEvents
    from stream_detector.pipeline.score_feed import ScoreFeed
    from stream_detector.settings import Settings
    from stream_detector.store import Threshold

    telemetry = _Telemetry()
    feed = ScoreFeed(telemetry, Settings(score_feed_sample=50, worker_id="w1"), seed=4)  # type: ignore[arg-type]
    scores = np.array([0.1, 0.9])
    feed.observe(LazyEvents([b'{"event_id": "ok"}', b'{"amount": 1}']), scores, np.array([1]),
                 Threshold(0.5, 1, "m1"), [0, 0], [0, 1])
    with caplog.at_level(logging.WARNING, logger="stream_detector.worker"):
        feed.flush()
    assert telemetry.entries == [] and "sample of 2 scored events" in caplog.text


def test_sample_of_keeps_the_active_model_and_spans_its_entries() -> None:
    from stream_detector.console.sources import FeedEntry, sample_of

    def entry(model: str, since: float, at: float, scores: list[float]) -> FeedEntry:
        return FeedEntry("w", model, 1, 0.5, since, at, len(scores) * 2, 0, [f"{model}{s}" for s in scores],
                         np.asarray(scores), np.full(len(scores), 2.0))

    entries = [entry("old", 0.0, 1.0, [9.0]), entry("m", 10.0, 11.0, [0.1, 0.7]), entry("m", 11.0, 13.0, [0.9])]
    sample = sample_of(entries, "m")
    assert sample.span_s == 3.0 and sample.ids == ["m0.1", "m0.7", "m0.9"] and sample.events == 6.0
    assert alerts_per_hour(sample, 0.5) == pytest.approx(4.0 * 3600 / 3.0)
    assert sample_of(entries, "none").scores.size == 0 and sample.probs is None

    headed = [*entries, FeedEntry("w2", "m", 1, 0.5, 12.0, 13.0, 4, 0, ["h1", "h2"], np.array([0.2, 0.3]),
                                  np.full(2, 2.0), np.array([0.9, 0.1]))]
    mixed = sample_of(headed, "m")  # an entry without probabilities (an older worker): NaN, never above
    assert mixed.probs is not None and np.array_equal(mixed.probs, [np.nan, np.nan, np.nan, 0.9, 0.1], equal_nan=True)
    assert alerts_per_hour(mixed, 0.5, head=0.5) == pytest.approx(6.0 * 3600 / 3.0)


# ---- the HTTP layer (FastAPI app) over a fake service: routing, validation, errors, headers ------
class _FakeService:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: BaseException | None = None
        self.closed = False

    def _call(self, name: str, arg: Any = None) -> Any:
        self.calls.append((name, arg))
        if self.fail is not None:
            raise self.fail
        return {"called": name, "scores": np.array([0.5, np.float32(1.5)]), "n": np.int64(3)}

    def overview(self) -> Any:
        return self._call("overview")

    def what_if(self, value: float, head: float | None = None) -> Any:
        return self._call("what_if", (value, head))

    def recent_alerts(self, limit: int) -> Any:
        return self._call("recent_alerts", limit)

    def explain(self, event: Any) -> Any:
        return self._call("explain", event)

    def models(self) -> Any:
        return self._call("models")

    def history(self, limit: int) -> Any:
        return self._call("history", limit)

    def set_threshold(self, value: float, set_by: str, note: str, head: float | None = None) -> Any:
        return {**self._call("set_threshold", (value, set_by, note, head)), "audit": {"set_by": set_by}}

    def rollback(self, set_by: str) -> Any:
        return {**self._call("rollback", set_by), "audit": {"set_by": set_by}}

    def close(self) -> None:
        self.closed = True


TOKEN = "s3cret"


@pytest.fixture
def console() -> Any:
    from fastapi.testclient import TestClient

    from stream_detector.console.server import create_app
    from stream_detector.settings import Settings

    service = _FakeService()
    app = create_app(Settings(console_token=SecretStr(TOKEN)), "127.0.0.1", service)  # type: ignore[arg-type]
    with TestClient(app, base_url="http://127.0.0.1:8050") as client:
        client.service = service  # type: ignore[attr-defined]
        yield client


def test_api_routes_reach_the_service_and_answer_json_with_numpy(console: Any) -> None:
    session = console.get("/api/session")
    assert session.status_code == 200 and session.json() == {
        "writable": True, "token_header": "X-Console-Token", "bound_host": "127.0.0.1"}
    got = console.get("/api/overview").json()
    assert got == {"called": "overview", "scores": [0.5, 1.5], "n": 3}
    console.get("/api/whatif", params={"threshold": "0.25"})
    console.get("/api/whatif", params={"threshold": "0.25", "head": "0.3"})
    console.get("/api/alerts", params={"limit": "30"})
    console.get("/api/alerts")
    console.get("/api/history")
    console.post("/api/explain", json={"event": {"event_id": "e1", "amount": 3}})
    console.get("/api/models")
    assert console.service.calls == [("overview", None), ("what_if", (0.25, None)), ("what_if", (0.25, 0.3)),
                                     ("recent_alerts", 30),
                                     ("recent_alerts", 50), ("history", 20),
                                     ("explain", {"event_id": "e1", "amount": 3}), ("models", None)]


def test_bad_input_is_a_400_with_an_error_message(console: Any) -> None:
    for response in (console.get("/api/whatif", params={"threshold": "abc"}), console.get("/api/whatif"),
                     console.get("/api/alerts", params={"limit": "x"}),
                     console.post("/api/explain", content=b"{not json", headers={"Content-Type": "application/json"}),
                     console.post("/api/explain", json={"event": [1, 2]}),
                     console.post("/api/threshold", json={"value": "high"}, headers={"X-Console-Token": TOKEN})):
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error"} and response.json()["error"]
    assert "threshold" in console.get("/api/whatif", params={"threshold": "abc"}).json()["error"]
    assert console.service.calls == []


def test_a_head_threshold_outside_0_1_is_a_400_naming_the_head(console: Any) -> None:
    for bad in ("0", "1", "1.5", "-0.1", "abc", "nan", "inf"):
        response = console.get("/api/whatif", params={"threshold": "0.25", "head": bad})
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"].startswith("query head:"), response.json()
    for bad in (0, 1, 2.5, "abc"):
        response = console.post("/api/threshold", json={"value": 1.0, "head": bad}, headers={"X-Console-Token": TOKEN})
        assert response.status_code == 400 and response.json()["error"].startswith("body head:"), response.json()
    assert console.service.calls == []


def test_a_bad_request_from_the_service_is_a_400(console: Any) -> None:
    from stream_detector.console.service import BadRequest

    console.service.fail = BadRequest("model m1 has no supervised head: a head threshold does not apply")
    response = console.get("/api/whatif", params={"threshold": "0.25", "head": "0.5"})
    assert response.status_code == 400 and response.json() == {"error": str(console.service.fail)}


def test_unknown_paths_and_methods(console: Any) -> None:
    missing = console.get("/api/nope")
    assert missing.status_code == 404 and missing.json() == {"error": "no such endpoint: GET /api/nope"}
    wrong = console.get("/api/threshold")
    assert wrong.status_code == 405 and wrong.json()["error"].startswith("no such endpoint")
    assert console.get("/docs").status_code == 404  # Swagger UI needs a CDN and inline script: off
    spec = console.get("/openapi.json").json()
    assert {"/api/session", "/api/whatif", "/api/threshold", "/api/rollback"} <= set(spec["paths"])
    assert "/" not in spec["paths"]
    threshold = spec["paths"]["/api/threshold"]["post"]
    assert "422" not in threshold["responses"] and "4XX" in threshold["responses"]  # errors are 400 {"error"}
    assert threshold["security"] == [{"APIKeyHeader": []}]
    assert spec["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-Console-Token"


def test_changes_need_the_token_and_record_a_sanitised_operator(console: Any) -> None:
    for headers in ({}, {"X-Console-Token": "wrong"}):
        for path, body in (("/api/threshold", {"value": 1.0}), ("/api/rollback", {})):
            refused = console.post(path, json=body, headers=headers)
            assert refused.status_code == 403 and "token" in refused.json()["error"]
    refused_first = console.post("/api/threshold", json={"value": "high"})  # the token before the body's fields
    assert refused_first.status_code == 403
    assert console.service.calls == []
    ok = console.post("/api/threshold", headers={"X-Console-Token": TOKEN},
                      json={"value": 2.5, "note": "n" * 300, "operator": "  al<ice>  "})
    assert ok.status_code == 200
    (name, (value, set_by, note, head)), = console.service.calls
    assert (name, value, set_by, note, head) == ("set_threshold", 2.5, "alice via console from testclient", "n" * 200,
                                                 None)
    assert console.post("/api/threshold", headers={"X-Console-Token": TOKEN},
                        json={"value": 2.5, "head": 0.75}).status_code == 200
    assert console.service.calls[-1][1][3] == 0.75
    assert console.post("/api/rollback", headers={"X-Console-Token": TOKEN}).json()["audit"]["set_by"] == \
        "operator via console from testclient"


def test_read_only_console_refuses_every_change() -> None:
    from fastapi.testclient import TestClient

    from stream_detector.console.server import create_app
    from stream_detector.settings import Settings

    service = _FakeService()
    app = create_app(Settings(console_token=SecretStr("")), "127.0.0.1", service)  # type: ignore[arg-type]
    with TestClient(app, base_url="http://localhost:8050") as client:
        refused = client.post("/api/threshold", json={"value": 1.0}, headers={"X-Console-Token": "guess"})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
        assert client.get("/api/session").json()["writable"] is False
    assert service.calls == []


def test_service_errors_map_to_409_and_503(console: Any) -> None:
    import redis
    from kafka.errors import KafkaError

    from stream_detector.errors import ConfigError, NoActiveModel, ThresholdUnavailable

    for exc, status in ((ConfigError("nothing to roll back to"), 409), (NoActiveModel("no model"), 409),
                        (redis.ConnectionError("refused"), 503), (KafkaError("no brokers"), 503),
                        (ThresholdUnavailable("stale"), 503), (ConnectionRefusedError("down"), 503)):
        console.service.fail = exc
        response = console.get("/api/models")
        assert response.status_code == status, exc
        assert str(exc) in response.json()["error"]


def test_host_allow_list_body_bound_and_security_headers(console: Any) -> None:
    from stream_detector.console.server import MAX_BODY, SECURITY_HEADERS

    rebinding = console.get("/api/overview", headers={"Host": "evil.example"})
    assert rebinding.status_code == 403 and "Host" in rebinding.json()["error"]
    too_big = console.post("/api/explain", content=b" " * (MAX_BODY + 1), headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413

    def chunks() -> Any:
        for _ in range(3):
            yield b" " * (MAX_BODY // 2)

    chunked = console.post("/api/explain", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"]
    unread = console.request("GET", "/api/nope", content=b" " * (MAX_BODY + 1))
    assert unread.status_code == 413  # even where the app never reads the body
    assert console.service.calls == []
    page = console.get("/")
    assert page.status_code == 200 and b"/static/app.js" in page.content
    assert page.headers["content-type"].startswith("text/html")
    script = console.get("/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert console.get("/static/app.css").headers["content-type"].startswith("text/css")
    for response in (page, script, rebinding, too_big, chunked, unread, console.get("/api/nope"),
                     console.get("/api/session")):
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value


def test_console_server_serves_over_uvicorn_on_a_free_port() -> None:
    import urllib.request

    from stream_detector.console import ConsoleServer
    from stream_detector.settings import Settings

    service = _FakeService()
    server = ConsoleServer(Settings(), "127.0.0.1", 0, service=service).start()  # type: ignore[arg-type]
    try:
        assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0")
        with urllib.request.urlopen(server.url + "/api/session", timeout=10) as res:
            assert res.headers["Content-Security-Policy"].startswith("default-src 'self'")
            assert orjson.loads(res.read())["writable"] is False
    finally:
        server.stop()
    assert service.closed
