"""The Kafka key of what the workers publish about an event (alerts, shadow records)."""

from __future__ import annotations

from typing import Any


def fallback_key(account: Any, redact: frozenset[str]) -> bytes | None:
    """The key of an alert (or shadow record) whose input record had none: its ``account_id`` as
    UTF-8 text, or none when there is none or ``account_id`` is redacted (``SD_ALERT_REDACT_FIELDS``:
    every such alert was keyed ``[redacted]`` and went to one partition; found while documenting
    the alerts)."""
    return None if account is None or "account_id" in redact else str(account).encode()
