"""The feedback contract (``stream_detector/feedback.py``): parsing, refusals, the winning label."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_detector.errors import InputError
from stream_detector.feedback import Label, Verdicts, decode_label, parse_label, prefer
from stream_detector.inputs import read_feedback
from stream_detector.schema import RejectReason

T = 1_764_496_800_000.0  # 2025-11-30T10:00:00Z in epoch ms


def test_a_record_of_the_contract_is_a_label() -> None:
    assert parse_label({"event_id": "e1", "label": "fraud", "source": "chargeback",
                        "labelled_at": "2025-11-30T10:00:00Z"}) == Label("e1", True, "chargeback", T)
    assert parse_label({"event_id": "e1", "label": "legit", "labelled_at": int(T)}) == Label("e1", False, "unspecified", T)


@pytest.mark.parametrize("at", [int(T), T, int(T / 1000), str(int(T)), str(int(T / 1000)), "2025-11-30T10:00:00+00:00",
                                "2025-11-30T11:00:00+01:00", "2025-11-30T10:00:00"])
def test_labelled_at_is_read_like_an_events_timestamp(at: object) -> None:
    """RFC 3339 (naive = UTC) or an epoch number whose unit follows from its magnitude, as for events."""
    label = parse_label({"event_id": "e", "label": "fraud", "labelled_at": at})
    assert isinstance(label, Label) and label.labelled_at == T


@pytest.mark.parametrize(("record", "reason"), [
    ([1, 2], RejectReason.NOT_AN_OBJECT),
    ({"label": "fraud", "labelled_at": T}, RejectReason.MISSING_EVENT_ID),
    ({"event_id": "", "label": "fraud", "labelled_at": T}, RejectReason.MISSING_EVENT_ID),
    ({"event_id": {"x": 1}, "label": "fraud", "labelled_at": T}, RejectReason.WRONG_TYPE),
    ({"event_id": True, "label": "fraud", "labelled_at": T}, RejectReason.WRONG_TYPE),
    ({"event_id": "e", "label": "FRAUD", "labelled_at": T}, RejectReason.INVALID_LABEL),  # not converted
    ({"event_id": "e", "label": 1, "labelled_at": T}, RejectReason.INVALID_LABEL),
    ({"event_id": "e", "labelled_at": T}, RejectReason.INVALID_LABEL),
    ({"event_id": "e", "label": "fraud", "source": 3, "labelled_at": T}, RejectReason.WRONG_TYPE),
    ({"event_id": "e", "label": "fraud"}, RejectReason.INVALID_TIMESTAMP),  # a file has no other clock
    ({"event_id": "e", "label": "fraud", "labelled_at": "yesterday"}, RejectReason.INVALID_TIMESTAMP),
    ({"event_id": "e", "label": "fraud", "labelled_at": True}, RejectReason.INVALID_TIMESTAMP),
    ({"event_id": "e", "label": "fraud", "labelled_at": 86_400_000}, RejectReason.IMPLAUSIBLE_TIMESTAMP),  # 1970
])
def test_a_record_that_breaks_the_contract_says_why(record: object, reason: RejectReason) -> None:
    problem = parse_label(record)
    assert isinstance(problem, tuple) and problem[0] is reason and problem[1]


def test_a_label_in_another_case_says_the_one_it_should_be() -> None:
    """A trial: `Fraud` was refused as "got text of 5 characters", with no hint."""
    problem = parse_label({"event_id": "e", "label": "Fraud", "labelled_at": T})
    assert problem == (RejectReason.INVALID_LABEL, "label must be \"fraud\" or \"legit\", got 'Fraud': labels are "
                                                   "lowercase ('fraud')")
    spaced = parse_label({"event_id": "e", "label": " LEGIT", "labelled_at": T})
    assert isinstance(spaced, tuple) and spaced[1].endswith("got 'LEGIT' with spaces: labels are lowercase ('legit')")
    other = parse_label({"event_id": "e", "label": "card 4111", "labelled_at": T})
    assert isinstance(other, tuple) and "4111" not in other[1], "any other text is never shown (dead-letter headers)"


def test_on_the_topic_a_missing_labelled_at_is_the_record_timestamp() -> None:
    assert decode_label(b'{"event_id": "e", "label": "legit"}', T) == Label("e", False, "unspecified", T)
    assert decode_label(None, T)[0] is RejectReason.TOMBSTONE  # type: ignore[index]
    assert decode_label(b"not json", T)[0] is RejectReason.INVALID_JSON  # type: ignore[index]


def test_a_chargeback_outranks_an_analyst_and_the_latest_wins_within_a_source() -> None:
    analyst_fraud = Label("e", True, "analyst", T)
    chargeback_legit = Label("e", False, "chargeback", T - 5)  # earlier, but a chargeback
    assert prefer(analyst_fraud, chargeback_legit) is chargeback_legit
    assert prefer(chargeback_legit, analyst_fraud) is chargeback_legit
    representment = Label("e", False, "chargeback", T + 10)
    chargeback_fraud = Label("e", True, "chargeback", T)
    assert prefer(chargeback_fraud, representment) is representment  # the later chargeback record wins
    assert prefer(Label("e", True, "crm", T + 99), Label("e", False, "analyst", T)).source == "analyst"
    tie = Label("e", False, "analyst", T), Label("e", True, "analyst", T)
    assert prefer(*tie).fraud and prefer(*tie[::-1]).fraud  # an exact tie: fraud


def test_the_verdict_at_a_time_sees_only_the_labels_known_then() -> None:
    verdicts = Verdicts([Label("e", False, "analyst", T), Label("e", True, "chargeback", T + 7 * 86_400_000)])
    assert verdicts.verdict("e", as_of=T - 1) is None
    assert verdicts.verdict("e", as_of=T) is False
    assert verdicts.verdict("e", as_of=T + 7 * 86_400_000 - 1) is False
    assert verdicts.verdict("e", as_of=T + 7 * 86_400_000) is True
    assert verdicts.verdict("e") is True and verdicts.verdict("other") is None
    assert verdicts.frauds() == {"e"} and verdicts.frauds(as_of=T) == set()


labels = st.builds(Label, st.sampled_from(["a", "b"]), st.booleans(),
                   st.sampled_from(["chargeback", "analyst", "crm", "unspecified"]),
                   st.integers(0, 5).map(lambda d: T + d * 3_600_000))


@given(st.lists(labels, max_size=12), st.randoms(use_true_random=False), st.integers(-1, 6))
def test_the_verdict_does_not_depend_on_arrival_order(records: list[Label], rnd: object, hours: int) -> None:
    shuffled = list(records)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    as_of = None if hours < 0 else T + hours * 3_600_000
    one, other = Verdicts(records), Verdicts(shuffled)
    for event_id in ("a", "b"):
        assert one.winner(event_id, as_of) == other.winner(event_id, as_of)


def test_a_feedback_file_in_csv_and_json_lines_gives_the_same_labels(tmp_path: Path) -> None:
    rows = [{"event_id": "e1", "label": "fraud", "source": "chargeback", "labelled_at": int(T)},
            {"event_id": "e2", "label": "legit", "source": "analyst", "labelled_at": "2025-11-30T10:00:00Z"},
            {"event_id": "e3", "label": "maybe", "source": "analyst", "labelled_at": int(T)}]
    (tmp_path / "f.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    (tmp_path / "f.csv").write_text("event_id,label,source,labelled_at\n"
                                    + "".join(f"{r['event_id']},{r['label']},{r['source']},{r['labelled_at']}\n" for r in rows))
    for name in ("f.jsonl", "f.csv"):
        read = read_feedback(tmp_path / name)
        assert {e: read.verdicts.winner(e) for e in read.verdicts} == {
            "e1": Label("e1", True, "chargeback", T), "e2": Label("e2", False, "analyst", T)}
        assert [(r.index, r.reason) for r in read.rejected] == [(2, RejectReason.INVALID_LABEL)]
        assert "1 of 3 rows rejected (invalid_label 1; e.g. row 3: invalid_label" in read.summary()
    # every reason is counted, not only the first row's (a trial: two rows of two reasons, one said)
    more = [*rows, {"event_id": "", "label": "fraud", "source": "analyst", "labelled_at": int(T)}]
    (tmp_path / "g.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in more))
    summary = read_feedback(tmp_path / "g.jsonl").summary()
    assert "2 of 4 rows rejected (" in summary and "invalid_label 1" in summary, summary
    assert summary.count(" 1") >= 2 and "missing_event_id 1" in summary, summary


def test_a_file_without_one_label_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("event_id,label\ne1,fraud\n")  # no labelled_at
    with pytest.raises(InputError, match="no feedback records.*labelled_at"):
        read_feedback(path)


def test_train_with_feedback_is_train_with_the_same_labels_in_a_column(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """``train --feedback`` joins the labels by event_id: the model and its evaluation equal those of
    ``--label-column`` holding the same labels; ``score --feedback`` evaluates against them."""
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.model.bundle import load_bundle
    from stream_detector.simulate import Simulator

    events, patterns = Simulator(seed=3, accounts=300).batch(3000, 0.03, now_ms=int(T), span_ms=86_400_000)
    frauds = [e for e, p in zip(events, patterns, strict=True) if p != "legit"]
    write_csv(tmp_path / "plain.csv", events)
    write_csv(tmp_path / "labelled.csv", [{**e, "label": "legit" if p == "legit" else "fraud"}
                                          for e, p in zip(events, patterns, strict=True)])
    feedback = [{"event_id": e["event_id"], "label": "fraud", "source": "chargeback",
                 "labelled_at": int(e["timestamp"]) + 86_400_000} for e in frauds]
    feedback += [{"event_id": frauds[0]["event_id"], "label": "legit", "source": "analyst",  # outranked
                  "labelled_at": int(T) + 99}, {"event_id": "not-in-the-input", "label": "fraud",
                                               "source": "analyst", "labelled_at": int(T)}]
    (tmp_path / "fb.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in feedback))
    common = ["--epochs", "2", "--seed", "1"]
    assert main(["train", "--input", str(tmp_path / "plain.csv"), "--out", str(tmp_path / "a"),
                 "--feedback", str(tmp_path / "fb.jsonl"), *common]) == 0
    said = capsys.readouterr().err
    assert f"labels joined by event_id: {len(frauds)} fraud, 0 legit, {3000 - len(frauds)} events without" in said
    assert "1 labelled events are not in the input" in said
    assert main(["train", "--input", str(tmp_path / "labelled.csv"), "--out", str(tmp_path / "b"),
                 "--label-column", "label", "--normal-label", "legit", *common]) == 0
    a, b = load_bundle(tmp_path / "a"), load_bundle(tmp_path / "b")
    assert a.threshold == b.threshold
    assert a.metadata["evaluation_on_input"] == b.metadata["evaluation_on_input"]
    assert a.metadata["evaluation_on_input"]["anomalies"] == len(frauds)
    capsys.readouterr()
    assert main(["score", "--model", str(tmp_path / "a"), "--input", str(tmp_path / "plain.csv"),
                 "--out", str(tmp_path / "s.csv"), "--feedback", str(tmp_path / "fb.jsonl")]) == 0
    auc = a.metadata["evaluation_on_input"]["auc_roc"]
    assert f"against the feedback labels: rows=3000, anomalies={len(frauds)}, auc_roc={auc:.4f}" in capsys.readouterr().err
    assert main(["train", "--input", str(tmp_path / "labelled.csv"), "--out", str(tmp_path / "c"),
                 "--label-column", "label", "--feedback", str(tmp_path / "fb.jsonl")]) == 2
    # the file's own labels (a new-user trial: score set the column aside and said nothing of how the model did)
    capsys.readouterr()
    assert main(["score", "--model", str(tmp_path / "b"), "--input", str(tmp_path / "labelled.csv"),
                 "--out", str(tmp_path / "s2.csv"), "--label-column", "label", "--normal-label", "legit"]) == 0
    said = capsys.readouterr().err
    assert (f"against column 'label' ({len(frauds)} of 3000 rows not 'legit'): rows=3000, anomalies={len(frauds)}, "
            f"auc_roc={auc:.4f}") in said
    # without --normal-label: the one b was trained with on that column (0 before 2026-12-06, a new-user trial)
    assert main(["score", "--model", str(tmp_path / "b"), "--input", str(tmp_path / "labelled.csv"),
                 "--out", str(tmp_path / "s3.csv"), "--label-column", "label"]) == 0
    assert f"against column 'label' ({len(frauds)} of 3000 rows not 'legit')" in capsys.readouterr().err
    # a (trained on feedback) has no label column to go by: the file's one usual normal word, said (exit 0 and
    # figures for every row taken as an anomaly before 2026-12-06; then refused: "no row has label='0'", a trial)
    assert main(["score", "--model", str(tmp_path / "a"), "--input", str(tmp_path / "labelled.csv"),
                 "--out", str(tmp_path / "s3.csv"), "--label-column", "label"]) == 0
    said = capsys.readouterr().err
    assert "note: normal rows are those with label='legit' (the file's labels: ['fraud', 'legit']" in said
    assert f"against column 'label' ({len(frauds)} of 3000 rows not 'legit')" in said
    write_csv(tmp_path / "coded.csv", [{**e, "label": "a" if p == "legit" else "b"}  # no usual word: refused
                                       for e, p in zip(events, patterns, strict=True)])
    assert main(["score", "--model", str(tmp_path / "a"), "--input", str(tmp_path / "coded.csv"),
                 "--out", str(tmp_path / "s3.csv"), "--label-column", "label"]) == 2
    assert ("no row has label='0' (the default: the model records no normal label for this column) (labels seen: "
            "['a', 'b'])") in capsys.readouterr().err
    write_csv(tmp_path / "partly.csv", [{**e, "label": "" if i < 10 else "legit" if p == "legit" else "fraud"}
                                        for i, (e, p) in enumerate(zip(events, patterns, strict=True))])
    assert main(["score", "--model", str(tmp_path / "b"), "--input", str(tmp_path / "partly.csv"),
                 "--out", str(tmp_path / "s4.csv"), "--label-column", "label", "--normal-label", "legit"]) == 0
    said = capsys.readouterr().err
    assert "10 scored rows without a label left out: rows=2990," in said and "scored 3000 of 3000 rows" in said


def test_on_the_topic_an_event_id_must_be_a_string_as_an_events_is() -> None:
    problem = decode_label(b'{"event_id": 5, "label": "fraud"}', T)
    assert isinstance(problem, tuple) and problem[0] is RejectReason.WRONG_TYPE
    assert parse_label({"event_id": 5, "label": "fraud", "labelled_at": T}) == Label("5", True, "unspecified", T)  # files


def test_a_ground_truth_column_left_in_the_training_file_is_refused(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a new-user trial: the simulator's file carries ``label`` and ``pattern``; with
    ``--feedback`` they became features and the model looked perfect (AUC 0.98 against 0.81)."""
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.simulate import Simulator

    events, patterns = Simulator(seed=4, accounts=300).batch(3000, 0.03, now_ms=int(T), span_ms=86_400_000)
    write_csv(tmp_path / "h.csv", [{**e, "pattern": p} for e, p in zip(events, patterns, strict=True)])
    frauds = [e for e, p in zip(events, patterns, strict=True) if p != "legit"]
    wrong = frauds[:3]  # analysts err: the labels and the column disagree now and then
    records = [{"event_id": e["event_id"], "label": "fraud", "labelled_at": int(T)} for e in frauds[3:]]
    records += [{"event_id": e["event_id"], "label": "legit", "labelled_at": int(T)} for e in wrong]
    (tmp_path / "fb.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    args = ["train", "--input", str(tmp_path / "h.csv"), "--out", str(tmp_path / "m"), "--feedback",
            str(tmp_path / "fb.jsonl"), "--epochs", "1"]
    assert main(args) == 2
    assert "field 'pattern' gives the label away" in capsys.readouterr().err
    assert main([*args, "--exclude", "pattern"]) == 0


