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
from stream_detector.model.bundle import Bundle
from stream_detector.offline import score_events
from stream_detector.producer import EventProducer
from stream_detector.settings import Settings
from stream_detector.simulate import Simulator
from stream_detector.store import ControlPlane
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
    start_worker(s)
    with EventProducer(s, s.input_topic) as producer:
        if SHOTS:  # paced, so the screenshots show rates and a time series rather than one burst
            producer.send_paced(events, None, rate=25)
        else:
            producer.send(events)
    with EventProducer(s, s.feedback_topic) as producer:
        producer.send([{"event_id": i, "label": "fraud" if f else "legit"} for i, f in fraud.items()])
    wait_until(lambda: lag(s, s.group_id, s.input_topic) == 0, message="worker drained the input")
    wait_until(lambda: _feed_total(published) == len(events), message="every scored event in the feed")
    run = Running(s, published, events, scores, fraud, [])
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
    _shoot(page, "whatif")


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
    console = running.console()
    page.goto(f"{console.url}/#models")
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.wait_for_selector(f"#models tr.active[data-version='{newer.version}']")
    assert page.locator(f"#models tr[data-version='{bundle.version}']").count() == 1
    assert "passed" in page.text_content(f"#models tr[data-version='{newer.version}']")
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
