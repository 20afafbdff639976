"""The operator console in a real headless Chromium, backed by the real Kafka, Redis and a running worker.

Chromium comes from Debian (``deploy/install-browser.sh``); Playwright drives it through
``executable_path`` (``playwright install`` is never needed). With ``SD_CONSOLE_SCREENSHOTS=DIR``
the tests also save the screenshots that docs/console.md shows.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import SecretStr

from stream_detector.console import ConsoleServer
from stream_detector.kafka_util import lag, read_all
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.offline import score_events
from stream_detector.producer import EventProducer
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from stream_detector.store import ControlPlane
from stream_detector.topics import ensure_topics
from tests.helpers import anomaly, small_bundle, wait_until
from tests.services import free_port

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("SD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "console-test-token"
SHOTS = os.environ.get("SD_CONSOLE_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: run deploy/install-browser.sh (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    p = context.new_page()
    p.set_default_timeout(30_000)
    yield p
    context.close()


@dataclass
class Running:
    settings: Settings
    control: ControlPlane
    events: list[dict[str, Any]]
    scores: np.ndarray
    fraud: dict[str, bool]
    consoles: list[ConsoleServer]
    worker: Any = None  # the fixture's RunningWorker

    def console(self, token: str = TOKEN) -> ConsoleServer:
        s = self.settings.model_copy(update={"console_token": SecretStr(token)})
        server = ConsoleServer(s, "127.0.0.1", 0).start()
        self.consoles.append(server)
        return server


def _feed_total(control: ControlPlane) -> int:
    return sum(int(f[b"n"]) for f in control.telemetry.feed(100_000))


def _shoot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        path = Path(SHOTS) / f"{name}.png"
        page.screenshot(path=str(path))
        from PIL import Image  # matplotlib's dependency; a palette PNG is a fraction of the size

        with Image.open(path) as shot:
            small = shot.convert("RGB").quantize(colors=64)
        small.save(path, optimize=True)


@pytest.fixture
def running(settings: Settings, published: ControlPlane, bundle: Bundle,
            start_worker: Callable[[Settings], Any]) -> Iterator[Running]:
    """A worker that has scored mixed traffic, analyst labels on the feedback topic, no console yet."""
    s = settings.model_copy(update={"score_feed_sample": 5000, "score_feed_interval_s": 0.2,
                                    "feedback_topic": f"fb-{uuid.uuid4().hex[:8]}", "worker_id": "worker-a"})
    normal, _ = Simulator(seed=21, accounts=300, run_id="console").batch(800, 0.0)
    events = normal[:400] + [anomaly(f"bad-{i}", f"acct-{i:05d}") for i in range(8)] + normal[400:]
    scores = score_events(bundle, events).scores
    order = np.argsort(-score_events(bundle, normal).scores)
    missed = np.random.default_rng(3).choice(order[100:], 4, replace=False)  # fraud the model scores low
    labelled_fraud = {str(normal[i]["event_id"]) for i in [*order[:4], *missed]}
    fraud = {str(e["event_id"]): str(e["event_id"]).startswith("bad-") or str(e["event_id"]) in labelled_fraud
             for e in events}
    worker = start_worker(s)
    with EventProducer(s, s.input_topic) as producer:
        if SHOTS:  # paced, so the screenshots show rates and a time series rather than one burst
            producer.send_paced(events, None, rate=25)
        else:
            producer.send(events)
    with EventProducer(s, s.feedback_topic) as producer:
        producer.send([{"event_id": i, "label": "fraud" if f else "legit"} for i, f in fraud.items()])
    wait_until(lambda: lag(s, s.group_id, s.input_topic) == 0, message="worker drained the input")
    wait_until(lambda: _feed_total(published) == len(events), message="every scored event in the feed")
    run = Running(s, published, events, scores, fraud, [], worker)
    yield run
    for server in run.consoles:
        server.stop()


def test_live_view_draws_the_histogram_with_the_threshold(running: Running, page: Any, bundle: Bundle) -> None:
    console = running.console()
    page.goto(console.url)
    line = page.wait_for_selector("#hist line.threshold", state="attached")  # a vertical line has no area
    assert float(line.get_attribute("data-value")) == pytest.approx(bundle.threshold)
    assert page.locator("#hist rect.bar").count() > 5
    assert page.locator("#hist rect.bar.over").count() >= 1  # the crafted anomalies sit right of the line
    assert page.text_content("#live-model") == bundle.version
    threshold = running.control.threshold()
    assert threshold is not None
    assert f"(v{threshold.version})" in page.text_content("#live-threshold")
    page.wait_for_selector("#workers tbody tr td:text-is('worker-a')")
    assert page.locator("#series polyline.curve").count() == 1
    assert f"{len(running.events)} sampled" in page.text_content("#live-source")
    _shoot(page, "live")


def test_what_if_numbers_match_an_independent_computation(running: Running, page: Any) -> None:
    console = running.console()
    candidate = float(np.quantile(running.scores, 0.97))
    text = repr(candidate)
    page.goto(f"{console.url}/#whatif")
    page.wait_for_selector("#wi-alerts-hour[data-threshold]")
    page.fill("#wi-value", text)
    page.dispatch_event("#wi-value", "change")
    box = page.wait_for_selector(f"#wi-alerts-hour[data-threshold='{text}']")

    entries = running.control.telemetry.feed(100_000)
    span_s = max(float(f[b"at"]) for f in entries) - min(float(f[b"since"]) for f in entries)
    expected_per_hour = int((running.scores > candidate).sum()) * 3600.0 / span_s
    assert float(box.get_attribute("data-value")) == pytest.approx(expected_per_hour, rel=1e-9)

    y = np.array([running.fraud[str(e["event_id"])] for e in running.events])
    flagged = running.scores > candidate
    tp = int((flagged & y).sum())
    assert float(page.get_attribute("#wi-precision", "data-value")) == pytest.approx(tp / flagged.sum())
    assert float(page.get_attribute("#wi-recall", "data-value")) == pytest.approx(tp / y.sum())
    assert 0 < tp < y.sum() and flagged.sum() > tp, "precision and recall both strictly inside (0, 1)"
    op = page.wait_for_selector("#roc circle.op")
    assert float(op.get_attribute("data-y")) == pytest.approx(tp / y.sum())
    assert page.locator("#pr circle.op").count() == 1
    assert page.locator("#wi-hist line.current").count() == 1

    page.locator("#wi-slider").fill("0.5")  # the slider is log10: drag it to 10 ** 0.5
    dragged = page.wait_for_selector("#wi-alerts-hour[data-threshold='3.16228']")
    assert page.input_value("#wi-value") == "3.16228"
    expected_dragged = int((running.scores > 3.16228).sum()) * 3600.0 / span_s
    assert float(dragged.get_attribute("data-value")) == pytest.approx(expected_dragged, rel=1e-9)
    page.fill("#wi-value", text)
    page.dispatch_event("#wi-value", "change")
    page.wait_for_selector(f"#wi-alerts-hour[data-threshold='{text}']")
    assert page.is_hidden("#wi-head-controls") and page.is_hidden("#wi-head-cards")  # no supervised head
    assert page.get_attribute("#wi-alerts-hour", "data-head") == ""
    _shoot(page, "whatif")

    # the API: a model without a head says so, and refuses a head threshold (400)
    assert _get_json(console.url + "/api/overview")["has_head"] is False
    assert _get_json(f"{console.url}/api/whatif?threshold={text}")["has_head"] is False
    status, body = _get_error(f"{console.url}/api/whatif?threshold={text}&head=0.5")
    assert status == 400 and "has no supervised head" in body["error"]


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as res:
        return orjson.loads(res.read())


def _get_error(url: str) -> tuple[int, Any]:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    try:
        return refused.value.code, orjson.loads(refused.value.read())
    finally:
        refused.value.close()


def _head_bundle() -> Bundle:
    """A small autoencoder with a supervised head (model/supervised.py), on the simulator's labelled fraud."""
    from stream_detector.model.supervised import HeadConfig, rows_for_head, train_head
    from stream_detector.model.train import TrainConfig, train

    events, patterns = Simulator(seed=41, accounts=300, run_id="head-train").batch(2400, 0.15, span_ms=86_400_000)
    fraud = [p != "legit" for p in patterns]
    result = train([e for e, f in zip(events, fraud, strict=True) if not f],
                   TrainConfig(epochs=3, seed=0, threshold_method="quantile", target_fpr=0.01))
    x, y = rows_for_head(result.spec, result.schema, events, fraud)
    result.head, result.calibration["supervised"] = train_head(result.head, x, y, HeadConfig(epochs=10, seed=0),
                                                               lambda _m: None)
    return build_bundle(result)


