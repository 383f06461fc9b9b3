"""Readers shared by the tests of the run report, the sinks and the Prometheus metrics."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from engine.report.html import value


def rows(run_dir: Path, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """The complete lines of a JSONL file (a torn append after the last newline is not a row)."""
    complete = (run_dir / name).read_text().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.strip()]


class Cells(HTMLParser):
    """The report's table rows that carry an id or data-step: {row id or step: {data-key: text}}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._row: dict[str, str] | None = None
        self._key: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and (a.get("id") or a.get("data-step")):
            self._row = self.rows.setdefault(str(a.get("id") or a.get("data-step")), {})
        elif tag == "td" and self._row is not None and a.get("data-key"):
            self._key = str(a["data-key"])
            self._row[self._key] = ""

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._key is not None:
            self._row[self._key] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._key = None
        elif tag == "tr":
            self._row = None


def table_rows(html: str, table_class: str) -> dict[str, dict[str, str]]:
    """The rows of every table of that class (one per run in an overlay)."""
    tables = re.findall(rf'<table class="{table_class}">(.*?)</table>', html, re.S)
    assert tables, f"no table {table_class!r} in the report"
    parser = Cells()
    for table in tables:
        parser.feed(table)
    return parser.rows


def plot(html: str, name: str) -> str:
    match = re.search(rf'<svg class="plot[^"]*" data-plot="{re.escape(name)}".*?</svg>', html, re.S)
    assert match, f"no plot {name!r} in the report"
    return match.group(0)


def wandb_records(path: Path) -> Iterator[bytes]:
    """The records of a W&B transaction log (``run-*.wandb``): a LevelDB-style log of 32 KiB blocks,
    each record a 7-byte header (crc32c, length, type: full/first/middle/last) and its bytes."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    pos, pending, block = 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk
            pending = b""


STEP_FIELDS = ("reward_mean", "objective", "window", "staleness", "policy_version", "sample_s", "train_s")


def check_numbers(html: str, run_dir: Path, r: int = 0, label: str = "") -> None:
    """Every step and eval row of metrics.jsonl is in the report's tables (of run ``r``) with the same
    values, and the points of the reward curve (the series named after ``label``) are those rewards."""
    metrics = rows(run_dir)
    steps = table_rows(html, "steps")
    for row in (m for m in metrics if m["kind"] == "step"):
        cells = steps[f"r{r}-step-{row['step']}"]
        for key in (k for k in STEP_FIELDS if k in row):
            assert cells[key] == value(row[key]), (row["step"], key)
    evals = table_rows(html, "evals")
    for row in (m for m in metrics if m["kind"] == "eval"):
        cells = evals[f"r{r}-eval-{row['step']}"]
        assert cells["score"] == value(row["score"]) and cells["prompts_sha256"] == row["prompts_sha256"]
        assert cells["snapshot_identity"] == (row["snapshot_identity"] or "base weights")
    groups = re.findall(r'data-series="([^"]*)">(.*?)</g>', plot(html, "reward"), re.S)
    mine = "".join(g for name, g in groups if name.startswith(f"{label}: " if label else "reward"))
    points = [(float(x), float(y)) for x, y in re.findall(r'data-x="([^"]+)" data-y="([^"]+)"', mine)]
    assert sorted(points) == sorted(
        (float(m["step"]), m["reward_mean"]) for m in metrics if m["kind"] == "step"
    )
