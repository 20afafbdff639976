"""Test helpers shared by unit and integration tests (no network here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stream_detector.model.bundle import Bundle, build_bundle, save_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.simulate import Simulator

ROOT = Path(__file__).resolve().parents[1]


def small_bundle(rows: int = 3000, seed: int = 0, epochs: int = 25) -> Bundle:
    """A real (small, quick) model trained on simulated normal traffic."""
    history, _ = Simulator(seed=seed + 1, accounts=300, run_id="train").batch(rows, 0.0, span_ms=86_400_000)
    result = train(history, TrainConfig(epochs=epochs, seed=seed, threshold_method="quantile", target_fpr=0.002))
    return build_bundle(result)


def raw_card_events(n: int, seed: int, accounts: int, tag: str) -> list[dict[str, Any]]:
    """``n`` raw simulated card events (no precomputed history fields) of ``accounts`` accounts over
    two days from 2026-09-21, 3 % fraud, in time order; ids ``{tag}{seed}-…``."""
    events, _ = Simulator(seed=seed, accounts=accounts, run_id=f"{tag}{seed}", raw=True).batch(
        n, 0.03, now_ms=1_790_000_000_000, span_ms=2 * 86_400_000)
    return events


def entity_bundle(spec: Any, events: list[dict[str, Any]], epochs: int) -> Bundle:
    """A small model of ``spec``'s entity features (``entity.EntitySpec``) trained on ``events``."""
    from stream_detector.entity import enrich_history

    return build_bundle(train(enrich_history(spec, events), TrainConfig(
        epochs=epochs, seed=0, threshold_method="quantile", target_fpr=0.02), entity=spec))


def save(bundle: Bundle, directory: Path) -> Path:
    return save_bundle(bundle, directory)


def wait_until(condition: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.1,
               message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (a readiness check, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(interval_s)


def anomaly(event_id: str, account: str = "acct-00001") -> dict[str, Any]:
    """A transaction no normal account makes: huge amount, rare category, far abroad, card testing speed."""
    return {"event_id": event_id, "account_id": account, "timestamp": 1_790_000_000_000,
            "amount": 250_000.0, "merchant_category": "crypto_exchange", "country": "XX",
            "channel": "online", "card_present": False, "device_new": True,
            "distance_from_home_km": 15_000.0, "seconds_since_last": 2.0, "tx_count_1h": 80,
            "amount_to_avg": 900.0}


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of ``GET http://127.0.0.1:port/path``; HTTP errors are answers, not exceptions."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
