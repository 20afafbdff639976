"""Exactly-once delivery (steps 6 and 7 in one Kafka transaction), by composition.

``ExactlyOnce`` is the worker's ``Publisher`` for ``SD_DELIVERY=exactly_once`` on every transport:
it drives a ``TransactionalClient`` (an adapter's transactional producer: ``begin``,
``send_offsets``, ``commit``, ``abort`` next to a sink's ``publish``) through one protocol —
begin, send the alerts and dead letters, add the batch's offsets with the group membership of
its poll (KIP-447: a zombie is fenced by the broker), commit. A failure before the commit aborts
the transaction, and so does ``abandon``.

In doubt: a ``DeliveryError`` from ``commit`` does not say the transaction did not commit (a
commit that timed out after the coordinator prepared it still completes). The worker then calls
``reset`` and ``start`` — a fresh producer with the same transactional id, whose
``init_transactions`` returns once the old transaction is settled — and re-reads from the
group's committed offsets. ``watchdog`` bounds a client call that has no timeout of its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from .base import DeliveryError, Membership, Offsets, OutMessage, Sink, Source

log = logging.getLogger("stream_detector.eos")
T = TypeVar("T")


class TransactionalClient(Sink, Protocol):
    """An adapter's transactional producer. ``start`` also initialises transactions (settling what
    a predecessor with the same ``transactional_id`` left open); ``publish`` sends inside the
    open transaction. Each call raises ``DeliveryError`` on failure; after a fatal client error
    the adapter may drop its producer itself (``abort`` is then a no-op)."""

    @property
    def transactional_id(self) -> str: ...
    def begin(self) -> None: ...
    def send_offsets(self, source: Source, offsets: Offsets, group: Membership | None) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class ExactlyOnce:
    """Alerts, dead letters and the batch's offsets in one transaction per batch.

    ``publish`` begins the transaction and sends (``DeliveryError``: aborted); ``commit`` adds the
    offsets with ``group`` (the poll's membership; ``None``: the source's current one) and
    commits (``DeliveryError``: aborted, or in doubt when the commit call itself failed).
    """

    transactional = True

    def __init__(self, client: TransactionalClient) -> None:
        self.client = client
        self._open = False

    @property
    def transactional_id(self) -> str:
        return self.client.transactional_id

    def start(self) -> None:
        self._open = False
        self.client.start()

    def publish(self, messages: Sequence[OutMessage]) -> None:
        self.client.begin()
        self._open = True
        if messages:
            try:
                self.client.publish(messages)
            except DeliveryError:
                self._abort()
                raise

    def commit(self, source: Source, offsets: Offsets, group: Membership | None = None) -> bool:
        """Step 7 inside the transaction; ``group`` is the membership snapshot of the poll."""
        try:
            self.client.send_offsets(source, offsets, group)
            self.client.commit()
            self._open = False
            return True
        except DeliveryError:
            self._abort()
            raise

    def abandon(self) -> None:
        """Give up the current batch: its transaction (alerts included) is aborted."""
        self._abort()

    def _abort(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self.client.abort()
        except DeliveryError as exc:
            log.warning("abort failed (%s); the producer will be replaced", exc)

    def reset(self) -> None:
        """Drop the producer after a failure; a fresh one fences and settles the old transaction."""
        self._open = False
        self.client.reset()

    def close(self) -> None:
        self._abort()
        self.client.close()


def watchdog(call: Callable[[], T], what: str, timeout_s: float,
             translate: tuple[type[BaseException], ...] = ()) -> T:
    """``call()`` on a daemon thread, waited for up to ``timeout_s``; ``DeliveryError`` after that,
    or when it raises one of ``translate`` (the client's own errors; others propagate as they are).

    A call that never returns keeps only its own daemon thread: a ThreadPoolExecutor's threads are
    joined at interpreter exit, so one stuck kafka-python call made the worker hang on shutdown
    (seen in the failover tier after brokers were killed)."""
    outcome: list[tuple[bool, object]] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=f"txn-watchdog-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise DeliveryError(f"{what} did not finish within {timeout_s}s")
    ok, value = outcome[0]
    if ok:
        return value  # type: ignore[return-value]  # call()'s own result
    assert isinstance(value, BaseException)
    if translate and isinstance(value, translate):
        raise DeliveryError(f"{what} failed: {value!r}") from value
    raise value
