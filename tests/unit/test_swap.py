"""Model hot swap and the one-model-per-batch rule, without a broker or Redis (pure logic)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from stream_detector.errors import ModelError, ThresholdUnavailable
from stream_detector.pipeline.threshold import Decision, ModelMismatch, ThresholdCache
from stream_detector.store import Snapshot, Threshold
from stream_detector.swap import ModelSwap


class _Scorer:
    def __init__(self, version: str) -> None:
        self.version = version


def _swap(loads: dict[str, Any], gate: threading.Event | None = None) -> tuple[ModelSwap, list[bool]]:
    results: list[bool] = []

    def load(version: str) -> Any:
        if gate is not None:
            gate.wait(10)
        found = loads[version]
        if isinstance(found, Exception):
            raise found
        return found

    clock = [0.0]
    swap = ModelSwap(load, timeout_s=10, on_swap=results.append, clock=lambda: clock[0], retry_after_s=30)
    swap.clock_value = clock  # type: ignore[attr-defined]
    return swap, results


def test_decision_refuses_a_threshold_of_another_model() -> None:
    scores = np.array([0.5, 2.0, 3.0])
    decision = Decision.of(scores, "A", Threshold(1.0, 4, "A"))
    assert decision.rows.tolist() == [1, 2] and decision.model_version == "A" and decision.threshold.version == 4
    with pytest.raises(ModelMismatch) as caught:
        Decision.of(scores, "A", Threshold(1.0, 5, "B"))
    assert caught.value.retriable and isinstance(caught.value, ThresholdUnavailable)
    assert caught.value.threshold.model_version == "B" and caught.value.scored_by == "A"


def test_threshold_cache_names_the_mismatch_and_owns_staleness() -> None:
    now = [0.0]
    snap = Snapshot(Threshold(1.0, 2, "B"), "B")
    cache = ThresholdCache(lambda: snap, refresh_s=100, max_staleness_s=5, clock=lambda: now[0])
    cache.refresh(force=True)
    assert cache.current("B").version == 2 and cache.fresh()
    with pytest.raises(ModelMismatch):
        cache.current("A")
    now[0] = 6.0  # past the staleness bound and no refresh due yet
    assert not cache.fresh()
    with pytest.raises(ThresholdUnavailable, match="not refreshed"):
        cache.current("B")


def test_swap_loads_in_background_and_swaps_only_when_finished() -> None:
    gate = threading.Event()
    swap, results = _swap({"A": _Scorer("A"), "B": _Scorer("B")}, gate)
    gate.set()
    swap.start("A")
    gate.clear()
    swap.want("B")
    assert swap.pending_version == "B" and not swap.finish(wait=False) and swap.require().version == "A"
    swap.want("B")  # already loading: not submitted twice
    gate.set()
    assert swap.finish(wait=True) and swap.require().version == "B" and results == [True]
    assert swap.pending_version is None and not swap.finish(wait=True)
    swap.close()


def test_a_refused_version_is_kept_out_until_a_notice_or_the_retry_interval() -> None:
    swap, results = _swap({"A": _Scorer("A"), "B": ModelError("bad signature")})
    swap.start("A")
    swap.want("B")
    assert not swap.finish(wait=True) and swap.require().version == "A" and results == [False]
    swap.want("B")  # refused just now: not reloaded on every poll
    assert swap.pending_version is None
    swap.want("B", notice=True)  # a change notice retries at once
    assert swap.pending_version == "B"
    assert not swap.finish(wait=True)
    swap.clock_value[0] = 31.0  # type: ignore[attr-defined]
    swap.want("B")  # the retry interval passed
    assert swap.pending_version == "B"
    swap.finish(wait=True)
    assert results == [False, False, False] and swap.require().version == "A"
    swap.close()


def test_require_before_start_says_so() -> None:
    swap, _ = _swap({})
    with pytest.raises(RuntimeError, match="not started"):
        swap.require()


def test_the_shadow_slot_loads_in_background_refuses_failures_once_and_never_shadows_the_champion() -> None:
    from types import SimpleNamespace

    from stream_detector.swap import ShadowSlot

    spec = SimpleNamespace(schema=None, entity=None)
    scorers = {v: SimpleNamespace(version=v, bundle=spec) for v in ("A", "B")}
    calls: list[str] = []

    def load(version: str) -> Any:
        calls.append(version)
        if version == "bad":
            raise ModelError("altered artifact")
        return scorers[version]

    slot = ShadowSlot(load)
    champion: Any = scorers["A"]
    slot.want("B", champion="A")
    slot._loader.shutdown(wait=True)  # the background load has finished
    assert slot.ready(champion) is scorers["B"]
    assert slot.ready(scorers["B"]) is None, "promoted mid-batch: the challenger is the champion now"
    slot.want("A", champion="A")
    assert slot.current is None, "the champion itself is no challenger"
    slot = ShadowSlot(load)
    slot.start("bad", champion="A")
    assert slot.current is None and slot.refused == 1
    slot.want("bad", champion="A")
    slot.want("bad", champion="A")
    assert calls.count("bad") == 1, "a refused version is not reloaded on every poll"
    slot.want(None, champion="A")
    assert slot.current is None
