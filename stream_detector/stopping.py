"""Ctrl-C (SIGINT) and SIGTERM for a command that reads Kafka with kafka-python.

kafka-python 3 runs an I/O thread, and the main thread's waits on it are not written to be
interrupted (its task loop catches ``BaseException``): a ``KeyboardInterrupt`` raised inside one of
its calls can leave the client waiting for ever (a ``tail --follow`` test hung once, stop 62). So,
inside ``Stopping.installed()``, a signal only sets a flag, which the command asks between two
calls of the client (``check``) and raises there as ``KeyboardInterrupt``, so ``finally`` clauses (a
spooled history, a consumer to close) run as on Ctrl-C. Where no client call runs (training: only
torch and numpy), ``immediate()`` lets the signal raise at once, as a cron job's timeout expects. A
second signal raises at once anywhere, for a user who will not wait."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Stopping:
    """The flag a signal sets; see the module's docstring. ``event`` is set by the first signal."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._immediate = 0

    def _handler(self, _signum: int, _frame: Any) -> None:
        if self.event.is_set() or self._immediate:
            self.event.set()
            raise KeyboardInterrupt
        self.event.set()

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` when a signal came: call between two Kafka client calls."""
        if self.event.is_set():
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def immediate(self) -> Iterator[None]:
        """Inside the block (no Kafka client call in it), a signal raises at once; one that came
        before raises on entry."""
        self.check()
        self._immediate += 1
        try:
            yield
        finally:
            self._immediate -= 1

    @classmethod
    @contextlib.contextmanager
    def installed(cls) -> Iterator[Stopping]:
        """A ``Stopping`` whose handler takes SIGINT and SIGTERM inside the block (main thread only)."""
        stopping = cls()
        previous = {sig: signal.signal(sig, stopping._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield stopping
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def check(stopping: Stopping | None) -> None:
    """``stopping.check()``, or nothing without one."""
    if stopping is not None:
        stopping.check()
