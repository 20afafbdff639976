"""Training, TorchScript export and reload, bundle integrity, calibration."""

from __future__ import annotations

import numpy as np
import pytest

from stream_detector.errors import ModelError
from stream_detector.model.autoencoder import Architecture
from stream_detector.model.bundle import MODEL_FILE, Bundle, bundle_from_files, load_bundle, save_bundle
from stream_detector.model.train import calibrate, default_epochs
from stream_detector.offline import score_events
from stream_detector.simulate import Simulator
from tests.helpers import anomaly, small_bundle


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return small_bundle(rows=1500, epochs=10)


def test_export_and_reload_give_identical_scores(bundle, tmp_path):
    events, _ = Simulator(seed=5, accounts=100).batch(300, 0.05)
    before = score_events(bundle, events).scores
    reloaded = load_bundle(save_bundle(bundle, tmp_path / "m"))
    after = score_events(reloaded, events).scores
    assert reloaded.version == bundle.version and reloaded.sha256 == bundle.sha256
    np.testing.assert_allclose(after, before, rtol=1e-6)


def test_threshold_flags_about_the_target_rate_and_catches_obvious_anomalies(bundle):
    normal, _ = Simulator(seed=9, accounts=300).batch(3000, 0.0)
    scores = score_events(bundle, normal).scores
    assert (scores > bundle.threshold).mean() < 0.02
    weird = score_events(bundle, [anomaly("w")]).scores[0]
    assert weird > 10 * bundle.threshold
    assert bundle.calibration["method"] == "quantile" and bundle.calibration["error_norm"] == "mean"
    assert set(bundle.metadata) >= {"version", "sha256", "created_at", "metrics", "files", "spec_fingerprint"}
    assert bundle.metadata["metrics"]["train_rows"] > 0


def test_tampered_bundle_is_refused(bundle, tmp_path):
    files = dict(bundle.files)
    files[MODEL_FILE] = files[MODEL_FILE][:-10] + b"0123456789"
    with pytest.raises(ModelError, match="sha256"):
        bundle_from_files(files)
    del files[MODEL_FILE]
    with pytest.raises(ModelError, match="missing"):
        bundle_from_files(files)
    with pytest.raises(ModelError):
        load_bundle(tmp_path / "absent")


def test_calibration_methods():
    errors = np.arange(1, 1001, dtype=float)
    assert calibrate(errors, "quantile", 0.01, 3) == 990.0  # 10 of 1,000 rows above it, not 10.01
    for n, fpr in ((113, 0.01), (1577, 0.002), (789, 0.02), (50, 0.001)):  # a trial: 1.77 % for 0.01 on 113 rows
        tail = np.random.default_rng(n).lognormal(size=n)
        assert (tail > calibrate(tail, "quantile", fpr, 3)).sum() == int(np.floor(fpr * n))
    assert calibrate(errors, "meanstd", 0.01, 2) == pytest.approx(errors.mean() + 2 * errors.std())
    with pytest.raises(ValueError):
        calibrate(errors, "other", 0.01, 2)


def test_fence_ignores_a_heavy_tail_of_normal_rows():
    rng = np.random.default_rng(0)
    body = rng.lognormal(0.0, 0.5, 9_700)  # log-normal errors: median 1, log-sigma 0.5
    tail = rng.uniform(30.0, 60.0, 300)  # 3 % of "normal" rows reconstruct as badly as anomalies
    errors = np.concatenate([body, tail])
    fence = calibrate(errors, "fence", 0.01, 3, k_fence=3)
    # near the body's own fence exp(0 + 3 · 0.5) = 4.5 (the tail nudges median and MAD a little)
    assert np.exp(1.5) < fence < np.exp(1.75)
    assert calibrate(errors, "quantile", 0.01, 3) > 30.0  # a 1 % budget lands inside the tail
    assert 0.03 <= (errors > fence).mean() <= 0.035  # the tail, and almost nothing of the body
    # an alert-budget cap raises it until at most that share is flagged
    capped = calibrate(errors, "fence", 0.01, 3, k_fence=3, max_alert_rate=0.005)
    assert (errors > capped).mean() <= 0.005 + 1e-9 and capped > fence
    # "at most" holds at any row count (a trial: 0.02 of 789 rows let 16 through, 2.03 %)
    for n in (789, 1000, 1001, 57):
        tail = np.random.default_rng(n).lognormal(0.0, 1.0, n)
        for rate in (0.02, 0.05, 0.1):
            t = calibrate(tail, "fence", 0.01, 3, k_fence=1.0, max_alert_rate=rate)
            assert (tail > t).sum() == min(int(np.floor(rate * n)), (tail > calibrate(tail, "fence", 0.01, 3,
                                                                                      k_fence=1.0)).sum())
    # a cap looser than the fence changes nothing
    assert calibrate(errors, "fence", 0.01, 3, max_alert_rate=0.2) == fence


