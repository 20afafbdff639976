"""Steps 2-4 in chunks (``pipeline/compute.py``) give exactly what one unchunked pass gives."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pytest
import torch

from stream_detector.model.bundle import Bundle
from stream_detector.pipeline.compute import ChunkedCompute
from stream_detector.pipeline.decode import Rejected, decode_batch
from stream_detector.pipeline.score import Scorer
from stream_detector.schema import RejectReason
from stream_detector.simulate import Simulator


def _values(n: int) -> list[bytes | None]:
    """Simulated events with every kind of bad record mixed in at known places."""
    events, _ = Simulator(seed=7, accounts=50, run_id="chunks").batch(n, 0.05, span_ms=3_600_000)
    values: list[bytes | None] = [orjson.dumps(e) for e in events]
    values[3] = None  # tombstone
    values[10] = b"{not json"
    values[257] = b'{"event_id": 5}'  # wrong type, on a chunk border
    values[600] = orjson.dumps({**events[600], "amount": "lots"})  # refused by the feature step
    values[601] = b"x" * 70_000  # oversize
    values[n - 1] = orjson.dumps({**events[n - 1], "amount": "many"})  # feature refusal in the last chunk
    return values


def _reference(scorer: Scorer, values: list[bytes | None]) -> tuple[list[Any], list[int], list[Rejected], np.ndarray]:
    """The straightforward single pass: decode + type all, features all, drop refused rows, score all."""
    d = decode_batch(values, 65536, schema=scorer.bundle.schema)
    x, bad = scorer.bundle.spec.transform(d.events)
    rejected = list(d.rejected)
    keep = [i for i in range(len(d.events)) if i not in bad]
    for row, (reason, message) in bad.items():
        rejected.append(Rejected(d.indices[row], reason, message))
    rejected.sort(key=lambda r: r.index)
    return [d.events[i] for i in keep], [d.indices[i] for i in keep], rejected, scorer.errors(x[keep])


@pytest.fixture(scope="module")
def scorer(bundle: Bundle) -> Scorer:
    s = Scorer(bundle)
    s.warm()
    return s


@pytest.mark.parametrize("chunk", [1, 256, 1000, 5000])
def test_chunks_agree_with_one_pass(scorer: Scorer, chunk: int) -> None:
    values = _values(1200)
    events, indices, rejected, per_feature = _reference(scorer, values)
    compute = ChunkedCompute(chunk, torch_threads=1)
    try:
        got = compute.run(scorer, values, 65536)
    finally:
        compute.close()
    assert got.events == events
    assert got.indices == indices
    assert got.rejected == rejected
    assert {r.reason for r in got.rejected} >= {RejectReason.INVALID_JSON, RejectReason.OVERSIZE,
                                                 RejectReason.WRONG_TYPE}
    assert sorted(got.indices + [r.index for r in got.rejected]) == list(range(len(values)))  # each once
    _same_errors(got.per_feature, per_feature)


def _same_errors(got: np.ndarray, want: np.ndarray) -> None:
    """float32 matmuls of other row counts round differently (a 1-row chunk takes another kernel);
    squared differences of near-equal numbers show it in the last digits, nothing more."""
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=5e-3, atol=1e-3)
    np.testing.assert_allclose(got.mean(axis=1), want.mean(axis=1), rtol=1e-3)


def _thread_spy(scorer: Scorer, seen: list[str]) -> Scorer:
    """``scorer``, recording in ``seen`` the name of the thread each scoring call runs on."""
    real = scorer.outputs

    class Spy(Scorer):
        def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            seen.append(threading.current_thread().name)
            return real(x)

    spy = Spy.__new__(Spy)
    spy.__dict__.update(scorer.__dict__)
    return spy


def test_a_batch_of_one_chunk_is_scored_on_the_callers_thread(scorer: Scorer) -> None:
    seen: list[str] = []
    spy = _thread_spy(scorer, seen)
    compute = ChunkedCompute(512, torch_threads=1)
    try:
        compute.run(spy, _values(1200)[:400], 65536)
        assert seen == [threading.current_thread().name]
        seen.clear()
        compute.run(spy, _values(1200), 65536)
        assert len(seen) == 3 and all(name.startswith("scoring") for name in seen)
    finally:
        compute.close()


def test_a_scoring_error_propagates_after_every_chunk_has_finished(scorer: Scorer) -> None:
    calls: list[int] = []
    finished: list[int] = []
    real = scorer.outputs

    class Failing(Scorer):
        def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            calls.append(len(x))
            if len(calls) == 2:
                raise RuntimeError("scoring failed")
            out = real(x)
            finished.append(len(x))
            return out

    failing = Failing.__new__(Failing)
    failing.__dict__.update(scorer.__dict__)
    compute = ChunkedCompute(256, torch_threads=1)
    try:
        with pytest.raises(RuntimeError, match="scoring failed"):
            compute.run(failing, _values(1200), 65536)
        assert len(calls) == 5 and len(finished) == 4  # nothing of this batch still runs after the raise
        assert len(compute.run(scorer, _values(1200), 65536).events) > 0  # and the next batch is scored
    finally:
        compute.close()


def test_enrichment_sees_the_whole_batch_once_and_alerts_keep_the_events_as_received(scorer: Scorer) -> None:
    values = _values(1200)
    calls: list[int] = []

    def enrich(events: list[dict[str, Any]], indices: list[int],
               fields: Mapping[str, Sequence[Any]]) -> tuple[list[str], np.ndarray]:
        calls.append(len(events))  # step 3a's columns replace the field "amount" (tripled) in step 3
        assert fields and all(list(column) == [e.get(name) for e in events] for name, column in fields.items())
        amount = [float(e["amount"]) * 3 if isinstance(e.get("amount"), (int, float)) else np.nan for e in events]
        return ["amount"], np.array(amount, dtype=np.float64).reshape(-1, 1)

    compute = ChunkedCompute(256, torch_threads=1)
    try:
        got = compute.run(scorer, values, 65536, enrich)
    finally:
        compute.close()
    events, indices, rejected, plain = _reference(scorer, values)
    assert calls == [len(events)]  # once, with every decoded event (the two text amounts are refused by the schema)
    assert got.events == events and got.indices == indices and got.rejected == rejected
    tripled = [{**e, "amount": float(e["amount"]) * 3} for e in got.events]
    x, _ = scorer.bundle.spec.transform(tripled)
    _same_errors(got.per_feature, scorer.errors(x))  # the columns are read, not the events' own amounts
    assert not np.allclose(got.per_feature, plain, rtol=5e-3, atol=1e-3)  # (which differ from the plain ones)


def test_offline_scoring_and_the_worker_share_one_core(scorer: Scorer) -> None:
    """``offline.score_events`` (file rows, the console's explain) and the worker's chunked steps
    2-4 give every row the same score, rejection reason and per-feature errors."""
    from stream_detector.offline import score_events

    values = _values(1200)
    compute = ChunkedCompute(256, torch_threads=1)
    try:
        live = compute.run(scorer, values, 65536)
    finally:
        compute.close()
    parsed: list[Any] = []
    for v in values:  # what a file reader hands over: parsed objects (None / unparsable → a non-object)
        try:
            parsed.append(orjson.loads(v) if v is not None and len(v) <= 65536 else v)
        except orjson.JSONDecodeError:
            parsed.append(v)
    offline = score_events(scorer.bundle, parsed, scorer=scorer, batch_size=256, keep_errors=True)
    assert offline.per_feature is not None
    assert np.flatnonzero(offline.valid).tolist() == live.indices
    _same_errors(offline.per_feature[live.indices], live.per_feature)
    by_index = {r.index: r.reason.value for r in live.rejected}
    feature_refusals = {i for i, r in by_index.items() if r == RejectReason.WRONG_TYPE.value}
    assert {i: offline.rejected[i] for i in feature_refusals} == {i: by_index[i] for i in feature_refusals}


def test_the_step_timer_sees_every_step_of_a_chunked_batch(scorer: Scorer) -> None:
    """The worker's step-time hook (Prometheus, benchmarks): decode and features per chunk on the
    caller's thread, scoring on the scoring thread."""
    seen: dict[str, list[float]] = {}
    lock = threading.Lock()

    def timer(step: str, seconds: float) -> None:
        with lock:
            seen.setdefault(step, []).append(seconds)

    compute = ChunkedCompute(256, torch_threads=1, timer=timer)
    try:
        compute.run(scorer, _values(1200), 65536)
    finally:
        compute.close()
    chunks = -(-1200 // 256)
    assert {k: len(v) for k, v in seen.items()} == {"decode": chunks, "features": chunks, "scoring thread": chunks}
    assert all(s >= 0 for v in seen.values() for s in v)


def _tripled(events: list[dict[str, Any]]) -> np.ndarray:
    amount = [float(e["amount"]) * 3 if isinstance(e.get("amount"), (int, float)) else np.nan for e in events]
    return np.array(amount, dtype=np.float64).reshape(-1, 1)


@pytest.mark.parametrize("changed", ["none", "some", "all"])
def test_a_deferred_state_write_runs_once_after_every_chunk_is_submitted_and_its_changes_are_scored(
        scorer: Scorer, changed: str) -> None:
    """The worker's step 3a hands back ``Deferred``: its state is written while the chunks are
    scored. Rows the write changed (another writer's update, recomputed) are scored from the new
    values; the result equals one pass over the final values, row for row."""
    from stream_detector.pipeline.compute import Deferred

    values = _values(1200)
    log: list[str] = []  # on the caller's thread: each chunk featurised (then submitted for scoring), the write
    final: dict[str, np.ndarray] = {}

    def enrich(events: list[dict[str, Any]], indices: list[int], fields: Mapping[str, Sequence[Any]]) -> Deferred:
        first = _tripled(events)
        rows = {"none": np.zeros(0, dtype=np.int64), "some": np.array([5, 300, 301, len(events) - 1]),
                "all": np.arange(len(events))}[changed]
        after = first.copy()
        after[rows] *= 10  # what the write recomputed for the rows another writer changed

        def write() -> tuple[np.ndarray, np.ndarray]:
            log.append("write")
            final["matrix"] = after
            return rows, after
        return Deferred((["amount"], first), write)

    def timer(step: str, _seconds: float) -> None:
        if step == "features":
            log.append(step)

    compute = ChunkedCompute(256, torch_threads=1, timer=timer)
    try:
        got = compute.run(scorer, values, 65536, enrich)
    finally:
        compute.close()
    chunks = -(-len(final["matrix"]) // 256)  # over the decoded events: step 3a's rows
    redone = {"none": 0, "some": 3, "all": chunks}[changed]  # rows 300 and 301 share a chunk
    assert log == ["features"] * chunks + ["write"] + ["features"] * redone  # the write after every submission
    events, indices, rejected, _plain = _reference(scorer, values)
    assert got.events == events and got.indices == indices and got.rejected == rejected
    rows = [{**e, "amount": float(v)} for e, v in zip(got.events, final["matrix"][:, 0], strict=True)]
    x, _ = scorer.bundle.spec.transform(rows)
    _same_errors(got.per_feature, scorer.errors(x))


def test_a_deferred_write_that_fails_leaves_no_scoring_running_and_raises(scorer: Scorer) -> None:
    from stream_detector.errors import EntityStateUnavailable
    from stream_detector.pipeline.compute import Deferred

    def enrich(events: list[dict[str, Any]], indices: list[int], fields: Mapping[str, Sequence[Any]]) -> Deferred:
        def write() -> tuple[np.ndarray, np.ndarray]:
            raise EntityStateUnavailable("entity state write failed: connection refused")
        return Deferred((["amount"], _tripled(events)), write)

    compute = ChunkedCompute(256, torch_threads=1)
    try:
        with pytest.raises(EntityStateUnavailable):
            compute.run(scorer, _values(1200), 65536, enrich)
        assert compute._pool.submit(lambda: 1).result() == 1  # the pool is idle and still usable
    finally:
        compute.close()


def test_a_one_chunk_batch_overlaps_its_write_and_a_challenger_writes_before_scoring(scorer: Scorer) -> None:
    """A batch of one chunk is scored on the scoring thread while its state is written (at 20k
    events/s batches are about one chunk); a challenger in shadow featurises from the same values,
    so the write comes first and nothing is featurised twice."""
    from stream_detector.pipeline.compute import Deferred

    log: list[str] = []

    def enrich(events: list[dict[str, Any]], indices: list[int], fields: Mapping[str, Sequence[Any]]) -> Deferred:
        def write() -> tuple[np.ndarray, np.ndarray]:
            log.append("write")
            return np.zeros(0, dtype=np.int64), _tripled(events)
        return Deferred((["amount"], _tripled(events)), write)

    threads: list[str] = []
    spy = _thread_spy(scorer, threads)
    compute = ChunkedCompute(256, torch_threads=1, timer=lambda step, _s: log.append(step))
    try:
        compute.run(spy, _values(1200)[:200], 65536, enrich)
        assert log.index("features") < log.index("write")
        assert len(threads) == 1 and threads[0].startswith("scoring")  # not inline: beside the write
        log.clear()
        got = compute.run(scorer, _values(1200), 65536, enrich, shadow=scorer)
        assert log.index("write") < log.index("features")
        assert got.shadow_scores is not None and len(got.shadow_scores) == len(got.events)
    finally:
        compute.close()


def test_an_event_scored_alone_gets_the_bits_it_gets_in_a_batch(bundle: Bundle) -> None:
    """One event, one score (``score.MIN_ROWS``): torch scores a 1- or 2-row matrix with another
    kernel (matrix-vector), whose float32 sums fall a few units apart from a batch's. A new-user
    trial of two stages, whose alignment releases live events one or two at a time, saw alert
    scores 1e-6 off offline ``score``'s. On an AMD EPYC with two intra-op threads, calls of 9, 10,
    11, 15, … rows gave their last rows other bits (row blocks split otherwise between threads):
    calls are padded to a multiple of 8. Every call size here gives one call's bits, with one
    intra-op thread (the worker's default) and two."""
    scorer = Scorer(bundle)
    events, _ = Simulator(seed=8, accounts=50, run_id="alone").batch(200, 0.05, span_ms=3_600_000)
    x, _ = bundle.spec.transform(events)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            whole = scorer.errors(x)
            for size in (*range(1, 24), 30, 33, 43, 64, 66, 199):
                parts = np.concatenate([scorer.errors(x[i:i + size]) for i in range(0, len(x), size)])
                assert parts.shape == whole.shape and parts.tobytes() == whole.tobytes(), (count, size)
    finally:
        torch.set_num_threads(threads)


def test_an_entity_batch_read_flat_enriches_and_scores_as_one_read_the_usual_way() -> None:
    """Step 3a reads the decode step's columns (``enrich_reads_columns``), so the worker reads an
    entity batch flat (``decode_batch(lazy=True)``): the same entity features, scores, events and
    rejections as the usual decode, in batches that carry state from one to the next — the
    first with an odd record (taken the usual way, and the next after it), the last read flat."""
    from stream_detector.entity import Enricher, EntitySpec, InMemoryState
    from stream_detector.pipeline import decode
    from stream_detector.pipeline.compute import Deferred, enrich_reads_columns
    from stream_detector.pipeline.decode import LazyEvents
    from tests.helpers import entity_bundle, raw_card_events

    spec = EntitySpec(keys=("account_id", "merchant_category"), windows=(3600, 86_400), max_distinct=4)
    events = raw_card_events(900, 5, 40, "flat")
    bundle = entity_bundle(spec, events[:400], epochs=2)
    assert enrich_reads_columns(spec, bundle.schema)
    assert not enrich_reads_columns(EntitySpec(keys=("account_id", "terminal_id")), bundle.schema)  # not read out
    values: list[bytes | None] = [orjson.dumps(e) for e in events[400:]]
    values[130] = b'{"event_id": "odd", "amount": 1'  # not JSON: a dead letter, and this batch the usual way
    scorer = Scorer(bundle)
    runs = []
    for flat in (False, True):
        decode._READERS.clear()  # no back-off left from an earlier test
        enricher = Enricher(InMemoryState())
        kinds: list[type] = []

        def enrich(evs: Sequence[dict[str, Any]], indices: list[int], fields: Mapping[str, Sequence[Any]],
                   enricher: Enricher = enricher, kinds: list[type] = kinds) -> Deferred:
            kinds.append(type(evs))
            pending = enricher.begin(spec, evs, [(0, i) for i in indices], fields)
            return Deferred((spec.output_fields, pending.values), lambda: (pending.write(), pending.values))

        compute = ChunkedCompute(64, torch_threads=1)
        try:
            done = [compute.run(scorer, values[a:a + 170], 65536, enrich, flat_enrich=flat) for a in (0, 170, 340)]
        finally:
            compute.close()
        runs.append((done, kinds))
    (eager, eager_kinds), (flat, flat_kinds) = runs
    # the odd record's batch the usual way, then (the reader's back-off after a miss) the next one too
    assert eager_kinds == [list, list, list] and flat_kinds == [list, list, LazyEvents]
    for a, b in zip(eager, flat, strict=True):
        assert a.per_feature.tobytes() == b.per_feature.tobytes()
        assert a.indices == b.indices and list(a.events) == list(b.events)
        assert [(r.index, r.reason) for r in a.rejected] == [(r.index, r.reason) for r in b.rejected]
    assert [r.index for r in flat[0].rejected] == [130]
