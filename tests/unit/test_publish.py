"""Step 6's alerts (``pipeline/publish.py``): built as plain dicts, they are exactly what the
subscribers' contract ``schema.Alert`` gives through pydantic, for any batch."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.pipeline.publish import build_alerts, json_bytes
from stream_detector.pipeline.score import Why
from stream_detector.pipeline.threshold import Decision
from stream_detector.schema import Alert, FeatureContribution, HeadContribution
from stream_detector.store import Threshold
from stream_detector.transport.base import Batch

FIELDS = ["amount", "merchant_category", "country", "card_number", "channel", "hour"]


def _through_pydantic(batch: Batch, events: list[dict[str, Any]], indices: list[int], decision: Decision,
                      field_errors: np.ndarray, top_n: int, redact: frozenset[str],
                      head: np.ndarray | None, now: str,
                      why: Why | None = None) -> list[bytes]:
    """The alerts as ``Alert`` models, row by row (the builder before it skipped pydantic)."""
    t = decision.threshold
    out = []
    for k, row in enumerate(decision.rows.tolist()):
        event = {f: ("[redacted]" if f in redact else v) for f, v in events[row].items()}
        errs = field_errors[k]
        total = float(errs.sum()) or 1.0
        worst = np.argsort(-errs, kind="stable")[:top_n].tolist()
        parts: list[float | None] = [None] * len(worst)
        afters: list[float | None] = [None] * len(worst)
        names: list[str] = FIELDS
        inside: list[list[str] | None] = [None] * len(worst)
        if why is not None:  # Scorer.why's units (-1 past the last), what each took off the score, the score left
            worst = [j for j in why.named[k].tolist() if j >= 0]
            parts = [float(c) for c in why.parts[k].tolist()[:len(worst)]]
            afters = [float(a) for a in why.after[k].tolist()[:len(worst)]]
            errs = why.errors[k]
            total = float(errs.sum()) or 1.0
            names = why.units
            # a unit's fields, largest error first (ties in the model's order), at most top_n
            inside = [[FIELDS[f] for f in sorted(why.fields[j], key=lambda f: -float(field_errors[k][f]))][:top_n]
                      for j in worst]
        heads = None
        if head is not None:
            order = np.argsort(-head[k], kind="stable")[:top_n]
            heads = [HeadContribution(feature=FIELDS[j], contribution=float(head[k][j]))
                     for j in order.tolist() if head[k][j] > 0]
        i = indices[row]
        account = event.get("account_id")
        alert = Alert(
            event_id=event["event_id"], account_id=None if account is None else str(account),
            score=float(decision.scores[row]), threshold=t.value, threshold_version=t.version,
            model_version=t.model_version,
            top_features=[FeatureContribution(feature=names[j], share=float(errs[j]) / total, error=float(errs[j]),
                                              contribution=c, score_after=a, fields=f)
                          for j, c, a, f in zip(worst, parts, afters, inside, strict=True)]
            if "autoencoder" in decision.fired(row) else [],  # only the head fired: nothing of the autoencoder's
            fired=decision.fired(row),
            probability=None if decision.probability is None else float(decision.probability[row]),
            head_threshold=t.head if decision.probability is not None else None, head_top_features=heads,
            event=event, detected_at=now, event_time_ms=batch.timestamps[i], topic=batch.topic,
            partition=batch.partitions[i], offset=batch.offsets[i])
        out.append(json_bytes(alert.model_dump()))
    return out


scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), top_n=st.integers(1, 8),
       with_head=st.booleans(), redact=st.frozensets(st.sampled_from([*FIELDS, "account_id"]), max_size=2),
       account=st.one_of(st.none(), st.integers(0, 99), st.text(min_size=1, max_size=6)),
       extra=scalars, zero_row=st.booleans(), with_why=st.booleans())
def test_alerts_equal_the_alert_schema_through_pydantic(n: int, seed: int, top_n: int, with_head: bool,
                                                        redact: frozenset[str], account: Any, extra: Any,
                                                        zero_row: bool, with_why: bool) -> None:
    rng = np.random.default_rng(seed)
    events: list[dict[str, Any]] = []
    for r in range(n):
        event: dict[str, Any] = {"event_id": f"e{r}", "amount": float(rng.gamma(2.0, 20.0)),
                                 "card_number": "4111111111111111", "extra": extra}
        if account is not None:
            event["account_id"] = account
        events.append(event)
    indices = sorted(rng.choice(np.arange(3 * n), size=n, replace=False).tolist())
    scores = rng.exponential(1.0, n)
    probability = rng.random(n) if with_head else None
    threshold = Threshold(float(rng.exponential(1.0)), int(rng.integers(1, 99)), "m-1",
                          float(rng.random()) if with_head else None)
    decision = Decision.of(scores, "m-1", threshold, probability)
    flagged = len(decision.rows)
    field_errors = rng.exponential(1.0, (flagged, len(FIELDS))).astype(np.float32)
    field_errors[rng.random(field_errors.shape) < 0.2] = 0.0  # ties: the stable ranking keeps field order
    if zero_row and flagged:
        field_errors[0] = 0.0  # no error at all: shares over a total of 1
    head = rng.normal(0.0, 1.0, (flagged, len(FIELDS))) if with_head else None
    why = None
    if with_why:  # at least one unit named, distinct, then -1 / NaN; the last three fields are one unit
        units = [*FIELDS[:-3], "grouped__history"]
        members = [[j] for j in range(len(FIELDS) - 3)] + [list(range(len(FIELDS) - 3, len(FIELDS)))]
        named = np.full((flagged, top_n), -1, dtype=np.int64)
        parts = np.full((flagged, top_n), np.nan)
        for k in range(flagged):
            count = int(rng.integers(1, min(top_n, len(units)) + 1))
            named[k, :count] = rng.permutation(len(units))[:count]
            parts[k, :count] = np.sort(rng.exponential(1.0, count))[::-1]
        after = decision.scores[decision.rows][:, None] - np.cumsum(np.nan_to_num(parts), axis=1)
        after[np.isnan(parts)] = np.nan
        why = Why(named, parts, after, units, rng.exponential(1.0, (flagged, len(units))), members)
    size = 3 * n
    batch = Batch(topic="tx", partitions=[int(p) for p in rng.integers(0, 4, size)], offsets=list(range(100, 100 + size)),
                  keys=[None if r % 3 == 0 else f"k{r}".encode() for r in range(size)],
                  values=[b"{}"] * size, timestamps=[1_700_000_000_000 + r for r in range(size)], headers=[[]] * size)

    before = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    got = build_alerts(batch, events, indices, decision, field_errors, FIELDS, top_n, "alerts", redact, head, why)
    assert len(got) == flagged
    if not got:
        return
    now = json.loads(got[0].value)["detected_at"]
    assert now >= before
    want = _through_pydantic(batch, events, indices, decision, field_errors, top_n, redact, head, now, why)
    assert [m.value for m in got] == want
    for m, row in zip(got, decision.rows.tolist(), strict=True):
        alert = json.loads(m.value)  # the stdlib: an event's integer past 64 bits stays exact
        assert Alert(**alert).model_dump() == alert  # the contract's own reading of it
        # trial M: an alert only the head fired named one field, "cleared" by a score under the threshold already
        assert (alert["top_features"] == []) == ("autoencoder" not in alert["fired"])
        assert m.topic == "alerts" and m.headers == [("sd.model_version", b"m-1")]
        i = indices[row]
        # a keyless record's alert is keyed by its account, unless that is redacted (then no key: every such
        # alert keyed "[redacted]" went to one partition)
        assert m.key == (batch.keys[i] or (None if account is None or "account_id" in redact else str(account).encode()))


def test_a_dead_letter_message_is_cut_at_a_character_boundary() -> None:
    """``sd.error.message`` is at most 1000 bytes of UTF-8; a cut inside a multi-byte character made
    a header that is not UTF-8 (found while documenting the dead letters)."""
    from stream_detector.pipeline.publish import header_text

    cut = header_text("é" * 600)  # 1200 bytes: the 1000th byte is the first half of a character
    assert len(cut) == 1000 and cut.decode("utf-8") == "é" * 500
    odd = header_text("a" + "é" * 600)
    assert len(odd) == 999 and odd.decode("utf-8") == "a" + "é" * 499
    assert header_text("short") == b"short"


def test_shadow_records_hide_what_the_alerts_hide() -> None:
    """``SD_ALERT_REDACT_FIELDS`` reaches the shadow topic: a redacted ``event_id`` is
    ``"[redacted]"`` there too, and a keyless record is not keyed by a redacted account."""
    from stream_detector.pipeline.shadow import ModelVerdicts, build_shadow_records

    batch = Batch(topic="tx", partitions=[0, 0], offsets=[5, 6], keys=[None, b"k6"], values=[b"{}"] * 2,
                  timestamps=[1, 2], headers=[[], []])
    verdicts = ModelVerdicts.of("m-1", np.array([2.0, 3.0]), None, 1.0, None)
    events = [{"event_id": "e5", "account_id": "acct-5"}, {"event_id": "e6", "account_id": "acct-6"}]
    plain = build_shadow_records(batch, events, [0, 1], verdicts, verdicts, "shadow")
    assert [json.loads(m.value)["event_id"] for m in plain] == ["e5", "e6"] and plain[0].key == b"acct-5"
    hidden = build_shadow_records(batch, events, [0, 1], verdicts, verdicts, "shadow",
                                  frozenset({"event_id", "account_id"}))
    assert [json.loads(m.value)["event_id"] for m in hidden] == ["[redacted]"] * 2
    assert [m.key for m in hidden] == [None, b"k6"]  # the input record's own key is kept


def test_an_alert_no_unit_lowers_lists_the_largest_errors_without_contributions() -> None:
    """Trial N: an autoencoder alert (score 13.39 over 8.37) named an ordinary merchant_category
    whose typical value took -0.097 off: the first step names a unit whatever it took off. When
    it took off float noise at most, the alert lists the units with the largest errors instead,
    ``contribution`` and ``score_after`` null, as without why."""
    units = ["amount", "merchant_category", "terminal_id__history"]
    members = [[0], [1], [2, 3]]
    fields = ["amount", "merchant_category", "terminal_id__count_1d", "terminal_id__sum_1d"]
    decision = Decision.of(np.array([13.39, 20.0]), "m-1", Threshold(8.37, 1, "m-1"))
    named = np.array([[1, -1], [0, -1]])
    parts = np.array([[-0.097, np.nan], [15.0, np.nan]])
    after = np.array([[13.487, np.nan], [5.0, np.nan]])
    errors = np.array([[1.0, 0.5, 7.0], [9.0, 0.1, 0.2]])
    why = Why(named, parts, after, units, errors, members)
    field_errors = np.array([[1.0, 0.5, 3.0, 4.0], [9.0, 0.1, 0.1, 0.1]], dtype=np.float32)
    batch = Batch(topic="tx", partitions=[0, 0], offsets=[1, 2], keys=[None, None], values=[b"{}"] * 2,
                  timestamps=[1, 2], headers=[[], []])
    got = [json.loads(m.value) for m in build_alerts(batch, [{"event_id": "a"}, {"event_id": "b"}], [0, 1], decision,
                                                      field_errors, fields, 2, "alerts", why=why)]
    flat, cleared = (a["top_features"] for a in got)
    assert [(f["feature"], f["contribution"], f["score_after"]) for f in flat] == [
        ("terminal_id__history", None, None), ("amount", None, None)]
    assert flat[0]["fields"] == ["terminal_id__sum_1d", "terminal_id__count_1d"]
    assert [(f["feature"], f["contribution"], f["score_after"]) for f in cleared] == [("amount", 15.0, 5.0)]
