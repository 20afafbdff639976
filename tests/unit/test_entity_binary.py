"""Entity records as version-3 bytes: exact round trip, bounded size, versions 2 (labels as JSON) and 1
(JSON) migrated on read."""

from __future__ import annotations

from typing import Any

import pytest

from stream_detector.entity import Enricher, EntitySpec, InMemoryState, binary, records
from stream_detector.entity.binary import VERSION, decode, encode
from stream_detector.entity.reference import ReferenceEnricher
from stream_detector.entity.state import record_bytes
from tests.legacy_records import labelled, version_1, version_2

SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(3600, 86_400, 604_800, 2_592_000))


def _events(n: int, labels: int) -> list[dict[str, Any]]:
    return [{"event_id": f"e{i}", "account_id": f"a{i % 3}", "terminal_id": f"t{i % 2}", "timestamp": i * 61_001.5,
             "amount": 1.0 + (i * 7919 % 1000) / 3, "merchant_category": f"m{i % labels}",
             "country": "Ünïcødé-" + "x" * (i % 300)} for i in range(n)]


def _store(events: list[dict[str, Any]], enricher_class: Any = Enricher) -> InMemoryState:
    store = InMemoryState()
    enricher = enricher_class(store)
    for start in range(0, len(events), 50):
        part = events[start:start + 50]
        enricher.enrich(SPEC, part, [(start % 4, start + j) for j in range(len(part))])
    return store


