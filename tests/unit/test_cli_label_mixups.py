"""A new-user trial of 2026-12-06 (the handbook simulator's files through train, score and produce):
each mistake it made gets one line and exit 2, or a warning, instead of a misleading error, a
silent wrong result or a traceback. No services: every refusal comes before Kafka is reached."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_detector.cli import main


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """3,000 handbook events (27 frauds) and their delayed labels, as `simulate` writes them."""
    folder = tmp_path_factory.mktemp("sim")
    events, labels = folder / "h.csv", folder / "l.jsonl"
    assert main(["simulate", "--out", str(events), "--feedback-out", str(labels), "--count", "3000",
                 "--span-days", "14", "--end", "2026-12-01"]) == 0
    return events, labels


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_the_normal_label_swapped_is_said_and_no_field_is_blamed(
        history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--normal-label fraud` on the simulator's legit/fraud labels: the leak check took the 2,973
    legit rows for frauds and blamed real fields one after another (merchant_category, channel, …);
    following its advice trained on the frauds, exit 0. Now a warning names the counts, and the
    leak check (which assumes anomalies are few) does not run."""
    events, _ = history
    code, err = _run(capsys, ["train", "--input", str(events), "--out", str(tmp_path / "m"), "--label-column",
                              "label", "--normal-label", "fraud", "--exclude", "pattern", "--epochs", "1"])
    assert "gives the label away" not in err
    assert "warning: label=fraud matches 27 of 3,000 rows (0.9%)" in err and "legit 2,973" in err
    assert code == 2 and "27 normal rows: at least 100 are needed" in err  # too few to train on, said as before


