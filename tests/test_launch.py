"""tests/support/launch.py (and engine/local/launch.py's URL line) against stand-in children (plain
``python -c``), so no model is loaded."""

from __future__ import annotations

import sys
import time

import pytest
from support.launch import LaunchError, alaunched, launched, serve_argv, url_from_line

KEY = "HOTLOOP_TEST_URL"
# Prints a log line and the readiness line in one write (the parser must not wait for more), then idles.
READY = [sys.executable, "-c", f"print('noise\\n{KEY}=http://h:1/', flush=True); import time; time.sleep(60)"]
DIES = [sys.executable, "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"]
SILENT = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_url_from_line_and_serve_argv() -> None:
    assert url_from_line(f"  {KEY}=http://127.0.0.1:5\n", KEY) == "http://127.0.0.1:5"
    assert url_from_line(f"{KEY}X=http://h", KEY) is None
    assert url_from_line("log line", KEY) is None
    argv = serve_argv("trainer", model="tiny", bucket="/b", extra=["--threads", "1"], python="py")
    assert " ".join(argv) == "py -m engine.cli serve trainer --port 0 --model tiny --bucket /b --threads 1"


def test_launched_yields_url_and_stops_the_process() -> None:
    with launched(READY, KEY, timeout_s=30, grace_s=5) as server:
        assert (server.url, server.line, server.before) == ("http://h:1/", f"{KEY}=http://h:1/", ("noise",))
        assert server.proc.poll() is None
    assert server.proc.returncode is not None


@pytest.mark.parametrize(("argv", "reason"), [(DIES, "exited with code 3"), (SILENT, "none within 1s")])
def test_launched_reports_exit_or_silence_with_stderr(argv: list[str], reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(LaunchError, match=reason) as info, launched(argv, KEY, timeout_s=1, grace_s=5):
        pass
    assert time.monotonic() - started < 10
    if argv is DIES:
        assert "boom" in str(info.value)


async def test_alaunched_yields_url_stops_and_reports_exit() -> None:
    async with alaunched(READY, KEY, timeout_s=30, grace_s=5) as server:
        assert (server.url, server.before) == ("http://h:1/", ("noise",))
    assert server.proc.returncode is not None
    with pytest.raises(LaunchError, match=r"(?s)exited with code 3.*boom"):
        async with alaunched(DIES, KEY, timeout_s=30):
            pass
