"""``check-config``'s pure checks of the settings alone."""

from __future__ import annotations

from stream_detector.checks import _settings_checks
from stream_detector.settings import Settings


def test_check_config_names_the_opt_in_entity_copies() -> None:
    """An operator who set SD_ENTITY_COPIES sees it took effect (it changes how state is read)."""
    line = next(c.detail for c in _settings_checks(Settings(entity_copies=50_000)) if c.name == "settings")
    assert line.endswith("entity copies 50,000 (SD_ENTITY_COPIES)")
    assert "copies" not in next(c.detail for c in _settings_checks(Settings()) if c.name == "settings")