def test_a_ground_truth_column_is_refused_while_some_frauds_wait_for_their_label(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trial (G): the simulator's ``label`` and ``pattern`` left in the file, labels delayed (130
    of 1,746 frauds not labelled yet at the cut, read as legit), and the check passed: both became
    features (AUC 0.98; 0.64 without them). The labelled events alone show the leak; a column
    named as a label is warned of whatever the check finds."""
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.simulate import Simulator

    events, patterns = Simulator(seed=4, accounts=300).batch(3000, 0.03, now_ms=int(T), span_ms=86_400_000)
    rows = [{**e, "pattern": p, "label": "legit" if p == "legit" else "fraud"} for e, p in zip(events, patterns,
                                                                                              strict=True)]
    write_csv(tmp_path / "h.csv", rows)
    frauds = [e["event_id"] for e, p in zip(events, patterns, strict=True) if p != "legit"]
    legit = [e["event_id"] for e, p in zip(events, patterns, strict=True) if p == "legit"]
    waiting = len(frauds) // 6  # not labelled yet: silence, read as legit
    records = [{"event_id": i, "label": "fraud", "labelled_at": int(T)} for i in frauds[waiting:]]
    records += [{"event_id": i, "label": "legit", "labelled_at": int(T)} for i in legit[::20]]  # 5 % reviewed
    (tmp_path / "fb.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    args = ["train", "--input", str(tmp_path / "h.csv"), "--out", str(tmp_path / "m"), "--feedback",
            str(tmp_path / "fb.jsonl"), "--epochs", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "gives the label away" in err and "anomalous rows (among the labelled events) have" in err, err[-600:]
    assert main([*args, "--exclude", "pattern", "--keep", "label"]) == 0  # kept as told: no warning
    assert "label looks like a label" not in capsys.readouterr().err
    assert main([*args, "--exclude", "pattern", "--out", str(tmp_path / "m2"), "--keep", "channel"]) == 2
    err = capsys.readouterr().err  # `label` itself gives it away among the labelled events
    assert "field 'label' gives the label away" in err
    # a column named as a label that gives nothing away (a stale flag): still said, it is a feature
    write_csv(tmp_path / "h2.csv", [{**e, "is_fraud": i % 2} for i, e in enumerate(events)])
    assert main([*args[:2], str(tmp_path / "h2.csv"), "--out", str(tmp_path / "m3"), *args[5:]]) == 0
    assert "warning: is_fraud looks like a label and is a feature of this model" in capsys.readouterr().err


def test_a_flag_label_is_named_with_what_to_write_and_an_events_file_is_named_as_one(tmp_path: Path) -> None:
    """Trial G: labels 1/0 were refused as `got text of 1 character` (the value hidden: messages
    reach dead-letter headers, but a 0/1 or yes/no flag is no secret); an events file given as the
    feedback file was refused for `feedback record without labelled_at`."""
    from stream_detector.errors import InputError
    from stream_detector.inputs import read_feedback

    for value, hint in (("1", "write fraud for 1 and legit for 0"), (0, "write fraud for 1 and legit for 0"),
                        (" Yes ", "write fraud for yes and legit for no"), (False, "fraud for true and legit for false")):
        problem = parse_label({"event_id": "e1", "label": value, "labelled_at": T})
        assert isinstance(problem, tuple) and problem[0] is RejectReason.INVALID_LABEL and hint in problem[1]
    secret = parse_label({"event_id": "e1", "label": "4111-1111", "labelled_at": T})
    assert isinstance(secret, tuple) and "4111" not in secret[1] and "text of 9 characters" in secret[1]
    events = tmp_path / "events.csv"
    events.write_text("event_id,account_id,timestamp,amount,country\ne1,a1,2026-06-01T00:00:00Z,12.5,FR\n")
    with pytest.raises(InputError, match=r"its rows have no label field \(fields: event_id, account_id, timestamp, "
                                         r"amount, country\): an events file\?"):
        read_feedback(events)


@pytest.mark.parametrize("flag", [["--rate", "100"], ["--exclude", "source"]])
def test_produce_feedback_refuses_the_options_it_would_ignore(tmp_path: Path, flag: list[str],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Trial I: `produce --feedback --rate 100` sent 1,026 labels in 0.56 s; `--exclude source` did nothing."""
    from stream_detector.cli import main

    path = tmp_path / "fb.jsonl"
    path.write_bytes(orjson.dumps({"event_id": "e1", "label": "fraud", "labelled_at": int(T)}) + b"\n")
    assert main(["produce", "--feedback", "--input", str(path), *flag]) == 2
    assert f"{flag[0]} applies to events, not to --feedback" in capsys.readouterr().err
