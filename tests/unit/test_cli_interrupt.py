"""An interrupted command says so (one line on stderr) and exits 130, as shells expect."""

from __future__ import annotations

import pytest

from stream_detector import cli


def test_an_interrupted_command_says_so_and_exits_130(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(_args: object, _settings: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_check_config", interrupted)
    assert cli.main(["check-config"]) == 130
    assert capsys.readouterr().err.strip() == "stream-detector check-config: interrupted"