def test_the_leak_check_still_refuses_a_ground_truth_column(
        history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events, _ = history
    code, err = _run(capsys, ["train", "--input", str(events), "--out", str(tmp_path / "m"), "--label-column",
                              "label", "--normal-label", "legit", "--epochs", "1"])
    assert code == 2 and "field 'pattern' gives the label away" in err


def test_the_leak_check_lets_a_real_feature_through_with_keep(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An intrusion-like file (80 % normal): `service` is nearly always `ecr_i` on the attacks and
    never on normal rows, a real feature the ground-truth check refused with no way out."""
    import random

    rng = random.Random(0)
    rows = ["event_id,timestamp,bytes,service,label"]
    for i in range(1000):
        attack = i % 5 == 0
        rows.append(f"e{i},{1_700_000_000_000 + 1000 * i},{rng.random() * 100:.2f},"
                    f"{'ecr_i' if attack else rng.choice(['http', 'smtp', 'ftp'])},{'smurf' if attack else 'normal'}")
    data = tmp_path / "kdd.csv"
    data.write_text("\n".join(rows) + "\n")
    common = ["train", "--input", str(data), "--label-column", "label", "--normal-label", "normal", "--epochs", "1"]
    code, err = _run(capsys, [*common, "--out", str(tmp_path / "m")])
    assert code == 2 and "field 'service' gives the label away" in err and "--keep service" in err
    assert main([*common, "--out", str(tmp_path / "m"), "--keep", "service"]) == 0
    code, err = _run(capsys, [*common, "--out", str(tmp_path / "m"), "--keep", "servce"])
    assert code == 2 and "--keep servce" in err


@pytest.mark.parametrize("streamed", [[], ["--streamed"]])
def test_the_ground_truth_check_alike_on_both_paths(streamed: list[str], history: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A third trial: a true/false ground-truth column passed on the streamed path (the check read
    category fields only there); a --keep typo passed there unless --exclude came with it; --keep of
    the label column, of an excluded field or of a number field was taken or misnamed."""
    events, _ = history
    lines = events.read_text().splitlines()
    head = lines[0].split(",")
    at, pat = head.index("label"), head.index("pattern")
    flagged = tmp_path / "flag.csv"  # pattern replaced by is_fraud, true on the frauds
    flagged.write_text("\n".join([",".join([*head[:pat], "is_fraud"])] + [
        ",".join([*row[:pat], "true" if row[at] == "fraud" else "false"])
        for row in (line.split(",") for line in lines[1:])]) + "\n")
    common = ["train", "--label-column", "label", "--normal-label", "legit", "--epochs", "1", *streamed]
    code, err = _run(capsys, [*common, "--input", str(flagged), "--out", str(tmp_path / "m")])
    assert code == 2 and "field 'is_fraud' gives the label away: 27 of the 27 anomalous rows" in err
    for keep, said in (("nosuch", "--keep nosuch: no such field"),
                       ("label", "--keep label: it is the --label-column"),
                       ("amount", "--keep amount: a number field")):
        code, err = _run(capsys, [*common, "--input", str(flagged), "--out", str(tmp_path / "m"), "--keep", keep])
        assert code == 2 and said in err, (keep, err)
    code, err = _run(capsys, [*common, "--input", str(events), "--out", str(tmp_path / "m"), "--keep", "pattern",
                              "--exclude", "pattern"])
    assert code == 2 and "--keep pattern and --exclude pattern: one or the other" in err
    assert main([*common, "--input", str(flagged), "--out", str(tmp_path / "m"), "--keep", "is_fraud"]) == 0


def test_the_swapped_label_warning_on_the_streamed_path_too(
        history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events, _ = history
    code, err = _run(capsys, ["train", "--input", str(events), "--out", str(tmp_path / "m"), "--label-column",
                              "label", "--normal-label", "fraud", "--exclude", "pattern", "--epochs", "1",
                              "--streamed"])
    assert "warning: label=fraud matches 27 of 3,000 rows (0.9%)" in err and "is skipped" in err
    assert "(labels: legit 2,973, fraud 27)" in err  # counted as in memory (a trial: names alone)
    # the ground-truth check on this path too (it kept the simulator's pattern as a feature before)
    common = ["train", "--input", str(events), "--label-column", "label", "--normal-label", "legit", "--epochs", "1",
              "--streamed"]
    code, err = _run(capsys, [*common, "--out", str(tmp_path / "m2")])
    assert code == 2 and "field 'pattern' gives the label away" in err and not (tmp_path / "m2").exists()
    code, err = _run(capsys, [*common, "--out", str(tmp_path / "m3"), "--keep", "pattern"])
    assert "gives the label away" not in err


@pytest.mark.parametrize("command", ["train", "score"])
def test_a_normal_label_without_a_label_column_is_refused(
        command: str, history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It was ignored: train then learned the file's label column as a feature."""
    events, labels = history
    out = ["--out", str(tmp_path / ("m" if command == "train" else "s.csv"))]
    model = [] if command == "train" else ["--model", str(tmp_path / "none")]
    code, err = _run(capsys, [command, "--input", str(events), *out, *model, "--normal-label", "legit"])
    assert code == 2 and "--normal-label legit needs --label-column" in err
    code, err = _run(capsys, [command, "--input", str(events), *out, *model, "--normal-label", "0"])  # the default, said
    assert code == 2 and "--normal-label 0 needs --label-column" in err
    if command == "train":
        code, err = _run(capsys, ["train", "--input", str(events), *out, "--feedback", str(labels),
                                  "--normal-label", "legit"])
        assert code == 2 and "the --feedback labels are legit and fraud already" in err


def test_score_reads_labels_as_the_model_was_trained_and_refuses_a_normal_label_no_row_has(
        history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`score --label-column label` defaulted to 0 against a model trained on legit/fraud, and a
    misspelt --normal-label printed figures for every row taken as an anomaly, exit 0."""
    events, _ = history
    model = tmp_path / "m"
    assert main(["train", "--input", str(events), "--out", str(model), "--label-column", "label", "--normal-label",
                 "legit", "--exclude", "pattern", "--epochs", "1"]) == 0
    meta = orjson.loads((model / "metadata.json").read_bytes())
    assert (meta["training_label_column"], meta["training_normal_label"]) == ("label", "legit")
    capsys.readouterr()
    base = ["score", "--model", str(model), "--input", str(events), "--out", str(tmp_path / "s.csv"),
            "--label-column", "label"]
    code, err = _run(capsys, base)
    assert code == 0 and "(27 of 3000 rows not 'legit')" in err
    assert re.search(r"recall=0\.\d{4}", err) and "undefined" not in err
    figures = [line for line in err.splitlines() if line.startswith("the model against column")]
    code, streamed = _run(capsys, [*base, "--streamed", "--chunk-rows", "700"])  # a trial: set aside, not evaluated
    assert code == 0 and figures and [line for line in streamed.splitlines()
                                      if line.startswith("the model against column")] == figures
    normal_only = tmp_path / "legit.csv"  # a trial: an all-normal file printed recall=0 and f1=0 as if measured
    header, *lines = events.read_text().splitlines()
    normal_only.write_text("\n".join([header, *(line for line in lines if ",legit," in line)]) + "\n")
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(normal_only), "--out",
                              str(tmp_path / "l.csv"), "--label-column", "label"])
    assert code == 0 and "anomalies=0" in err and "no anomaly among them: recall, F1 and the AUCs are undefined" in err
    assert "recall=" not in err and "f1=" not in err and "auc_roc=" not in err
    frauds_only = tmp_path / "fraud.csv"  # a trial: refused as if the normal label were misspelt
    frauds_only.write_text("\n".join([header, *(line for line in lines if ",fraud," in line)]) + "\n")
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(frauds_only), "--out",
                              str(tmp_path / "f.csv"), "--label-column", "label"])
    assert code == 0 and "a file of anomalies only; recall is what it can measure" in err
    assert "anomalies=27" in err and re.search(r"recall=\d\.\d{4}", err) and "warning: no scored row" not in err
    assert "precision=" not in err and "precision is 1 by construction" in err
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(frauds_only), "--out",
                              str(tmp_path / "f.csv"), "--label-column", "label", "--normal-label", "legi"])
    assert code == 2 and "no row has label='legi'" in err, "a normal label given by hand: still a misspelling"
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(frauds_only), "--out",
                              str(tmp_path / "f.csv"), "--label-column", "label", "--normal-label", "legit"])
    assert code == 0 and "a file of anomalies only" in err, "legit given, only fraud rows: no misspelling"
    untrained = tmp_path / "u"  # a trial: a model trained with --feedback (legit/fraud), scored against a label column
    assert main(["train", "--input", str(events), "--out", str(untrained), "--feedback", str(history[1]),
                 "--exclude", "pattern", "--exclude", "label", "--epochs", "1"]) == 0
    capsys.readouterr()
    code, err = _run(capsys, ["score", "--model", str(untrained), "--input", str(events), "--out",
                              str(tmp_path / "u.csv"), "--label-column", "label"])
    assert code == 0 and "note: normal rows are those with label='legit'" in err and "(27 of 3000 rows not 'legit')" in err
    code, err = _run(capsys, ["score", "--model", str(untrained), "--input", str(frauds_only), "--out",
                              str(tmp_path / "u.csv"), "--label-column", "label"])
    assert code == 0 and "a file of anomalies only" in err
    cased = tmp_path / "cased.csv"  # a third trial: Legit/Fraud were not recognised
    cased.write_text(events.read_text().replace(",legit,", ",Legit,").replace(",fraud,", ",Fraud,"))
    code, err = _run(capsys, ["score", "--model", str(untrained), "--input", str(cased), "--out",
                              str(tmp_path / "u.csv"), "--label-column", "label"])
    assert code == 0 and "normal rows are those with label='Legit'" in err and "(27 of 3000 rows not 'Legit')" in err
    both = tmp_path / "both.csv"  # two usual normal words: the user chooses, and is told why
    both.write_text(events.read_text().replace(",legit,", ",normal,", 5).replace(",fraud,", ",legit,"))
    code, err = _run(capsys, ["score", "--model", str(untrained), "--input", str(both), "--out",
                              str(tmp_path / "u.csv"), "--label-column", "label"])
    assert code == 2 and "the labels 'legit', 'normal' each read as normal: give one with --normal-label" in err
    code, err = _run(capsys, ["train", "--input", str(cased), "--out", str(tmp_path / "t"), "--label-column", "label",
                              "--exclude", "pattern", "--epochs", "1"])  # a third trial: train refused, score chose
    assert code == 0 and "note: normal rows are those with label='Legit' (no row has the default 0" in err
    code, err = _run(capsys, ["train", "--input", str(cased), "--out", str(tmp_path / "ts"), "--label-column", "label",
                              "--exclude", "pattern", "--epochs", "1", "--streamed", "--workers", "1"])
    assert code == 0 and "note: normal rows are those with label='Legit' (no row of the first chunk" in err, err
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(frauds_only), "--out",
                              str(tmp_path / "f.csv"), "--label-column", "label", "--streamed"])
    assert code == 0 and "a file of anomalies only" in err and "anomalies=27" in err
    code, err = _run(capsys, [*base, "--normal-label", "legitt"])
    assert code == 2 and "no row has label='legitt' (labels seen: ['fraud', 'legit'])" in err
    numbered = tmp_path / "numbered.csv"  # the same file with 0/1 labels: the trained 'legit' is not there, said so
    numbered.write_text(events.read_text().replace(",legit,", ",0,").replace(",fraud,", ",1,"))
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(numbered), "--out",
                              str(tmp_path / "n.csv"), "--label-column", "label"])
    assert code == 2 and "no row has label='legit' (the normal label the model was trained with)" in err


def test_labels_of_another_file_joined_by_id_are_warned_of(
        history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every simulated file numbered its events sim-1, sim-2, …: another run's labels joined
    silently (1 of its 201 "frauds" a fraud). Now each file's default run id is a digest of its
    options, so they join nothing and `score` says so; with the same ids forced (`--run-id`), a
    label dated before its event gives it away."""
    events, labels = history
    model = tmp_path / "m"
    assert main(["train", "--input", str(events), "--out", str(model), "--label-column", "label", "--normal-label",
                 "legit", "--exclude", "pattern", "--epochs", "1"]) == 0
    first_id = events.read_text().splitlines()[1].split(",")[0]
    assert re.fullmatch(r"sim-[0-9a-f]{6}-1", first_id)
    other, other_labels = tmp_path / "o.csv", tmp_path / "o.jsonl"
    again = tmp_path / "again.csv"
    made = ["simulate", "--count", "3000", "--span-days", "14"]
    assert main([*made, "--out", str(again), "--end", "2026-12-01"]) == 0
    assert again.read_bytes() == events.read_bytes()  # the same command, the same file and ids
    assert main([*made, "--out", str(other), "--feedback-out", str(other_labels), "--end", "2026-09-01",
                 "--seed", "1"]) == 0
    assert other.read_text().splitlines()[1].split(",")[0].rsplit("-", 1)[0] != first_id.rsplit("-", 1)[0]
    capsys.readouterr()
    base = ["score", "--model", str(model), "--input", str(events), "--out", str(tmp_path / "s.csv")]
    code, err = _run(capsys, [*base, "--feedback", str(labels)])
    assert code == 0 and "dated before it" not in err and "no label of" not in err
    code, err = _run(capsys, [*base, "--feedback", str(other_labels)])
    assert code == 0 and "no label of o.jsonl is about an event of the input" in err
    forced = first_id.rsplit("-", 1)[0]
    assert main([*made, "--out", str(other), "--feedback-out", str(other_labels), "--end", "2026-09-01",
                 "--seed", "1", "--run-id", forced]) == 0
    capsys.readouterr()
    code, err = _run(capsys, [*base, "--feedback", str(other_labels)])
    assert code == 0 and "warning: " in err and "labels of o.jsonl joined to an event are dated before it" in err


def test_train_into_a_models_folder_replaces_it_and_out_dash_is_refused(
        history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trained into the folder of a model with entity features, a model without them loaded as
    'sha256 mismatch in entity.json'; `--out -` made a folder named '-'."""
    from stream_detector.model.bundle import load_bundle

    events, _ = history
    model = tmp_path / "m"
    common = ["--input", str(events), "--label-column", "label", "--normal-label", "legit", "--exclude", "pattern",
              "--epochs", "1"]
    assert main(["train", *common, "--out", str(model), "--entity-key", "account_id",
                 "--max-self-flag-rate", "1"]) == 0
    assert load_bundle(model).entity is not None and (model / "report").is_dir()
    (model / "report" / "mine.txt").write_text("the user's")
    assert main(["train", "--input", str(events), "--exclude", "label", "--exclude", "pattern", "--epochs", "1",
                 "--out", str(model)]) == 0
    assert load_bundle(model).entity is None  # the old model's images went, the user's file stayed
    assert sorted(p.name for p in (model / "report").iterdir()) == ["mine.txt"]
    (model / "report" / "mine.txt").unlink()
    assert main(["train", "--input", str(events), "--exclude", "label", "--exclude", "pattern", "--epochs", "1",
                 "--out", str(model), "--streamed"]) == 0
    assert not (model / "report").exists()
    odd = tmp_path / "odd"  # a trial: an OSError (exit 1) after the whole training
    capsys.readouterr()
    for place, made in ((odd / "report", "file"), (odd / "report" / "scores.png", "folder")):
        place.parent.mkdir(parents=True, exist_ok=True)
        place.write_text("x") if made == "file" else place.mkdir()
        code, err = _run(capsys, ["train", *common, "--out", str(odd)])
        assert code == 2 and f"{place} is a {made}" in err and "epoch" not in err
        place.unlink() if made == "file" else place.rmdir()
    for dash in ("-", "./-"):
        code, err = _run(capsys, ["train", *common, "--out", dash])
        assert code == 2 and f"--out {dash}: a model is a folder" in err and not Path("-").exists()


def test_simulate_refuses_one_file_for_events_and_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same path, another spelling of it, or a hard link: the labels were written over the events."""
    import os

    same = tmp_path / "same.csv"
    (tmp_path / "sub").mkdir()
    for other in (str(same), str(tmp_path / "sub" / ".." / "same.csv")):
        code, err = _run(capsys, ["simulate", "--out", str(same), "--feedback-out", other, "--count", "100"])
        assert code == 2 and "are the same file: events and labels go to two files" in err and not same.exists()
    (tmp_path / "a.csv").write_text("x\n")
    os.link(tmp_path / "a.csv", tmp_path / "b.csv")
    code, err = _run(capsys, ["simulate", "--out", str(tmp_path / "a.csv"), "--feedback-out", str(tmp_path / "b.csv"),
                              "--count", "100"])
    assert code == 2 and "are the same file" in err
    assert main(["simulate", "--out", str(tmp_path / "e.csv"), "--feedback-out", str(tmp_path / "l.csv"),
                 "--count", "100"]) == 0


@pytest.mark.parametrize(("device", "said"), [("tpu", "--device tpu: expected cpu, cpu:N, cuda or cuda:N"),
                                              ("cuda:7", "--device cuda:7: ")])
def test_score_refuses_a_device_it_cannot_use(device: str, said: str, history: tuple[Path, Path], bundle: Any,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """torch's RuntimeError and exit 1 before (after reading the whole file, for `tpu`)."""
    from stream_detector.model.bundle import save_bundle

    events, _ = history
    model = save_bundle(bundle, tmp_path / "m")
    code, err = _run(capsys, ["score", "--model", str(model), "--input", str(events), "--out",
                              str(tmp_path / "s.csv"), "--device", device])
    assert code == 2 and said in err and "Traceback" not in err and not (tmp_path / "s.csv").exists()
    if device.startswith("cuda"):  # SD_DEVICE, score's default, alike
        import os
        from unittest import mock

        with mock.patch.dict(os.environ, {"SD_DEVICE": device}):
            code, err = _run(capsys, ["score", "--model", str(model), "--input", str(events), "--out",
                                      str(tmp_path / "s.csv")])
        assert code == 2 and f"SD_DEVICE={device}: " in err and not (tmp_path / "s.csv").exists()


def test_torch_cpu_index_is_a_device_like_cpu(history: tuple[Path, Path], bundle: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`--device cpu:0` (torch's name; the index is ignored on CPU) was refused, SD_DEVICE=cpu:0 too."""
    from stream_detector.model.bundle import device_problem, save_bundle
    from stream_detector.settings import Settings

    events, _ = history
    model = save_bundle(bundle, tmp_path / "m")
    outs = {}
    for device in ("cpu", "cpu:0"):
        out = tmp_path / f"s-{device.replace(':', '')}.csv"
        code, err = _run(capsys, ["score", "--model", str(model), "--input", str(events), "--out", str(out),
                                  "--device", device])
        assert code == 0, err
        outs[device] = out.read_bytes()
    assert outs["cpu"] == outs["cpu:0"]
    assert device_problem("cpu:0") is None and Settings(device="cpu:0").device == "cpu:0"
    for bad in ("cpu0", "cpu:01", "cpu:99999999999999999999", "cuda:007"):  # torch refuses these, after the read
        assert device_problem(bad) == "expected cpu, cpu:N, cuda or cuda:N", bad


def test_produce_refuses_a_labels_file_sent_as_events(history: tuple[Path, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Sent to the input topic, each label was dead-lettered by the worker as no_features."""
    _, labels = history
    code, err = _run(capsys, ["produce", "--input", str(labels), "--topic", "never-made"])
    assert code == 2 and "holds feedback records" in err and "produce --feedback" in err
    bare = labels.parent / "bare.jsonl"  # labelled_at is optional in the contract
    bare.write_bytes(b"".join(orjson.dumps({k: v for k, v in orjson.loads(line).items() if k != "labelled_at"}) + b"\n"
                              for line in labels.read_bytes().splitlines()))
    code, err = _run(capsys, ["produce", "--input", str(bare), "--topic", "never-made"])
    assert code == 2 and "holds feedback records" in err


def test_a_label_key_typo_gets_the_entity_key_it_meant(history: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    events, labels = history
    code, err = _run(capsys, ["train", "--input", str(events), "--out", str(tmp_path / "m"), "--feedback", str(labels),
                              "--entity-key", "terminal_id", "--label-key", "termnal_id"])
    assert code == 2 and "--label-key terminal_id (a typo?), or add --entity-key termnal_id" in err


def test_a_worker_refuses_a_device_it_cannot_use_before_reaching_anything() -> None:
    """SD_DEVICE=cuda on a machine without one: torch's RuntimeError deserialising the model, exit 1."""
    from stream_detector.errors import ConfigError
    from stream_detector.settings import Settings
    from stream_detector.worker import Worker

    worker = Worker(Settings(device="cuda:7", kafka_bootstrap="127.0.0.1:1", redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(ConfigError, match=r"SD_DEVICE=cuda:7: "):
        worker.start()


def test_check_config_says_why_the_device_is_unusable() -> None:
    """check-config's device line names what the worker refuses to start with (device_problem)."""
    from stream_detector.checks import _settings_checks
    from stream_detector.settings import Settings

    checks = {c.name: c for c in _settings_checks(Settings(device="cuda:7"))}
    assert checks["device"].status == "fail" and checks["device"].detail.startswith("SD_DEVICE=cuda:7: ")


@pytest.mark.parametrize(("column", "values"), [("TX_FRAUD", ("0", "1")), ("Class", ("0", "1")),
                                                ("isFraud", ("N", "Y"))])
def test_a_label_column_in_any_spelling_is_pointed_at_and_its_leak_warned_of(
        column: str, values: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trial (trial E): the handbook's `TX_FRAUD` and the ULB file's `Class` became features of a
    model trained without --label-column, said nowhere (only `label`, `is_fraud`, `fraud`, `class`,
    spelt so, were pointed at). Now the hint names it, with --normal-label where the normal value is
    not 0, and a warning says it is a feature; a label given, or the column excluded, says nothing."""
    rows = "".join(f"e{i},{1_790_000_000_000 + i * 60_000},{i % 13 + 0.5},{values[1] if i % 40 == 0 else values[0]}\n"
                   for i in range(240))
    data = tmp_path / "f.csv"
    data.write_text(f"event_id,timestamp,amount,{column}\n" + rows)
    code, err = _run(capsys, ["train", "--input", str(data), "--out", str(tmp_path / "m"), "--epochs", "1"])
    normal = "" if values[0] == "0" else f" --normal-label {values[0]}"
    assert code == 0, err
    assert f"to train on normal rows only: --label-column {column}{normal} (values of {column}: " in err
    assert f"warning: {column} looks like a label and is a feature of this model" in err
    code, err = _run(capsys, ["train", "--input", str(data), "--out", str(tmp_path / "m2"), "--epochs", "1",
                              "--label-column", column, *(["--normal-label", values[0]] if normal else [])])
    assert code == 0, err
    assert "looks like a label" not in err
    code, err = _run(capsys, ["train", "--input", str(data), "--out", str(tmp_path / "m3"), "--epochs", "1",
                              "--exclude", column])
    assert code == 0, err
    assert "looks like a label" not in err
    # the normal value found without --normal-label: 0 by default, N (a Y/N flag) as a usual normal word
    code, err = _run(capsys, ["train", "--input", str(data), "--out", str(tmp_path / "m4"), "--epochs", "1",
                              "--label-column", column])
    assert code == 0, err
    assert f"training on 234 with {column}={values[0]}" in err


def test_labels_that_join_no_event_refuse_training_and_say_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial E: labels keyed `1369.0` / `0001467` (a spreadsheet's numbers) joined no event `1369`,
    and `train --feedback` wrote a model with every event taken as legit (exit 0), saying only how
    many labels were elsewhere. Now training refuses (exit 2) naming examples and the respelling;
    where some join, the rest are shown by example."""
    rows = "".join(f"{1000 + i},a{i % 7},{1_790_000_000_000 + i * 60_000},{i % 13 + 0.5}\n" for i in range(240))
    data = tmp_path / "f.csv"
    data.write_text("event_id,account_id,timestamp,amount\n" + rows)
    labels = tmp_path / "l.jsonl"
    far = [{"event_id": f"{1000 + i}.0", "label": "fraud", "source": "analyst",
            "labelled_at": 1_790_000_000_000 + i * 60_000 + 3_600_000} for i in range(0, 240, 40)]
    labels.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in far))
    code, err = _run(capsys, ["train", "--input", str(data), "--out", str(tmp_path / "m"), "--feedback", str(labels),
                              "--epochs", "1"])
    assert code == 2 and "no label of l.jsonl is about an event of the input: every event would count as legit" in err
    assert "6 differ only as a spreadsheet writes numbers (e.g. '1000.0' for '1000'): write the ids as text" in err
    assert not (tmp_path / "m").exists()
    near = [{**r, "event_id": r["event_id"][:-2]} for r in far[:3]] + far[3:]
    labels.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in near))
    code, err = _run(capsys, ["train", "--input", str(data), "--out", str(tmp_path / "m"), "--feedback", str(labels),
                              "--epochs", "1"])
    assert code == 0, err
    assert "labels joined by event_id: 3 fraud" in err and "3 labelled events are not in the input (label ids like " \
        "'1120.0', '1160.0', '1200.0'" in err


def test_labels_of_events_another_part_of_the_data_holds_are_not_called_generated_ids() -> None:
    """Trial G: `score --feedback` of the newer part of a simulated file with the whole file's labels
    said `(generated ids? --id-column names the input's id column)` of labels whose ids had the
    input's own form (`sim-27e826-39545` beside `sim-27e826-40061`): labels of the older part."""
    from stream_detector.cli import _stray_label_ids

    ids = {f"sim-27e826-{n}" for n in range(40_061, 40_100)}
    said = _stray_label_ids(["sim-27e826-39545", "sim-27e826-12"], ids)
    assert "another part of the same data?" in said and "generated ids?" not in said
    made_up = {f"events-{n}" for n in range(1, 40)}  # the ids a file without event_id gets
    assert "generated ids? --id-column" in _stray_label_ids(["tx-991", "tx-992"], made_up)


@pytest.mark.parametrize("column", ["pattern", "TX_FRAUD_SCENARIO"])
def test_a_fraud_scenario_column_is_warned_of_beside_a_label_or_without_one(
        column: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial M: the simulator's ``pattern`` was a feature, said nowhere. Trial N: the Handbook's
    ``TX_FRAUD_SCENARIO`` (a number 0-3) beside ``--label-column TX_FRAUD`` passed the leak check,
    which reads categories and booleans, and AUC read 1.0000. A scenario column is ground truth: it
    is warned of with or without a label column, and pointed at with --exclude only (its codes are
    kinds of fraud, no label to train on normal rows with)."""
    codes = ("legit", "card_testing") if column == "pattern" else ("0", "2")
    rows = "".join(f"e{i},{1_790_000_000_000 + i * 60_000},{i % 13 + 0.5},{int(i % 40 == 0)},"
                   f"{codes[1] if i % 40 == 0 else codes[0]}\n" for i in range(240))
    data = tmp_path / "f.csv"
    data.write_text(f"event_id,timestamp,amount,TX_FRAUD,{column}\n" + rows)
    warned = f"warning: {column} looks like a label and is a feature of this model"
    code, err = _run(capsys, ["train", "--input", str(data), "--out", str(tmp_path / "m"), "--epochs", "1"])
    assert code == 0, err
    assert "to train on normal rows only: --label-column TX_FRAUD (values of TX_FRAUD: " in err
    assert warned in err and f"--exclude {column} leaves it out" in err
    assert f"--label-column {column}" not in err
    code, err = _run(capsys, ["train", "--input", str(data), "--out", str(tmp_path / "m2"), "--epochs", "1",
                              "--label-column", "TX_FRAUD"])
    assert code == 0 and warned in err, err  # (with more frauds the leak check refuses a category one: exit 2)
    code, err = _run(capsys, ["train", "--input", str(data), "--out", str(tmp_path / "m3"), "--epochs", "1",
                              "--label-column", "TX_FRAUD", "--exclude", column])
    assert code == 0 and "looks like a label" not in err, err