def _between(values: np.ndarray, q: float) -> float:
    """A cut near the ``q`` quantile of ``values``, halfway across a gap between two of them: no
    value lies near it (the worker's scores equal offline's to float32 precision, not bit for bit)."""
    v = np.unique(values)
    i = int(q * (v.size - 1))
    while v[i + 1] - v[i] < 1e-4 * max(abs(float(v[i])), 1e-3):
        i += 1
    return float((v[i] + v[i + 1]) / 2)


def test_what_if_with_a_supervised_head_and_applying_a_head_threshold(settings: Settings, page: Any,
                                                                      start_worker: Callable[[Settings], Any]) -> None:
    """A model with a supervised head, scored by a running worker: its feed entries carry the head's
    probabilities; the what-if at a pair (threshold, head threshold) equals the union rule computed
    here from offline scores and probabilities (alerts/hour, each part alone and both, precision
    and recall from labels); the page shows the head's input and numbers; applying the pair writes
    a new threshold version with the head value in Redis and in the audit line."""
    bundle = _head_bundle()
    assert bundle.head_threshold is not None
    control = ControlPlane.from_url(settings.redis_url, settings.redis_prefix)
    control.publish(bundle, set_by="pytest")
    s = settings.model_copy(update={"score_feed_sample": 5000, "score_feed_interval_s": 0.2, "worker_id": "worker-h",
                                    "console_token": SecretStr(TOKEN)})
    ensure_topics(s, [s.input_topic, s.alerts_topic, s.dlq_topic, s.feedback_topic])
    events, patterns = Simulator(seed=42, accounts=300, run_id="head-live").batch(600, 0.1)
    fraud = np.array([p != "legit" for p in patterns])
    offline = score_events(bundle, events)
    assert offline.probability is not None
    start_worker(s)
    with EventProducer(s, s.input_topic) as producer:
        producer.send(events)
    with EventProducer(s, s.feedback_topic) as producer:
        producer.send([{"event_id": e["event_id"], "label": "fraud" if f else "legit"}
                       for e, f in zip(events, fraud.tolist(), strict=True)])
    wait_until(lambda: lag(s, s.group_id, s.input_topic) == 0, message="worker drained the input")
    wait_until(lambda: _feed_total(control) == len(events), message="every scored event in the feed")
    entries = control.telemetry.feed(100_000)
    probs = {i: p for f in entries for i, p in zip(*(orjson.loads(f[b"samples"])[k] for k in ("ids", "probs")),
                                                   strict=True)}
    expected_probs = dict(zip((str(e["event_id"]) for e in events), offline.probability.tolist(), strict=True))
    assert probs == {i: pytest.approx(p, rel=1e-5, abs=1e-9) for i, p in expected_probs.items()}  # the worker's

    server = ConsoleServer(s, "127.0.0.1", 0).start()
    try:
        overview = _get_json(server.url + "/api/overview")
        assert overview["has_head"] is True and overview["threshold"]["head"] == bundle.head_threshold
        # the head is confident (probabilities near 0 or 1): 0.5 parts them, the AE's cut lets each part add its own
        threshold, head = _between(offline.scores, 0.9), 0.5
        assert not (np.abs(offline.probability - head) < 1e-3).any()
        got = _get_json(f"{server.url}/api/whatif?threshold={threshold!r}&head={head!r}")
        span_s = max(float(f[b"at"]) for f in entries) - min(float(f[b"since"]) for f in entries)
        by_ae, by_head = offline.scores > threshold, offline.probability > head
        per_hour = 3600.0 / span_s
        assert got["has_head"] is True and got["head_threshold"] == head
        assert got["current_head_threshold"] == bundle.head_threshold
        assert got["alerts_per_hour"] == pytest.approx((by_ae | by_head).sum() * per_hour, rel=1e-9)
        assert got["parts"] == pytest.approx({
            "union": (by_ae | by_head).sum() * per_hour, "autoencoder": by_ae.sum() * per_hour,
            "head": by_head.sum() * per_hour, "both": (by_ae & by_head).sum() * per_hour,
            "autoencoder_only": (by_ae & ~by_head).sum() * per_hour,
            "head_only": (by_head & ~by_ae).sum() * per_hour}, rel=1e-9)
        assert got["parts"]["autoencoder_only"] > 0 and got["parts"]["head_only"] > 0 and got["parts"]["both"] > 0
        in_force = (offline.scores > bundle.threshold) | (offline.probability > bundle.head_threshold)
        assert got["current_alerts_per_hour"] == pytest.approx(in_force.sum() * per_hour, rel=1e-9)
        flagged = by_ae | by_head
        tp = int((flagged & fraud).sum())
        assert got["labelled"] == len(events) and got["head_sampled"] == len(events)
        assert got["confusion"]["tp"] == tp and got["confusion"]["fp"] == int((flagged & ~fraud).sum())
        assert got["confusion"]["recall"] == pytest.approx(tp / fraud.sum())
        assert got["curves_head"]["roc"] and got["curves"]["roc"]
        status, body = _get_error(f"{server.url}/api/whatif?threshold={threshold!r}&head=1.5")
        assert status == 400 and body["error"].startswith("query head:")

        # the page: the head's input and numbers, then the apply of both thresholds
        page.goto(f"{server.url}/#whatif")
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        page.wait_for_selector("#wi-alerts-hour[data-threshold]")
        assert page.is_visible("#wi-head-controls") and page.is_visible("#wi-head-cards")
        assert float(page.input_value("#wi-head")) == bundle.head_threshold
        page.fill("#wi-value", repr(threshold))
        page.dispatch_event("#wi-value", "change")
        page.fill("#wi-head", repr(head))
        page.dispatch_event("#wi-head", "change")
        box = page.wait_for_selector(f"#wi-alerts-hour[data-threshold='{threshold!r}'][data-head='{head!r}']")
        assert float(box.get_attribute("data-value")) == pytest.approx(got["alerts_per_hour"], rel=1e-9)
        for sel, key in (("#wi-ae-only", "autoencoder_only"), ("#wi-head-only", "head_only"), ("#wi-both", "both")):
            assert float(page.get_attribute(sel, "data-value")) == pytest.approx(got["parts"][key], rel=1e-9)
        assert float(page.get_attribute("#wi-recall", "data-value")) == pytest.approx(tp / fraud.sum())
        assert page.locator("#roc polyline.curve.head").count() == 1
        before = control.threshold()
        assert before is not None
        page.fill("#wi-operator", "carol")
        page.fill("#wi-note", "head what-if")
        page.click("#wi-apply")
        page.wait_for_selector("#confirm[open]")
        assert "head threshold" in page.text_content("#confirm-text")
        page.click("#confirm-yes")
        page.wait_for_selector("#wi-result[data-status='ok']")
        after = control.threshold()
        assert after is not None and after.version == before.version + 1
        assert after.value == threshold and after.head == head and after.model_version == bundle.version
        assert page.get_attribute("#wi-result", "data-version") == str(after.version)
        audit = control.threshold_history(1)[0]
        assert audit["head"] == pytest.approx(head, rel=1e-12)  # the audit line is JSON from Lua (cjson: 14 digits)
        assert audit["value"] == pytest.approx(threshold, rel=1e-12) and audit["note"] == "head what-if"
        assert audit["set_by"].startswith("carol via console")
        page.wait_for_selector("#audit tbody tr td:text-is('head what-if')")
        assert _get_json(server.url + "/api/overview")["threshold"]["head"] == head
    finally:
        server.stop()


