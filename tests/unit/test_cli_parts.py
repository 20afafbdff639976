"""The command line's parts that need no service: `python -m stream_detector`, SIGTERM as Ctrl-C, the threshold warning."""

from __future__ import annotations

import csv
import gzip
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest


def test_python_dash_m_runs_the_command_line_and_passes_its_exit_code() -> None:
    ok = subprocess.run([sys.executable, "-m", "stream_detector", "--help"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("usage: stream-detector") and "check-config" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "stream_detector", "no-such-command"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'no-such-command'" in bad.stderr
    assert bad.stderr.count("\n") == 1 and "(see stream-detector --help)" in bad.stderr  # one line, as all CLI errors
    value = subprocess.run([sys.executable, "-m", "stream_detector", "threshold", "set", "abc"], capture_output=True,
                           text=True, timeout=120)
    assert value.returncode == 2 and value.stderr == ("stream-detector threshold: error: argument value: invalid "
                                                      "float value: 'abc' (see stream-detector threshold --help)\n")


@pytest.mark.parametrize(("argv", "said"), [
    (["topics", "--partitions", "-2"], "argument --partitions: expected an integer >= 1, got -2"),  # was a raw dump
    (["topics", "--partitions", "0"], "argument --partitions: expected an integer >= 1, got 0"),  # was 4, silently
    (["worker", "--max-idle-polls", "-1"], "argument --max-idle-polls: expected an integer >= 1, got -1"),
    (["produce", "--input", "x.jsonl", "--limit", "0"], "argument --limit: expected an integer >= 1, got 0"),
    (["simulate", "--out", "x.jsonl", "--span-days", "0"], "argument --span-days: expected a number > 0, got 0"),
])
def test_option_values_out_of_range_are_usage_errors(argv: list[str], said: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A trial found these taken (or failing late, with a client's exception dump): each is one
    line naming the option, exit 2, before anything connects."""
    from stream_detector.cli import build_parser

    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and said in err and err.count("\n") == 1
    version = subprocess.run([sys.executable, "-m", "stream_detector", "--version"], capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("stream-detector 0.")


def test_the_registry_threshold_and_lag_commands_do_not_import_torch() -> None:
    """``threshold``, ``model``, ``publish``, ``lag``, the console read bundles' metadata, never their
    TorchScript module: importing torch cost each of these commands 3.5 s (``threshold get`` went
    from 8.7 s to 2.4 s on the 2-core dev machine). Scoring and training import it where they load
    or build a module (``Bundle.load_module``, ``build_bundle``)."""
    probe = ("import sys, stream_detector.store, stream_detector.model.registry, stream_detector.kafka_util; "
             "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_sigterm_inside_a_long_command_runs_its_cleanup_like_ctrl_c() -> None:
    """``train --streamed`` and ``score --streamed`` run inside ``_terminated_as_interrupt``: a
    SIGTERM (a timeout, Kubernetes) raises ``KeyboardInterrupt`` there, so their ``finally``
    clauses (the work directory, a partial output file) run; the previous handler is back after."""
    from stream_detector.cli import _terminated_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(KeyboardInterrupt):
        with _terminated_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10_000_000):  # Python runs the handler between bytecodes: at once
                    pass
            finally:
                cleaned.append(True)
    assert cleaned == [True] and signal.getsignal(signal.SIGTERM) == before


def test_ctrl_c_inside_tail_sets_a_flag_and_a_second_one_interrupts() -> None:
    """``tail``, ``produce`` and ``retrain --once`` run inside ``Stopping.installed()``: Ctrl-C and
    SIGTERM set the flag their read loops ask between two polls (a ``KeyboardInterrupt`` raised
    inside kafka-python 3 once left ``tail --follow`` running); a second signal interrupts at once;
    the handlers are back after."""
    from stream_detector.stopping import Stopping

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with Stopping.installed() as stopping:
        os.kill(os.getpid(), signal.SIGINT)
        while not stopping.event.is_set():  # the handler runs between bytecodes
            pass
        with pytest.raises(KeyboardInterrupt):
            stopping.check()  # between two polls: raised there
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000_000):
                pass
    with Stopping.installed() as stopping:
        os.kill(os.getpid(), signal.SIGTERM)
        while not stopping.event.is_set():
            pass
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_signal_while_retrain_once_trains_interrupts_at_once_and_one_before_on_entry() -> None:
    """``retrain --once`` trains inside ``Stopping.immediate()`` (torch and numpy only, no Kafka
    client call): a SIGTERM there raises at once, so the history spool is removed before a cron
    job's kill; one that came during the Kafka reads before raises on entry."""
    from stream_detector.stopping import Stopping

    cleaned = []
    with Stopping.installed() as stopping:
        with pytest.raises(KeyboardInterrupt):
            with stopping.immediate():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                    for _ in range(10_000_000):
                        pass
                finally:
                    cleaned.append(True)
    assert cleaned == [True]
    with Stopping.installed() as stopping:
        os.kill(os.getpid(), signal.SIGTERM)
        while not stopping.event.is_set():
            pass
        with pytest.raises(KeyboardInterrupt), stopping.immediate():
            cleaned.append(False)  # never reached
    assert cleaned == [True]


def test_a_threshold_that_would_flood_alerts_is_named_by_the_share_it_would_flag() -> None:
    from stream_detector.cli import threshold_warning

    calibration = {"threshold": 2.99, "validation_error_quantiles": {"0.5": 0.3, "0.9": 0.9, "0.95": 1.5,
                                                                     "0.99": 2.9, "0.999": 5.0}}
    assert "more than 50% of normal events" in (threshold_warning(calibration, 0.2) or "")
    assert "more than 10%" in (threshold_warning(calibration, 0.5) or "")
    assert "more than 1%" in (threshold_warning(calibration, 2.0) or "")
    assert "calibrated threshold is 2.99" in (threshold_warning(calibration, 2.0) or "")
    assert threshold_warning(calibration, 3.0) is None and threshold_warning(calibration, 99.0) is None
    assert threshold_warning({}, 0.0) is None  # a bundle without quantiles: nothing to say
    # trial T set the calibrated value itself back: said as the model's own, with what to do for a budget
    fence = {**calibration, "threshold": 2.5}
    said = threshold_warning(fence, 2.5) or ""
    assert said.startswith("2.5 is the model's calibrated threshold") and "--threshold-method quantile" in said


def test_an_output_that_cannot_be_written_is_refused_before_any_work(
        tmp_path: Path, bundle: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a new-user trial: `train --out` naming a file, and `score --out` in a folder that
    does not exist, failed only after all the training or scoring, with a Python exception (exit 1)."""
    from stream_detector.cli import main
    from stream_detector.model.bundle import save_bundle

    data = tmp_path / "history.csv"
    data.write_text("event_id,amount\ne1,1.5\n")
    assert main(["train", "--input", str(data), "--out", str(data)]) == 2
    assert "a file is there; a model is written to a folder" in capsys.readouterr().err
    save_bundle(bundle, tmp_path / "model")
    missing = tmp_path / "no" / "such" / "scores.csv"
    assert main(["score", "--model", str(tmp_path / "model"), "--input", str(data), "--out", str(missing)]) == 2
    assert f"no folder {missing.parent} to write it in" in capsys.readouterr().err
    assert main(["score", "--model", str(tmp_path / "model"), "--input", str(data), "--out", str(tmp_path)]) == 2
    assert "a folder is there; give a file name" in capsys.readouterr().err


def test_score_streamed_writes_the_lines_score_writes(tmp_path: Path, bundle: Any) -> None:
    """``score --streamed`` through the command line (a simulate option's default once leaked into
    it and every streamed score stopped with AttributeError)."""
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator

    events, _ = Simulator(seed=3, accounts=40, run_id="st").batch(300, 0.01)
    write_csv(tmp_path / "e.csv", events)
    save_bundle(bundle, tmp_path / "model")
    for name, extra in (("a.csv", []), ("b.csv", ["--streamed"])):
        assert main(["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "e.csv"),
                     "--out", str(tmp_path / name), *extra]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_training_refuses_an_exclude_typo_and_history_without_event_times(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a new-user trial: ``--exclude patern`` (for ``pattern``, the ground truth) trained
    a model with the label among its features, exit 0; ``--entity-key`` on a file without a
    timestamp trained windows that never advance. Both are one line, exit 2, before any work, on
    the in-memory and the streamed path."""
    from stream_detector.cli import main

    rows = "".join(f"e{i},a{i % 7},{1_790_000_000_000 + i * 60_000},{i % 13 + 0.5},{'xy'[i % 2]}\n" for i in range(60))
    data = tmp_path / "h.csv"
    data.write_text("event_id,account_id,timestamp,amount,pattern\n" + rows)
    for streamed in ([], ["--streamed"]):
        out = tmp_path / f"m{len(streamed)}"
        assert main(["train", "--input", str(data), "--out", str(out), "--exclude", "patern", *streamed]) == 2
        err = capsys.readouterr().err
        assert "--exclude patern: no such field in the input; did you mean 'pattern'?" in err
        assert not out.exists()
    (tmp_path / "empty.jsonl").write_bytes(b"")  # the check itself must not fail on an empty input
    assert main(["train", "--input", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "e"), "--exclude", "x",
                 "--streamed"]) == 2
    assert "no rows" in capsys.readouterr().err
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("event_id,account_id,amount\n" + "".join(f"e{i},a{i % 7},{i + 0.5}\n" for i in range(60)))
    for streamed in ([], ["--streamed"]):
        assert main(["train", "--input", str(no_time), "--out", str(tmp_path / "m"), "--entity-key", "account_id",
                     *streamed]) == 2
        assert "--entity-key needs event times" in capsys.readouterr().err
    # a trial (the handbook's TX_DATETIME): the times are there under another name, and are named
    other = tmp_path / "other_time.csv"
    other.write_text("event_id,account_id,TX_DATETIME,amount\n"
                     + "".join(f"e{i},a{i % 7},2018-04-01 00:{i:02d}:00,{i + 0.5}\n" for i in range(60)))
    for streamed, said in (([], "--timestamp-column TX_DATETIME reads it as the event time"),
                           (["--streamed"], "rename that column to timestamp in the file's header")):
        assert main(["train", "--input", str(other), "--out", str(tmp_path / "m"), "--entity-key", "account_id",
                     *streamed]) == 2
        assert f"TX_DATETIME holds times, but the event time is the field named timestamp: {said}" in \
            capsys.readouterr().err
    # and it does: the model's history runs on TX_DATETIME (trials E and F had to edit the file)
    other.write_text("event_id,account_id,TX_DATETIME,amount\n" + "".join(
        f"e{i},a{i % 7},2018-04-01 {i // 60:02d}:{i % 60:02d}:00,{i % 17 + 0.5}\n" for i in range(240)))
    assert main(["train", "--input", str(other), "--out", str(tmp_path / "mt"), "--entity-key", "account_id",
                 "--timestamp-column", "TX_DATETIME", "--epochs", "2"]) == 0
    err = capsys.readouterr().err
    assert "TX_DATETIME (as timestamp)" in err and "the event time (--timestamp-column)" in err
    scored = tmp_path / "s.csv"
    assert main(["score", "--model", str(tmp_path / "mt"), "--input", str(other), "--out", str(scored),
                 "--timestamp-column", "TX_DATETIME"]) == 0
    assert "no timestamp values" not in capsys.readouterr().err
    # without the option: the model's, from train (a trial scored the file without it: 97 % flagged)
    defaulted = tmp_path / "d.csv"
    assert main(["score", "--model", str(tmp_path / "mt"), "--input", str(other), "--out", str(defaulted)]) == 0
    err = capsys.readouterr().err
    assert "--timestamp-column TX_DATETIME: the model's (train was given it)" in err
    assert "no timestamp values" not in err and defaulted.read_bytes() == scored.read_bytes()
    # the streamed path has no --timestamp-column: refused, not scored without times (trial O: 81 % flagged)
    assert main(["score", "--model", str(tmp_path / "mt"), "--input", str(other), "--out", str(tmp_path / "st.csv"),
                 "--streamed"]) == 2
    assert ("the model was trained with --timestamp-column TX_DATETIME, and the streamed path has no "
            "--timestamp-column yet") in capsys.readouterr().err
    # a file whose first row has no time there: not taken as the model's (trial O: "check its spelling" for an
    # option the user never typed); the usual warning says the times are missing, and with none at all the
    # file is refused, as train refuses it (trial U: 97 % of such a file flagged, exit 0)
    blank = tmp_path / "blank.csv"
    blank.write_text("event_id,account_id,TX_DATETIME,amount\n" + "".join(
        f"e{i},a{i % 7},,{i % 17 + 0.5}\n" for i in range(240)))
    assert main(["score", "--model", str(tmp_path / "mt"), "--input", str(blank), "--out", str(tmp_path / "b.csv")]) == 2
    err = capsys.readouterr().err
    assert "the model's (train was given it)" not in err and "no timestamp values" in err
    assert "no row of this file has a timestamp" in err.strip().splitlines()[-1]
    assert main(["train", "--input", str(other), "--out", str(tmp_path / "ms"), "--entity-key", "account_id",
                 "--timestamp-column", "TX_DATETIME", "--streamed"]) == 2
    assert "--timestamp-column is not available on the streamed path yet" in capsys.readouterr().err


def test_a_file_lacking_what_a_model_with_history_reads_is_named() -> None:
    """``score``'s warnings (in memory and ``--streamed``): feature fields, entity keys, and event
    times for a model with history (a file without ``terminal_id`` or ``timestamp`` was scored
    with no word, found by a new-user trial)."""
    from stream_detector.entity import EntitySpec, parse_windows
    from stream_detector.fieldschema import FieldRule, FieldSchema, FieldType
    from stream_detector.inputs import absent_warnings

    schema = FieldSchema((FieldRule("amount", FieldType.NUMBER), FieldRule("channel", FieldType.CATEGORY),
                          FieldRule("terminal_id", FieldType.IDENTIFIER)))
    entity = EntitySpec(keys=("account_id", "terminal_id"), windows=parse_windows("1h,1d"))
    full = {"event_id", "timestamp", "amount", "channel", "account_id", "terminal_id"}
    assert absent_warnings(schema, entity, full) == []
    assert absent_warnings(schema, None, full - {"terminal_id", "timestamp"}) == []  # no history: not read
    got = absent_warnings(schema, entity, full - {"terminal_id", "timestamp", "channel"})
    assert len(got) == 3
    assert "1 of the model's feature fields" in got[0] and "channel" in got[0]
    assert "history per terminal_id" in got[1] and "no history" in got[1]
    assert "no timestamp values" in got[2] and "looks like it" not in got[2]
    moved = absent_warnings(schema, entity, full - {"timestamp"} | {"TX_DATETIME"})  # a trial (the handbook's)
    assert moved[-1].endswith("last time; TX_DATETIME looks like it: --timestamp-column TX_DATETIME reads it as "
                              "the event time (docs/entity-features.md)")
    got = absent_warnings(schema, None, {"event_id", "timestamp", "amt"})  # no input field: not imputed, rejected
    assert got == ["none of the model's 2 input fields is in this file (or each is empty in every row), so every "
                   "row is rejected as no_features: amount (did you mean 'amt'?), channel"]
    renamed = absent_warnings(schema, None, {"event_id", "amt", "Channel"})  # a trial: exit 0, no hint
    assert renamed[0].endswith("no_features: amount (did you mean 'amt'?), channel (did you mean 'Channel'?)")
    renamed = absent_warnings(schema, None, {"event_id", "amt", "channel"})
    assert renamed[0].endswith("saw it missing): amount (did you mean 'amt'?)"), renamed


def test_simulate_with_end_writes_the_same_events_to_every_format(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a new-user trial: history files ended at the wall clock, so the same --seed wrote
    other times (and, to another format a moment later, other events): no parity check between a
    CSV and a JSON Lines file was possible. ``--end`` pins the span; an output in a missing folder
    is one line, exit 2."""
    from stream_detector.cli import main
    from stream_detector.inputs import load_events

    common = ["simulate", "--count", "400", "--span-days", "3", "--end", "2026-06-15", "--accounts", "50",
              "--terminals", "80"]
    for name in ("a.csv", "b.csv", "c.jsonl"):
        assert main([*common, "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    csv, jsonl = load_events(tmp_path / "a.csv").events, load_events(tmp_path / "c.jsonl").events
    assert len(csv) == 400 and [e["event_id"] for e in csv] == [e["event_id"] for e in jsonl]
    assert [e["timestamp"] for e in csv] == [e["timestamp"] for e in jsonl]
    assert max(e["timestamp"] for e in csv) <= 1_781_481_600_000  # 2026-06-15T00:00:00Z
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "no" / "x.csv")]) == 2
    assert "no folder" in capsys.readouterr().err
    assert main(["simulate", "--count", "5", "--end", "soon", "--out", str(tmp_path / "d.csv")]) == 2
    assert "--end 'soon': expected an RFC 3339 time or a date" in capsys.readouterr().err
    for end in ("", "0001-01-01"):  # (a second trial: both were accepted)
        assert main(["simulate", "--count", "5", "--end", end, "--out", str(tmp_path / "d.csv")]) == 2


def test_the_retrainer_takes_its_threads_from_the_option_or_sd_torch_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a new-user trial: neither ``--threads`` nor ``SD_TORCH_THREADS`` reached the
    retrainer's training (4 min 20 s of oversubscribed threads beside the workers on 2 cores)."""
    import torch

    from stream_detector import cli

    seen: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)

    class Stop(Exception):
        pass

    def no_retrainer(*_: Any, **__: Any) -> None:
        raise Stop

    monkeypatch.setattr("stream_detector.retrain.service.Retrainer", no_retrainer)
    args = cli.build_parser().parse_args(["retrain", "--once", "--threads", "3"])
    assert args.threads == 3
    monkeypatch.setenv("SD_TORCH_THREADS", "2")
    with pytest.raises(Stop):
        cli.cmd_retrain(cli.build_parser().parse_args(["retrain", "--once"]), cli.load_settings())
    assert seen == [2]
    with pytest.raises(Stop):
        cli.cmd_retrain(args, cli.load_settings())
    assert seen == [2]  # --threads is set by main() before the command runs, not overridden here
    assert cli.main(["retrain", "--once", "--threads", "0"]) == 2


def test_kafka_python_reading_a_closed_transport_is_not_logged_as_an_error() -> None:
    """kafka-python 3 logs a traceback when its network thread reads a transport it has just
    closed (seen in the middle of `make demo`'s output); only that record is dropped."""
    import logging

    from stream_detector.cli import _closed_transport_noise

    def record(level: int, transport: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord("kafka.net.transport", level, __file__, 1, "%s: " + msg, (transport,), None)

    assert not _closed_transport_noise(record(logging.ERROR, "<KafkaTCPTransport [none] (closed)>",
                                              "Error receiving network data closing socket"))
    assert _closed_transport_noise(record(logging.ERROR, "<KafkaTCPTransport [127.0.0.1:9092] (connected)>",
                                          "socket disconnected"))
    assert _closed_transport_noise(record(logging.WARNING, "<KafkaTCPTransport [none] (closed)>", "closing"))


def test_a_dead_workers_open_transaction_is_said_once_a_minute_at_info_not_as_an_error_flood(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A new-user trial killed a stage-1 worker: its peer logged 338 ERRORs "Unknown error fetching
    offsets ... UnstableOffsetCommitError" until the transaction timed out."""
    import logging

    from stream_detector import cli

    monkeypatch.setattr(cli, "_UNSTABLE_SAID", [float("-inf")])

    def record() -> logging.LogRecord:
        return logging.LogRecord("kafka.coordinator.consumer", logging.ERROR, __file__, 1,
                                 "Unknown error fetching offsets for %s: %s", ("tx[0]", "[Error 88] "
                                                                                 "UnstableOffsetCommitError"), None)

    first = record()
    assert cli._unstable_offsets_noise(first) and first.levelno == logging.INFO
    assert "open transaction of a worker that left the group" in first.getMessage()
    assert "UnstableOffsetCommitError" in first.getMessage()
    assert not cli._unstable_offsets_noise(record())  # within the minute: dropped
    other = logging.LogRecord("kafka.coordinator.consumer", logging.ERROR, __file__, 1, "something else", (), None)
    assert cli._unstable_offsets_noise(other) and other.levelno == logging.ERROR


def test_a_wait_on_a_socket_the_client_closed_is_not_logged_as_an_error() -> None:
    """``make demo`` ended with kafka-python's 40-line "Unhandled exception in task … ValueError:
    Invalid file descriptor: -1" (its network thread waiting on a socket closed by the consumer's
    close, after the revoke); other errors of its network thread still pass."""
    import logging
    import sys

    from stream_detector import cli

    def record(exc: Exception) -> logging.LogRecord:
        try:
            raise exc
        except Exception:
            info = sys.exc_info()
        return logging.LogRecord("kafka.net.selector", logging.ERROR, __file__, 1, "Unhandled exception in task %s:",
                                 ("<Task>",), info)

    assert not cli._closed_socket_noise(record(ValueError("Invalid file descriptor: -1")))
    assert cli._closed_socket_noise(record(ValueError("something else")))
    assert cli._closed_socket_noise(record(OSError("Invalid file descriptor: -1")))


def test_a_coordinator_that_moved_is_said_at_info_not_as_a_warning() -> None:
    """Trial S: every new group logged "WARNING kafka.coordinator: Marking the coordinator dead …
    NotCoordinatorError" at start; the client looks it up again by itself. Other reasons stay WARNINGs."""
    import logging

    from stream_detector import cli

    def record(error: str) -> logging.LogRecord:
        return logging.LogRecord("kafka.coordinator", logging.WARNING, __file__, 1,
                                 "Marking the coordinator dead (node %s) for group %s: %s.",
                                 ("coordinator-1", "gA", error), None)

    for error in ("[Error 16] NotCoordinatorError", "[Error 15] CoordinatorNotAvailableError"):
        moved = record(error)
        assert cli._coordinator_moved_noise(moved) and moved.levelno == logging.INFO
    other = record("KafkaConnectionError: socket disconnected")
    assert cli._coordinator_moved_noise(other) and other.levelno == logging.WARNING


def test_tail_prints_every_record_on_one_line() -> None:
    """A value that is not JSON, has a line break, or is not UTF-8 is printed as a JSON string; JSON
    records as they are."""
    from stream_detector.cli import _one_line

    assert _one_line(b'{"a": 1}') == '{"a": 1}'
    assert _one_line(b"two\nlines") == '"two\\nlines"'
    assert _one_line(b"\xff\x00raw") == '"\\\\xff\\u0000raw"'
    assert _one_line(None) == "null"
    assert _one_line(b"invalid_json", quote=False) == "invalid_json"
    # every line is JSON, for jq: a one-line value that is not JSON was printed as it is
    assert _one_line(b"not json") == '"not json"' and _one_line(b'{"a": 1') == '"{\\"a\\": 1"'
    assert _one_line(b"12.5") == "12.5" and _one_line(b'"text"') == '"text"'
    assert _one_line(b"acct-7", as_json=False) == "acct-7"  # a key: its own column, text as it is
    for v in (b"not json", b"two\nlines", b"\xff\x00raw", b'{"a": [1, 2]}', None):
        assert orjson.loads(_one_line(v)) == (None if v is None else orjson.loads(v) if v.startswith(b"{")
                                              else v.decode("utf-8", "backslashreplace"))


@pytest.mark.parametrize("streamed", [False, True])
def test_score_where_no_row_can_be_scored_exits_2_and_still_writes_every_reason(
        tmp_path: Path, bundle: Any, capsys: pytest.CaptureFixture[str], streamed: bool) -> None:
    """Found by a new-user trial: a file none of whose rows the model can score (most often not this
    model's input) exited 0 with 'scored 0 of N rows'. Now it is one error line naming the reasons
    (exit 2); the output still has each row's reason, as a dead letter would."""
    from stream_detector.cli import main
    from stream_detector.model.bundle import save_bundle

    save_bundle(bundle, tmp_path / "model")
    data = tmp_path / "text.csv"
    data.write_text("event_id,amount\ne1,lots\ne2,many\n")
    out = tmp_path / "scores.csv"
    argv = ["score", "--model", str(tmp_path / "model"), "--input", str(data), "--out", str(out)]
    assert main(argv + (["--streamed"] if streamed else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("stream-detector score: error: none of the 2 rows could be scored: 2 wrong_type (")
    assert f"{'text.csv ' if streamed else ''}row 1: field 'amount'" in err and err.endswith(f"every row's reason is in {out}")
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(",wrong_type," in line for line in lines[1:])
    data.write_text("event_id,amount\ne1,lots\ne2,12.5\n")  # one row scored: exit 0, as before
    assert main(argv + (["--streamed"] if streamed else [])) == 0


@pytest.mark.parametrize("argv", [["simulate", "--count", "5"], ["lag"], ["tail", "alerts"], ["topics"],
                                  ["produce", "--input", "EVENTS"]])
def test_a_one_shot_command_with_nothing_at_the_kafka_address_says_so_at_once(
        argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing listens at the bootstrap address: one line naming it and why, exit 2, at once (a
    new-user trial saw 20 lines of kafka-python's reconnection attempts first, and `simulate`
    exited 1 with the exception's name twice; a later one waited 31 s for `lag`, `tail` and
    `topics` to say it: kafka-python's bootstrap timeout). ``cli._probe_kafka`` connects first."""
    import time

    from stream_detector.cli import main

    events = tmp_path / "events.csv"
    events.write_text("event_id,amount\ne1,12.5\n")
    argv = [str(events) if a == "EVENTS" else a for a in argv]
    monkeypatch.setenv("SD_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    began = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - began < 5  # not kafka-python's 30 s
    err = capsys.readouterr().err.strip().splitlines()[-1]  # produce first says what it read
    assert err == (f"stream-detector {argv[0]}: error: cannot reach Kafka at 127.0.0.1:1: Connection refused (is the "
                   "broker running, and SD_KAFKA_BOOTSTRAP its address?)"), err
    monkeypatch.setenv("SD_KAFKA_BOOTSTRAP", "no-such-host.invalid:9092,127.0.0.1:1")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no-such-host.invalid:9092: " in err and "; 127.0.0.1:1: Connection refused" in err


def test_the_kafka_probe_says_an_address_that_does_not_answer_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filtered address (packets dropped: nothing refuses) is "no answer in 5 s", not the bare
    exception name a new-user trial saw ("TimeoutError"); the other addresses are still tried,
    at the same time (two filtered addresses took 10 s in turn), and said in their order."""
    import socket
    import threading

    from stream_detector import cli
    from stream_detector.errors import ConfigError
    from stream_detector.settings import Settings

    tried: list[tuple[str, int]] = []
    both = threading.Barrier(2, timeout=5)  # each connect waits for the other: passes only if they overlap

    def silent(address: tuple[str, int], timeout: float) -> socket.socket:
        tried.append(address)
        try:
            both.wait()
        except threading.BrokenBarrierError:
            raise OSError(0, "tried one after the other") from None
        raise TimeoutError("timed out")

    monkeypatch.setattr(cli.socket, "create_connection", silent)
    with pytest.raises(ConfigError) as raised:
        cli._probe_kafka(Settings(kafka_bootstrap="10.255.255.1:9092,kafka-2:9093"))
    assert str(raised.value) == ("cannot reach Kafka at 10.255.255.1:9092,kafka-2:9093: 10.255.255.1:9092: no answer "
                                 "in 5 s; kafka-2:9093: no answer in 5 s (is the broker running, and "
                                 "SD_KAFKA_BOOTSTRAP its address?)")
    assert sorted(tried) == [("10.255.255.1", 9092), ("kafka-2", 9093)]

    def first_refuses(address: tuple[str, int], timeout: float) -> socket.socket:
        if address[1] == 9092:
            raise ConnectionRefusedError(111, "Connection refused")
        return socket.socket()  # closed at once by the probe

    monkeypatch.setattr(cli.socket, "create_connection", first_refuses)
    cli._probe_kafka(Settings(kafka_bootstrap="10.255.255.1:9092,kafka-2:9093"))  # one accepts: enough


def test_a_one_shot_command_where_something_not_kafka_listens_says_so_in_one_line(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The address accepts connections but no broker answers (another service there): the probe
    passes and kafka-python's bootstrap gives up; still one line naming the address, exit 2."""
    import socket

    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    from stream_detector.cli import main

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        monkeypatch.setenv("SD_KAFKA_BOOTSTRAP", f"127.0.0.1:{silent.getsockname()[1]}")
        # the same path as kafka-python's 30 s bootstrap wait, sooner (it was the suite's slowest unit test)
        for client in (KafkaAdminClient, KafkaConsumer, KafkaProducer):
            monkeypatch.setitem(client.DEFAULT_CONFIG, "bootstrap_timeout_ms", 2_000)
        assert main(["simulate", "--count", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stream-detector simulate: error: cannot reach Kafka at 127.0.0.1:"), err
    assert "\n" not in err and err.count("KafkaTimeoutError") == 1, err
    assert err.endswith("(is the broker running, and SD_KAFKA_BOOTSTRAP its address?)"), err  # as the probe's


@pytest.mark.parametrize(("argv", "code"), [(["model", "list"], 2), (["threshold", "get"], 2),
                                            (["retrain", "--once"], 1)])
def test_a_command_with_redis_unreachable_says_where_in_one_line(
        argv: list[str], code: int, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens at SD_REDIS_URL: one line naming the address (password redacted) and the
    setting, as for Kafka; exit 2 for a one-shot command, 1 for a service (`retrain --once`:
    docs/retraining.md's exit codes). It printed `ConnectionError: Error 111 ...` and exited 1."""
    from stream_detector.cli import main

    monkeypatch.setenv("SD_REDIS_URL", "redis://ops:hunter2@127.0.0.1:1/0")
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"stream-detector {argv[0]}: error: cannot reach Redis at "
                          "redis://ops:***@127.0.0.1:1/0 (SD_REDIS_URL): ConnectionError: "), err
    assert "\n" not in err and "hunter2" not in err, err


@pytest.mark.parametrize("extra", [["5"], ["--note", "raised"], ["--note", ""], ["--head", "0.9"]])
def test_threshold_get_refuses_what_only_set_takes(
        extra: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial: `threshold get 5` printed the threshold in force and set nothing, without a word.
    A value, --note or --head with `get` is refused in one line before Redis is asked (nothing
    listens at the URL here)."""
    from stream_detector.cli import main

    monkeypatch.setenv("SD_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["threshold", "get", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stream-detector threshold: error: threshold get takes no ") and "threshold set" in err
    assert "\n" not in err and "cannot reach Redis" not in err, err


def test_threshold_set_refuses_history_and_one_column_cannot_be_id_and_label(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The mirror of get's refusals (a trial: `set 4.5 --history 2` ignored --history), and
    `--id-column label --label-column label` (taken as both, a warning about neither)."""
    from stream_detector.cli import main

    monkeypatch.setenv("SD_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["threshold", "set", "4.5", "--history", "2"]) == 2
    assert "threshold set takes no --history" in capsys.readouterr().err
    (tmp_path / "e.csv").write_text("event_id,amount,label\na,1,0\n")
    assert main(["produce", "--input", str(tmp_path / "e.csv"), "--id-column", "label", "--label-column", "label"]) == 2
    assert "a column is the event's id or its label, not both" in capsys.readouterr().err


def test_a_services_kafka_connection_lines_come_once_a_minute_per_message() -> None:
    """A long-running service (worker, retrainer) still logs that a broker is unreachable, once a
    minute per kind of line, not four lines per reconnection attempt."""
    import logging

    from stream_detector.cli import _OncePerMinute

    once = _OncePerMinute()

    def record(level: int, msg: str, *args: Any) -> logging.LogRecord:
        return logging.LogRecord("kafka.net.manager", level, __file__, 1, msg, args, None)

    assert once.filter(record(logging.ERROR, "Connection failed: %s", "ECONNREFUSED"))
    assert not once.filter(record(logging.ERROR, "Connection failed: %s", "ETIMEDOUT"))  # same template
    assert once.filter(record(logging.WARNING, "Bootstrap %s not ready; waiting %s secs", "b-0", 0.1))
    assert once.filter(record(logging.WARNING, "Connection failed: %s", "x"))  # another level
    once._last = {key: at - 61.0 for key, at in once._last.items()}  # a minute later
    assert once.filter(record(logging.ERROR, "Connection failed: %s", "ECONNREFUSED"))


@pytest.mark.parametrize("streamed", [False, True])
def test_score_of_rows_without_any_input_field_is_no_features_never_an_imputed_score(
        tmp_path: Path, bundle: Any, capsys: pytest.CaptureFixture[str], streamed: bool) -> None:
    """A file written with other field names (``amt``, camelCase) has no field the model reads: every
    row was scored on imputed values alone, without a word. Now each is ``no_features`` (exit 2 when
    no row is left); a file with some good rows scores those and reports the others."""
    from stream_detector.cli import main
    from stream_detector.model.bundle import save_bundle

    assert bundle.schema is not None
    count = len(bundle.schema.input_fields)
    save_bundle(bundle, tmp_path / "model")
    data = tmp_path / "camel.csv"
    data.write_text("event_id,amt,merchantCategory\ne1,12.5,fuel\ne2,3.0,grocery\n")
    out = tmp_path / "scores.csv"
    argv = ["score", "--model", str(tmp_path / "model"), "--input", str(data), "--out", str(out)]
    argv += ["--streamed"] if streamed else []
    assert main(argv) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert f"warning: none of the model's {count} input fields is in this file" in "\n".join(err_lines)
    err = err_lines[-1]
    assert err.startswith("stream-detector score: error: none of the 2 rows could be scored: 2 no_features (")
    assert f"{'camel.csv ' if streamed else ''}row 1: none of the model's {count} input fields is present " \
        f"(expected e.g. 'amount', " in err
    assert "the event has 'amt', 'merchantCategory')" in err and err.endswith(f"every row's reason is in {out}")
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(",no_features," in line for line in lines[1:])
    # mixed: a row with one input field (the others imputed) scores; the empty and the misnamed ones do not
    data.write_text("event_id,amount,amt,merchant_category\ne1,,12.5,\ne2,12.5,,\ne3,,,fuel\ne4,,,\n")
    assert main(argv) == 0
    with out.open(newline="") as handle:
        rows = {r["event_id"]: r for r in csv.DictReader(handle)}
    assert [rows[e]["rejected"] for e in ("e1", "e2", "e3", "e4")] == ["no_features", "", "", "no_features"]
    assert rows["e2"]["score"] != "" and rows["e1"]["score"] == ""
    err = capsys.readouterr().err
    assert "scored 2 of 4 rows" in err


@pytest.mark.parametrize(("argv", "says"), [
    (["model", "list", "extra"], "model list takes no VERSION ('extra')"),
    (["model", "rollback", "3"], "model rollback takes no VERSION ('3')"),
    (["model", "shadow-stop", "3"], "model shadow-stop takes no VERSION ('3'): it ends the period"),
    (["model", "list", "--keep", "3"], "--keep is for model prune, not model list"),
    (["model", "promote", "3", "--replace"], "--replace is for model shadow, not model promote"),
    (["model", "show", "3", "--min-events", "5"], "--min-events is for model shadow, not model show"),
])
def test_model_refuses_arguments_its_action_does_not_take(
        argv: list[str], says: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before Redis is asked (nothing listens at SD_REDIS_URL here): `model list extra --keep 3`
    listed the registry and exited 0, the extra words ignored."""
    from stream_detector.cli import main

    monkeypatch.setenv("SD_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stream-detector model: error: ") and says in err and "\n" not in err, err


def test_score_refuses_to_write_its_scores_over_its_input(tmp_path: Path, bundle: Any,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a new-user trial: `score --input y.csv --out y.csv` replaced the input with the scores,
    exit 0 (`train` refuses its equivalent). One line, exit 2, the input untouched."""
    from stream_detector.cli import main
    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator

    model = save_bundle(bundle, tmp_path / "m")
    data = tmp_path / "y.jsonl"
    data.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in Simulator(seed=1, accounts=20).batch(20, 0.0)[0]))
    before = data.read_bytes()
    for out in (str(data), str(tmp_path / "." / "y.jsonl")):
        assert main(["score", "--model", str(model), "--input", str(data), "--out", out]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "is the input file" in err, err
    assert data.read_bytes() == before


@pytest.mark.parametrize(("argv", "said"), [
    (["train", "--input", "x.csv", "--out", "m", "--epochs", "0"], "--epochs: expected a whole number >= 1"),
    (["train", "--input", "x.csv", "--out", "m", "--hidden", "0"], "--hidden: expected a whole number >= 1"),
    (["train", "--input", "x.csv", "--out", "m", "--bottleneck", "-1"], "--bottleneck: expected a whole number"),
    (["produce", "--input", "x.csv", "--rate", "-5"], "--rate must be a number >= 0"),
    (["score", "--model", "m", "--input", "x.csv", "--out", "o.csv", "--threshold", "-1"],
     "--threshold: threshold must be a finite number >= 0"),
    (["lag", "--group", ""], "--group is empty"),
    (["lag", "--group", " two"], "--group ' two' has spaces around it"),
    (["lag", ""], "the topic is empty"),
    (["tail", " "], "the topic is empty"),
    (["train", "--input", "x.csv", "--out", "m", "--field", "amout=number"],  # a warning and a phantom field
     "--field amout: no such field in x.csv (did you mean 'amount'?)"),
])
def test_values_that_make_no_sense_are_refused_before_any_work(argv: list[str], said: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a new-user trial: each was accepted and did something the user did not ask for
    (--epochs 0 ran 300 epochs, --hidden 0 wrote a model without hidden units, --rate -5 was taken,
    --threshold -1 flagged every row, an empty --group read the default group, a misspelled --field
    was a warning and a phantom field in the schema)."""
    from stream_detector.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.csv").write_text("event_id,amount\ne1,1.5\n")
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own refusal of a value
        code = int(exc.code or 0)
    assert code == 2 and said in capsys.readouterr().err


def test_score_of_a_folder_or_pattern_refuses_an_out_among_its_files_and_links(
        tmp_path: Path, bundle: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a second trial: the same-file check looked at --input only when it was one file, so
    `score --input '*.csv' --out x.csv` and `--input . --out y.csv` replaced an input with scores, and a
    hard link to the input got past it too. The streamed path also ignored a misspelled --label-column."""
    import os

    from stream_detector.cli import main
    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator

    model = save_bundle(bundle, tmp_path / "m")
    data = tmp_path / "in"
    data.mkdir()
    rows = Simulator(seed=1, accounts=20).batch(20, 0.0)[0]
    for name in ("x.jsonl", "y.jsonl"):
        (data / name).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in rows))
    os.link(data / "y.jsonl", tmp_path / "hard.jsonl")
    before = (data / "x.jsonl").read_bytes()
    for given, out in ((str(data / "*.jsonl"), data / "x.jsonl"), (str(data), data / "y.jsonl"),
                       (str(tmp_path / "hard.jsonl"), data / "y.jsonl")):
        assert main(["score", "--model", str(model), "--input", given, "--out", str(out)]) == 2
        assert "is the input file" in capsys.readouterr().err
    assert (data / "x.jsonl").read_bytes() == before == (data / "y.jsonl").read_bytes()
    out = tmp_path / "o.csv"
    assert main(["score", "--model", str(model), "--input", str(data), "--out", str(out), "--label-column", "lbl"]) == 2
    assert "--label-column lbl: no row has this column" in capsys.readouterr().err and not out.exists()


def test_score_to_standard_output_names_it_so(tmp_path: Path, bundle: Any, capfd: pytest.CaptureFixture[str]) -> None:
    """A trial: `score --out -` wrote the CSV to standard output but its line said "→ /dev/stdout";
    both paths (the whole file, and a folder read chunk by chunk) now say "standard output"."""
    from stream_detector.cli import main
    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator

    model = save_bundle(bundle, tmp_path / "m")
    data = tmp_path / "in"
    data.mkdir()
    rows = Simulator(seed=1, accounts=20).batch(20, 0.0)[0]
    (data / "x.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in rows))
    for given in (str(data / "x.jsonl"), str(data)):
        assert main(["score", "--model", str(model), "--input", given, "--out", "-"]) == 0
        out, err = capfd.readouterr()
        assert out.splitlines()[0].startswith("event_id,score,is_anomaly") and len(out.splitlines()) == 21
        assert "→ standard output" in err and "/dev/stdout" not in err


@pytest.mark.parametrize(("argv", "line"), [
    (["--bogus"], "stream-detector: error: unrecognized arguments: --bogus (see stream-detector --help)"),
    (["train", "--bogus"], "stream-detector train: error: unrecognized arguments: --bogus "
                           "(see stream-detector train --help)"),
    (["-v", "train", "--input", "x", "--bogus=1"], "stream-detector train: error: unrecognized arguments: --bogus=1 "
                                                    "(see stream-detector train --help)"),
    (["lag", "x", "y", "z"], "stream-detector lag: error: unrecognized arguments: y z (see stream-detector lag --help)"),
    (["train", "--inp", "x"], "stream-detector train: error: the following arguments are required: --out "
                              "(see stream-detector train --help)"),  # an abbreviation argparse takes
    (["score", "--threshold", "-1"], "stream-detector score: error: the following arguments are required: --model, "
                                     "--input, --out (see stream-detector score --help)"),  # a value, not an option
    # another command's option: which command has it (a trial gave score train's --entity-key)
    (["score", "--model", "m", "--input", "x", "--out", "-", "--entity-key", "account_id"],
     "stream-detector score: error: unrecognized arguments: --entity-key account_id; --entity-key is an option of "
     "train, not of score (the model keeps what train was given) (see stream-detector score --help)"),
    # an option given twice is named once (found 2026-12-07: `score --exclude label --exclude pattern`)
    (["score", "--model", "m", "--input", "x", "--out", "-", "--exclude", "label", "--exclude", "pattern"],
     "stream-detector score: error: unrecognized arguments: --exclude label --exclude pattern; --exclude is an option "
     "of train, produce, not of score (see stream-detector score --help)"),
    (["worker", "--input", "x"], "stream-detector worker: error: unrecognized arguments: --input x; --input is an "
                                 "option of train, score, produce, not of worker (see stream-detector worker --help)"),
    # an abbreviation of the command's own option is its own, not another's (trial O: "--epo (--epochs) is an
    # option of demo, not of train")
    (["train", "--input", "x", "--out", "y", "--epo", "1", "--bogus"],
     "stream-detector train: error: unrecognized arguments: --bogus (see stream-detector train --help)"),
    # an abbreviation of another command's option (a trial: --entity-k got "unrecognized arguments" alone)
    (["score", "--model", "m", "--input", "x", "--out", "-", "--entity-k", "account_id"],
     "stream-detector score: error: unrecognized arguments: --entity-k account_id; --entity-k (--entity-key) is an "
     "option of train, not of score (the model keeps what train was given) (see stream-detector score --help)"),
    # an abbreviation of several of another command's options (a trial: score --entity got no hint)
    (["score", "--model", "m", "--input", "x", "--out", "-", "--entity", "account_id"],
     "stream-detector score: error: unrecognized arguments: --entity account_id; --entity begins --entity-amount, "
     "--entity-distinct, --entity-key, --entity-windows: options of train, not of score (the model keeps what train "
     "was given) (see stream-detector score --help)"),
])
def test_a_usage_error_names_the_mistyped_option_and_the_commands_help(argv: list[str], line: str, capsys) -> None:
    """Found by trials: ``--bogus`` alone said COMMAND was missing, ``train --bogus`` that --input
    was, and extra words after a command pointed at the top level's --help."""
    from stream_detector import cli

    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 2 and capsys.readouterr().err == line + "\n"


def test_output_into_a_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    """Found by a trial: ``stream-detector lag | head -1`` printed ``BrokenPipeError`` on stderr.
    A command whose reader goes away stops quietly with 141 (128 + SIGPIPE), as Unix tools do."""
    command = (f"{sys.executable} -m stream_detector simulate --out /dev/stdout --count 20000 --seed 1 "
               "2>err.txt | head -1 >/dev/null; echo ${PIPESTATUS[0]} >rc.txt")
    subprocess.run(["bash", "-c", command], cwd=tmp_path, timeout=120, check=True)
    assert (tmp_path / "rc.txt").read_text().strip() == "141"
    assert "BrokenPipe" not in (tmp_path / "err.txt").read_text()


def test_simulate_out_dash_writes_json_lines_to_standard_output(tmp_path: Path) -> None:
    """Found by a trial: `simulate --out -` wrote a CSV file named `-`. `-` is standard output,
    as JSON Lines: the same rows as `--out FILE.jsonl`, no file made; a reader that leaves early
    ends it with 141 (a big write into a closed pipe was taken in part, without an error, and the
    command said it had written every event)."""
    common = [sys.executable, "-m", "stream_detector", "simulate", "--count", "30", "--seed", "4"]
    piped = subprocess.run([*common, "--out", "-"], cwd=tmp_path, capture_output=True, timeout=120, check=True)
    subprocess.run([*common, "--out", "f.jsonl"], cwd=tmp_path, capture_output=True, timeout=120, check=True)
    assert piped.stdout == (tmp_path / "f.jsonl").read_bytes() and piped.stdout.count(b"\n") == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.jsonl"]
    assert "to standard output" in piped.stderr.decode()
    command = (f"{' '.join(common[:4])} --out - --count 50000 --chunk-rows 50000 2>err.txt "
               "| head -1 >/dev/null; echo ${PIPESTATUS[0]} >rc.txt")
    subprocess.run(["bash", "-c", command], cwd=tmp_path, timeout=120, check=True)
    assert (tmp_path / "rc.txt").read_text().strip() == "141"
    assert "wrote" not in (tmp_path / "err.txt").read_text()


@pytest.mark.parametrize(("data", "kind"), [
    (b'{"event_id": "a", "amount": 1.5}\n', ".jsonl"),
    (b"event_id,amount\na,1.5\n", ".csv"),
    # mtime=0: the gzip header holds the time it was written, and the test id shows the bytes, so two
    # pytest-xdist workers collecting a second apart saw different tests (CI of stop 42 failed on it)
    (gzip.compress(b'  {"event_id": "a"}\n', mtime=0), ".jsonl"),  # decompressed by the readers, whatever the name
], ids=["json-lines", "csv", "gzip-json-lines"])
def test_an_input_from_standard_input_or_a_pipe_is_read_once_into_a_file_named_by_its_content(
        data: bytes, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a trial: `simulate --out - | produce --input /dev/stdin` said "lseek failed" and a
    FIFO as --input hung. `-` (standard input) and a pipe, FIFO or device are copied once into a
    temporary file named by the format their first bytes show, which the readers then read."""
    import argparse
    import io
    import threading

    from stream_detector.cli import _spool_streams
    from stream_detector.events_io import read_rows

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    args = argparse.Namespace(input="-", feedback=None)
    _spool_streams(args)
    assert args.input.endswith(f"stdin{kind}") and Path(args.input).read_bytes() == data
    assert read_rows(Path(args.input)).rows[0]["event_id"] == "a"  # read as the format it was named
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(data,))
    writer.start()
    args = argparse.Namespace(input=str(tmp_path / "plain.csv"), feedback=str(fifo))
    _spool_streams(args)
    writer.join(timeout=10)
    assert args.input == str(tmp_path / "plain.csv")  # a path that is not a stream is left alone
    assert args.feedback.endswith(f"fifo{kind}") and Path(args.feedback).read_bytes() == data


def test_simulate_out_refuses_the_live_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A trial: `simulate --out - --rate 100 --duration 2` wrote the default 10,000 rows. --rate and
    --duration pace live runs; with --out they are refused (--count and --span-days size a file)."""
    from stream_detector.cli import main

    assert main(["simulate", "--out", str(tmp_path / "h.csv"), "--rate", "100", "--duration=2"]) == 2
    assert "--rate and --duration go with live runs" in capsys.readouterr().err
    assert not (tmp_path / "h.csv").exists()
    assert main(["simulate", "--profile", "velocity", "--out", str(tmp_path / "v.csv"), "--count", "5",
                 "--fraud-rate", "0.5"]) == 0  # --fraud-rate is not --rate


def test_an_error_about_piped_input_names_standard_input_not_its_temporary_copy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial: `cat odd.csv | train --input - …` named /tmp/sd-stdin-…/stdin.csv, a file gone by then."""
    import io

    from stream_detector.cli import main

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"event_id,amount,label\na,1,\n")))
    assert main(["train", "--input", "-", "--out", str(tmp_path / "m"), "--label-column", "label"]) == 2
    err = capsys.readouterr().err
    assert "error: standard input: 1 row(s) have no label" in err and "sd-stdin-" not in err


def test_the_repartition_topic_is_named_by_its_role_only_with_the_two_stages_settings() -> None:
    """``tail`` / ``lag`` ``repartition``: the deployment's repartition topic when its settings name
    a repartition key or the topic itself; without them the word is refused, not read as a topic called "repartition"
    (a second new-user trial: "no topic repartition on …")."""
    from stream_detector.cli import _topic_named
    from stream_detector.errors import ConfigError
    from stream_detector.settings import Settings

    two = Settings(group_id="fraud", input_topic="tx", repartition_key="terminal_id")
    assert _topic_named("repartition", two) == "fraud.tx.by-terminal_id"
    assert _topic_named("alerts", two) == two.alerts_topic and _topic_named("my-topic", two) == "my-topic"
    with pytest.raises(ConfigError, match="set the deployment's SD_REPARTITION_KEY"):
        _topic_named("repartition", Settings())
    # a trial: SD_REPARTITION_TOPIC alone names the topic, and was refused
    assert _topic_named("repartition", Settings(repartition_topic="between-stages")) == "between-stages"


def test_log_lines_go_to_stderr_as_it_is_when_they_are_written(monkeypatch) -> None:
    """A command run in-process set logging up on the ``sys.stderr`` of its time; once that stream
    was closed (a test's capture), every later log line of the process printed "--- Logging error
    --- ValueError: I/O operation on closed file" (a CI log, 2026-12-05). The handler writes to the
    ``sys.stderr`` of the moment."""
    import io
    import logging
    import sys

    from stream_detector import cli

    root = logging.getLogger()
    kept = (root.handlers[:], root.level)
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        cli._setup_logging(None)
        logging.getLogger("stream_detector.test").warning("one")
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("stream_detector.test").warning("two")
    finally:
        root.handlers[:] = kept[0]
        root.setLevel(kept[1])
    assert second.getvalue().endswith("WARNING stream_detector.test: two\n")


def test_score_says_which_input_fields_are_missing_far_more_often_than_in_training(
        tmp_path: Path, bundle: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A field left empty in one row of four, which training never saw missing, is named with
    both shares by ``score`` in memory and ``--streamed`` (each missing value is scored as the
    training median: an anomaly in it is hidden, and nothing said so); the same file whole, none."""
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator

    amount = next(c for c in bundle.spec.numeric if c.name == "amount")
    assert amount.missing_share == 0.0
    events, _ = Simulator(seed=3, accounts=40, run_id="gaps").batch(400, 0.0)
    write_csv(tmp_path / "whole.csv", events)
    write_csv(tmp_path / "gaps.csv", [{**e, "amount": None} if i % 4 == 0 else e for i, e in enumerate(events)])
    save_bundle(bundle, tmp_path / "model")
    for streamed in ([], ["--streamed"]):
        for name in ("whole", "gaps"):
            assert main(["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / f"{name}.csv"),
                         "--out", str(tmp_path / f"{name}.scores.csv"), *streamed]) == 0
            err = capsys.readouterr().err
            said = [line for line in err.splitlines() if "far more often than in its training" in line]
            if name == "whole":
                assert said == []
            else:
                assert len(said) == 1 and said[0].startswith("warning: of the 400 valid rows")
                assert "1 of the model's input fields is missing" in said[0]
                assert "'amount' in 25.0% (0.0% in training)" in said[0]
                assert "(the model folder's spec.json lists the model's fields" in said[0]
    # a trial: JSON rows whose amount is "" are rejected (wrong_type), never scored: not counted as missing
    rows = [{**e, "amount": ""} if i % 4 == 0 else {**e, "channel": None} if i % 4 == 1 else e
            for i, e in enumerate(events)]
    (tmp_path / "empty.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    for streamed in ([], ["--streamed"]):
        assert main(["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "empty.jsonl"),
                     "--out", str(tmp_path / "e.scores.csv"), *streamed]) == 0
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if "far more often than in its training" in line]
        assert len(said) == 1 and said[0].startswith("warning: of the 300 valid rows")
        assert "warning: 100 of 400 rows rejected (wrong_type 100" in err  # both paths say why (a trial)
        assert "'channel' in 33.3% (0.0% in training)" in said[0] and "'amount'" not in said[0]


def test_score_says_which_category_fields_carry_values_training_did_not_keep(
        tmp_path: Path, bundle: Any, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """As the worker does (``worker.NovelValues``), ``score`` in memory and ``--streamed`` names a
    category field whose values are, far more often than in training, values training did not
    keep, with its commonest ones (not with ``SD_ALERT_REDACT_FIELDS`` naming it); the file
    without them, nothing."""
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator

    channel = next(c for c in bundle.spec.categorical if c.name == "channel")
    assert channel.impute is not None and channel.other_share == 0.0 and "mobile" not in channel.categories
    events, _ = Simulator(seed=3, accounts=40, run_id="novel").batch(400, 0.0)
    write_csv(tmp_path / "plain.csv", events)
    write_csv(tmp_path / "novel.csv", [{**e, "channel": "mobile"} if i % 10 == 0 else e for i, e in enumerate(events)])
    save_bundle(bundle, tmp_path / "model")
    for streamed in ([], ["--streamed"]):
        for name in ("plain", "novel"):
            assert main(["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / f"{name}.csv"),
                         "--out", str(tmp_path / f"{name}.scores.csv"), *streamed]) == 0
            said = [line for line in capsys.readouterr().err.splitlines() if "training did not keep" in line]
            if name == "plain":
                assert said == []
            else:
                assert len(said) == 1 and said[0].startswith("warning: of the 400 valid rows")
                assert "'channel': 10.0% of them (e.g. 'mobile'), against 0.0% in training" in said[0]
    monkeypatch.setenv("SD_ALERT_REDACT_FIELDS", "channel")
    for streamed in ([], ["--streamed"]):
        assert main(["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "novel.csv"),
                     "--out", str(tmp_path / "r.scores.csv"), *streamed]) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if "training did not keep" in line]
        assert len(said) == 1 and "'channel': 10.0% of them, against 0.0% in training" in said[0]
        assert "mobile" not in said[0]


def test_shares_are_written_so_that_neither_none_nor_all_reads_as_0_or_100_percent() -> None:
    """A trial: 2,999 of 3,000 missing read "100.0%" in a warning that is not about a field
    missing from every row."""
    from stream_detector.inputs import share_text

    assert share_text(750, 3000) == "25.0%" and share_text(3000, 3000) == "100.0%" and share_text(0, 10) == "0.0%"
    assert share_text(2999, 3000) == "99.97%" and share_text(1, 3000) == "0.03%"
    assert share_text(999_999, 1_000_000) == ">99.99%" and share_text(1, 1_000_000) == "<0.01%"


def test_model_fields_lists_each_input_field_with_what_training_saw(bundle: Any) -> None:
    """``model show``'s ``fields`` (where the drift warnings send a user): every input field of the
    schema, in order, with its feature kind and its training missing share; a field that is no
    feature has ``feature`` null; an older bundle without a schema, none."""
    import dataclasses

    from stream_detector.inputs import model_fields

    fields = model_fields(bundle.spec, bundle.schema)
    assert [f["name"] for f in fields] == list(bundle.schema.input_fields)
    by = {f["name"]: f for f in fields}
    channel = next(c for c in bundle.spec.categorical if c.name == "channel")
    assert by["channel"]["feature"] == "category" and by["channel"]["imputed"] == channel.impute
    assert by["channel"]["categories"] == list(channel.categories) and by["channel"]["missing_share"] == 0.0
    assert by["amount"]["feature"] == "number" and by["amount"]["median"] == next(
        c.median for c in bundle.spec.numeric if c.name == "amount")
    keyless = dataclasses.replace(bundle.spec, numeric=tuple(c for c in bundle.spec.numeric if c.name != "amount"))
    assert {f["name"]: f for f in model_fields(keyless, bundle.schema)}["amount"]["feature"] is None
    assert model_fields(bundle.spec, None) == []


def test_score_streamed_writes_through_a_link_and_into_a_fifo_never_over_them(tmp_path: Path, bundle: Any) -> None:
    """A trial as root: ``score --streamed --out -`` renamed its finished file over the
    ``/dev/stdout`` link (nothing printed; the system's link replaced by a file), and an ``--out``
    that is a symbolic link became a regular file with the target left empty. Now a link is
    written through (the link kept, its target the scores ``score`` writes in memory) and a
    device or FIFO is written as it is (``written_as``)."""
    import stat
    import threading

    from stream_detector.big.score import written_as
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator

    assert written_as(Path("/dev/stdout")) == (Path("/dev/stdout"), False)
    assert written_as(Path("/dev/null")) == (Path("/dev/null"), False)
    assert written_as(tmp_path / "new.csv") == (tmp_path / "new.csv", True)
    events, _ = Simulator(seed=3, accounts=40, run_id="link").batch(300, 0.0)
    write_csv(tmp_path / "e.csv", events)
    save_bundle(bundle, tmp_path / "model")
    run = ["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "e.csv"), "--out"]
    assert main([*run, str(tmp_path / "memory.csv")]) == 0
    (tmp_path / "target").mkdir()
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "target" / "scores.csv")
    assert main([*run, str(link), "--streamed"]) == 0
    assert link.is_symlink() and (tmp_path / "target" / "scores.csv").read_bytes() == \
        (tmp_path / "memory.csv").read_bytes()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    assert main([*run, str(fifo), "--streamed"]) == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and got == [(tmp_path / "memory.csv").read_bytes()]


def test_score_streamed_says_a_drift_that_starts_after_its_first_chunk(
        tmp_path: Path, bundle: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A trial: with ``--streamed --chunk-rows 500``, a file whose later rows lack ``amount`` (half of
    them) and carry a new ``channel`` got no warning, where the in-memory ``score`` of it said both.
    Now the streamed path counts the first 1,024 valid rows of every chunk and says at the end what
    the first chunk did not; a clean file, nothing."""
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator

    events, _ = Simulator(seed=5, accounts=40, run_id="late").batch(2000, 0.0)
    late = [e if i < 1000 else {**e, "amount": None} if i % 2 else {**e, "channel": "kiosk"} if i % 5 == 0 else e
            for i, e in enumerate(events)]
    write_csv(tmp_path / "late.csv", late)
    write_csv(tmp_path / "clean.csv", events)
    save_bundle(bundle, tmp_path / "model")
    for name in ("clean", "late"):
        assert main(["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / f"{name}.csv"),
                     "--out", str(tmp_path / f"{name}.scores.csv"), "--streamed", "--chunk-rows", "500"]) == 0
        err = capsys.readouterr().err
        said = [ln for ln in err.splitlines() if "valid rows sampled" in ln]
        if name == "clean":
            assert said == [] and "far more often" not in err and "did not keep" not in err
        else:
            assert len(said) == 2 and all(ln.startswith("warning: of the 2,000 valid rows sampled (the first 1,024 "
                                                        "of each chunk)") for ln in said)
            assert "'amount' in 25.0% (0.0% in training)" in said[0] and "'channel': 5.0% of them (e.g. 'kiosk')" \
                in said[1]


def test_score_says_that_chunk_rows_without_streamed_does_nothing(
        tmp_path: Path, bundle: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A trial: ``score --chunk-rows 500`` without ``--streamed`` was silently ignored."""
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv
    from stream_detector.model.bundle import save_bundle
    from stream_detector.simulate import Simulator

    events, _ = Simulator(seed=3, accounts=40, run_id="cr").batch(200, 0.0)
    write_csv(tmp_path / "e.csv", events)
    save_bundle(bundle, tmp_path / "model")
    run = ["score", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "e.csv"), "--out"]
    assert main([*run, str(tmp_path / "a.csv"), "--chunk-rows", "500"]) == 0
    assert "note: --chunk-rows is for --streamed" in capsys.readouterr().err
    assert main([*run, str(tmp_path / "b.csv")]) == 0 and main([*run, str(tmp_path / "c.csv"), "--streamed"]) == 0
    assert "--chunk-rows" not in capsys.readouterr().err


def test_a_threshold_option_of_another_rule_is_said_not_silently_ignored(capsys: pytest.CaptureFixture[str]) -> None:
    """A trial: ``--target-fpr 0.001`` with the default fence, or ``--k-fence 2`` with quantile,
    changed nothing and said nothing. Each is now a note; the defaults, or an option of the rule in
    use, none."""
    import argparse

    from stream_detector.cli import _check_threshold_args

    def said(**given: Any) -> str:
        args = argparse.Namespace(**{"threshold_method": "fence", "target_fpr": 0.01, "max_alert_rate": None,
                                     "k_fence": 3.0, "k_std": 3.0, **given})
        _check_threshold_args(args)
        return capsys.readouterr().err

    assert said() == "" and said(k_fence=2.0) == "" and said(threshold_method="quantile", target_fpr=0.05) == ""
    assert "note: --target-fpr sets the quantile threshold" in said(target_fpr=0.001)
    assert "the fence threshold uses it only when the validation errors have no spread" in said(target_fpr=0.001)
    assert "note: --k-fence is for --threshold-method fence" in said(threshold_method="quantile", k_fence=2.0)
    assert "note: --k-std is for --threshold-method meanstd" in said(k_std=1.0)
    assert "the meanstd threshold does not use it" in said(threshold_method="meanstd", target_fpr=0.05)


def test_training_without_a_label_column_names_the_files_label_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Found by a new-user trial: the simulator's file has a ``label`` field; excluded from the
    features and no ``--label-column`` given, ``train`` said "no label column: training on all of
    them", as if the file had none. It says which flag trains on the normal rows only."""
    from stream_detector.cli import main

    rows = "".join(f"e{i},a{i % 7},{1_790_000_000_000 + i * 60_000},{i % 13 + 0.5},{i % 9 == 0:d}\n" for i in range(240))
    (tmp_path / "h.csv").write_text("event_id,account_id,timestamp,amount,label\n" + rows)
    assert main(["train", "--input", str(tmp_path / "h.csv"), "--out", str(tmp_path / "m"), "--exclude", "label",
                 "--epochs", "1"]) == 0
    said = capsys.readouterr()
    assert "240 events; no --label-column: training on all of them, anomalies included; to train on normal rows " \
           "only: --label-column label (values of label: 0, 1)" in said.out + said.err
    (tmp_path / "named.csv").write_text("event_id,account_id,timestamp,amount,label\n" + rows.replace(
        ",0\n", ",legit\n").replace(",1\n", ",fraud\n"))
    assert main(["train", "--input", str(tmp_path / "named.csv"), "--out", str(tmp_path / "n"), "--exclude", "label",
                 "--epochs", "1"]) == 0
    said = capsys.readouterr()  # the simulator's labels: the flag that works, --normal-label with it
    assert "--label-column label --normal-label legit (values of label: fraud, legit)" in said.out + said.err
    (tmp_path / "plain.csv").write_text("event_id,account_id,timestamp,amount\n"
                                        + "".join(r.rsplit(",", 1)[0] + "\n" for r in rows.splitlines()))
    assert main(["train", "--input", str(tmp_path / "plain.csv"), "--out", str(tmp_path / "p"), "--epochs", "1"]) == 0
    said = capsys.readouterr()
    assert "240 events; no --label-column: training on all of them, anomalies included\n" in said.out + said.err


def test_a_file_with_no_valid_row_says_its_rejections_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial F: the local-date advice was printed twice, as a warning and inside the error."""
    from stream_detector.cli import main

    data = tmp_path / "local.csv"
    data.write_text("event_id,timestamp,amount\n" + "".join(f"e{i},{i % 28 + 1:02d}/04/2018 10:00,{i}.5\n"
                                                             for i in range(150)))
    assert main(["train", "--input", str(data), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.count("a date written the local way") == 1 and "no row is a valid event" in err, err


class _StubWorker:
    """Stands in for ``worker.Worker`` in the worker command's tests: ``run`` returns ``stats``."""

    stats: Any = None

    def __init__(self, settings: Any) -> None:
        self.stopped = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True

    def run(self, max_idle_polls: int | None = None) -> Any:
        from stream_detector.worker import WorkerStats

        return self.stats if self.stats is not None else WorkerStats()

    def peer_wait_s(self) -> float:
        return 0.0


def _worker_command(monkeypatch: pytest.MonkeyPatch, stub: type[_StubWorker]) -> int:
    """``stream-detector worker`` with ``stub`` as its worker; the signal handlers it installs undone."""
    from stream_detector import cli
    from stream_detector import worker as worker_module

    monkeypatch.setattr(worker_module, "Worker", stub)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return cli.main(["worker"])
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("when", ["__init__", "start"])
def test_a_worker_stopped_while_it_starts_exits_0(when: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A CI run: a worker SIGTERMed while it started (importing torch, loading the model, joining
    the group: seconds on a busy host) died of the default action, -15, where one stopped in its
    loop exits 0. The worker command's handlers are in place before it starts: stopped before
    ``start``, nothing is started; during it, ``run`` closes it at once."""
    calls: list[str] = []

    class Starting(_StubWorker):
        def __init__(self, settings: Any) -> None:
            super().__init__(settings)
            calls.append("init")
            if when == "__init__":
                os.kill(os.getpid(), signal.SIGTERM)

        def start(self) -> None:
            calls.append("start")
            if when == "start":
                os.kill(os.getpid(), signal.SIGTERM)

        def run(self, max_idle_polls: int | None = None) -> Any:
            calls.append(f"run stopped={self.stopped}")
            return super().run(max_idle_polls)

    assert _worker_command(monkeypatch, Starting) == 0
    err = capsys.readouterr().err
    if when == "__init__":
        assert calls == ["init"] and "worker stopped before it started" in err
    else:
        assert calls == ["init", "start", "run stopped=True"] and "worker stopped: 0 events" in err


def test_the_worker_s_last_line_says_when_batches_were_read_again(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """At least once: a batch given up (a rebalance, a failed write) is read again and its events
    and alerts counted again; the last line said "N alerts" with the duplicates in it and nothing
    about them (a review of 2026-12-07). It now says how many batches were read again."""
    from stream_detector.worker import WorkerStats

    class ReadAgain(_StubWorker):
        stats = WorkerStats(events=400, batches=4, alerts=3, abandoned_batches=2, busy_s=1.0)

    assert _worker_command(monkeypatch, ReadAgain) == 0
    err = capsys.readouterr().err
    assert "worker stopped: 400 events in 4 batches" in err and "3 alerts" in err
    assert "2 batches given up and read again" in err, err


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_a_misspelt_field_option_is_refused_before_the_whole_file_is_read(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial: ``--entity-key`` or ``--exclude`` misspelt on a large file was refused only after
    every row had been read and typed. A CSV's or Parquet file's header says it first: the file is
    never loaded (``load_events`` is not called). JSON Lines rows may each have other fields: the
    check waits for the whole read there, and still refuses."""
    import stream_detector.inputs as inputs
    from stream_detector.cli import main
    from stream_detector.events_io import write_csv, write_jsonl

    rows = [{"event_id": f"e{i}", "account_id": f"a{i % 7}", "timestamp": 1_790_000_000_000 + i * 60_000,
             "amount": i % 13 + 0.5, "pattern": "xy"[i % 2]} for i in range(150)]
    data = tmp_path / f"h.{kind}"
    if kind == "csv":
        write_csv(data, rows)
    elif kind == "jsonl":
        write_jsonl(data, rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), data)
    loaded: list[Path] = []
    real = inputs.load_events

    def counted(path: Path, **kwargs: Any) -> Any:
        loaded.append(path)
        return real(path, **kwargs)

    monkeypatch.setattr(inputs, "load_events", counted)
    cases = ((["--entity-key", "acount_id"], "--entity-key acount_id: no such field in the input; did you mean "
                                             "'account_id'?"),
             (["--exclude", "patern"], "--exclude patern: no such field in the input; did you mean 'pattern'?"),
             (["--entity-key", "account_id", "--entity-amount", "amt"], "--entity-amount amt: no such field"))
    for extra, said in cases:
        assert main(["train", "--input", str(data), "--out", str(tmp_path / "m"), *extra]) == 2
        assert said in capsys.readouterr().err
        assert not (tmp_path / "m").exists()
    assert len(loaded) == (len(cases) if kind == "jsonl" else 0)
    # the header's names pass: the model trains
    assert main(["train", "--input", str(data), "--out", str(tmp_path / "m"), "--entity-key", "account_id",
                 "--exclude", "pattern", "--epochs", "1"]) == 0


def test_options_naming_the_id_time_or_label_column_are_answered_before_the_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Trial O: ``--exclude`` of the ``--timestamp-column`` (or the id or label column) and an
    ``--entity-key`` naming one were "no such field in the input" after the whole read, the column
    renamed by then; ``--entity-key timestamp`` trained a model keyed by event time. ``--exclude``
    of such a column is dropped with a note (it is never a feature); such an entity key is refused."""
    from stream_detector.cli import main

    data = tmp_path / "h.csv"
    data.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TX_AMOUNT,TX_FRAUD\n" + "".join(
        f"t{i},2018-04-01 {i // 60:02d}:{i % 60:02d}:00,c{i % 9},{i % 17 + 0.5},{int(i % 50 == 0)}\n"
        for i in range(240)))
    base = ["train", "--input", str(data), "--id-column", "TRANSACTION_ID", "--timestamp-column", "TX_DATETIME",
            "--label-column", "TX_FRAUD", "--entity-amount", "TX_AMOUNT", "--epochs", "1"]
    for key, role in (("TRANSACTION_ID", "the --id-column (the event id)"),
                      ("TX_DATETIME", "the --timestamp-column (the event time)"),
                      ("TX_FRAUD", "the --label-column (the label)"), ("timestamp", "the event time"),
                      ("event_id", "the event id")):
        assert main([*base, "--out", str(tmp_path / "m"), "--entity-key", key]) == 2
        assert f"--entity-key {key}: it is {role}, not an entity with a history" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "m"), "--entity-key", "CUSTOMER_ID", "--exclude", "TX_DATETIME",
                 "--exclude", "TX_FRAUD", "--exclude", "TRANSACTION_ID"]) == 0
    err = capsys.readouterr().err
    for name, role in (("TX_DATETIME", "the --timestamp-column (the event time)"),
                       ("TX_FRAUD", "the --label-column (the label)"), ("TRANSACTION_ID", "the --id-column (the event id)")):
        assert f"note: --exclude {name}: it is {role}, never a feature (nothing to exclude)" in err


def test_a_misspelt_field_on_a_directory_input_lists_the_files_fields_only(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stop 66's note: on a directory of CSV files without a time column, ``--entity-key nosuch``
    listed the files' fields and a ``timestamp`` they did not have (the schema's reserved rule)."""
    from stream_detector.cli import main

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text("id,amount,acct\n1,2.5,a\n2,3.5,b\n")
    (folder / "b.csv").write_text("id,amount,acct\n3,4.5,a\n")
    assert main(["train", "--input", str(folder), "--out", str(tmp_path / "m"), "--entity-key", "acc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("stream-detector train: error: --entity-key acc: no such field in the input; did you mean "
                   "'acct'? (fields: id, amount, acct)")
