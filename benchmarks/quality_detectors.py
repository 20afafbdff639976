"""Detection-quality benchmark, model side: our detector, the seeds' recipe and the peers.

Every detector is fitted on the *fit* rows (normal only), scores rows (higher = more anomalous)
and sets its threshold on the held-back *calib* rows (normal only) with its own rule:

* ``ours``: ``train()`` with its defaults, exported with ``build_bundle`` and scored through
  ``score_events`` (event dicts → ``FeatureSpec.transform`` → TorchScript), i.e. the worker's path.
  Threshold: ``calibrate()`` with the train command's default rule, the robust fence
  ``exp(median + 3 · 1.4826 · MAD)`` of the log calib errors (no alert-budget cap).
* ``seed-AE``: the seeds' recipe, same code path: ``TrainConfig(hidden=(32,), threshold_method=
  "meanstd", k_std=1.0, error_norm="none")``, other fields default (one 32-unit hidden layer around
  the rule's bottleneck, plain mean squared error score, threshold = mean + 1·std of calib errors).
* ``IForest``: scikit-learn ``IsolationForest(random_state=seed)``, all other settings default.
* ``HST``: River ``HalfSpaceTrees(seed=seed)``, defaults (10 trees, height 8, window 250); the
  features min-max scaled to [0, 1] on the fit rows (clipped), as HST needs; it learns the fit
  rows one by one, then only scores.
* ``PyOD-AE``: PyOD ``AutoEncoder(random_state=seed, verbose=0)``, defaults otherwise.

Peers (IForest, HST, PyOD-AE) see a plain matrix: the numeric columns as they are plus a one-hot
of categorical columns (categories from the fit rows). Their threshold: the same fence on their calib
scores (all positive, higher = more anomalous; where they have no spread, the 99 % quantile), so
every detector is judged at the same label-free rule; accuracy at the 99 % quantile (a 1 % alert
budget) is reported for every detector too (``alternative_thresholds``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stream_detector.model.bundle import build_bundle
from stream_detector.model.train import TrainConfig, calibrate, train
from stream_detector.offline import score_events

from .quality_data import Split, Table

TARGET_FPR = 0.01
SEED_RECIPE: dict[str, Any] = {"hidden": (32,), "threshold_method": "meanstd", "k_std": 1.0, "error_norm": "none"}


@dataclass
class Outcome:
    """Scores of calib and test rows, the calibrated threshold and timings."""

    calib_scores: np.ndarray
    test_scores: np.ndarray
    threshold: float
    fit_seconds: float
    score_seconds: float
    info: dict[str, Any]


# ---- our code path ------------------------------------------------------------------------------


def run_ours(config: TrainConfig) -> Callable[[Table, Table, Table], Outcome]:
    def run(fit: Table, calib: Table, test: Table) -> Outcome:
        started = time.perf_counter()
        result = train(fit.events(prefix="fit"), config)
        bundle = build_bundle(result)
        fitted = time.perf_counter()
        cal = score_events(bundle, calib.events(prefix="cal")).scores
        tst = score_events(bundle, test.events(prefix="tst")).scores
        scored = time.perf_counter()
        threshold = calibrate(cal[np.isfinite(cal)], config.threshold_method, config.target_fpr, config.k_std,
                              config.k_fence, config.max_alert_rate)
        info = {"arch": result.arch.to_dict(), "epochs": result.metrics.get("epochs_run"),
                "width": result.spec.width, "rejected": int(np.isnan(tst).sum())}
        return Outcome(cal, np.nan_to_num(tst, nan=np.inf), threshold, fitted - started, scored - fitted, info)
    return run


def ours(seed: int) -> Callable[[Table, Table, Table], Outcome]:
    return run_ours(TrainConfig(seed=seed))


def seed_recipe(seed: int) -> Callable[[Table, Table, Table], Outcome]:
    return run_ours(replace(TrainConfig(seed=seed), **SEED_RECIPE))


# ---- peers --------------------------------------------------------------------------------------


def matrix(fit: Table, *others: Table) -> list[np.ndarray]:
    """Numeric columns plus a one-hot of categorical ones (categories seen in ``fit``)."""
    cats: list[np.ndarray] = []
    if fit.cats is not None:
        cats = [np.unique(fit.cats[:, j]) for j in range(fit.cats.shape[1])]
    out = []
    for table in (fit, *others):
        parts = [table.x]
        if table.cats is not None:
            for j, values in enumerate(cats):
                parts.append((table.cats[:, j][:, None] == values[None, :]).astype(np.float64))
        out.append(np.nan_to_num(np.hstack(parts)))
    return out


def _peer(fit_and_score: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, float]]
          ) -> Callable[[Table, Table, Table], Outcome]:
    def run(fit: Table, calib: Table, test: Table) -> Outcome:
        xf, xc, xt = matrix(fit, calib, test)
        started = time.perf_counter()
        cal, tst, fit_seconds = fit_and_score(xf, xc, xt)
        total = time.perf_counter() - started
        threshold = calibrate(cal[np.isfinite(cal)], "fence", TARGET_FPR, 3.0)  # the same rule as ours
        return Outcome(cal, tst, threshold, fit_seconds, total - fit_seconds, {})
    return run


def iforest(seed: int) -> Callable[[Table, Table, Table], Outcome]:
    from sklearn.ensemble import IsolationForest

    def go(xf: np.ndarray, xc: np.ndarray, xt: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        t = time.perf_counter()
        model = IsolationForest(random_state=seed).fit(xf)
        fit_s = time.perf_counter() - t
        return -model.score_samples(xc), -model.score_samples(xt), fit_s
    return _peer(go)


def hst(seed: int) -> Callable[[Table, Table, Table], Outcome]:
    from river.anomaly import HalfSpaceTrees

    def go(xf: np.ndarray, xc: np.ndarray, xt: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        lo, hi = xf.min(axis=0), xf.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)

        def rows(x: np.ndarray) -> list[dict[int, float]]:
            scaled = np.clip((x - lo) / span, 0.0, 1.0)
            return [dict(enumerate(r)) for r in scaled.tolist()]
        t = time.perf_counter()
        model: Any = HalfSpaceTrees(seed=seed)  # river ships untyped methods (installed: the bench extra)
        for row in rows(xf):
            model.learn_one(row)
        fit_s = time.perf_counter() - t
        cal = np.array([model.score_one(r) for r in rows(xc)])
        tst = np.array([model.score_one(r) for r in rows(xt)])
        return cal, tst, fit_s
    return _peer(go)


def pyod_ae(seed: int) -> Callable[[Table, Table, Table], Outcome]:
    from pyod.models.auto_encoder import AutoEncoder

    def go(xf: np.ndarray, xc: np.ndarray, xt: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        t = time.perf_counter()
        model = AutoEncoder(random_state=seed, verbose=0)
        model.fit(xf.astype(np.float32))
        fit_s = time.perf_counter() - t
        return (np.asarray(model.decision_function(xc.astype(np.float32))),
                np.asarray(model.decision_function(xt.astype(np.float32))), fit_s)
    return _peer(go)


def available() -> dict[str, Callable[[int], Callable[[Table, Table, Table], Outcome]]]:
    """Detectors in report order; peers whose package is missing are left out (see ``missing``)."""
    out: dict[str, Callable[[int], Callable[[Table, Table, Table], Outcome]]] = {
        "ours": ours, "seed-AE": seed_recipe, "IForest": iforest}
    if _importable("river.anomaly"):
        out["HST"] = hst
    if _importable("pyod.models.auto_encoder"):
        out["PyOD-AE"] = pyod_ae
    return out


def missing() -> list[str]:
    notes = []
    if not _importable("river.anomaly"):
        notes.append("HST skipped: river is not installed (pip install -e '.[bench]')")
    if not _importable("pyod.models.auto_encoder"):
        notes.append("PyOD-AE skipped: pyod is not installed (pip install -e '.[bench]')")
    return notes


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # noqa: BLE001 — a broken optional install counts as absent
        return False
    return True


def tables_for(table: Table, parts: Split) -> tuple[Table, Table, Table]:
    test = table.test.take(np.arange(len(table.test))) if table.test is not None else table.take(parts.test)
    return table.take(parts.fit), table.take(parts.calib), test
