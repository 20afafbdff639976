"""The kafka-python transport's pure helpers (its Kafka paths are tested on the real broker)."""

from __future__ import annotations


def test_an_unreadable_record_is_logged_at_error_once_then_at_debug(caplog) -> None:
    """The retrainer reads its history on every run: each unreadable record in it was one more ERROR
    line per run. Now the first read of a position logs at ERROR and every later one at DEBUG."""
    import logging

    from stream_detector.transport import kafka_python

    exc = ValueError("zstd codec missing")
    with caplog.at_level(logging.DEBUG, logger=kafka_python.log.name):
        for _ in range(3):
            kafka_python._log_unreadable("t-once", 0, 7, exc)
        kafka_python._log_unreadable("t-once", 1, 7, exc)  # another position: ERROR again
    levels = [(r.levelno, r.getMessage().split(",")[0]) for r in caplog.records if "t-once" in r.getMessage()]
    assert levels == [(logging.ERROR, "unreadable record at t-once[0] offset 7"),
                      (logging.DEBUG, "unreadable record at t-once[0] offset 7"),
                      (logging.DEBUG, "unreadable record at t-once[0] offset 7"),
                      (logging.ERROR, "unreadable record at t-once[1] offset 7")]
