"""The CLI as users run it, as subprocesses against the real services."""

from __future__ import annotations

import csv
import re
import signal
import subprocess
import sys
import time

import orjson
import pytest

from stream_detector.kafka_util import committed_offsets, end_offsets, lag, read_all
from stream_detector.simulate import Simulator
from tests.helpers import anomaly, wait_until

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "stream_detector.cli"]


def run(args, env, timeout=300):
    return subprocess.run(CLI + args, env=env, capture_output=True, text=True, timeout=timeout)


def test_train_publish_worker_score_round_trip(settings, env_for, tmp_path):
    env = env_for(settings)
    train_file = tmp_path / "history.csv"
    done = run(["simulate", "--profile", "velocity", "--out", str(train_file), "--count", "2000", "--fraud-rate", "0.02",
                "--accounts", "300", "--seed", "4"], env)
    assert done.returncode == 0, done.stderr
    trained = run(["train", "--input", str(train_file), "--out", str(tmp_path / "model"), "--label-column",
                   "label", "--normal-label", "legit", "--exclude", "pattern", "--epochs", "15",
                   "--hidden", "24,12", "--bottleneck", "3", "--dropout", "0.05"], env)
    assert trained.returncode == 0, trained.stderr
    assert "epoch" in trained.stderr and "threshold" in trained.stderr, "training prints progress"
    assert (tmp_path / "model" / "report" / "scores.png").stat().st_size > 1000
    assert (tmp_path / "model" / "report" / "curves.png").stat().st_size > 1000
    version = trained.stdout.strip()
    arch = orjson.loads((tmp_path / "model" / "metadata.json").read_bytes())["architecture"]
    assert (arch["hidden"], arch["bottleneck"], arch["dropout"]) == ([24, 12], 3, 0.05)

    empty = run(["model", "list"], env)  # was: nothing at all
    assert empty.returncode == 0 and not empty.stdout, empty
    assert "no model versions in the registry" in empty.stderr and settings.redis_prefix in empty.stderr
    published = run(["publish", str(tmp_path / "model")], env)
    assert published.returncode == 0 and version in published.stdout, published.stderr
    assert "was already active" not in published.stderr
    again = run(["publish", str(tmp_path / "model")], env)  # a trial: a new threshold version, no word why
    assert again.returncode == 0 and f"note: model {version} was already active" in again.stderr, again.stderr
    got = run(["threshold", "get"], env)
    assert orjson.loads(got.stdout)["model_version"] == version
    by_version = run(["score", "--model", version, "--input", str(train_file), "--out", str(tmp_path / "v.csv")], env)
    assert by_version.returncode == 2 and f"model export {version} --out DIR" in by_version.stderr  # a trial: no way
    exported = run(["model", "export", version, "--out", str(tmp_path / "exported")], env)
    assert exported.returncode == 0 and version in exported.stdout, exported.stderr
    for name in ("model", "exported"):
        scored = run(["score", "--model", str(tmp_path / name), "--input", str(train_file), "--out",
                      str(tmp_path / f"{name}.csv")], env)
        assert scored.returncode == 0, scored.stderr
    assert (tmp_path / "model.csv").read_bytes() == (tmp_path / "exported.csv").read_bytes()
    again = run(["model", "export", version, "--out", str(tmp_path / "exported")], env)
    assert again.returncode == 2 and "exists and is not an empty directory" in again.stderr

    live, _ = Simulator(seed=8, accounts=300, run_id="live").batch(400, 0.0)
    live += [anomaly("cli-bad-1"), anomaly("cli-bad-2")]
    live_file = tmp_path / "live.jsonl"
    live_file.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in live))
    typo = run(["produce", "--input", str(live_file), "--exclude", "channnel"], env)
    assert typo.returncode == 2 and "--exclude channnel: no such field" in typo.stderr, typo.stderr
    produced = run(["produce", "--input", str(live_file)], env)
    assert produced.returncode == 0, produced.stderr
    before = run(["lag", "--json"], env)  # nothing decided yet: every event is lag, nothing committed
    assert before.returncode == 0, before.stderr
    report = orjson.loads(before.stdout)
    assert report["lag"] == len(live) and report["group"] == settings.group_id
    assert {p["committed"] for p in report["partitions"]} == {None} and len(report["partitions"]) == 4
    assert f"note: group {settings.group_id} has committed no offset" in before.stderr  # or a misspelled --group

    worker = subprocess.Popen(CLI + ["worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: lag(settings, settings.group_id, settings.input_topic) == 0, message="worker drained")
        during = run(["lag", "--json"], env)  # which member holds each partition (a trial: only the logs said)
        during_text = run(["lag"], env)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    holding = orjson.loads(during.stdout)
    assert (holding["state"], holding["members"]) == ("Stable", 1), holding
    assert all(len(p["members"]) == 1 for p in holding["partitions"]), holding
    members = {p["members"][0]["member_id"] for p in holding["partitions"]}
    member = members.pop()
    assert not members and f"as member {member}" in err  # the worker's log names it as lag does
    assert during_text.stdout.startswith(f"group {settings.group_id} on {settings.input_topic}: lag 0 (1 member, "
                                         "Stable)\n"), during_text.stdout
    assert during_text.stdout.count(f", member {member} (") == 4, during_text.stdout
    assert "worker stopped: 402 events" in err
    busy = re.search(r"events/s while busy \(([\d.]+) s of ([\d.]+) s running\)", err)
    assert busy is not None and 0 < float(busy[1]) <= float(busy[2]), err  # the idle polls are not throughput
    assert committed_offsets(settings, settings.group_id, settings.input_topic) == end_offsets(
        settings, settings.input_topic)
    after = run(["lag"], env)
    assert after.returncode == 0 and after.stdout.startswith(f"group {settings.group_id} on "
                                                             f"{settings.input_topic}: lag 0 (no member now)\n"), after.stdout
    assert after.stdout.count(", lag 0") == 4 and "committed no offset" not in after.stderr
    from stream_detector.topics import ensure_topics

    ensure_topics(settings, [settings.feedback_topic])  # its reader is the label ingester, in its own group
    labels_lag = run(["lag", "feedback", "--json"], env)
    assert labels_lag.returncode == 0, labels_lag.stderr
    assert orjson.loads(labels_lag.stdout)["group"] == f"{settings.group_id}-labels"
    assert "read the feedback topic only for a model with label features" in labels_lag.stderr  # a trial: not said
    missing = run(["lag", "no-such-topic-here"], env)
    assert missing.returncode == 2 and "no topic no-such-topic-here" in missing.stderr
    assert "stream-detector topics" not in missing.stderr and missing.stderr.count("\n") == 1  # not a project topic
    unmade = run(["lag"], {**env, "SD_INPUT_TOPIC": f"{settings.input_topic}-unmade"})  # a project topic: what makes it
    assert unmade.returncode == 2 and unmade.stderr.count("\n") == 1, unmade.stderr
    assert f"no topic {settings.input_topic}-unmade on " in unmade.stderr
    assert "`stream-detector topics` creates it" in unmade.stderr
    for named in ([], ["--group", settings.group_id]):  # the workers' output: their group reads nothing there
        alerts = run(["lag", "alerts", *named], env)
        assert alerts.returncode == 0 and f"note: the workers publish to {settings.alerts_topic}" in alerts.stderr
        assert "no member has finished a batch" not in alerts.stderr, alerts.stderr
    typo = run(["lag", "alert"], env)  # a role's name mistyped: the nearest name offered
    assert typo.returncode == 2 and typo.stderr.strip().endswith("no topic alert on " + settings.kafka_bootstrap
                                                                  + ": did you mean alerts?"), typo.stderr

    out = tmp_path / "scores.csv"
    scored = run(["score", "--model", str(tmp_path / "model"), "--input", str(live_file), "--out", str(out)], env)
    assert scored.returncode == 0, scored.stderr
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(live) and all(r["rejected"] == "" for r in rows)
    offline_flagged = {r["event_id"] for r in rows if r["is_anomaly"] == "1"}
    alerted = {orjson.loads(r.value)["event_id"] for r in read_all(settings, settings.alerts_topic)}
    assert {"cli-bad-1", "cli-bad-2"} <= offline_flagged
    assert alerted == offline_flagged, "the worker and `score` agree on every event"

    changed = run(["threshold", "set", "123.5", "--note", "test"], env)
    assert changed.returncode == 0 and "version" in changed.stdout and "warning" not in changed.stderr
    flood = run(["threshold", "set", "0.000001", "--note", "too low"], env)  # set, but the operator is told
    assert flood.returncode == 0 and "alert on more than 50% of normal events" in flood.stderr
    changed = run(["threshold", "set", "123.5", "--note", "test"], env)
    history = run(["threshold", "get", "--history", "1"], env)
    lines = history.stdout.strip().splitlines()
    assert orjson.loads(lines[0])["value"] == 123.5 and orjson.loads(lines[1])["note"] == "test"


def test_errors_are_one_clear_line(settings, env_for, tmp_path):
    env = env_for(settings)
    bad_env = dict(env, SD_BATCH_SIZE="many")
    result = run(["threshold", "get"], bad_env)
    assert result.returncode == 2 and "SD_BATCH_SIZE" in result.stderr and "Traceback" not in result.stderr
    missing = run(["train", "--input", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "m")], env)
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    no_model = run(["threshold", "get"], env)
    assert no_model.returncode == 2 and "publish" in no_model.stderr
    tampered = tmp_path / "t"
    tampered.mkdir()
    (tampered / "metadata.json").write_text("{}")
    result = run(["publish", str(tampered)], env)
    assert result.returncode == 2 and "missing" in result.stderr


def test_produce_feedback_puts_a_labels_file_on_the_feedback_topic(settings, env_for, tmp_path):
    """``produce --feedback``: the records ``simulate --feedback-out`` writes go to SD_FEEDBACK_TOPIC,
    keyed by event id, each read back by the feedback contract as the label it was; repeated ids
    are normal there (no warning), a row that is not a label is left out and said."""
    import uuid

    from stream_detector.feedback import Label, decode_label, parse_label

    s = settings.model_copy(update={"feedback_topic": f"fb-{uuid.uuid4().hex[:8]}"})
    env = env_for(s)
    events, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    done = run(["simulate", "--out", str(events), "--feedback-out", str(labels), "--count", "3000",
                "--span-days", "10", "--accounts", "200", "--terminals", "300", "--seed", "2"], env)
    assert done.returncode == 0, done.stderr
    lines = labels.read_bytes().splitlines()
    with labels.open("ab") as f:
        f.write(b'{"event_id": "x-1", "label": "FRAUD", "labelled_at": 1790000000000}\n')
        f.write(b'{"event_id": "x-2", "label": "FRAUD", "labelled_at": 1790000000000}\n')
        f.write(b'{"label": "fraud", "labelled_at": 1790000000000}\n')
    produced = run(["produce", "--feedback", "--input", str(labels)], env)
    assert produced.returncode == 0, produced.stderr
    assert f"produced {len(lines)} labels to {s.feedback_topic}" in produced.stderr
    counted = [line for line in produced.stderr.splitlines() if "rows are not labels" in line]
    assert len(counted) == 1 and "3 of" in counted[0]
    assert "(invalid_label 2, missing_event_id 1; e.g. row" in counted[0]  # every reason counted, as for events
    assert "repeat an event_id" not in produced.stderr
    ahead = sum(orjson.loads(line)["labelled_at"] > time.time() * 1000 + 60_000 for line in lines)
    assert ahead and f"warning: {ahead} of {len(lines)} labels are dated after now" in produced.stderr  # not due yet
    got = read_all(s, s.feedback_topic)
    sent = [decode_label(r.value, r.timestamp) for r in got]
    want = [parse_label(orjson.loads(line)) for line in lines]
    assert all(isinstance(x, Label) for x in sent) and sorted(map(repr, sent)) == sorted(map(repr, want))
    assert {r.key.decode() for r in got} == {x.event_id for x in want if isinstance(x, Label)}
    # labelled_at as written: whole epoch ms stay integers on the topic (they went out as 1796284588925.0)
    on_topic = [orjson.loads(r.value)["labelled_at"] for r in got]
    assert all(type(t) is int for t in on_topic), on_topic[:3]


def test_tail_prints_the_newest_records_of_a_topic_and_follows_it(settings, env_for):
    """``stream-detector tail``: the documented way to read alerts (a new-user trial wrote its own
    consumer script). The last -n records over every partition, oldest first, committed only, no
    consumer group; --follow then prints each new record; a missing topic is one line, exit 2."""
    from kafka import KafkaProducer

    from stream_detector.topics import ensure_topics

    env = env_for(settings)
    ensure_topics(settings, [settings.alerts_topic, settings.dlq_topic])
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    values = [orjson.dumps({"event_id": f"e{i}", "n": i}) for i in range(15)]
    for i, value in enumerate(values):  # four partitions, times in order
        producer.send(settings.alerts_topic, value=value, key=f"k{i % 4}".encode(), timestamp_ms=1_790_000_000_000 + i)
    producer.flush()
    got = run(["tail", "-n", "5"], env, timeout=120)  # alerts: the default
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [v.decode() for v in values[-5:]]
    assert run(["tail", "alerts", "-n", "100"], env, timeout=120).stdout.splitlines() == [v.decode() for v in values]
    # a dead letter: not JSON, a line break inside; its reason in the headers (found by a second trial)
    producer.send(settings.dlq_topic, value=b"not json\nsecond line", headers=[("sd.error.reason", b"invalid_json")],
                  partition=0, timestamp_ms=1_790_000_000_000)
    for partition in (1, 1, 1, 2):  # equal times: the newest are those nearest their partition's end
        producer.send(settings.dlq_topic, value=orjson.dumps({"p": partition}), partition=partition,
                      timestamp_ms=1_790_000_000_001)
    producer.flush()
    dlq = run(["tail", "dlq", "-n", "5", "--with-headers", "--with-position"], env, timeout=120).stdout.splitlines()
    assert len(dlq) == 5
    assert dlq[0].split("\t") == ["0", "0", '{"sd.error.reason":"invalid_json"}', '"not json\\nsecond line"']
    newest = run(["tail", "dlq", "-n", "2", "--with-position"], env, timeout=120).stdout.splitlines()
    assert [line.split("\t")[:2] for line in newest] == [["1", "2"], ["2", "0"]]
    missing = run(["tail", "no-such-topic-" + settings.group_id, "-n", "1"], env, timeout=120)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no topic" in missing.stderr
    follow = subprocess.Popen(CLI + ["tail", "alerts", "-n", "0", "--follow", "--with-position"],
                              env={**env, "PYTHONFAULTHANDLER": "1"},  # SIGABRT: every thread's stack on stderr
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "following" in follow.stderr.readline()  # type: ignore[union-attr]  # its readiness line
        new = orjson.dumps({"event_id": "late"})
        producer.send(settings.alerts_topic, value=new, key=b"k0")
        producer.flush()
        partition, offset, value = follow.stdout.readline().rstrip("\n").split("\t")  # type: ignore[union-attr]
        assert value == new.decode() and partition.isdigit() and offset.isdigit()
    finally:
        follow.send_signal(signal.SIGINT)
        try:
            code = follow.wait(timeout=60)
        except subprocess.TimeoutExpired:  # once in CI (2026-12-06), before Ctrl-C became a flag: say where it is
            follow.send_signal(signal.SIGABRT)
            code = follow.wait(timeout=60)
        stderr = follow.stderr.read()  # type: ignore[union-attr]
        follow.stdout.close()  # type: ignore[union-attr]
        follow.stderr.close()  # type: ignore[union-attr]
        producer.close()
    assert code == 0, stderr[-6000:]  # Ctrl-C ends --follow (within a poll): not an error
    assert committed_offsets(settings, settings.group_id, settings.alerts_topic) == {}  # no group committed


def test_produce_leaves_excluded_fields_out_of_the_events(settings, env_for, tmp_path):
    """Found by a new-user trial: `produce --label-column label` of a simulate --out file sent the
    simulator's `pattern` column in every event (and so in every alert's copy of it); `--exclude`
    leaves fields out. Excluding event_id is refused (one line, exit 2)."""
    env = env_for(settings)
    events, _ = Simulator(seed=9, accounts=50, run_id="ex").batch(30, 0.0)
    rows = [dict(e, label="legit", pattern="legit") for e in events]
    path = tmp_path / "sim.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    topic = f"{settings.input_topic}-excluded"
    done = run(["produce", "--input", str(path), "--label-column", "label", "--exclude", "pattern", "--topic", topic],
               env)
    assert done.returncode == 0, done.stderr
    sent = [orjson.loads(r.value) for r in read_all(settings, topic)]
    assert len(sent) == len(rows) and all("pattern" not in e and "label" not in e for e in sent)
    assert sorted(e["event_id"] for e in sent) == sorted(str(e["event_id"]) for e in events)
    assert f"note: created topic {topic} (" in done.stderr  # a trial: a misspelt --topic was made, nothing said
    again = run(["produce", "--input", str(path), "--exclude", "pattern", "--label-column", "label", "--topic", topic],
                env)
    assert again.returncode == 0 and "created topic" not in again.stderr
    missing = run(["produce", "--input", str(path), "--label-column", "label", "--topic", f"{topic}-nosuch"],
                  {**env, "SD_CREATE_TOPICS": "false"}, timeout=60)  # a trial: a minute of errors, then a timeout
    assert missing.returncode == 2 and missing.stderr.strip().endswith(
        f"no topic {topic}-nosuch on {settings.bootstrap_servers} (SD_CREATE_TOPICS=false: check its name; create "
        "it with Kafka's tools, or let produce create it with SD_CREATE_TOPICS=true)"), missing.stderr  # not `topics`
    refused = run(["produce", "--input", str(path), "--exclude", "event_id", "--topic", topic], env)
    assert refused.returncode == 2 and "every event needs its event_id" in refused.stderr
    both = run(["produce", "--input", str(path), "--label-column", "label", "--exclude", "label", "--topic", topic], env)
    assert both.returncode == 2 and "--exclude label: it is the --label-column" in both.stderr
    keyed = run(["tail", topic, "-n", "1", "--with-key"], env)  # keys: docs/alerts.md says how they are set
    key, value = keyed.stdout.rstrip("\n").split("\t")
    assert keyed.returncode == 0 and key == str(orjson.loads(value)["account_id"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_produce_sends_a_row_without_a_label_without_the_label_header(settings, env_for, tmp_path, fmt):
    """Found by a trial: one JSON Lines row without the label key stopped `produce --label-column`
    for the whole file, a null label went out as an empty `sd.label` header, and an empty CSV
    cell did too. Every row is sent; one without a label has no header, and the summary says
    how many."""
    env = env_for(settings)
    rows = [{"event_id": "p1", "account_id": "a1", "amount": 1.5, "label": "fraud"},
            {"event_id": "p2", "account_id": "a1", "amount": 2.5},
            {"event_id": "p3", "account_id": "a2", "amount": 3.5, "label": None},
            {"event_id": "p4", "account_id": "a2", "amount": 4.5, "label": "legit"}]
    path = tmp_path / f"l.{fmt}"
    if fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    else:
        path.write_text("event_id,account_id,amount,label\n" + "".join(
            f"{r['event_id']},{r['account_id']},{r['amount']},{r.get('label') or ''}\n" for r in rows))
    topic = f"{settings.input_topic}-unlabelled-{fmt}"
    done = run(["produce", "--input", str(path), "--label-column", "label", "--topic", topic], env)
    assert done.returncode == 0, done.stderr
    assert "produced 4 events" in done.stderr and "2 events sent without a label" in done.stderr
    sent = {orjson.loads(r.value)["event_id"]: dict(r.headers) for r in read_all(settings, topic)}
    assert sent == {"p1": {"sd.label": b"fraud"}, "p2": {}, "p3": {}, "p4": {"sd.label": b"legit"}}


def test_produce_sends_a_json_lines_files_numbers_as_numbers_when_a_word_makes_the_field_text(
        settings, env_for, tmp_path):
    """Found by a new-user trial: one ``"amount": "twelve"`` among five rows made the inferred
    schema type ``amount`` as text, and `produce` sent every row's ``52.42`` as ``"52.42"``: the
    events on the topic were not the file's. Numbers and booleans stay as the file has them; the
    word is sent as it is (the worker dead-letters it by its model's schema)."""
    env = env_for(settings)
    events, _ = Simulator(seed=9, accounts=50, run_id="words").batch(5, 0.0)
    events[2]["amount"] = "twelve"
    path = tmp_path / "words.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    topic = f"{settings.input_topic}-words"
    done = run(["produce", "--input", str(path), "--topic", topic], env)
    assert done.returncode == 0, done.stderr
    assert "values are numbers" not in done.stderr  # nothing is typed: no inference advice (--field does not apply)
    sent = {e["event_id"]: e for e in (orjson.loads(r.value) for r in read_all(settings, topic))}
    assert sent == {str(e["event_id"]): e for e in events}  # every row as in the file, types included
    assert [type(sent[str(e["event_id"])]["amount"]) for e in events] == [float, float, str, float, float]


def test_produce_sends_every_json_lines_row_as_the_file_has_it(settings, env_for, tmp_path):
    """Found by a new-user trial: `produce` typed a JSON Lines file by the schema it inferred from
    it, so a float in a field inferred as an identifier dropped the row (24 of 50 rows not sent),
    integers in a text field were sent as strings and a ``"10000"`` string as a number. Every row
    that meets the event contract is now sent as the file has it, every value of its own JSON type;
    the worker types it by its model's schema. A row that breaks the contract is still not sent,
    and said."""
    env = env_for(settings)
    events, _ = Simulator(seed=11, accounts=50, run_id="asis").batch(50, 0.0)
    for i, e in enumerate(events):
        e["store"] = 1000 + i if i % 2 else 1000.5 + i  # ints and floats: inferred as something, kept as they are
        e["zip"] = "10000" if i % 3 else 10000  # a string of digits and a number
        e["vip"] = bool(i % 2) if i % 5 else "yes"
    path = tmp_path / "mixed.jsonl"
    events[3]["timestamp"] = str(events[3]["timestamp"])  # epoch ms in a string: the consumer's schema reads it
    lines = [orjson.dumps(e) for e in events]
    lines.insert(7, b'{"amount": 3.5}')  # no event_id: breaks the contract
    lines.insert(9, b'{"event_id": "big", "amount": -9223372036854775809}')  # no 64-bit form: crashed produce
    lines.insert(11, b'{"event_id": true, "amount": 1}')  # an id that is not one: was sent as "True"
    path.write_bytes(b"\n".join(lines) + b"\n")
    topic = f"{settings.input_topic}-asis"
    done = run(["produce", "--input", str(path), "--topic", topic], env)
    assert done.returncode == 0, done.stderr
    assert "3 rejected row(s) not sent" in done.stderr and "missing_event_id 1" in done.stderr
    assert "wrong_type 2" in done.stderr and "set --field" not in done.stderr  # no advice that does not apply
    sent = {e["event_id"]: e for e in (orjson.loads(r.value) for r in read_all(settings, topic))}
    expected = {str(e["event_id"]): e for e in events}
    assert sent == expected
    assert all(type(sent[k][name]) is type(expected[k][name]) for k in expected for name in expected[k])


def test_tail_names_a_record_the_client_cannot_read_on_stderr(settings, monkeypatch, capsys):
    """Found in a review: ``tail`` printed a record kafka-python could not read (here: its zstd
    library made unavailable) as an empty line, first. It is named on stderr, with its partition,
    offset and the client's error, once (the transport logged its own ERROR line beside it); stdout
    keeps only the records' values."""
    import kafka.codec
    from kafka import KafkaProducer

    from stream_detector import cli
    from stream_detector.topics import ensure_topics

    topic = f"tail-unreadable-{settings.group_id}"
    ensure_topics(settings, [topic], partitions=1)
    values = [orjson.dumps({"n": i, "note": "compressible " * 20}) for i in range(6)]  # a tiny batch stays uncompressed
    plain = KafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    packed = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, compression_type="zstd", linger_ms=200)
    try:
        for group, producer in ((values[:2], plain), (values[2:4], packed), (values[4:], plain)):
            for value in group:
                producer.send(topic, value=value)
            producer.flush(timeout=30)
    finally:
        plain.close(timeout=10)
        packed.close(timeout=10)
    monkeypatch.setattr(kafka.codec, "has_zstd", lambda: False)
    monkeypatch.setenv("SD_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    assert cli.main(["tail", topic, "-n", "10"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [v.decode() for v in values[:2] + values[4:]]  # no empty line
    unreadable = [line for line in err.splitlines() if "cannot read" in line]
    assert [line.split(":")[0] for line in unreadable] == [f"{topic}[0] offset 2", f"{topic}[0] offset 3"], err
    assert all("zstd" in line for line in unreadable), err
    assert "moved past it" not in err, err  # one line per record: not the transport's ERROR line too


def test_lag_counts_records_not_transaction_markers(settings):
    """A topic written in transactions (the two stages' repartition topic): commit and abort markers
    and aborted records take offsets that no reader gets. ``lag`` counted end − committed, so a
    drained partition showed lag 1 (a trial: "lag 48" on a drained repartition topic). Here two
    committed transactions (records at offsets 0-4 and 6-10, markers at 5 and 11), then an aborted
    one (record 12, marker 13): end 14. Committed at 11, nothing is left to read; at 4, the records
    4 and 6-10; with no commit, or one past the end (the topic recreated), the 10 records from the
    first offset held (the reset policy, earliest; it was end − 0; with latest, none). ``is_record`` leaves records
    out (the repartition topic's marks). A transaction left open counts its offsets, an upper
    bound: the reader cannot pass it yet."""
    import uuid

    from confluent_kafka import Producer
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from stream_detector.kafka_util import group_lag
    from stream_detector.topics import ensure_topics

    topic = f"{settings.input_topic}-txn"
    settings = settings.model_copy(update={"input_topic": topic})
    ensure_topics(settings, [topic], partitions=2)
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "transactional.id": f"lag-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    for _ in range(2):
        producer.begin_transaction()
        for i in range(5):
            producer.produce(topic, b"v%d" % i, partition=0)
        producer.commit_transaction(30)
    producer.begin_transaction()
    producer.produce(topic, b"aborted", partition=0)
    producer.flush(30)
    producer.abort_transaction(30)

    def committed_at(group: str, offset: int) -> None:
        consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, group_id=group,
                                 enable_auto_commit=False)
        try:
            consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(offset, "", -1)})
        finally:
            consumer.close()

    def rows(group: str) -> list[tuple[int, int, int | None, int, str]]:
        return [(r.partition, r.end, r.committed, r.lag, r.counted) for r in group_lag(settings, group, topic)]

    # the coordinator answers the abort before its markers are written: the end is 14 once they are
    wait_until(lambda: end_offsets(settings, topic)[TopicPartition(topic, 0)] == 14, message="the abort marker")
    drained, behind, beyond = (f"{settings.group_id}-{name}" for name in ("drained", "behind", "beyond"))
    committed_at(drained, 11)
    committed_at(behind, 4)
    committed_at(beyond, 500)  # past the end (a topic recreated): its readers start again from the first offset
    empty = (1, 0, None, 0, "records")
    assert rows(drained) == [(0, 14, 11, 0, "records"), empty]
    assert rows(behind) == [(0, 14, 4, 6, "records"), empty]
    assert rows(f"{settings.group_id}-none") == [(0, 14, None, 10, "records"), empty]  # no commit: from the start
    assert rows(beyond) == [(0, 14, 500, 10, "records"), empty]
    latest = group_lag(settings, f"{settings.group_id}-none", topic, reset="latest")  # SD_AUTO_OFFSET_RESET=latest
    assert [(r.lag, r.counted) for r in latest] == [(0, "records"), (0, "records")]
    skipping = group_lag(settings, behind, topic, is_record=lambda record: record.value != b"v4")
    assert [r.lag for r in skipping] == [4, 0]  # records 4 and 10 (v4) are not work (as the repartition topic's marks)
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:  # records below 6 deleted (retention, a purge): no commit, or one below them, reads from 6
        admin.delete_records({TopicPartition(topic, 0): 6}, timeout_ms=30_000)
    finally:
        admin.close()
    assert rows(f"{settings.group_id}-none") == [(0, 14, None, 5, "records"), empty]
    assert rows(behind) == [(0, 14, 4, 5, "records"), empty]
    assert group_lag(settings, behind, topic)[0].log_start == 6
    producer.begin_transaction()  # left open: a read-committed reader stops at its first offset (14)
    for _ in range(2):
        producer.produce(topic, b"open", partition=0)
    producer.flush(30)
    try:  # its offsets count as records, an upper bound (reading up to the end would never get there: 5)
        assert rows(drained) == [(0, 16, 11, 2, "at_most"), empty]
    finally:
        producer.abort_transaction(30)


def test_an_interrupted_produce_says_how_many_events_kafka_acknowledged(settings, env_for, tmp_path):
    """A trial: Ctrl-C on `produce --rate 200` said "interrupted" and nothing of what had reached the
    broker, so a run could not be resumed or checked. Now the count of acknowledged events is said,
    and the topic holds at least those."""
    env = env_for(settings)
    events, _ = Simulator(seed=12, accounts=50, run_id="int").batch(3000, 0.0)
    path = tmp_path / "int.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    topic = f"{settings.input_topic}-interrupted"
    proc = subprocess.Popen([*CLI, "produce", "--input", str(path), "--rate", "250", "--topic", topic], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: sum(end_offsets(settings, topic).values()) > 0 if _has_topic(settings, topic) else False,
                   timeout_s=60, message="the first events on the topic")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    said = re.search(r"interrupted: (\d+) of the 3000 events were acknowledged by " + re.escape(topic), err)
    assert said, err
    acknowledged = int(said.group(1))
    on_topic = sum(end_offsets(settings, topic).values())
    assert 0 < acknowledged < 3000 and acknowledged <= on_topic, (acknowledged, on_topic)
    # and how to go on (trial G cut the file by hand): the rest, from the first event not surely acknowledged
    skip = re.search(r"to send the rest, the same command with --skip (\d+)", err)
    assert skip and 0 < int(skip.group(1)) <= acknowledged, err
    rest = run(["produce", "--input", str(path), "--topic", topic, "--skip", skip.group(1)], env)
    assert rest.returncode == 0 and f"produced {3000 - int(skip.group(1))} events" in rest.stderr, rest.stderr
    ids = [orjson.loads(r.value)["event_id"] for r in read_all(settings, topic)]
    assert set(ids) == {str(e["event_id"]) for e in events}  # none lost (a few may be there twice)


def _has_topic(settings, topic: str) -> bool:
    from stream_detector.topics import topic_exists

    return topic_exists(settings, topic)


def test_produce_keys_events_by_the_field_the_workers_take_the_topic_to_be_keyed_by(settings, env_for, tmp_path):
    """A trial (trial E): with SD_ENTITY_PARTITION_KEY=CUSTOMER_ID for the worker, `produce` still keyed
    by account_id, which the file lacked: every record went without a key, a customer's events to
    every partition, and the worker's customer history (computed out of time order) alerted 100x.
    `produce` keys by SD_ENTITY_PARTITION_KEY's field, and says how many events had none."""
    path = tmp_path / "c.csv"
    path.write_text("event_id,CUSTOMER_ID,amount\n" + "".join(f"t{i},c{i % 3},{i + 0.5}\n" for i in range(9)))
    keyed = f"{settings.input_topic}-keyed"
    done = run(["produce", "--input", str(path), "--topic", keyed],
               {**env_for(settings), "SD_ENTITY_PARTITION_KEY": "CUSTOMER_ID"})
    assert done.returncode == 0, done.stderr
    assert "produced 9 events to " + keyed + " keyed by CUSTOMER_ID\n" in done.stderr
    records = read_all(settings, keyed)
    assert {orjson.loads(r.value)["event_id"]: r.key for r in records} == {f"t{i}": f"c{i % 3}".encode() for i in range(9)}
    assert len({(r.key, r.partition) for r in records}) == 3  # one partition per customer
    bare = f"{settings.input_topic}-bare"
    done = run(["produce", "--input", str(path), "--topic", bare], env_for(settings))
    assert done.returncode == 0, done.stderr
    assert "keyed by account_id; 9 sent without a key (no value in account_id" in done.stderr
    assert {r.key for r in read_all(settings, bare)} == {None}


def test_produce_sends_the_timestamp_column_as_the_events_timestamp(settings, env_for, tmp_path):
    """Trials E and F: the Fraud Detection Handbook's event time is TX_DATETIME, and the workers read
    ``timestamp``; the file had to be edited. ``produce --timestamp-column TX_DATETIME`` sends it as
    ``timestamp``, the same value in every format."""
    env = env_for(settings)
    path = tmp_path / "hb.csv"
    path.write_text("TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TX_AMOUNT\n"
                    "1,2018-04-01T00:00:31Z,c1,57.16\n2,2018-04-01T00:02:10Z,c2,81.51\n")
    topic = f"{settings.input_topic}-times"
    done = run(["produce", "--input", str(path), "--id-column", "TRANSACTION_ID", "--timestamp-column", "TX_DATETIME",
                "--topic", topic], env)
    assert done.returncode == 0, done.stderr
    sent = sorted((orjson.loads(r.value) for r in read_all(settings, topic)), key=lambda e: e["event_id"])
    assert [(e["event_id"], e["timestamp"]) for e in sent] == [("1", 1522540831000), ("2", 1522540930000)]
    assert all("TX_DATETIME" not in e for e in sent)
    typo = run(["produce", "--input", str(path), "--timestamp-column", "TX_DATE", "--topic", topic], env)
    assert typo.returncode == 2 and "did you mean 'TX_DATETIME'?" in typo.stderr
