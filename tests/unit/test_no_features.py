"""``no_features``: an event in which none of the model's input fields has a value is rejected with a
reason, never scored on imputed values alone — by the field schema's converter, so alike from a
Kafka record, a CSV, JSON Lines or Parquet row, and the columnar reader of ``train --streamed``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream_detector.entity_spec import EntitySpec
from stream_detector.events_io import ReaderOptions
from stream_detector.fieldschema import FieldRule, FieldSchema, FieldType, InferenceOptions, infer_schema
from stream_detector.inputs import load_events
from stream_detector.model.bundle import Bundle, build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.offline import score_events
from stream_detector.pipeline.decode import decode_batch
from stream_detector.schema import RejectReason

T0 = 1_790_000_000_000
SCHEMA = FieldSchema((
    FieldRule("event_id", FieldType.IDENTIFIER), FieldRule("account_id", FieldType.IDENTIFIER),
    FieldRule("timestamp", FieldType.TIMESTAMP), FieldRule("amount", FieldType.NUMBER),
    FieldRule("merchant_category", FieldType.CATEGORY), FieldRule("card_present", FieldType.BOOLEAN),
    FieldRule("channel", FieldType.CATEGORY), FieldRule("note", FieldType.IGNORED)), (T0, T0))


def _verdicts(schema: FieldSchema, events: list[dict[str, Any]]) -> dict[int, tuple[RejectReason, str]]:
    _, problems = schema.convert(events)
    return {i: (exc.reason, str(exc)) for i, exc in problems.items()}


def test_the_input_fields_are_the_feature_fields_not_ids_times_or_ignored_fields() -> None:
    assert SCHEMA.input_fields == ("amount", "merchant_category", "card_present", "channel")
    # account_id typed as a category by hand is still no feature (fit_spec skips reserved fields)
    odd = FieldSchema((FieldRule("account_id", FieldType.CATEGORY), FieldRule("amount", FieldType.NUMBER)))
    assert odd.input_fields == ("amount",)
    assert SCHEMA.reading(["amount", "account_id", "amount"]).input_fields == ("amount", "account_id")


def test_one_input_field_with_a_value_is_enough_the_rest_is_imputed_as_before() -> None:
    events = [{"event_id": "e1", "amount": 12.5}, {"event_id": "e2", "channel": "pos", "amount": None},
              {"event_id": "e3", "card_present": False}]  # False is a value, not a missing one
    typed, problems = SCHEMA.convert(events)
    assert not problems and typed == events


def test_an_event_with_none_of_the_input_fields_is_rejected_with_the_fields_named() -> None:
    events = [{"event_id": "e1", "amt": 12.5, "timestamp": T0},
              {"event_id": "e2", "merchantCategory": "fuel", "Amount": 3, "cardPresent": True, "x": 1},
              {"event_id": "e3", "amount": 5}]
    got = _verdicts(SCHEMA, events)
    assert list(got) == [0, 1]
    assert got[0] == (RejectReason.NO_FEATURES, "none of the model's 4 input fields is present (expected e.g. "
                      "'amount', 'merchant_category', 'card_present', ...; the event has 'amt', 'timestamp')")
    assert got[1][1].endswith("the event has 'Amount', 'cardPresent', 'merchantCategory', ...)")


def test_null_counts_as_absent() -> None:
    events = [{"event_id": "e1", "amount": None, "channel": None, "account_id": "a1"}, {"event_id": "e2"}]
    got = _verdicts(SCHEMA, events)
    assert got[0] == (RejectReason.NO_FEATURES, "none of the model's 4 input fields is present (expected e.g. "
                      "'amount', 'merchant_category', 'card_present', ...; the event has 'account_id'; "
                      "'amount', 'channel' are null)")
    assert got[1][1].endswith("; the event has no field with a value but event_id)")


def test_ids_times_and_ignored_fields_alone_are_no_input() -> None:
    event = {"event_id": "e1", "account_id": "a1", "timestamp": T0, "schema_version": 1, "note": "hi"}
    assert _verdicts(SCHEMA, [event])[0][0] is RejectReason.NO_FEATURES


def test_a_value_that_does_not_convert_keeps_its_own_reason() -> None:
    got = _verdicts(SCHEMA, [{"event_id": "e1", "timestamp": "soon"}, {"event_id": "e2", "amount": "12abc"}])
    assert got[0][0] is RejectReason.INVALID_TIMESTAMP and got[1][0] is RejectReason.WRONG_TYPE


def test_entity_inputs_count_when_the_model_has_entity_features() -> None:
    spec = EntitySpec(keys=("account_id",), amount_field="amount", distinct_fields=("merchant_category", "country"))
    assert spec.input_fields == ("account_id", "amount", "merchant_category", "country")
    with_entity = SCHEMA.reading([*SCHEMA.input_fields, *spec.input_fields])
    only_key = {"event_id": "e1", "account_id": "a1", "timestamp": T0}
    assert _verdicts(SCHEMA, [only_key])[0][0] is RejectReason.NO_FEATURES
    assert not _verdicts(with_entity, [only_key])
    inferred = infer_schema([{"event_id": "e", "account_id": "a", "amount": 1.0}],
                            InferenceOptions(identifiers=frozenset({"account_id"}), inputs=spec.input_fields)).schema
    assert inferred.input_fields == ("amount", "account_id", "merchant_category", "country")


def test_a_schema_without_input_fields_applies_no_such_rule() -> None:
    schema = FieldSchema((FieldRule("event_id", FieldType.IDENTIFIER), FieldRule("timestamp", FieldType.TIMESTAMP)))
    assert schema.input_fields == () and not _verdicts(schema, [{"event_id": "e"}])


def test_the_message_names_one_field_briefly_and_cuts_long_names() -> None:
    schema = FieldSchema((FieldRule("amount", FieldType.NUMBER),))
    (_, message), = _verdicts(schema, [{"event_id": "e", "x" * 60: 1}]).values()
    assert message == f"the model's input field is not present (expected 'amount'; the event has '{'x' * 39}…')"


def test_a_batch_whose_first_input_field_is_always_there_is_untouched() -> None:
    events = [{"event_id": f"e{i}", "amount": float(i)} for i in range(1000)]
    typed, problems, columns = SCHEMA.convert_columns(events)
    assert not problems and all(t is e for t, e in zip(typed, events, strict=True))
    assert list(columns["amount"]) == [float(i) for i in range(1000)]


# ---- every input alike ---------------------------------------------------------------------------------

ROWS: list[dict[str, Any]] = [
    {"event_id": "e1", "account_id": "a1", "timestamp": T0, "amount": 12.5, "merchant_category": "fuel",
     "card_present": True, "channel": "pos"},
    {"event_id": "e2", "account_id": "a1", "timestamp": T0, "amount": None, "merchant_category": None,
     "card_present": None, "channel": None},  # every input null
    {"event_id": "e3", "account_id": "a2", "timestamp": T0, "amount": None, "merchant_category": None,
     "card_present": None, "channel": "web"},  # one input: scored
    {"event_id": "e4", "account_id": "a2", "timestamp": None, "amount": None, "merchant_category": None,
     "card_present": None, "channel": None},
]


def _write_all(folder: Path) -> dict[str, Path]:
    names = list(ROWS[0])
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(names)
    for row in ROWS:
        writer.writerow(["" if row[n] is None else ("true" if row[n] is True else row[n]) for n in names])
    paths = {"csv": folder / "e.csv", "jsonl": folder / "e.jsonl", "parquet": folder / "e.parquet"}
    paths["csv"].write_text(buf.getvalue(), encoding="utf-8")
    paths["jsonl"].write_bytes(b"\n".join(orjson.dumps(r) for r in ROWS) + b"\n")
    pq.write_table(pa.Table.from_pylist(ROWS), paths["parquet"])
    return paths


def test_the_same_verdict_from_csv_json_lines_parquet_and_a_kafka_record(tmp_path: Path) -> None:
    expected = [(1, RejectReason.NO_FEATURES), (3, RejectReason.NO_FEATURES)]
    verdicts = {}
    for kind, path in _write_all(tmp_path).items():
        data = load_events(path, schema=SCHEMA, options=ReaderOptions())
        verdicts[kind] = [(r.index, r.reason, r.message) for r in data.rejected]
        assert [(r.index, r.reason) for r in data.rejected] == expected, kind
        assert data.rows == [0, 2], kind
    kafka = decode_batch([orjson.dumps(r) for r in ROWS], 1 << 16, schema=SCHEMA)
    verdicts["kafka"] = [(r.index, r.reason, r.message) for r in kafka.rejected]
    assert kafka.indices == [0, 2]
    assert verdicts["csv"] == verdicts["jsonl"] == verdicts["parquet"] == verdicts["kafka"]
    assert "'amount', 'merchant_category', 'card_present', ... are null" in verdicts["kafka"][0][2]


def test_the_streamed_readers_columns_give_the_reference_verdicts(tmp_path: Path) -> None:
    from stream_detector.big.columnar import Layout, derive_table
    from stream_detector.big.source import raw_chunks

    for kind, path in _write_all(tmp_path).items():
        if kind == "jsonl":
            continue  # JSON Lines chunks take the reference itself
        (chunk,) = raw_chunks([path], ReaderOptions())
        got = derive_table(chunk, SCHEMA, Layout(["amount", "card_present"], ["merchant_category", "channel"],
                                                 None, ["timestamp"]), id_column=None, label_column=None,
                           generate_ids=False)
        assert got.rows.tolist() == [0, 2], kind
        assert [(r.index, r.reason) for r in got.rejected] == [(1, RejectReason.NO_FEATURES),
                                                               (3, RejectReason.NO_FEATURES)], kind


# ---- a bundle's input fields ---------------------------------------------------------------------------


def test_a_bundles_input_fields_are_its_features_sources(bundle: Bundle) -> None:
    assert bundle.schema is not None
    sources = [c.name for c in bundle.spec.numeric] + [c.name for c in bundle.spec.categorical]
    assert sorted(bundle.schema.input_fields) == sorted(sources)
    scored = score_events(bundle, [{"event_id": "e1", "amt": 12.5}, {"event_id": "e2", "amount": 12.5}])
    assert scored.rejected == ["no_features", None] and scored.valid.tolist() == [False, True]
    assert (scored.messages[0] or "").startswith(f"none of the model's {len(sources)} input fields is present")


def test_an_entity_bundle_counts_its_keys_not_its_computed_fields() -> None:
    from stream_detector.entity import enrich_history
    from stream_detector.simulate import HandbookSimulator

    spec = EntitySpec(keys=("account_id",), windows=(3600,), distinct_fields=("merchant_category",))
    events = HandbookSimulator(seed=3, customers=50, terminals=40).generate(
        1500, now_ms=T0, span_ms=86_400_000).events()
    result = train(enrich_history(spec, events), TrainConfig(epochs=2, seed=0), entity=spec)
    bundle = build_bundle(result)
    assert bundle.schema is not None
    inputs = set(bundle.schema.input_fields)
    assert {"account_id", "amount", "merchant_category"} <= inputs and not inputs & set(spec.all_fields)
    scored = score_events(bundle, [{"event_id": "k", "account_id": "card-00001", "timestamp": T0},
                                   {"event_id": "n", "terminal_id": "term-00001", "timestamp": T0}])
    assert scored.rejected == [None, "no_features"]


@pytest.mark.parametrize("streamed", [False, True])
def test_train_counts_rows_without_an_input_field_alike_in_memory_and_streamed(tmp_path: Path,
                                                                               streamed: bool) -> None:
    from stream_detector.cli import main
    from stream_detector.model.bundle import load_bundle
    from stream_detector.simulate import Simulator

    events, _ = Simulator(seed=4, accounts=60, run_id="nf").batch(1200, 0.0, span_ms=86_400_000)
    inputs = [k for k in events[0] if k not in ("event_id", "account_id", "timestamp")]
    for i in (5, 500, 900):
        events[i] = {k: (None if k in inputs else v) for k, v in events[i].items()}
    path = tmp_path / "history.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(events[0]))
        writer.writeheader()
        writer.writerows(events)
    out = tmp_path / "model"
    args = ["train", "--input", str(path), "--out", str(out), "--epochs", "2"] + (["--streamed"] if streamed else [])
    assert main(args) == 0
    meta = load_bundle(out).metadata
    assert (meta["training_rows_read"], meta["training_rows_rejected"]) == (1200, 3)
    if streamed:
        assert meta["metrics"]["streamed"]["rejected"] == {"no_features": 3}
