"""``check-config``'s pure checks of the settings alone."""

from __future__ import annotations

from stream_detector.checks import _settings_checks
from stream_detector.settings import Settings


def test_check_config_names_the_opt_in_entity_copies() -> None:
    """An operator who set SD_ENTITY_COPIES sees it took effect (it changes how state is read)."""
    line = next(c.detail for c in _settings_checks(Settings(entity_copies=50_000)) if c.name == "settings")
    assert "entity copies 50,000 (SD_ENTITY_COPIES)" in line
    assert "copies" not in next(c.detail for c in _settings_checks(Settings()) if c.name == "settings")


def test_check_config_says_how_entity_state_is_written() -> None:
    """Write-behind (the default) is named with its key and period; off, the line says so."""
    def line(**kw: object) -> str:
        return next(c.detail for c in _settings_checks(Settings(**kw)) if c.name == "settings")  # type: ignore[arg-type]
    assert line().endswith("write-behind account_id every 1000 ms (SD_ENTITY_PARTITION_KEY), shared keys' features "
                           "in the replay log (SD_ENTITY_REPLAY_LOG)")
    assert line(entity_replay_log=False).endswith("models with a shared key commit every batch "
                                                  "(SD_ENTITY_REPLAY_LOG=false)")
    assert line(entity_partition_key="").endswith("entity state written every batch")
    assert line(entity_flush_ms=0).endswith("entity state written every batch")
    assert line(delivery="exactly_once").endswith("entity state written every batch")


def test_a_model_with_history_keyed_by_a_field_other_than_the_topics_key_warns_to_run_one_worker() -> None:
    """check-config's scaling WARN (docs/operations.md, *Partitions and workers*): a model whose
    history is keyed by a terminal runs as one worker per group; an account-only model (the
    topic's key), or none, gets no such line."""
    from types import SimpleNamespace

    from stream_detector.checks import scaling_check
    from stream_detector.entity_spec import EntitySpec
    from stream_detector.settings import Settings

    s = Settings(group_id="g1", entity_partition_key="account_id")
    terminal = SimpleNamespace(version="v7", entity=EntitySpec(keys=("account_id", "terminal_id")))
    check = scaling_check(terminal, s)
    assert check is not None and check.status == "warn" and check.name == "scaling"
    assert "terminal_id" in check.detail and "one worker in group g1" in check.detail
    assert scaling_check(SimpleNamespace(version="v8", entity=EntitySpec(keys=("account_id",))), s) is None
    assert scaling_check(SimpleNamespace(version="v9", entity=None), s) is None


def test_the_one_worker_warning_replaces_the_busy_workers_line(monkeypatch: object) -> None:
    """A trial read "OK scaling at most 4 busy workers" followed by "WARN scaling … run one
    worker" as a contradiction: with the WARN, the OK line goes."""
    import stream_detector.checks as checks
    from stream_detector.checks import Check, run_checks
    from stream_detector.settings import Settings

    ok = Check("ok", "scaling", "at most 4 busy workers in group g")
    warn = Check("warn", "scaling", "model v has history keyed by terminal_id …: run one worker in group g")
    for redis_checks, expected in (([warn], [warn]), ([], [ok])):
        monkeypatch.setattr(checks, "_settings_checks", lambda s: iter(()))  # type: ignore[attr-defined]
        monkeypatch.setattr(checks, "_kafka_checks", lambda s, t: iter([ok]))  # type: ignore[attr-defined]
        monkeypatch.setattr(checks, "_redis_checks", lambda s, r=redis_checks: iter(r))  # type: ignore[attr-defined]
        assert [c for c in run_checks(Settings()) if c.name == "scaling"] == expected
