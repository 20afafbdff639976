"""``entity.state._Copies``: which records a worker reads from its copies, and when a key's copies
are set aside (pure bookkeeping; the compare-and-set against real Redis is in
``tests/integration/test_entity.py``)."""

from __future__ import annotations

from stream_detector.entity.state import HEAD_BYTES, _Copies


def _value(tag: int) -> bytes:
    return b"\xfe" + bytes([tag]) * (HEAD_BYTES - 1) + b"record"


def _batch(copies: _Copies, names: list[str], keys: list[tuple[str, str]], lost: list[int]) -> int:
    """One batch as the enricher runs it: read, write (the 1-based ``lost`` entries lose), then for
    the lost ones read again and write again (``Enricher._redo``; that write wins). Returns how
    many names the first read took from the copies."""
    def write(ns: list[str], ks: list[tuple[str, str]], gone: list[int]) -> None:
        values = [_value(len(ns)) for _ in ns]
        copies.wrote(ns, ks, values, [v[HEAD_BYTES:] for v in values], gone)

    out: list[bytes | None] = [None] * len(names)
    left = copies.read(names, keys, {}, out)
    write(names, keys, lost)
    if lost:
        again = [i - 1 for i in lost]
        ns, ks = [names[i] for i in again], [keys[i] for i in again]
        assert copies.read(ns, ks, {}, [None] * len(ns)) == list(range(len(ns)))  # dropped: read from Redis
        write(ns, ks, [])
    return len(names) - len(left)


def test_a_key_whose_copies_go_stale_is_set_aside_even_one_entity_a_batch() -> None:
    """A terminal shared with other workers, one event a batch: each copy it uses is stale. Counted
    over batches, the key is read from Redis after ``STALE_MIN`` of them, for ``REST_BATCHES``
    batches; the account, never stale, keeps its copies all along."""
    copies = _Copies(100)
    names, keys = ["acct", "term"], [("account_id", "a"), ("terminal_id", "t")]
    assert _batch(copies, names, keys, []) == 0  # nothing copied yet
    stale_batches = 0
    while "terminal_id" not in copies.resting and stale_batches < 50:
        assert _batch(copies, names, keys, [2]) == 2  # both from the copies; the terminal's lost
        stale_batches += 1
    assert stale_batches == _Copies.STALE_MIN
    resting = 0
    while _batch(copies, names, keys, []) == 1 and resting < 500:  # the terminal from Redis, the account not
        resting += 1
    # then tried again (each read counts: the re-read of the batch that set it aside is one)
    assert _Copies.REST_BATCHES - 2 <= resting <= _Copies.REST_BATCHES
    assert copies.hits > 0 and copies.stale == _Copies.STALE_MIN
    for _ in range(_Copies.STALE_MIN):  # still shared: set aside again, for twice as long
        _batch(copies, names, keys, [2])
    assert copies.resting["terminal_id"] >= 2 * _Copies.REST_BATCHES - 2


def test_copies_that_rarely_go_stale_are_kept_and_the_oldest_written_are_dropped_first() -> None:
    copies = _Copies(3)
    keys = [("account_id", str(i)) for i in range(5)]
    names = [f"n{i}" for i in range(5)]
    _batch(copies, names, keys, [])
    assert list(copies.records) == ["n2", "n3", "n4"]  # the last three written
    for i in range(200):  # one stale copy in 60 uses: below the share, never set aside
        _batch(copies, names[2:], keys[2:], [1] if i % 20 == 0 else [])
    assert not copies.resting