def test_applying_a_threshold_changes_what_the_running_worker_flags(running: Running, page: Any,
                                                                    bundle: Bundle) -> None:
    console = running.console()
    fresh, _ = Simulator(seed=33, accounts=300, run_id="after").batch(40, 0.0)
    fresh_scores = score_events(bundle, fresh).scores
    assert (fresh_scores > bundle.threshold).sum() < len(fresh) // 2, "the old threshold lets most pass"
    new = float(fresh_scores.min()) * 0.5  # every fresh event is above the new threshold
    old_version = running.control.threshold().version  # type: ignore[union-attr]

    page.goto(f"{console.url}/#whatif")
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.wait_for_selector("#wi-alerts-hour[data-threshold]")
    page.fill("#wi-value", repr(new))
    page.dispatch_event("#wi-value", "change")
    page.wait_for_selector(f"#wi-alerts-hour[data-threshold='{new!r}']")
    page.fill("#wi-operator", "alice")
    page.fill("#wi-note", "what-if test")
    page.click("#wi-apply")
    page.wait_for_selector("#confirm[open]")
    assert repr(new)[:5] in page.text_content("#confirm-text")
    page.click("#confirm-yes")
    page.wait_for_selector("#wi-result[data-status='ok']")

    threshold = running.control.threshold()
    assert threshold is not None and threshold.value == pytest.approx(new)
    assert threshold.version > old_version
    assert page.get_attribute("#wi-result", "data-version") == str(threshold.version)
    audit = running.control.threshold_history(1)[0]
    assert audit["set_by"].startswith("alice via console") and audit["note"] == "what-if test"
    assert float(audit["old_value"]) == pytest.approx(bundle.threshold)
    page.wait_for_selector("#audit tbody tr td:text-is('what-if test')")

    with EventProducer(running.settings, running.settings.input_topic) as producer:
        producer.send(fresh)
    ids = {str(e["event_id"]) for e in fresh}

    def fresh_alerts() -> list[dict[str, Any]] | None:
        got = [a for a in (orjson.loads(r.value) for r in read_all(running.settings, running.settings.alerts_topic))
               if a["event_id"] in ids]
        return got if len(got) >= len(ids) else None

    alerts = wait_until(fresh_alerts, message="an alert for every fresh event")
    assert {a["threshold_version"] for a in alerts} == {threshold.version}
    assert all(a["threshold"] == pytest.approx(new) for a in alerts)


