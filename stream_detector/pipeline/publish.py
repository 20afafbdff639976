"""Step 6, publish: alerts and dead-letter records out, and wait until Kafka acknowledged each.

``kafka-python``'s ``flush()`` does not report failed records, so every send future is checked;
any failure raises ``DeliveryError`` and the worker does not commit (the batch is redelivered).
Alerts are built only for flagged rows (a few per thousand), so pydantic here costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import orjson
from kafka import KafkaProducer

from ..errors import DeliveryError
from ..schema import Alert, DeadLetterHeaders, FeatureContribution
from ..settings import Settings
from ..store import Threshold
from .decode import Rejected
from .source import Batch


@dataclass(frozen=True, slots=True)
class OutMessage:
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    acks: int | str = "all" if settings.producer_acks == "all" else int(settings.producer_acks)
    config: dict[str, Any] = dict(
        bootstrap_servers=settings.bootstrap_servers,
        acks=acks,
        enable_idempotence=acks == "all",
        linger_ms=2,
        batch_size=256 * 1024,
        max_request_size=16 * 1024 * 1024,
        retries=2_147_483_647,
        delivery_timeout_ms=int(settings.delivery_timeout_s * 1000),
        request_timeout_ms=min(30_000, int(settings.delivery_timeout_s * 500)),
        client_id=f"stream-detector-{settings.group_id}-out",
    )
    config.update(overrides)
    return config


def build_alerts(
    batch: Batch,
    events: Sequence[dict[str, Any]],
    indices: Sequence[int],
    rows: np.ndarray,
    scores: np.ndarray,
    field_errors: np.ndarray,
    fields: Sequence[str],
    threshold: Threshold,
    top_n: int,
    topic: str,
) -> list[OutMessage]:
    """One alert per flagged row.

    ``rows`` index into ``events``/``indices``/``scores``; ``field_errors`` has one row per entry
    of ``rows`` (per-field errors of the flagged events only).
    """
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    out: list[OutMessage] = []
    for k, row in enumerate(rows.tolist()):
        event = events[row]
        i = indices[row]
        errs = field_errors[k]
        total = float(errs.sum()) or 1.0
        worst = np.argsort(-errs, kind="stable")[:top_n]
        account = event.get("account_id")
        alert = Alert(
            event_id=event["event_id"],
            account_id=None if account is None else str(account),
            score=float(scores[row]),
            threshold=threshold.value,
            threshold_version=threshold.version,
            model_version=threshold.model_version,
            top_features=[
                FeatureContribution(feature=fields[j], share=float(errs[j]) / total, error=float(errs[j]))
                for j in worst.tolist()
            ],
            event=event,
            detected_at=now,
            event_time_ms=batch.timestamps[i],
            topic=batch.topic,
            partition=batch.partitions[i],
            offset=batch.offsets[i],
        )
        key = batch.keys[i] or (None if account is None else str(account).encode())
        out.append(OutMessage(topic, key, orjson.dumps(alert.model_dump()),
                              [("sd.model_version", threshold.model_version.encode())]))
    return out


def build_dead_letters(batch: Batch, rejected: Sequence[Rejected], topic: str) -> list[OutMessage]:
    """Original bytes as the value; the reason, message and source position as headers."""
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z").encode()
    out = []
    for rej in rejected:
        i = rej.index
        out.append(OutMessage(topic, batch.keys[i], batch.values[i] or b"", [
            (DeadLetterHeaders.REASON, rej.reason.value.encode()),
            (DeadLetterHeaders.MESSAGE, rej.message.encode("utf-8", "replace")[:1000]),
            (DeadLetterHeaders.TOPIC, batch.topic.encode()),
            (DeadLetterHeaders.PARTITION, str(batch.partitions[i]).encode()),
            (DeadLetterHeaders.OFFSET, str(batch.offsets[i]).encode()),
            (DeadLetterHeaders.FAILED_AT, now),
        ]))
    return out


class Publisher:
    """Sends and confirms. ``deliver`` returns only when every message is acknowledged."""

    def __init__(self, settings: Settings, **overrides: Any) -> None:
        self.settings = settings
        self.overrides = overrides
        self.producer: KafkaProducer | None = None

    def start(self) -> None:
        self.producer = KafkaProducer(**producer_config(self.settings, **self.overrides))

    def deliver(self, messages: Sequence[OutMessage]) -> None:
        if not messages:
            return
        if self.producer is None:
            raise RuntimeError("publisher not started")
        try:
            futures = [self.producer.send(m.topic, value=m.value, key=m.key, headers=m.headers) for m in messages]
            self.producer.flush(timeout=self.settings.delivery_timeout_s)
        except Exception as exc:  # kafka-python raises a zoo of types here; all mean "not delivered"
            raise DeliveryError(f"send failed: {exc!r}") from exc
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "timed out"
            raise DeliveryError(f"{len(failed)} of {len(futures)} records not acknowledged: {first!r}")

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=self.settings.delivery_timeout_s)
            self.producer = None
