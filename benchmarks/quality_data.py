"""Detection-quality benchmark, data side: loaders for ../shared/data and the novelty protocol.

Every loader returns a ``Table``: a numeric block, an optional categorical block (strings), the
feature names and ``y`` (True = anomaly). Files are read in place, never copied.

Protocol (``split``), the novelty setting: normals are shuffled with the seed and cut into *fit*
(60 %), *calib* (15 %) and *test* (25 %); the test set is those test normals plus every anomaly.
Anomalies never reach fit or calib. Tables with a fixed train/test pair (NSL-KDD) use
``split_fixed``: fit/calib from the normal rows of the training file (80/20), test = the test file.

Large tables are subsampled *before* the split with a fixed seed (``cap``): at most
``MAX_NORMAL`` normal rows and ``MAX_ANOMALY`` anomalous rows. The cap keeps the full run
within minutes on a 2-core machine; it changes the anomaly ratio of a few tables (documented
per table in the report), which moves AUC-PR but not AUC-ROC.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_NORMAL = 5_000
MAX_ANOMALY = 2_500
CAP_SEED = 12345
FRACTIONS = (0.60, 0.15)  # fit, calib; the rest of the normals go to test
MULTI_SEED_MAX_ROWS = 6_000  # tables up to this size (after the cap) run every seed, larger ones the first

KDD_NAMES = ["duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land", "wrong_fragment", "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised", "root_shell", "su_attempted", "num_root", "num_file_creations", "num_shells", "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login", "count", "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate", "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate", "dst_host_count", "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate", "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate", "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate"]
KDD_CATEGORICAL = (1, 2, 3)


@dataclass
class Table:
    """One dataset: numeric ``x`` (n × d), categorical ``cats`` (n × k strings), labels ``y``."""

    name: str
    x: np.ndarray
    y: np.ndarray
    numeric_names: list[str]
    cats: np.ndarray | None = None
    cat_names: list[str] = field(default_factory=list)
    note: str = ""
    test: Table | None = None  # a fixed test table (NSL-KDD); None = use the protocol split

    def __len__(self) -> int:
        return int(self.y.size)

    def take(self, idx: np.ndarray) -> Table:
        cats = self.cats[idx] if self.cats is not None else None
        return Table(self.name, self.x[idx], self.y[idx], self.numeric_names, cats, self.cat_names, self.note)

    def events(self, idx: np.ndarray | None = None, prefix: str = "r") -> list[dict[str, Any]]:
        """Rows as event dicts (``event_id`` plus one field per column), the detector's input."""
        rows = np.arange(len(self)) if idx is None else idx
        names = self.numeric_names + self.cat_names
        out: list[dict[str, Any]] = []
        xs = self.x[rows].tolist()
        cs = self.cats[rows].tolist() if self.cats is not None else [[] for _ in rows]
        for i, nums, strs in zip(rows.tolist(), xs, cs, strict=True):
            event: dict[str, Any] = dict(zip(names, nums + strs, strict=True))
            event["event_id"] = f"{prefix}{i}"
            out.append(event)
        return out


@dataclass(frozen=True)
class Split:
    fit: np.ndarray
    calib: np.ndarray
    test: np.ndarray


def cap(table: Table, max_normal: int = MAX_NORMAL, max_anomaly: int = MAX_ANOMALY,
        seed: int = CAP_SEED) -> Table:
    """Random subsample (fixed seed) to at most ``max_normal`` normals and ``max_anomaly`` anomalies."""
    rng = np.random.default_rng(seed)
    normal, anomalous = np.flatnonzero(~table.y), np.flatnonzero(table.y)
    if normal.size <= max_normal and anomalous.size <= max_anomaly:
        return table
    keep_n = np.sort(rng.choice(normal, min(max_normal, normal.size), replace=False))
    keep_a = np.sort(rng.choice(anomalous, min(max_anomaly, anomalous.size), replace=False))
    out = table.take(np.sort(np.concatenate([keep_n, keep_a])))
    out.test = table.test  # a fixed test file (NSL-KDD) is never capped
    out.note = (f"capped from {normal.size:,} normal / {anomalous.size:,} anomalous rows to "
                f"{keep_n.size:,} / {keep_a.size:,}")
    return out


def split(y: np.ndarray, seed: int, fractions: tuple[float, float] = FRACTIONS) -> Split:
    """Novelty split: fit and calib are normal rows only; test = remaining normals + all anomalies."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(~y))
    n_fit = round(fractions[0] * normal.size)
    n_cal = max(1, round(fractions[1] * normal.size))
    test = np.sort(np.concatenate([normal[n_fit + n_cal:], np.flatnonzero(y)]))
    return Split(np.sort(normal[:n_fit]), np.sort(normal[n_fit:n_fit + n_cal]), test)


def split_fixed(y_train: np.ndarray, seed: int, calib_fraction: float = 0.2) -> Split:
    """Fixed train/test files: fit/calib from the training file's normals; ``test`` is empty here."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(~y_train))
    n_cal = max(1, round(calib_fraction * normal.size))
    return Split(np.sort(normal[n_cal:]), np.sort(normal[:n_cal]), np.zeros(0, dtype=np.int64))


# ---- loaders ------------------------------------------------------------------------------------