def test_changes_are_refused_without_the_token(running: Running, page: Any, bundle: Bundle) -> None:
    before = running.control.threshold()
    guarded = running.console()
    page.goto(f"{guarded.url}/#whatif")  # token configured, but this browser has none
    page.wait_for_selector("#wi-alerts-hour[data-threshold]")
    page.click("#wi-apply")
    page.click("#confirm-yes")
    page.wait_for_selector("#wi-result[data-status='error']")
    assert "403" in page.text_content("#wi-result")

    read_only = running.console(token="")
    page.goto(f"{read_only.url}/#whatif")
    assert page.text_content("#mode") == "read-only"
    page.fill("#token", "guess")
    page.dispatch_event("#token", "change")
    page.wait_for_selector("#wi-alerts-hour[data-threshold]")
    page.click("#wi-apply")
    page.click("#confirm-yes")
    page.wait_for_selector("#wi-result[data-status='error']")
    assert "403" in page.text_content("#wi-result") and "read-only" in page.text_content("#wi-result")

    for url, token in ((guarded.url, "wrong"), (guarded.url, None), (read_only.url, TOKEN)):
        for path, body in (("/api/threshold", {"value": 1.0}), ("/api/rollback", {})):
            headers = {"Content-Type": "application/json", **({"X-Console-Token": token} if token else {})}
            request = urllib.request.Request(url + path, data=orjson.dumps(body), headers=headers, method="POST")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 403
            refused.value.close()
    rebinding = urllib.request.Request(guarded.url + "/api/overview", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as wrong_host:
        urllib.request.urlopen(rebinding, timeout=10)
    assert wrong_host.value.code == 403
    wrong_host.value.close()
    assert running.control.threshold() == before


def test_explain_shows_the_same_score_as_score_events(running: Running, page: Any, bundle: Bundle) -> None:
    console = running.console()
    page.goto(f"{console.url}/#explain")
    pick = page.wait_for_selector("#ex-alerts .alert-pick")
    event_id = pick.get_attribute("data-event-id")
    pick.click()
    score = page.wait_for_selector(f"#ex-score[data-event-id='{event_id}']")
    event = next(e for e in running.events if str(e["event_id"]) == event_id)
    assert float(score.get_attribute("data-score")) == score_events(bundle, [event]).scores[0]
    assert page.text_content("#ex-verdict") == "ALERT"
    assert page.locator("#ex-bars rect.bar").count() >= 5
    # why, as the alert says it: the same fields, first the one the worker named first
    alert = next(a for a in (orjson.loads(r.value) for r in read_all(running.settings, running.settings.alerts_topic))
                 if str(a["event_id"]) == event_id)
    why = page.text_content("#ex-why") or ""
    assert alert["top_features"][0]["contribution"] is not None
    first = alert["top_features"][0]
    inner = [f for f in first["fields"] if f != first["feature"]]  # a unit's fields beside its name, where other
    assert why.startswith(first["feature"] + (f" [{', '.join(inner)}]" if inner else "") + " (→ "), \
        (why, alert["top_features"])
    _shoot(page, "explain")

    edited = {**running.events[0], "event_id": "edited-1", "amount": 12.5}
    page.fill("#ex-event", orjson.dumps(edited).decode())
    page.click("#ex-score-btn")
    score = page.wait_for_selector("#ex-score[data-event-id='edited-1']")
    assert float(score.get_attribute("data-score")) == score_events(bundle, [edited]).scores[0]
    assert page.text_content("#ex-verdict") in {"ALERT", "normal"}

    page.fill("#ex-event", orjson.dumps({"event_id": "nested", "amount": {"x": 1}}).decode())
    page.click("#ex-score-btn")
    page.wait_for_selector("#ex-score[data-event-id='nested']")
    assert page.text_content("#ex-verdict").startswith("rejected")


def test_models_view_marks_the_active_version_and_rolls_back(running: Running, page: Any, bundle: Bundle) -> None:
    if not hasattr(running.control, "rollback"):
        pytest.skip("this tree has no model registry yet")
    newer = small_bundle(rows=600, seed=5, epochs=3)
    running.control.publish(newer, set_by="pytest", gate={"passed": True, "reasons": []})
    running.control.record_rejection({"passed": False, "version": "20261128T000000Z-refused1",
                                      "reasons": ["alert rate 0.0400 above bound 0.0200"]})
    stored = small_bundle(rows=600, seed=6, epochs=3)  # never active; its shadow period was stopped (no verdict)
    running.control.store(stored, gate={"shadow": {"outcome": "stopped"}})
    console = running.console()
    page.goto(f"{console.url}/#models")
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.wait_for_selector(f"#models tr.active[data-version='{newer.version}']")
    assert page.locator(f"#models tr[data-version='{bundle.version}']").count() == 1
    assert "passed" in page.text_content(f"#models tr[data-version='{newer.version}']")
    never = page.text_content(f"#models tr[data-version='{stored.version}']")  # was "–" and "refused"
    assert f"{stored.threshold:#.4g}" in never and "calibrated; never active" in never, never
    assert "no verdict" in never and "refused" not in never, never
    assert "above bound" in page.text_content("#refused")
    _shoot(page, "models")
    page.fill("#rb-operator", "bob")
    page.click("#rollback")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-yes")
    page.wait_for_selector("#models-result[data-status='ok']")
    page.wait_for_selector(f"#models tr.active[data-version='{bundle.version}']")
    assert running.control.active_model() == bundle.version
    assert running.control.threshold_history(1)[0]["set_by"].startswith("bob via console")


def test_console_subcommand_serves_the_page(settings: Settings, published: ControlPlane,
                                            env_for: Callable[[Settings], dict[str, str]]) -> None:
    port = free_port()
    env = {**env_for(settings), "SD_CONSOLE_TOKEN": ""}
    proc = subprocess.Popen([sys.executable, "-m", "stream_detector.cli", "console", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def page_served() -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as res:
                    return bytes(res.read())
            except OSError:
                return None

        assert b"stream-detector" in wait_until(page_served, timeout_s=60, message="the console page")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/session", timeout=5) as res:
            assert orjson.loads(res.read())["writable"] is False
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/static/app.js", timeout=5) as res:
            assert res.headers["Content-Security-Policy"].startswith("default-src 'self'")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert b"console on http://127.0.0.1" in err


def test_models_view_shows_champion_and_challenger_side_by_side(running: Running, page: Any, bundle: Bundle) -> None:
    """A challenger in shadow scored by the running worker: the console shows both models' would-be
    alerts and rates from the workers' figures, the score distributions, and the retrainer's decision."""
    from stream_detector.retrain.service import Retrainer

    s, control = running.settings, running.control
    challenger = small_bundle(rows=600, seed=5, epochs=3)
    control.start_shadow(challenger, "pytest", min_events=300, max_seconds=3600)
    slot = running.worker.worker.shadow
    wait_until(lambda: slot.current is not None, message="the worker loaded the challenger")
    normal, _ = Simulator(seed=22, accounts=300, run_id="shadow").batch(300, 0.0)
    with EventProducer(s, s.input_topic) as producer:
        producer.send(normal)
    wait_until(lambda: lag(s, s.group_id, s.input_topic) == 0, message="worker drained the input")
    figures = wait_until(lambda: (f := control.shadow_figures()) is not None and f["events"] >= 300 and f,
                         message="the worker's shadow figures")
    console = running.console()
    page.goto(f"{console.url}/#models")
    page.wait_for_selector(f"#shadow[data-challenger='{challenger.version}']")
    head = page.text_content("#shadow-head")
    assert challenger.version in head and f"{figures['events']} of 300 events" in head
    row = page.locator("#shadow tbody tr").first.locator("td")
    assert [row.nth(i).text_content() for i in range(3)] == [
        "would-be alerts", str(figures["champion_alerts"]), str(figures["challenger_alerts"])]
    assert page.locator("#shadow-bins rect").count() > 0
    _shoot(page, "shadow")
    outcome = Retrainer(s, control).judge_shadow()  # no labels in this period: it waits for them
    assert outcome is not None and outcome.status == "shadow" and "waiting for" in outcome.message
    page.reload()
    page.wait_for_selector(f"#shadow[data-challenger='{challenger.version}']")
    assert "extended: 0 labelled frauds" in page.text_content("#shadow tbody tr:last-child")
    control.end_shadow("stopped", {"reasons": ["stopped by hand"]}, "pytest")
    page.reload()
    page.wait_for_selector("#shadow[data-challenger='']")
    decision = page.text_content("#shadow-decisions tbody tr")
    assert challenger.version in decision and "stopped" in decision and "stopped by hand" in decision
    assert control.active_model() == bundle.version
