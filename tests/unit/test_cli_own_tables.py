"""A new-user trial of 2026-12-06 with its own tables (an IEEE-CIS-like export): an id and an
epoch time stored as numbers became number features, and next month's file was flagged 600 of
600 rows without a word. Now inference takes them for what they are, and `score` says when a
number feature lies far outside training."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from stream_detector.cli import main


def _table(path: Path, first_id: int, first_time: int, seed: int) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["TransactionID", "txn_time", "amount", "merchant_category", "label"])
        for i in range(600):
            out.writerow([first_id + i, first_time + 600 * i, f"{rng.lognormvariate(4, 1.2):.2f}",
                          rng.choice(["grocery", "fuel", "online"]), int(rng.random() < 0.05)])
    return path


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("own")
    return (_table(folder / "train.csv", 2_987_000, 1_700_000_000, 1),
            _table(folder / "later.csv", 3_087_000, 1_700_000_000 + 30 * 86_400, 2))


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_an_id_and_an_epoch_time_stored_as_numbers_are_no_features(
        tables: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, later = tables
    code, err = _run(capsys, ["train", "--input", str(train), "--out", str(tmp_path / "m"), "--label-column", "label",
                              "--epochs", "3"])
    assert code == 0, err
    lines = {line.split()[0]: line for line in err.splitlines() if line.startswith("  ")}
    assert "identifier" in lines["TransactionID"] and "named like an id" in lines["TransactionID"]
    assert "ignored" in lines["txn_time"] and "epoch seconds named like a time" in lines["txn_time"]
    assert "from 1 numeric and 1 categorical fields" in err
    code, err = _run(capsys, ["score", "--model", str(tmp_path / "m"), "--input", str(later), "--out",
                              str(tmp_path / "s.csv"), "--label-column", "label"])
    assert code == 0 and "far outside" not in err, err
    flagged = int(err.split(" above ")[0].rsplit(" ", 1)[1])
    assert flagged < 60, err  # about the training budget, not 600 of 600


def test_score_says_when_a_number_feature_is_far_outside_training(
        tables: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Kept as numbers by hand (--field), the ids of next month lie hundreds of robust standard
    deviations from training's: the rows are nearly all flagged, and now `score` says why."""
    train, later = tables
    model = tmp_path / "m"
    code, err = _run(capsys, ["train", "--input", str(train), "--out", str(model), "--label-column", "label",
                              "--epochs", "3", "--field", "TransactionID=number", "--field", "txn_time=number"])
    assert code == 0, err
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(train), "--out", str(tmp_path / "t.csv")])
    assert code == 0 and "far outside" not in err, err  # training's own rows: nothing far
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(later), "--out", str(tmp_path / "s.csv")])
    assert code == 0, err
    warning = next(line for line in err.splitlines() if "far outside" in line)
    assert warning.startswith("warning: of the 600 valid rows, 1 number feature is far outside anything its training")
    assert "'TransactionID' in 100.0%" in warning and "--field NAME=ignored" in warning
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(later), "--out", str(tmp_path / "b.csv"),
                              "--streamed"])
    assert code == 0 and "'TransactionID' in 100.0%" in err, err  # the first chunk's, on the streamed path


@pytest.mark.parametrize(("args", "said"), [
    (["--dropout", "1.5"], "--dropout: expected a number in [0, 1), got 1.5"),
    (["--dropout", "-0.5"], "--dropout: expected a number in [0, 1), got -0.5"),
    (["--max-self-flag-rate", "5"], "--max-self-flag-rate: expected a number in (0, 1], got 5"),
    (["--seed", "-1"], "--seed: expected a whole number in [0, 4294967295], got -1"),
    (["--seed", "12345678901234567890"], "--seed: expected a whole number in [0, 4294967295]"),
    (["--thousands", "x"], "--thousands must be one punctuation or space character other than a sign"),
    (["--thousands", "-"], "(or auto, none), got '-'")])
def test_train_options_out_of_range_are_one_line_and_exit_2(
        args: list[str], said: str, tables: tuple[Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A trial: --dropout 1.5 and --seed -1 failed after reading the data with a bare ValueError, exit 1;
    --dropout -0.5, --max-self-flag-rate 5 and --thousands x were taken."""
    train, _ = tables
    try:
        code = main(["train", "--input", str(train), "--out", str(tmp_path / "m"), "--label-column", "label", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2 and said in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "m").exists()


def test_a_threshold_far_above_every_normal_error_is_warned_of() -> None:
    """A trial: ADBench mammography's fence was 13x every normal validation error and the model
    flagged none of the test's anomalies, without a word. The quantile rule and a cap are the
    user's own budget: nothing said there."""
    import numpy as np

    from stream_detector.model.train import TrainConfig, threshold_lines

    errors = np.linspace(0.1, 50.0, 1000)
    far = threshold_lines(errors, 685.0, TrainConfig())
    assert far[-1].startswith("warning: the threshold is 14x the largest error of any normal validation row (50)")
    assert len(threshold_lines(errors, 120.0, TrainConfig())) == 1  # 2.4x: within what the quality tables show
    assert len(threshold_lines(errors, 685.0, TrainConfig(threshold_method="quantile"))) == 1