def load_ecg5000(folder: Path) -> Table:
    """UCR ECG5000, TRAIN and TEST concatenated (5,000 beats × 140); anomaly = label != 1."""
    parts = [np.loadtxt(folder / f"ECG5000_{p}.tsv", delimiter="\t") for p in ("TRAIN", "TEST")]
    data = np.concatenate(parts)
    return Table("ECG5000", data[:, 1:], data[:, 0] != 1, [f"t{i}" for i in range(data.shape[1] - 1)])


def _kdd_table(name: str, rows: Iterator[list[str]], normal_label: str, label_col: int) -> Table:
    nums: list[list[float]] = []
    cats: list[list[str]] = []
    labels: list[bool] = []
    num_cols = [i for i in range(41) if i not in KDD_CATEGORICAL]
    for row in rows:
        if len(row) <= label_col:
            continue
        nums.append([float(row[i]) for i in num_cols])
        cats.append([row[i] for i in KDD_CATEGORICAL])
        labels.append(row[label_col] != normal_label)
    return Table(name, np.asarray(nums, dtype=np.float64), np.asarray(labels, dtype=bool),
                 [KDD_NAMES[i] for i in num_cols], np.asarray(cats, dtype=object),
                 [KDD_NAMES[i] for i in KDD_CATEGORICAL])


def load_kdd99(folder: Path) -> Table:
    """KDD Cup '99 10 %: gz CSV without header, label last (``normal.`` = normal)."""
    with gzip.open(folder / "kddcup.data_10_percent.gz", "rt", newline="") as fh:
        return _kdd_table("KDD99-10%", csv.reader(fh), "normal.", 41)


def load_nsl_kdd(folder: Path) -> Table:
    """NSL-KDD: the table is KDDTrain+_20Percent (fit/calib on its normals), ``test`` = KDDTest+."""
    with open(folder / "KDDTrain+_20Percent.txt", newline="") as fh:
        train = _kdd_table("NSL-KDD", csv.reader(fh), "normal", 41)
    with open(folder / "KDDTest+.txt", newline="") as fh:
        train.test = _kdd_table("NSL-KDD", csv.reader(fh), "normal", 41)
    return train


def _read_creditcard(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        keep = [i for i, h in enumerate(header) if h and not h.startswith("Unnamed")]
        data = np.asarray([[float(r[i]) for i in keep] for r in reader], dtype=np.float64)
    return [header[i] for i in keep], data


def load_creditcard(folder: Path) -> Table:
    """Both ULB credit-card subsamples combined (Time, V1..V28, Amount; Class 1 = fraud)."""
    parts = []
    names: list[str] = []
    for path in sorted(folder.glob("*/*.csv")):
        names, data = _read_creditcard(path)
        parts.append(data)
    if not parts:
        raise FileNotFoundError(f"no CSV under {folder}")
    data = np.concatenate(parts)
    label = names.index("Class")
    features = [n for i, n in enumerate(names) if i != label]
    return Table("creditcard-ULB-sub", np.delete(data, label, axis=1), data[:, label] == 1, features,
                 note="two third-party subsamples combined: 6,916 normal + 502 fraud")


def load_npz(path: Path) -> Table:
    """ADBench/ODDS ``.npz`` (X, y; y = 1 anomaly)."""
    with np.load(path) as data:
        x = np.asarray(data["X"], dtype=np.float64)
        y = np.asarray(data["y"]).astype(int) == 1
    name = path.stem.split("_", 1)[1] if "_" in path.stem else path.stem
    return Table(name, x, y, [f"f{i}" for i in range(x.shape[1])])


@dataclass(frozen=True)
class Source:
    name: str
    group: str  # "headline" or "adbench"
    path: Path
    loader: Any


def discover(data_dir: Path, only: Sequence[str] = ()) -> tuple[list[Source], list[str]]:
    """Datasets present under ``data_dir`` (filtered by case-insensitive substrings ``only``),
    and a message for each expected folder that is absent."""
    sources: list[Source] = []
    missing: list[str] = []
    fixed = [("ECG5000", "ecg5000", load_ecg5000), ("NSL-KDD", "nsl_kdd", load_nsl_kdd),
             ("KDD99-10%", "kddcup99_10pct", load_kdd99),
             ("creditcard-ULB-sub", "creditcard_ulb_subsamples", load_creditcard)]
    for name, folder, loader in fixed:
        if (data_dir / folder).is_dir():
            sources.append(Source(name, "headline", data_dir / folder, loader))
        else:
            missing.append(f"{name}: folder {data_dir / folder} not found, skipped")
    adb = data_dir / "adbench_classical"
    if adb.is_dir():
        files = sorted(adb.glob("*.npz"), key=lambda p: (int(p.stem.split("_")[0]) if p.stem[0].isdigit() else 0))
        sources += [Source(load_npz_name(p), "adbench", p, load_npz) for p in files]
    else:
        missing.append(f"ADBench/ODDS: folder {adb} not found, skipped")
    if only:
        wanted = [w.lower() for w in only]
        sources = [s for s in sources if any(w in s.name.lower() or w == s.group for w in wanted)]
    return sources, missing


def load_npz_name(path: Path) -> str:
    return path.stem.split("_", 1)[1] if "_" in path.stem else path.stem
