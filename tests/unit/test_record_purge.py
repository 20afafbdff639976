"""``topics.RecordPurge``: stage 2's deletion of the repartition topic's consumed records
(Kafka Streams' purge), with the delete call injected (the real one is tested in
tests/integration/test_repartition.py)."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from stream_detector.settings import Settings
from stream_detector.topics import RecordPurge


class _Deletes:
    """Records each delete; ``hold`` blocks a call until released, ``fail`` raises once."""

    def __init__(self) -> None:
        self.calls: list[dict[int, int]] = []
        self.hold: threading.Event | None = None
        self.entered = threading.Event()
        self.fail = False

    def __call__(self, offsets: Mapping[int, int]) -> None:
        self.calls.append(dict(offsets))
        self.entered.set()
        if self.hold is not None:
            assert self.hold.wait(10)
        if self.fail:
            self.fail = False
            raise OSError("broker gone")


def test_commits_made_while_a_purge_is_in_flight_are_sent_together_by_the_next_one() -> None:
    deletes = _Deletes()
    deletes.hold = threading.Event()
    purge = RecordPurge(Settings(), "t", 0, delete=deletes)
    purge.committed({0: 5, 1: 3})
    assert deletes.entered.wait(10)
    purge.committed({0: 9})
    purge.committed({1: 4, 2: 7})
    purge.committed({0: 8})  # a smaller offset than one already wanted changes nothing
    deletes.hold.set()
    purge.close()  # waits for the first purge, which starts the second before it ends
    purge.close()
    assert deletes.calls == [{0: 5, 1: 3}, {0: 9, 1: 4, 2: 7}]
    assert purge.purged() == {0: 9, 1: 4, 2: 7}
    assert purge.purges == 2


def test_an_offset_already_purged_is_not_sent_again() -> None:
    deletes = _Deletes()
    purge = RecordPurge(Settings(), "t", 0, delete=deletes)
    purge.committed({0: 5})
    purge.close()
    purge.committed({0: 5})
    purge.committed({0: 4})
    purge.close()
    assert deletes.calls == [{0: 5}]


def test_nothing_is_sent_before_the_interval_has_passed() -> None:
    deletes = _Deletes()
    purge = RecordPurge(Settings(), "t", 3_600_000, delete=deletes)
    purge.committed({0: 5})  # within the hour since the start: kept for later
    purge.committed({0: 6})
    purge.close()
    assert deletes.calls == [] and purge.purged() == {}


def test_a_failed_purge_keeps_its_offsets_for_the_next_one() -> None:
    deletes = _Deletes()
    deletes.fail = True
    purge = RecordPurge(Settings(), "t", 0, delete=deletes)
    purge.committed({0: 5, 1: 2})
    purge.close()
    assert purge.failures == 1 and purge.purged() == {}
    purge.committed({0: 6})
    purge.close()
    assert deletes.calls == [{0: 5, 1: 2}, {0: 6, 1: 2}]
    assert purge.purged() == {0: 6, 1: 2}
