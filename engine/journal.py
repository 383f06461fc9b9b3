"""The run journal: an append-only JSONL file, one fsync'd record per line.

The journal is the run's source of truth; everything else in a run directory (metrics.jsonl, the
checkpoint ledger, summary.json) is derived from it and can be rebuilt. A record is durable once
``append`` returns: it is written with a trailing newline, flushed and fsync'd (the directory too,
when the file is new), in a dedicated single-thread executor so the event loop never waits on the
disk and records keep their order.

Crash tolerance: a process killed mid-write leaves at most one torn last line (no newline, or not
JSON). ``read_journal`` ignores it; opening the journal for appending truncates it first, so the
next record starts on a clean line. A malformed line anywhere *before* the last one is not a crash
artefact but corruption, and raises ``JournalCorrupt`` naming the line.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engine.errors import FatalError

Record = dict[str, Any]


class JournalCorrupt(FatalError):
    """A journal line other than the last is not valid JSON: the file was damaged, not torn."""


def _scan(data: bytes, path: Path) -> tuple[list[Record], int]:
    """Parse complete lines; return the records and the byte length of the valid prefix."""
    records: list[Record] = []
    good = 0
    lines = data.split(b"\n")
    # The piece after the last newline is either empty or a torn record.
    for number, raw in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            if number == len(lines) - 1 and lines[-1] == b"":
                break  # the last complete-looking line is torn (killed between bytes and newline)
            raise JournalCorrupt(f"{path}: line {number} is not a JSON object ({exc})") from exc
        records.append(record)
        good += len(raw) + 1
    return records, good


def read_journal(path: str | os.PathLike[str]) -> list[Record]:
    """All complete records of a journal file (empty if it does not exist); a torn tail is ignored."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return []
    return _scan(data, p)[0]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Appends records to one journal file. Not shared between processes (one run, one writer)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existed = self.path.exists()
        records, good = _scan(self.path.read_bytes(), self.path) if existed else ([], 0)
        self._seq = max((int(r.get("seq", 0)) for r in records), default=0)
        self._fh = open(self.path, "ab")  # noqa: SIM115 - lives as long as the journal
        if existed and self._fh.tell() != good:
            self._fh.truncate(good)  # drop a torn tail so the next record starts a clean line
            self._fh.seek(good)
            os.fsync(self._fh.fileno())
        if not existed:
            fsync_dir(self.path.parent)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hotloop-journal")
        self._closed = False

    @property
    def seq(self) -> int:
        return self._seq

    def _prepare(self, record: Record) -> tuple[Record, bytes]:
        if self._closed:
            raise RuntimeError(f"journal {self.path} is closed")
        self._seq += 1
        full = {"seq": self._seq, "t": round(time.time(), 6), **record}
        return full, (json.dumps(full, separators=(",", ":"), default=str) + "\n").encode()

    def _write(self, line: bytes) -> None:
        self._fh.write(line)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append_sync(self, record: Record) -> Record:
        """Append from synchronous code (tests, shutdown paths); blocks for the fsync."""
        full, line = self._prepare(record)
        self._pool.submit(self._write, line).result()
        return full

    async def append(self, record: Record) -> Record:
        """Append one record and return it (with ``seq`` and ``t``) once it is on disk.

        The write is shielded: a cancelled caller does not leave half a record behind, the record
        is either fully written or (process killed) torn and ignored on read.
        """
        full, line = self._prepare(record)
        future = asyncio.get_running_loop().run_in_executor(self._pool, self._write, line)
        await asyncio.shield(future)
        return full

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True)
        self._fh.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
