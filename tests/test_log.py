"""engine.log: secrets never reach a sink, exception text included."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine import log


def test_secrets_are_redacted_from_fields_and_tracebacks(capsys: pytest.CaptureFixture[str]) -> None:
    log.configure("json")
    try:
        logger = log.get_logger("test.log")
        try:
            raise RuntimeError("upstream said: Authorization: Bearer abcdef123456, key tml-secretsecret")
        except RuntimeError:
            logger.exception("boom", api_key="hl-abcdefgh", url="http://127.0.0.1:1")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        log.configure()
    assert line["api_key"] == "***" and line["url"] == "http://127.0.0.1:1"
    assert "RuntimeError: upstream said" in line["exception"]
    for secret in ("abcdef123456", "secretsecret", "hl-abcdefgh"):
        assert secret not in json.dumps(line)


def test_token_counts_are_not_secrets() -> None:
    out = log.redact_secrets(None, "info", {"event": "e", "max_tokens": 8, "access_token": "x", "token": "y"})
    assert out["max_tokens"] == 8
    assert out["access_token"] == "***" and out["token"] == "***"


def test_repeats_pass_a_burst_then_the_next_window_says_how_many_were_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import logging

    now = [100.0]
    monkeypatch.setattr(log.time, "monotonic", lambda: now[0])
    repeats = log.RepeatFilter(burst=5, window_s=60.0)

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("tinker", logging.WARNING, __file__, 1, msg, None, None)

    passed = [repeats.filter(record("retrying: 503")) for _ in range(12)]
    assert passed == [True] * 5 + [False] * 7 and repeats.dropped == 7
    assert repeats.filter(record("another line"))  # a different line has its own count
    now[0] += 61.0
    late = record("retrying: 503")
    assert repeats.filter(late)
    assert late.getMessage() == "retrying: 503 [7 identical lines dropped in 60s]"


@pytest.mark.parametrize(("outside", "child"), [(None, "0"), ("1", "1")])
def test_the_embedded_trainer_gets_tinker_telemetry_off_unless_asked(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, outside: str | None, child: str
) -> None:
    from engine.local.controlplane.plane import ControlPlane

    if outside is None:
        monkeypatch.delenv("TINKER_TELEMETRY", raising=False)
    else:
        monkeypatch.setenv("TINKER_TELEMETRY", outside)
    env = ControlPlane(tmp_path)._env("child-key")
    assert env["TINKER_TELEMETRY"] == child
