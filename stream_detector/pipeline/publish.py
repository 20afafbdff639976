"""Step 6's content: the alert and dead-letter records of a batch, built purely (no I/O).

Sending them and committing the batch's offsets (steps 6 and 7) is the transport's job
(``transport/``: at-least-once publishers, ``eos.ExactlyOnce``). An alert's value is the JSON of
``schema.Alert`` (the subscribers' contract), built as a plain dict (``build_alerts``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson

from ..schema import DeadLetterHeaders
from ..transport.base import Batch, OutMessage
from .decode import Rejected
from .keys import fallback_key
from .score import WHY_NOISE, Why
from .threshold import Decision


def build_alerts(
    batch: Batch,
    events: Sequence[dict[str, Any]],
    indices: Sequence[int],
    decision: Decision,
    field_errors: np.ndarray,
    fields: Sequence[str],
    top_n: int,
    topic: str,
    redact: frozenset[str] = frozenset(),
    head_contributions: np.ndarray | None = None,
    why: Why | None = None,
    head_names: Sequence[str] | None = None,
) -> list[OutMessage]:
    """One alert per flagged row of ``decision`` (step 5's result, taken whole: scores, rows,
    threshold and model version of ONE model), its value the JSON of ``schema.Alert``.

    ``decision.rows`` index into ``events``/``indices``/``decision.scores``; ``field_errors``
    (float32, len(rows) × len(fields)) has the per-field errors of the flagged events only.
    ``head_contributions`` (float64, len(rows) × len(head_names), ``Scorer.head_attributions``;
    ``head_names`` default ``fields``) gives each alert's ``head_top_features``: its ``top_n``
    largest positive contributions.
    ``why`` (``Scorer.why`` of the flagged rows): the fields whose typical values clear each
    alert, what each took off its score and the score left: the ``top_features``, each with its
    ``contribution`` and ``score_after``, its ``error`` and ``share`` those of ``why``'s units,
    its ``fields`` the unit's fields with the largest errors (at most ``top_n``).
    Without it (``SD_WHY_CANDIDATES=0``, or a model trained before 2026-12-07) they are the
    ``top_n`` fields with the largest errors, ``contribution`` and ``score_after`` null; so are an
    alert's whose first unit lowered its score by float noise at most (none does). An alert
    the autoencoder did not fire (only the supervised head) has no ``top_features``: its score is
    under the threshold already (trial M read the one field named then as "clears the alert").
    Fields in ``redact`` are replaced by ``"[redacted]"`` in the alert's copy of the event (PII
    such as card numbers).

    The alerts are plain dicts in ``Alert``'s field order, the top features ranked for all rows at
    once: ``Alert(**value).model_dump()`` gives the same dict (``tests/unit/test_publish.py``), and
    pydantic's validation and dump, 20 of the ~27 µs per alert (measured by hand), are skipped —
    a model whose features drift from its training rows flags thousands per 100,000 events.
    """
    rows, scores, threshold = decision.rows, decision.scores, decision.threshold
    if not len(rows):
        return []
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if why is None:
        ranked = np.ascontiguousarray(field_errors)  # each row summed as one row alone would be
        worst = np.argsort(-ranked, axis=1, kind="stable")[:, :top_n].tolist()
        parts: list[list[Any]] = [[None] * len(w) for w in worst]
        afters: list[list[Any]] = parts
        inside: list[list[Any]] = parts
        names = fields
    else:
        ranked = why.errors
        worst = [[j for j in named if j >= 0] for named in why.named.tolist()]
        parts, afters = why.parts.tolist(), why.after.tolist()
        # no unit's typical value lowered the score (the first step names one whatever it took off; trial N:
        # an ordinary merchant_category named for -0.097): the units with the largest errors, as without why
        for k, row in enumerate(rows.tolist()):
            if worst[k] and not parts[k][0] > WHY_NOISE * max(float(scores[row]), 1.0):
                worst[k] = np.argsort(-ranked[k], kind="stable")[:top_n].tolist()
                parts[k] = afters[k] = [None] * len(worst[k])
        inside = unit_fields(why, worst, field_errors, fields, top_n)
        names = why.units
    errors = ranked.tolist()
    totals = [float(t) or 1.0 for t in ranked.sum(axis=1).tolist()]
    probability = decision.probability
    head = float(threshold.head) if probability is not None and threshold.head is not None else None
    header = [("sd.model_version", threshold.model_version.encode())]
    named_head = fields if head_names is None else head_names
    out: list[OutMessage] = []
    for k, row in enumerate(rows.tolist()):
        event = events[row]
        if redact:
            event = {f: ("[redacted]" if f in redact else v) for f, v in event.items()}
        i = indices[row]
        errs, total = errors[k], totals[k]
        account = event.get("account_id")
        fired = decision.fired(row)
        alert = {
            "event_id": event["event_id"],
            "account_id": None if account is None else str(account),
            "score": float(scores[row]),
            "threshold": float(threshold.value),
            "threshold_version": int(threshold.version),
            "model_version": threshold.model_version,
            # why the autoencoder fired: none when only the head did (its score is under the threshold already)
            "top_features": [{"feature": names[j], "share": errs[j] / total, "error": errs[j], "contribution": c,
                              "score_after": a, "fields": f}
                             for j, c, a, f in zip(worst[k], parts[k], afters[k], inside[k], strict=False)]
            if "autoencoder" in fired else [],
            "fired": fired,
            "probability": None if probability is None else float(probability[row]),
            "head_threshold": head,
            "head_top_features": None if head_contributions is None else _head_top(head_contributions[k], named_head,
                                                                                   top_n),
            "event": event,
            "detected_at": now,
            "event_time_ms": batch.timestamps[i],
            "topic": batch.topic,
            "partition": batch.partitions[i],
            "offset": batch.offsets[i],
        }
        out.append(OutMessage(topic, batch.keys[i] or fallback_key(account, redact), json_bytes(alert), header))
    return out


def unit_fields(why: Why, named: list[list[int]], field_errors: np.ndarray, fields: Sequence[str],
                 top_n: int) -> list[list[list[str]]]:
    """Per alert, per unit named: the unit's fields with the largest errors (``field_errors``,
    k × len(fields)), largest first, at most ``top_n`` (``FeatureContribution.fields``)."""
    errors = field_errors.tolist() if any(len(why.fields[j]) > 1 for row in named for j in row) else None
    out = []
    for k, row in enumerate(named):
        listed = []
        for j in row:
            members = why.fields[j]
            if len(members) > 1 and errors is not None:
                own = errors[k]
                members = sorted(members, key=lambda f: -own[f])[:top_n]
            listed.append([fields[f] for f in members])
        out.append(listed)
    return out


def header_text(text: str, limit: int = 1000) -> bytes:
    """``text`` as UTF-8 of at most ``limit`` bytes, cut at a character boundary (a cut inside a
    multi-byte character made a header that is not UTF-8; found while documenting the dead letters)."""
    raw = text.encode("utf-8", "replace")
    return raw if len(raw) <= limit else raw[:limit].decode("utf-8", "ignore").encode("utf-8")


def json_bytes(value: Any) -> bytes:
    """``value`` as compact JSON. orjson refuses integers beyond 64 bits (an event keeps them
    exact: a long numeric id, ``decode.py``); those records are written by the stdlib instead, digits
    intact, rather than failing the batch on every retry (a poison record)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _head_top(contributions: np.ndarray, fields: Sequence[str], top_n: int) -> list[dict[str, Any]]:
    """``Alert.head_top_features`` of one row: its ``top_n`` largest positive contributions."""
    order = np.argsort(-contributions, kind="stable")[:top_n]
    return [{"feature": fields[j], "contribution": float(contributions[j])}
            for j in order.tolist() if contributions[j] > 0]


def build_dead_letters(batch: Batch, rejected: Sequence[Rejected], topic: str) -> list[OutMessage]:
    """Original bytes and key; reason, message and source position as headers.

    A tombstone's null value stays null when it has a key. A tombstone with neither key nor value
    gets an empty value instead (``sd.error.reason`` still says ``tombstone``): Kafka clients may
    refuse a record with neither (kafka-python does), and the batch would be held forever."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()
    out = []
    for rej in rejected:
        i = rej.index
        raw = batch.values[i]
        value = raw if raw is None or type(raw) is bytes else bytes(raw)  # an Unreadable stand-in: b""
        if value is None and batch.keys[i] is None:
            value = b""
        out.append(OutMessage(topic, batch.keys[i], value, [
            (DeadLetterHeaders.REASON, rej.reason.value.encode()),
            (DeadLetterHeaders.MESSAGE, header_text(rej.message)),
            (DeadLetterHeaders.TOPIC, batch.topic.encode()),
            (DeadLetterHeaders.PARTITION, str(batch.partitions[i]).encode()),
            (DeadLetterHeaders.OFFSET, str(batch.offsets[i]).encode()),
            (DeadLetterHeaders.FAILED_AT, now),
        ]))
    return out
