"""Seeded adversarial payloads for the decode step (shared by the unit and integration fuzz tests)."""

from __future__ import annotations

import random

import orjson


def adversarial(seed: int, n_random: int = 200) -> list[bytes]:
    rng = random.Random(seed)
    fixed = [
        b"", b"null", b"true", b"0", b'""', b"{}", b"[]", b"{", b"}", b'{"event_id": null}',
        b"\xff\xfe\xfd", b'{"event_id": "\xed\xa0\x80"}',  # invalid UTF-8 / lone surrogate
        b"[" * 5000 + b"]" * 5000,  # deep nesting
        b'{"event_id": "n", "a": ' + b'{"b": ' * 200 + b"1" + b"}" * 200 + b"}",
        b'{"event_id": "h", "amount": 1' + b"0" * 400 + b"}",  # huge integer literal
        b'{"event_id": "h2", "amount": 1e999}', b'{"event_id": "h3", "amount": -1e999}',
        b'{"event_id": "nan", "amount": NaN}', b'{"event_id": "inf", "amount": -Infinity}',
        b'{"event_id": "blob", "x": "' + b"A" * (10 * 1024 * 1024) + b'"}',  # 10 MB
        b'{"event_id": ["a"]}', b'{"event_id": {"a": 1}}', b'{"event_id": true}', b'{"event_id": 1.5}',
        b'{"event_id": "t", "timestamp": [1]}', b'{"event_id": "t2", "timestamp": "2026-13-45T99:00:00Z"}',
        b'{"event_id": "d", "amount": 1, "amount": 100000}',
        b'{"event_id": "s", "schema_version": "1"}', b'{"event_id": "s2", "schema_version": 99}',
        b'{"event_id": "' + b"x" * 600 + b'"}',
        b'{"event_id": "acct", "account_id": {"id": 1}}',
        orjson.dumps({"event_id": "many", **{f"f{i}": i for i in range(5000)}}),  # 60+ KB of fields
        b"\x00" * 64, "{\"event_id\": \"\u202e\u0000\"}".encode(),
    ]
    randoms = []
    for _ in range(n_random):
        kind = rng.randrange(3)
        if kind == 0:
            randoms.append(rng.randbytes(rng.randrange(1, 300)))
        elif kind == 1:  # mutate a valid event
            raw = bytearray(orjson.dumps({"event_id": f"m{rng.random()}", "amount": rng.random() * 100}))
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            randoms.append(bytes(raw))
        else:  # valid JSON of the wrong shape
            randoms.append(orjson.dumps(rng.choice([[1, 2], "s", 3.5, None, {"no_id": 1}, {"event_id": 7}])))
    return fixed + randoms
