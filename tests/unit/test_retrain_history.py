"""The retrainer's history (``retrain/history.py``, ``job.InContext``): spooled on disk in event-time
order, enriched a chunk at a time keeping only the rows a retraining needs, and scored as a worker
fed the whole history would score those rows — the same numbers as ``enrich_history`` and
``score_events`` on the whole list in memory."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import orjson

from stream_detector.entity import EntitySpec, enrich_history
from stream_detector.feedback import Label, parse_label
from stream_detector.model.bundle import build_bundle
from stream_detector.model.train import TrainConfig, train
from stream_detector.offline import score_events
from stream_detector.retrain.history import History
from stream_detector.retrain.job import InContext
from stream_detector.simulate import HandbookSimulator, Scenarios

DAY = 86_400_000
SPEC = EntitySpec(keys=("account_id", "terminal_id"), windows=(86_400, 7 * 86_400), distinct_fields=(),
                  label_keys=("terminal_id",))


def test_the_spool_gives_events_back_in_event_time_then_partition_then_offset_order(tmp_path: Path) -> None:
    rng = random.Random(5)
    keyed = [(float(rng.randrange(20)), rng.randrange(3), i) for i in range(500)]  # ties in time
    rng.shuffle(keyed)
    history = History(tmp_path)
    for at in range(0, len(keyed), 64):  # poll by poll, in any order
        part = keyed[at:at + 64]
        history.add([orjson.dumps({"event_id": f"e{o}", "t": t, "p": p}) for t, p, o in part],
                    np.array([k[0] for k in part]), np.array([k[1] for k in part]), np.array([k[2] for k in part]))
    history.seal()
    got = [(e["t"], e["p"], int(e["event_id"][1:])) for chunk in history.chunks(37) for e in chunk]
    assert got == sorted(keyed)
    assert len(history) == 500 and history.spool_bytes > 0 and any(tmp_path.iterdir())
    history.close()
    assert not any(tmp_path.iterdir()), "the spool is deleted with the history"


def _world() -> tuple[list[dict], list[Label]]:
    end = 1_790_000_000_000 // DAY * DAY
    sim = HandbookSimulator(seed=7, customers=60, terminals=120, run_id="hist",
                            scenarios=Scenarios(terminals_per_day=1, cards_per_day=1))
    world = sim.generate(6_000, now_ms=end, span_ms=14 * DAY)
    labels = [lab for lab in map(parse_label, world.labels()) if isinstance(lab, Label)]
    return world.events(), labels


def test_in_context_rows_and_scores_equal_the_whole_history_in_memory(tmp_path: Path) -> None:
    events, labels = _world()
    whole = enrich_history(SPEC, events, labels=labels)
    bundle = build_bundle(train(whole[:3000], TrainConfig(epochs=1, seed=0), entity=SPEC))
    wanted = {str(e["event_id"]) for e in events[4000:4500]}
    span = (float(events[4000]["timestamp"]), float(events[4499]["timestamp"]))
    with History.of(events, labels, tmp_path) as history:
        context = InContext(history, SPEC, wanted, span)
        position = {str(e["event_id"]): i for i, e in reversed(list(enumerate(events)))}
        labelled_in_span = {lab.event_id for lab in labels if span[0] <= events[position[lab.event_id]]["timestamp"]
                            <= span[1]}
        assert set(context.index) == wanted | labelled_in_span
        for event_id in context.index:
            assert context.row(event_id) == whole[position[event_id]]
            assert context.event(event_id) == events[position[event_id]]
        asked = [events[i] for i in range(4000, 4500, 7)]
        reference = score_events(bundle, events, labels=labels).take([position[str(e["event_id"])] for e in asked])
        got = context(bundle, asked)
        assert np.array_equal(got.scores, reference.scores)
        assert got.rejected == reference.rejected
        # a bundle of another spec is scored by a second pass over the history: the same numbers
        other = EntitySpec(keys=("account_id",), windows=(86_400,), distinct_fields=())
        bundle2 = build_bundle(train(enrich_history(other, events)[:3000], TrainConfig(epochs=1, seed=0), entity=other))
        reference2 = score_events(bundle2, events).take([position[str(e["event_id"])] for e in asked])
        assert np.array_equal(context(bundle2, asked).scores, reference2.scores)


def test_a_spool_left_by_a_dead_run_is_removed_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from stream_detector.retrain.history import OWNER, SPOOL_PREFIX

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / f"{SPOOL_PREFIX}crashed"
    stale.mkdir()
    (stale / OWNER).write_text(dead.stdout.strip())  # that process has exited
    (stale / "events.spool").write_bytes(b"x" * 100)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"{SPOOL_PREFIX}running"
        live.mkdir()
        (live / OWNER).write_text(str(alive.pid))
        other = tmp_path / "not-ours"
        other.mkdir()
        with History(tmp_path):
            assert not stale.exists(), "a dead run's spool is removed"
            assert live.exists() and other.exists(), "a live run's spool and other folders are left alone"
    finally:
        alive.kill()
        alive.wait()


def test_an_unusable_spool_folder_is_one_clear_error(tmp_path: Path) -> None:
    import pytest

    from stream_detector.errors import ConfigError

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="SD_RETRAIN_SPOOL_DIR"):
        History(blocker)


def test_a_full_disk_while_spooling_says_where_and_which_setting(tmp_path: Path) -> None:
    import errno

    import pytest

    from stream_detector.errors import ConfigError

    class Full:
        def write(self, _data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:
            pass

    history = History(tmp_path)
    history._file.close()  # type: ignore[union-attr]
    history._file = Full()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"SD_RETRAIN_SPOOL_DIR\): No space left on device"):
        history.add([b'{"event_id": "a"}'], np.zeros(1), np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    history.close()


def test_check_config_says_whether_the_spool_folder_can_be_written(tmp_path: Path) -> None:
    from stream_detector.checks import run_checks
    from stream_detector.settings import Settings

    def spool(folder: Path) -> list[tuple[str, str]]:
        checks = run_checks(Settings(retrain_spool_dir=str(folder), kafka_bootstrap="127.0.0.1:1",
                                     redis_url="redis://127.0.0.1:1"), timeout_ms=200)
        return [(c.status, c.detail) for c in checks if c.name == "spool"]

    [(status, detail)] = spool(tmp_path / "nope")
    assert status == "fail" and "SD_RETRAIN_SPOOL_DIR" in detail and "No such file" in detail
    assert spool(tmp_path)[0][0] == "ok"
