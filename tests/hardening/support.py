"""Hostile-input helpers: crafted bombs, half-open connections, and the checks every attack ends with.

Each attack is small on the wire but proves its bound: a zstd frame that *declares and holds* 8 GB
of RLE blocks in 256 KB, gzip members that expand to 1 GB from 1 MB, shapes of 2**40.
"""

from __future__ import annotations

import gzip
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# What a server process may grow by across one attack (resident memory). Before the fixes these
# attacks grew it by 1.25-15 GB; the legitimate work they trigger fits well under this.
RSS_BOUND_MB = 100
# A normal request right after an attack must be answered within this (the bar).
ANSWER_WITHIN_S = 1.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def zstd_rle_frame(total: int, block: int = 128 * 1024) -> bytes:
    """A valid zstd frame whose header declares ``total`` bytes and whose RLE blocks hold them all
    (4 bytes per 128 KiB): a one-shot decompressor allocates ``total`` up front."""
    header = struct.pack("<I", 0xFD2FB528) + bytes([0b11000000, (17 - 10) << 3]) + struct.pack("<Q", total)
    n = total // block
    rle = struct.pack("<I", (1 << 1) | (block << 3))[:3] + b"\0"
    last = struct.pack("<I", 1 | (1 << 1) | (block << 3))[:3] + b"\0"
    return header + rle * (n - 1) + last


def gzip_bomb(total_mb: int = 1024, member_mb: int = 16) -> bytes:
    """Concatenated gzip members (valid per RFC 1952) that expand to ``total_mb``."""
    member = gzip.compress(b"\0" * (member_mb << 20), compresslevel=1)
    return member * (total_mb // member_mb)


def nested(depth: int = 100_000) -> bytes:
    return b"[" * depth + b"]" * depth


@contextmanager
def half_open(
    host: str, port: int, count: int, head: bytes = b"POST / HTTP/1.1\r\nHost: x\r\n"
) -> Iterator[list[socket.socket]]:
    """``count`` connections that each send part of a request head and then stall (slowloris)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(head)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    """True once the server has closed ``sock`` (a read returns EOF or a reset)."""
    sock.settimeout(within_s)
    try:
        while data := sock.recv(4096):
            del data
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@dataclass
class Target:
    """A server under attack: its process (for RSS), base URL and the headers a caller needs."""

    pid: int
    url: str
    headers: dict[str, str]
    health: str
    stderr: Path | None = None

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=30, **kwargs)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)


def assert_still_serving(target: Target) -> float:
    """A normal request is answered at once after an attack; returns how long it took (seconds)."""
    start = time.perf_counter()
    with httpx.Client(base_url=target.url, headers=target.headers, timeout=ANSWER_WITHIN_S) as http:
        r = http.get(target.health)
    elapsed = time.perf_counter() - start
    assert r.status_code == 200, r.text
    return elapsed


def assert_rejected(r: httpx.Response, status: int | tuple[int, ...], field: str) -> str:
    """A 4xx (the given one) whose message names ``field``; returns the message."""
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, (r.status_code, r.text[:500])
    body = r.json()
    message = str(body.get("detail") or body.get("error", {}).get("message") or body)
    assert field in message, (field, message[:500])
    assert len(r.content) < 8192, f"an error answer of {len(r.content)} bytes echoes the request"
    return message


@contextmanager
def bounded_growth(target: Target, what: str, results: dict[str, Any]) -> Iterator[None]:
    """Around one attack: RSS growth stays under the bound, and the server answers right after.
    Measurements land in ``results`` (printed by the suite for the record)."""
    before = target.rss_mb()
    yield
    answer_s = assert_still_serving(target)
    grown = target.rss_mb() - before
    results[what] = {"rss_growth_mb": round(grown, 1), "answer_after_s": round(answer_s, 4)}
    assert grown < RSS_BOUND_MB, f"{what}: RSS grew {grown:.0f} MB (bound {RSS_BOUND_MB} MB)"