def test_train_warns_when_its_threshold_flags_more_than_two_percent_of_normal_rows():
    """README: ``train`` prints the share the threshold flags "and warns above 2 %" (a ``warning:``
    line, which ``SD_LOG_JSON`` logs at WARNING); a fence at k = 1.5 flags far more, and the same
    fence capped by ``--max-alert-rate`` gives no warning, nor a quantile threshold, whose
    ``--target-fpr`` is the share asked for."""
    from stream_detector.model.train import TrainConfig, train

    history, _ = Simulator(seed=5, accounts=100, run_id="warn").batch(1500, 0.0, span_ms=86_400_000)
    lines: list[str] = []
    result = train(history, TrainConfig(epochs=2, seed=0, k_fence=1.5), progress=lines.append)
    assert result.calibration["validation_flag_rate"] > 0.02
    assert [ln for ln in lines if ln.startswith("warning: more than 2% of normal validation rows")]
    lines.clear()
    capped = train(history, TrainConfig(epochs=2, seed=0, k_fence=1.5, max_alert_rate=0.01), progress=lines.append)
    assert capped.calibration["validation_flag_rate"] <= 0.01 + 1e-9
    assert not [ln for ln in lines if ln.startswith("warning:")]
    assert [ln for ln in lines if "(fence " in ln and ", raised by --max-alert-rate 0.01)" in ln]  # says the cap
    lines.clear()
    asked = train(history, TrainConfig(epochs=2, seed=0, threshold_method="quantile", target_fpr=0.05),
                  progress=lines.append)  # the share asked for: no advice to use the option in use
    assert asked.calibration["validation_flag_rate"] > 0.02
    assert not [ln for ln in lines if ln.startswith("warning:")]


def test_fence_falls_back_to_the_quantile_without_spread():
    errors = np.concatenate([np.full(990, 0.5), np.linspace(1, 2, 10)])
    assert calibrate(errors, "fence", 0.01, 3) == calibrate(errors, "quantile", 0.01, 3)


def test_size_rules_follow_the_data():
    small, wide = Architecture.for_width(8), Architecture.for_width(140)
    assert small.hidden == (16,) and small.bottleneck == 2
    assert wide.hidden == (256, 128) and wide.bottleneck == 8
    assert default_epochs(100, 256) == 300 and default_epochs(1_000_000, 256) == 10


def test_a_stored_versions_calibrated_threshold_is_read_from_its_hash_or_its_directory(tmp_path):
    """``model list`` shows a version never active with its bundle's calibrated threshold."""
    import orjson

    from stream_detector.model.bundle import CALIBRATION_FILE
    from stream_detector.store.registry import _calibrated

    raw = orjson.dumps({"threshold": 0.25, "quantile": 0.998})
    assert _calibrated(raw, None) == 0.25
    (tmp_path / CALIBRATION_FILE).write_bytes(raw)
    assert _calibrated(None, str(tmp_path).encode()) == 0.25
    assert _calibrated(None, str(tmp_path / "gone").encode()) is None
    assert _calibrated(b"not json", None) is None and _calibrated(b'{"threshold": "x"}', None) is None
    assert _calibrated(None, None) is None
    assert _calibrated(raw, None, head=True) is None  # no supervised head
    with_head = orjson.dumps({"threshold": 0.25, "supervised": {"threshold": 0.62}})
    assert _calibrated(with_head, None, head=True) == 0.62 and _calibrated(with_head, None) == 0.25


def test_error_weights_are_each_features_mean_squared_error_over_training_and_validation_rows():
    """A feature that is constant in the validation rows (a rare value none of them has) is weighed
    by the training rows too, not left at ~1e-6: such a weight made every training row with the rare
    value score far above the threshold (benchmarks/RESULTS.md, *Per-feature error weights*)."""
    import torch

    from stream_detector.errors import TrainingError
    from stream_detector.model.train import error_weights

    class Zero(torch.nn.Module):  # reconstructs nothing: the squared error is x²
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(x)

    train_rows = np.array([[1.0, 2.0], [3.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    val_rows = np.array([[1.0, 0.0]], dtype=np.float32)  # the second feature never set here
    weights = error_weights(Zero(), (train_rows, val_rows))
    np.testing.assert_allclose(weights, [(1 + 9 + 1 + 1) / 4 + 1e-6, 4 / 4 + 1e-6], rtol=1e-9)
    assert weights.dtype == np.float64
    with pytest.raises(TrainingError, match="no rows"):
        error_weights(Zero(), ())
