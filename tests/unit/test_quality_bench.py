"""The detection-quality benchmark's pure parts: loaders on tiny synthetic files, the novelty
split, the size cap, the alert-budget metric, and one tiny end-to-end run."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from benchmarks import quality
from benchmarks import quality_data as qd
from benchmarks import quality_detectors as qdet

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _kdd_row(label: str, service: str = "http", src_bytes: int = 100) -> str:
    nums = ["0"] * 41
    nums[1], nums[2], nums[3], nums[4] = "tcp", service, "SF", str(src_bytes)
    return ",".join(nums + [label])


def test_ecg_loader_concatenates_and_marks_label_1_normal(tmp_path):
    row = "\t".join(["{}"] + ["0.5"] * 4)
    (tmp_path / "ECG5000_TRAIN.tsv").write_text("\n".join([row.format("1.0"), row.format("2.0")]) + "\n")
    (tmp_path / "ECG5000_TEST.tsv").write_text("\n".join([row.format("1.0"), row.format("5.0")]) + "\n")
    table = qd.load_ecg5000(tmp_path)
    assert table.x.shape == (4, 4)
    assert table.y.tolist() == [False, True, False, True]


def test_kdd99_loader_reads_gzip_categoricals_and_dotted_labels(tmp_path):
    folder = tmp_path / "kdd"
    folder.mkdir()
    lines = [_kdd_row("normal."), _kdd_row("smurf.", "ecr_i", 1032), _kdd_row("normal.", "ftp")]
    with gzip.open(folder / "kddcup.data_10_percent.gz", "wt") as fh:
        fh.write("\n".join(lines) + "\n")
    table = qd.load_kdd99(folder)
    assert table.y.tolist() == [False, True, False]
    assert table.cat_names == ["protocol_type", "service", "flag"]
    assert table.cats is not None and table.cats[1].tolist() == ["tcp", "ecr_i", "SF"]
    assert table.x.shape == (3, 38) and table.x[1, table.numeric_names.index("src_bytes")] == 1032
    event = table.events()[1]
    assert event["service"] == "ecr_i" and event["src_bytes"] == 1032.0 and event["event_id"] == "r1"


def test_nsl_kdd_loader_keeps_the_test_file_apart(tmp_path):
    (tmp_path / "KDDTrain+_20Percent.txt").write_text(
        "\n".join([_kdd_row("normal") + ",20", _kdd_row("neptune") + ",19"]) + "\n")
    (tmp_path / "KDDTest+.txt").write_text(
        "\n".join([_kdd_row("normal") + ",21", _kdd_row("normal.") + ",3", _kdd_row("mscan") + ",5"]) + "\n")
    table = qd.load_nsl_kdd(tmp_path)
    assert table.y.tolist() == [False, True]
    assert table.test is not None and table.test.y.tolist() == [False, True, True]


def test_creditcard_loader_drops_the_pandas_index_and_combines_files(tmp_path):
    header = ["Time", "V1", "Amount", "Class"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x.csv").write_text(",".join(["", *header]) + "\n0,1.0,0.5,9.99,0\n1,2.0,-3.0,0.0,1\n")
    (tmp_path / "b" / "y.csv").write_text(",".join(header) + "\n3.0,0.1,20.0,0\n")
    table = qd.load_creditcard(tmp_path)
    assert table.numeric_names == ["Time", "V1", "Amount"]
    assert table.y.tolist() == [False, True, False]
    assert table.x[:, 0].tolist() == [1.0, 2.0, 3.0]


def test_npz_loader_and_discovery_report_missing_folders(tmp_path):
    adb = tmp_path / "adbench_classical"
    adb.mkdir()
    np.savez(adb / "38_thyroid.npz", X=np.ones((5, 3)), y=np.array([0, 0, 1, 0, 0]))
    np.savez(adb / "4_breastw.npz", X=np.ones((4, 2)), y=np.array([0, 1, 0, 0]))
    sources, missing = qd.discover(tmp_path)
    assert [s.name for s in sources] == ["breastw", "thyroid"]
    assert len(missing) == 4 and all("not found" in m for m in missing)
    table = sources[1].loader(sources[1].path)
    assert table.name == "thyroid" and table.y.sum() == 1 and table.x.shape == (5, 3)
    only, _ = qd.discover(tmp_path, ["THYR"])
    assert [s.name for s in only] == ["thyroid"]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_never_trains_or_calibrates_on_anomalies(seed):
    y = np.random.default_rng(seed).random(1000) < 0.2
    parts = qd.split(y, seed)
    assert not y[parts.fit].any() and not y[parts.calib].any()
    assert y[parts.test].sum() == y.sum()
    together = np.concatenate([parts.fit, parts.calib, parts.test])
    assert np.array_equal(np.sort(together), np.arange(y.size))
    normals = (~y).sum()
    assert abs(parts.fit.size - 0.6 * normals) <= 1 and abs(parts.calib.size - 0.15 * normals) <= 1
    fixed = qd.split_fixed(y, seed)
    assert not y[fixed.fit].any() and not y[fixed.calib].any() and fixed.test.size == 0
    assert np.array_equal(qd.split(y, seed).fit, parts.fit)


def test_cap_is_deterministic_and_bounds_both_classes():
    y = np.arange(1000) % 10 == 0  # 100 anomalies
    table = qd.Table("t", np.arange(1000, dtype=float)[:, None], y, ["f0"])
    small = qd.cap(table, max_normal=300, max_anomaly=40)
    assert (~small.y).sum() == 300 and small.y.sum() == 40 and "capped" in small.note
    assert np.array_equal(qd.cap(table, 300, 40).x, small.x)
    assert qd.cap(table, 5000, 5000) is table
    table.test = qd.Table("fixed", np.zeros((3, 1)), np.array([False, True, True]), ["f0"])
    assert qd.cap(table, 300, 40).test is table.test, "a fixed test file survives the cap"


def test_recall_at_budget_flags_exactly_the_top_one_percent():
    scores = np.arange(1000, dtype=float)
    y = np.zeros(1000, dtype=bool)
    y[[999, 998, 500, 5]] = True  # two in the top 10, two far below
    assert quality.recall_at_budget(scores, y) == pytest.approx(0.5)
    assert quality.recall_at_budget(scores, y, budget=0.5) == pytest.approx(0.75)
    assert quality.recall_at_budget(-scores, y) == pytest.approx(0.25)
    assert np.isnan(quality.recall_at_budget(scores, np.zeros(1000, dtype=bool)))


def test_peer_matrix_one_hots_categories_seen_in_fit_only():
    cats = np.array([["a"], ["b"], ["a"]], dtype=object)
    fit = qd.Table("t", np.zeros((3, 1)), np.zeros(3, bool), ["x"], cats, ["c"])
    other = qd.Table("t", np.ones((2, 1)), np.zeros(2, bool), ["x"], np.array([["b"], ["zzz"]], dtype=object), ["c"])
    xf, xo = qdet.matrix(fit, other)
    assert xf.shape == (3, 3) and xf[:, 1].tolist() == [1.0, 0.0, 1.0]
    assert xo.tolist() == [[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]]


def test_tiny_end_to_end_run_prints_a_line_per_dataset(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4))
    y = np.zeros(400, dtype=int)
    x[:20] += 6.0
    y[:20] = 1
    (tmp_path / "adbench_classical").mkdir()
    np.savez(tmp_path / "adbench_classical" / "1_toy.npz", X=x, y=y)
    code = quality.main(["--data-dir", str(tmp_path), "--no-write", "--detectors", "ours,IForest",
                         "--seeds", "0"])
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("toy"))
    auc = float(line.split("ours AUC ")[1].split()[0])
    assert auc > 0.95
    assert "skip: ECG5000" in out


def test_real_ecg5000_matches_its_readme():
    folder = SHARED / "ecg5000"
    if not folder.is_dir():
        pytest.skip(f"shared dataset folder {folder} not found")
    table = qd.load_ecg5000(folder)
    assert table.x.shape == (5000, 140) and int(table.y.sum()) == 2081
