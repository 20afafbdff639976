"""Signing of model artifacts, PII redaction in alerts, and no raw values in rejection reasons."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from stream_detector.errors import ConfigError, ModelError
from stream_detector.features import fit_spec
from stream_detector.fieldschema import JSON_TEXT
from stream_detector.model.signing import Signer, Verifier, generate_keypair
from stream_detector.pipeline.decode import decode_batch
from stream_detector.pipeline.publish import build_alerts
from stream_detector.pipeline.threshold import Decision
from stream_detector.store import Threshold
from stream_detector.transport.base import Batch

CARD = "4111111111111111"


def test_signatures_verify_and_refuse_tampering(tmp_path):
    private, public = generate_keypair(tmp_path / "keys")
    assert private.stat().st_mode & 0o777 == 0o600
    signer, verifier = Signer.from_file(private), Verifier.from_file(public)
    sig = signer.sign("v1", "ab" * 32)
    verifier.verify("v1", "ab" * 32, sig)
    with pytest.raises(ModelError, match="does not match"):
        verifier.verify("v1", "cd" * 32, sig)
    with pytest.raises(ModelError, match="does not match"):
        verifier.verify("v2", "ab" * 32, sig)
    with pytest.raises(ModelError, match="not signed"):
        verifier.verify("v1", "ab" * 32, None)
    _, other_public = generate_keypair(tmp_path / "other")
    with pytest.raises(ModelError, match="does not match"):
        Verifier.from_file(other_public).verify("v1", "ab" * 32, sig)
    with pytest.raises(ConfigError):
        Signer.from_file(public)
    with pytest.raises(ConfigError):
        Verifier.from_file(tmp_path / "missing.pem")


def test_alerts_redact_configured_fields():
    event = {"event_id": "e1", "account_id": "a", "amount": 5.0, "card_number": CARD}
    batch = Batch(topic="t", partitions=[0], offsets=[7], keys=[b"a"], values=[orjson.dumps(event)],
                  timestamps=[1], headers=[[]])
    decision = Decision.of(np.array([2.0]), "m", Threshold(1.0, 3, "m"))
    out = build_alerts(batch, [event], [0], decision, np.ones((1, 2)), ["amount", "x"], 2, "alerts",
                       frozenset({"card_number"}))
    alert = orjson.loads(out[0].value)
    assert alert["event"]["card_number"] == "[redacted]" and alert["event"]["amount"] == 5.0
    assert CARD.encode() not in out[0].value
    assert event["card_number"] == CARD, "the caller's event is not modified"


def test_rejection_messages_never_carry_raw_values():
    raws = [
        ('{"event_id": "a", "timestamp": "%s"}' % CARD).encode(),
        ('{"event_id": "b", "nested": {"card": "%s"}}' % CARD).encode(),
        ('{"event_id": "c", "card": "%s", "card": "%s"}' % (CARD, CARD)).encode(),
        ('{"event_id": 4111111111111111, "card": "%s"}' % CARD).encode(),
        ('{"card": "%s" ' % CARD).encode(),
    ]
    decoded = decode_batch(raws, max_bytes=10_000)
    assert len(decoded.rejected) == len(raws)
    for rejected in decoded.rejected:
        assert CARD not in rejected.message, rejected
    # with the model's field schema (the worker's usual path): conversions name types, not values
    from stream_detector.fieldschema import FieldRule, FieldSchema, FieldType
    from stream_detector.pipeline.decode import type_events

    schema = FieldSchema((FieldRule("amount", FieldType.NUMBER), FieldRule("flag", FieldType.BOOLEAN),
                          FieldRule("account_id", FieldType.IDENTIFIER), FieldRule("timestamp", FieldType.TIMESTAMP)),
                         time_range_ms=(1.7e12, 1.7e12))
    spaced = " ".join(CARD[i:i + 4] for i in range(0, 16, 4))
    rows = [{"event_id": "a", "amount": spaced}, {"event_id": "b", "flag": CARD},
            {"event_id": "c", "account_id": float(CARD) * 1e6}, {"event_id": "d", "timestamp": f"x{CARD}"},
            {"event_id": "e", "timestamp": int(CARD)}, {"event_id": "f", "amount": f"1e{CARD}"}]
    rejected: list = []
    type_events(rows, range(len(rows)), schema, JSON_TEXT, rejected)
    assert len(rejected) == len(rows)
    for r in rejected:
        assert CARD not in r.message and spaced not in r.message and "4111" not in r.message, r
    # the event contract and the feedback contract: no values either
    from stream_detector.feedback import parse_label
    from stream_detector.schema import validate_event

    problem = validate_event({"event_id": "x", "schema_version": int(CARD)})
    assert problem is not None and CARD not in problem[1]
    for record in ({"event_id": "x", "label": CARD}, {"event_id": "x", "label": "fraud", "labelled_at": CARD + "x"},
                   {"event_id": "x", "label": "fraud", "labelled_at": CARD[:10]}):
        got = parse_label(record)
        assert isinstance(got, tuple) and CARD[:10] not in got[1], got
    spec = fit_spec([{"event_id": str(i), "amount": float(i)} for i in range(20)])
    _, bad = spec.transform([{"event_id": "x", "amount": f"card {CARD}"}])
    assert bad and all(CARD not in message for _, message in bad.values())


def test_an_alert_on_an_event_with_an_integer_beyond_64_bits_is_written_with_its_digits():
    """orjson refuses such integers; the alert must still go out (never a batch that fails on
    every retry), with the event's integers exact."""
    raw = b'{"event_id":"big-1","account_id":123456789012345678901234567890,"amount":5.0,"memo":-99999999999999999999}'
    decoded = decode_batch([raw], max_bytes=10_000)
    event = decoded.events[0]
    batch = Batch(topic="t", partitions=[0], offsets=[7], keys=[None], values=[raw], timestamps=[1], headers=[[]])
    decision = Decision.of(np.array([2.0]), "m", Threshold(1.0, 3, "m"))
    out = build_alerts(batch, [event], [0], decision, np.ones((1, 2)), ["amount", "x"], 2, "alerts", frozenset())
    import json

    alert = json.loads(out[0].value)
    assert alert["event"]["account_id"] == 123456789012345678901234567890
    assert alert["event"]["memo"] == -99999999999999999999
    assert out[0].key == b"123456789012345678901234567890"
