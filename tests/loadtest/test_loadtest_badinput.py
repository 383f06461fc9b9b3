"""Bad input gives a clear error naming the problem, and whatever was measured is still written."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from loadtest_helpers import ThreadedMockServer, assert_counts_match, free_port, read_outputs, run_cli
from support.mock_server import MockConfig

COMMON = ["--input-tokens", "4", "--output-tokens", "3", "--num-prompts", "4"]


def test_unreachable_url_aborts_and_writes_the_failed_attempts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{free_port()}"
    rc = run_cli(
        ["--url", url, "--model", "m", *COMMON, "--rate", "50", "--requests", "200", "--output-dir", str(out)]
    )
    assert rc == 1
    err = capsys.readouterr().err
    assert "cannot connect to" in err and "is the server running" in err
    summary, rows = read_outputs(out)
    assert summary["status"] == "aborted" and "cannot connect" in summary["error"]
    assert_counts_match(summary, rows)
    assert 5 <= len(rows) < 200  # stopped early, every attempt recorded
    assert {r["error_kind"] for r in rows} == {"connection"}
    assert (out / "report.html").read_text().count("aborted") >= 1


def test_wrong_model_aborts_with_the_servers_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    with ThreadedMockServer(MockConfig(model="served")) as server:
        rc = run_cli(
            [
                "--url",
                server.url,
                "--endpoint",
                "/v1/completions",
                "--model",
                "nope",
                *COMMON,
                "--concurrency",
                "2",
                "--requests",
                "50",
                "--output-dir",
                str(out),
            ]
        )
    assert rc == 1
    err = capsys.readouterr().err
    assert "Model not found: 'nope'" in err and "check --model" in err
    summary, rows = read_outputs(out)
    assert summary["status"] == "aborted" and summary["cells"][0]["errors_by_kind"] == {"http_404": len(rows)}
    assert_counts_match(summary, rows)


def test_malformed_prompt_file_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hello there"}\n\n{"prompt_token_ids": [5, 6, 7]}\n{"prompt": oops}\n')
    out = tmp_path / "out"
    rc = run_cli(
        [
            "--url",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--prompts",
            str(prompts),
            "--concurrency",
            "1",
            "--requests",
            "3",
            "--output-dir",
            str(out),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{prompts} line 4: not valid JSON" in err
    summary, rows = read_outputs(out)
    assert summary["status"] == "error" and "line 4" in summary["error"] and rows == []
    prompts.write_text('{"prompt_token_ids": [1, 2]}\n{"text": "no prompt field"}\n')
    assert (
        run_cli(
            [
                "--url",
                "http://127.0.0.1:9",
                "--model",
                "m",
                "--prompts",
                str(prompts),
                "--concurrency",
                "1",
                "--requests",
                "3",
                "--output-dir",
                str(out),
            ]
        )
        == 2
    )
    assert "line 2: needs one of 'prompt', 'prompt_token_ids' or 'messages'" in capsys.readouterr().err


def test_prompt_file_runs_and_server_loss_mid_run_keeps_the_measurements(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "hello there", "max_tokens": 2})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}]})
        + "\n"
        + json.dumps({"prompt_token_ids": [5, 6, 7], "output_tokens": 4})
        + "\n"
    )
    out = tmp_path / "out"
    with ThreadedMockServer(MockConfig(model="m", ttft_s=0.01)) as server:
        stopper = threading.Timer(1.0, server.stop_serving)
        stopper.start()
        try:
            rc = run_cli(
                [
                    "--url",
                    server.url,
                    "--model",
                    "m",
                    "--prompts",
                    str(prompts),
                    "--output-tokens",
                    "3",
                    "--concurrency",
                    "2",
                    "--duration",
                    "60",
                    "--output-dir",
                    str(out),
                ]
            )
        finally:
            stopper.cancel()
    assert rc == 1
    summary, rows = read_outputs(out)
    assert summary["status"] == "aborted" and "cannot connect" in summary["error"]
    assert_counts_match(summary, rows)
    ok = [r for r in rows if r["ok"]]
    assert ok and len(rows) - len(ok) >= 50  # measured before the loss, then 50 fatal failures in a row
    assert {r["output_tokens"] for r in ok} <= {2, 3, 4}  # max_tokens from the file (default 3)


def test_api_key_comes_from_the_environment_and_never_reaches_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "fw_SECRET-value-123456"
    out = tmp_path / "out"
    with ThreadedMockServer(MockConfig(model="m", api_key=secret)) as server:

        def argv(requests: int) -> list[str]:
            return [
                *("--url", server.url, "--model", "m"),
                *COMMON,
                *("--api-key-env", "HL_TEST_KEY", "--concurrency", "1"),
                *("--requests", str(requests), "--output-dir", str(out)),
            ]

        assert run_cli(argv(2)) == 2
        assert "HL_TEST_KEY is not set" in capsys.readouterr().err
        monkeypatch.setenv("HL_TEST_KEY", "wrong-key")
        assert run_cli(argv(8)) == 1
        assert "check --api-key-env" in capsys.readouterr().err
        monkeypatch.setenv("HL_TEST_KEY", secret)
        assert run_cli(argv(2)) == 0
        printed = capsys.readouterr()
    summary, rows = read_outputs(out)
    assert summary["status"] == "ok" and len(rows) == 2 and all(r["ok"] for r in rows)
    assert summary["target"]["api_key_env"] == "HL_TEST_KEY"
    for path in out.iterdir():
        assert secret not in path.read_text(), path.name
    assert secret not in printed.out + printed.err
