"""The worker slot of a transactional worker on this host: its ``SD_WORKER_ID``, held by a lock file.

With ``SD_DELIVERY=exactly_once`` a worker's transactional id is ``{SD_GROUP_ID}-{SD_WORKER_ID}``,
stable per slot, so that a restarted worker fences its predecessor and aborts the transaction it
left open at once (README, *Delivery guarantees*). ``SD_WORKER_ID`` defaults to the host name, which
is one slot per pod in Kubernetes — but several ``worker`` processes on one machine (the README's
hand session) then share one transactional id and fence each other over and over (a trial,
2026-12-06: `ProducerFencedError` eight times in 20 s per worker, each batch held 1-2 s; nothing
lost, nothing said about the cause).

``claim`` takes the slot with an exclusive ``flock`` on a file named after the transactional id
(in ``SD_SLOT_DIR``, by default ``<temp dir>/stream-detector-slots``). The operating system releases
the lock when the process ends, however it ends, so a worker restarted after a crash takes its
slot back (and with it the transactional id that aborts what its predecessor left open):

* ``SD_WORKER_ID`` left at its default: the first free slot of ``<host>``, ``<host>-2``,
  ``<host>-3``, … — stable across restarts as a StatefulSet's ordinals are;
* ``SD_WORKER_ID`` set and held by a running process: ``ConfigError`` (exit 2) naming it — two
  processes given one id are a mistake to say, not to work around.

Only one host's processes are seen: two hosts given one ``SD_WORKER_ID`` still fence each other,
as Kafka intends for a zombie.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from pathlib import Path

from .errors import ConfigError

log = logging.getLogger("stream_detector.worker")
MAX_SLOTS = 256  # default ids tried on one host before giving up


class Slot:
    """A claimed worker slot: ``worker_id``, held until ``release`` (or the process ends)."""

    def __init__(self, worker_id: str, fd: int, path: Path) -> None:
        self.worker_id, self._fd, self.path = worker_id, fd, path

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


def slot_dir(folder: str = "") -> Path:
    """Where the slots' lock files live: ``folder`` (``SD_SLOT_DIR``), or ``<temp dir>/stream-detector-slots``."""
    return Path(folder) if folder else Path(tempfile.gettempdir()) / "stream-detector-slots"


def _try(folder: Path, group: str, worker_id: str) -> Slot | str:
    """The slot ``worker_id`` of ``group`` locked, or the holder's pid (text) when a running process
    holds it. The file is named by a digest of the transactional id's parts (ids may hold any
    character), not of the broker's address: ``127.0.0.1:9092`` and ``localhost:9092`` are one
    cluster, and a trial's two workers so configured fenced each other; two clusters with one
    group and id on one host merely take two slots."""
    digest = hashlib.sha256(f"{group}\n{worker_id}".encode()).hexdigest()[:24]
    path = folder / f"{digest}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        os.close(fd)
        return holder or "?"
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Slot(worker_id, fd, path)


def claim(group: str, worker_id: str, explicit: bool, folder: str = "") -> Slot:
    """Take a worker slot on this host (module docstring). ``explicit``: ``worker_id`` was set
    (``SD_WORKER_ID``), not the host-name default; ``folder``: ``SD_SLOT_DIR``. Raises
    ``ConfigError`` when an explicit id is held by a running process, or when ``MAX_SLOTS`` default
    ids are; when the lock folder cannot be made or written a WARNING is logged and ``worker_id``
    is used unlocked."""
    where = slot_dir(folder)
    try:
        where.mkdir(parents=True, exist_ok=True)
        if explicit:
            got = _try(where, group, worker_id)
            if isinstance(got, Slot):
                return got
            raise ConfigError(
                f"SD_WORKER_ID={worker_id} is taken by another worker of group {group} on this host (pid {got}): "
                f"with SD_DELIVERY=exactly_once each worker needs its own SD_WORKER_ID (it names the transactional "
                f"id {group}-{worker_id}; two share it and fence each other), or leave it unset on one machine")
        for n in range(1, MAX_SLOTS + 1):
            candidate = worker_id if n == 1 else f"{worker_id}-{n}"
            got = _try(where, group, candidate)
            if isinstance(got, Slot):
                return got
    except OSError as exc:  # a safeguard, not a requirement: the id as given, unlocked
        log.warning("cannot lock a worker slot in %s (SD_SLOT_DIR): %s; SD_WORKER_ID=%s is used unchecked "
                    "(two workers on this host with one id fence each other)", where, exc.strerror or exc, worker_id)
        return Slot(worker_id, -1, where)
    raise ConfigError(f"all {MAX_SLOTS} worker slots of group {group} on this host are taken ({worker_id} to "
                      f"{worker_id}-{MAX_SLOTS}): set SD_WORKER_ID")
