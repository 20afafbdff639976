"""Holding a batch that cannot be finished now (retry by flag, back off by signal).

When a batch fails with a *retriable* error (threshold too stale to decide, entity state or
delivery unavailable), the worker keeps the batch, pauses its partitions and keeps polling so the
consumer group does not evict it; the next loop retries the same batch (less any partitions that
were revoked meanwhile: their new owner reprocesses them). Once a retry succeeds, or every held
partition has moved to another worker, the partitions are resumed.

A transaction that failed *at its commit* is different: it may still commit (the coordinator
completes a prepared commit), so retrying the batch could publish its alerts twice. Such a batch
is *in doubt*: ``settle`` restarts the producer (``init_transactions`` returns once the old
transaction is committed or aborted), rewinds to the group's committed offsets and drops the held
copy; the batch is read again only if it did not commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .errors import DeliveryError, StreamDetectorError
from .transport.base import Batch, Publisher, Source

log = logging.getLogger("stream_detector.worker")


class BatchHold:
    """The held batch of one worker, if any, and the pause/resume that goes with it.

    ``backoff_ms`` is how long one held attempt polls (paused) before the next retry;
    ``on_hold(batch, exc)`` is called for every held attempt (metrics, stats, first-time log).
    """

    def __init__(self, source: Source, publisher: Publisher, backoff_ms: int,
                 on_hold: Callable[[Batch, StreamDetectorError, bool], None] = lambda b, e, first: None) -> None:
        self.source = source
        self.publisher = publisher
        self.backoff_ms = backoff_ms
        self.on_hold = on_hold
        self.batch: Batch | None = None
        self.in_doubt = False  # the held batch's transaction failed at commit: it may have committed
        self.attempts = 0

    @property
    def active(self) -> bool:
        return self.batch is not None

    def retry(self) -> Batch:
        """The held batch, less partitions revoked meanwhile (an empty batch when all were)."""
        assert self.batch is not None
        owned = {tp.partition for tp in self.source.assignment() if tp.topic == self.batch.topic}
        return self.batch.only(owned)

    def hold(self, batch: Batch, exc: StreamDetectorError) -> None:
        """Keep ``batch`` for a retry: pause (first time), then poll paused for ``backoff_ms``."""
        first = self.batch is None
        if first:
            self.source.pause_all()
        self.batch = batch
        self.attempts += 1
        self.on_hold(batch, exc, first)
        # keep group membership without consuming; back off before the next attempt
        self.source.poll_while_paused(self.backoff_ms)

    def release(self) -> None:
        """Drop the held batch and resume consuming."""
        log.info("resuming after %d held attempt(s)", self.attempts)
        self.batch = None
        self.in_doubt = False
        self.source.resume_all()

    def settle(self) -> None:
        """Settle an in-doubt transaction (see the module docstring); still held when it fails."""
        held = self.batch
        assert held is not None
        try:
            self.publisher.reset()
            self.publisher.start()
            self.source.rewind_to_committed(held)
        except Exception as exc:  # noqa: BLE001 - any failure here means: still in doubt, keep holding
            self.publisher.reset()
            self.hold(held, DeliveryError(f"settling a transaction that failed at commit: {exc!r}"))
            return
        log.info("settled a transaction that failed at commit; re-reading from the committed offsets")
        self.release()
