"""engine.log: secrets never reach a sink, exception text included."""

from __future__ import annotations

import json

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
