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