def _labelled(record: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    return labelled(record, (str(e[f]) for e in events for f in ("merchant_category", "country")))


def test_records_round_trip_bit_for_bit() -> None:
    store = _store(_events(400, 40))
    assert len(store.records) == 5
    for (_, (key, _)), record in store.records.items():
        assert record["u"] is not None and len(record["a"]) > 1
        raw = encode(SPEC, key, record)
        assert raw[0] == VERSION
        assert decode(SPEC, key, raw) == record  # every float, code (of 300-byte UTF-8 labels too) and offset
    empty: dict[str, Any] = {"c": {"t": None, "w": [[0.0] * 3] * 4, "d": {"merchant_category": {}, "country": {}}}, "a": {}, "u": None}
    assert decode(SPEC, "account_id", encode(SPEC, "account_id", empty)) == empty


def test_binary_records_are_smaller_than_json_and_bounded() -> None:
    events = [{**e, "merchant_category": f"merchant{i % 400:04d}", "country": f"C{i % 97}"}
              for i, e in enumerate(_events(2000, 1))]
    store = _store(events)  # every distinct set full (16 values): the worst case for these label lengths
    for (_, (key, _)), record in store.records.items():
        assert len(record["c"]["d"]["merchant_category"]) == len(record["u"]["s"]["d"]["country"]) == 16
        size = record_bytes(record, SPEC, key)
        assert size < 0.75 * record_bytes(record)
        # header + ≤ 4 offsets, undo header + ≤ 4 first offsets, then per core: counts, t + 4 windows,
        # 16 × (time, code) per field: fixed whatever the labels' length
        assert size <= 4 + 12 * 4 + 2 + 12 * 4 + 2 * (2 + 8 + 96 + 2 * 16 * (8 + 8))


def test_versions_1_and_2_are_read_with_labels_coded_and_the_next_write_is_version_3() -> None:
    events = _events(120, 5)
    reference = _store(events, ReferenceEnricher)
    for (_, (key, _)), record in reference.records.items():
        old_record = _labelled(record, events)
        assert old_record != record
        assert decode(SPEC, key, version_1(old_record)) == record  # version 1: JSON, as the first release kept it
        if key == "account_id":
            old = version_2(SPEC, "account_id", old_record)
            assert decode(SPEC, key, old) == record
            split = binary.parse(SPEC, key, old)  # the enricher's path: re-encoded as version 3
            assert split.applied == record["a"]
            assert split.core == encode(SPEC, key, {"c": record["c"], "a": {}, "u": None})[4:]
    with pytest.raises(ValueError, match="format version"):
        decode(SPEC, "account_id", b"\x07rest")
    with pytest.raises(ValueError, match="trailing"):
        record = next(iter(reference.records.values()))
        decode(SPEC, "account_id", encode(SPEC, "account_id", record) + b"\x00")


@pytest.mark.parametrize("labels", [3, 40])
def test_cores_as_bytes_fill_and_read_the_kernels_arrays_as_the_dicts_do(labels: int) -> None:
    """The enricher's bytes path (``Block.from_buffer`` / ``core_buffer``) against the dict path
    (``Block.of`` / ``cores`` + ``binary.encode``): the same arrays in, the same bytes out, with
    batch labels that do and do not cover the kept ones."""
    import numpy as np

    from stream_detector.entity.block import Block
    from stream_detector.entity.columns import Columns

    store = _store(_events(600, labels))
    batch = _events(650, labels)[600:]  # labels the cores hold that this batch lacks, and new ones
    cols = Columns.of(SPEC, batch)
    for key in SPEC.keys:
        fields = SPEC.distinct_for(key)
        cores = [r["c"] for (_, (k, _)), r in store.records.items() if k == key]
        as_bytes = [encode(SPEC, key, {"c": c, "a": {}, "u": None})[4:] for c in cores]  # head (4 bytes) off
        a = Block.of(SPEC, fields, cores, extra=2, cols=cols)
        gap = b"\x55" * 5  # the cores where they lie in a batch's buffer: not back to back, not from 0
        joined = b"\xaa" * 3 + gap.join(as_bytes)
        starts = np.cumsum([3] + [len(c) + len(gap) for c in as_bytes[:-1]]).astype(np.int64)
        b = Block.from_buffer(SPEC, fields, np.frombuffer(joined, dtype=np.uint8), starts, extra=2, cols=cols)
        np.testing.assert_array_equal(a.codes, b.codes)
        for name in ("t", "w", "n"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        kept = np.arange(a.dt.shape[2])[None, None, :] < a.n[:, :, None]
        np.testing.assert_array_equal(a.dt[kept], b.dt[kept])
        np.testing.assert_array_equal(a.dc[kept], b.dc[kept])
        data, bounds = b.core_buffer(len(cores))
        assert [data[bounds[e]:bounds[e + 1]] for e in range(len(cores))] == as_bytes and bounds[-1] == len(data)
        assert [encode(SPEC, key, {"c": c, "a": {}, "u": None})[4:] for c in a.cores(len(cores))] == as_bytes


def test_a_core_keeping_more_values_than_the_spec_allows_is_refused_not_read_past() -> None:
    """The compiled reading does not check bounds: a core whose count of kept values is beyond the
    spec's slots (a damaged record) raises ``ValueError`` instead of writing past the arrays."""
    import numpy as np

    from stream_detector.entity.block import Block
    from stream_detector.entity.columns import Columns

    key = SPEC.keys[0]
    fields = SPEC.distinct_for(key)
    assert fields, "the test spec keeps distinct values for its first key"
    store = _store(_events(200, 3))
    core = next(r["c"] for (_, (k, _)), r in store.records.items() if k == key)
    good = encode(SPEC, key, {"c": core, "a": {}, "u": None})[4:]
    cols = Columns.of(SPEC, _events(10, 3))
    Block.from_buffer(SPEC, fields, np.frombuffer(good, dtype=np.uint8), np.zeros(1, dtype=np.int64), 0, cols)
    damaged = bytes([SPEC.max_distinct + 2]) + good[1:]
    with pytest.raises(ValueError, match="more than"):
        Block.from_buffer(SPEC, fields, np.frombuffer(damaged, dtype=np.uint8), np.zeros(1, dtype=np.int64), 0, cols)


def test_compiled_parse_finds_each_records_sections_and_refuses_what_is_not_version_3() -> None:
    """``records.parse`` (one numba call for a batch's records) splits every well-formed record
    where ``binary.parse`` does, and marks anything else not ok (versions 1 and 2, truncated, trailing
    bytes, unknown version), which the enricher then hands to the per-entity path."""
    store = _store(_events(400, 40))
    raws = [raw for (_, (key, _)), raw in store.raw.items() if key == "account_id"]
    fields, windows = len(SPEC.distinct_for("account_id")), len(SPEC.windows)
    empty = binary.empty_core(SPEC, "account_id")
    v2 = version_2(SPEC, "account_id", _labelled(decode(SPEC, "account_id", raws[0]), _events(400, 40)))
    bad = [raws[0][:-1], raws[0] + b"\0", b"\x04" + raws[0][1:], v2, b""]
    parsed = records.parse([*raws, None, *bad], empty, fields, windows)
    assert parsed.ok.tolist() == [True] * len(raws) + [True] + [False] * len(bad)
    for i, raw in enumerate(raws):
        split = binary.parse(SPEC, "account_id", raw, fields)
        assert parsed.data[parsed.core_start[i]:parsed.core_end[i]] == split.core
        assert parsed.pairs[i] == len(split.applied)
    absent = len(raws)
    assert parsed.data[parsed.core_start[absent]:parsed.core_end[absent]] == empty  # an absent record: empty core
    for raw in bad[:3] + bad[4:]:
        with pytest.raises(ValueError):
            binary.parse(SPEC, "account_id", raw, fields)
