"""The journal survives a process killed mid-write: a torn last line is ignored and repaired."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.journal import Journal, JournalCorrupt, read_journal


async def test_append_read_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "run" / "journal.jsonl"
    with Journal(path) as journal:
        first = await journal.append({"event": "enter", "state": "training"})
        journal.append_sync({"event": "exit", "state": "training"})
    assert first["seq"] == 1
    records = read_journal(path)
    assert [r["seq"] for r in records] == [1, 2]
    assert records[1]["event"] == "exit"
    with Journal(path) as journal:  # reopening continues the sequence
        assert (await journal.append({"event": "done"}))["seq"] == 3


@pytest.mark.parametrize("tail", [b'{"seq": 3, "ev', b'{"seq": 3, "ev\n', b"\x00\x00\x00"])
async def test_torn_tail_ignored_and_truncated(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "journal.jsonl"
    with Journal(path) as journal:
        await journal.append({"n": 1})
        await journal.append({"n": 2})
    path.write_bytes(path.read_bytes() + tail)
    assert [r["n"] for r in read_journal(path)] == [1, 2]
    with Journal(path) as journal:
        await journal.append({"n": 3})
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [1, 2, 3]


def test_corruption_before_the_tail_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b'{"n": 1}\nnot json\n{"n": 3}\n')
    with pytest.raises(JournalCorrupt, match="line 2"):
        read_journal(path)


def test_missing_journal_reads_empty(tmp_path: Path) -> None:
    assert read_journal(tmp_path / "nope.jsonl") == []


def test_sigkill_while_appending(tmp_path: Path) -> None:
    """A writer killed at an arbitrary moment leaves a readable prefix, and appending continues."""
    path = tmp_path / "journal.jsonl"
    code = (
        "import sys\nfrom engine.journal import Journal\nj = Journal(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "for i in range(10**9):\n    j.append_sync({'i': i, 'pad': 'x' * 4000})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        while not path.exists() or path.stat().st_size < 200_000:
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    records = read_journal(path)
    assert records and [r["i"] for r in records] == list(range(len(records)))
    journal = Journal(path)
    journal.append_sync({"i": "after"})
    journal.close()
    assert read_journal(path)[-1]["i"] == "after"
    assert len(read_journal(path)) == len(records) + 1
