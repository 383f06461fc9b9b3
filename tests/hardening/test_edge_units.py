"""The shared edge in-process: connection cap and head timeout on a real socket, body deadline,
bounded decoders, strict JSON, key sources; and the pure decisions (fair admission, gap wording)."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError
from engine.local.deployment.fairness import fair_order
from engine.local.http_server import ServerLimits, make_runner, new_app, read_json, start_site
from engine.local.inputs import BadInput, ascii_int, decompress, parse_json_object
from engine.local.keys import add_key_arguments, resolve_key
from engine.local.trainer.ordering import describe_missing

from .support import zstd_rle_frame


async def _serve(limits: ServerLimits) -> tuple[web.AppRunner, int]:
    app = new_app(limits)

    async def echo(request: web.Request) -> web.Response:
        try:
            return web.json_response(await read_json(request))
        except BadInput as exc:
            return web.json_response({"field": exc.field, "message": str(exc)}, status=exc.status)

    app.router.add_post("/", echo)
    runner = make_runner(app)
    await runner.setup()
    return runner, await start_site(runner, "127.0.0.1", 0)


async def _eof(reader: asyncio.StreamReader, within_s: float) -> bool:
    try:
        async with asyncio.timeout(within_s):
            return await reader.read() == b""
    except (TimeoutError, ConnectionResetError):
        return False


async def test_at_the_cap_the_oldest_idle_connection_makes_room() -> None:
    runner, port = await _serve(ServerLimits(max_body_bytes=1024, max_connections=8, header_timeout_s=60))
    try:
        stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for _, w in stalled:
            w.write(b"POST / HTTP/1.1\r\nHost: x\r\n")
        # Past the cap the oldest idle ones were closed as new ones came in; a request still works.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n{"a": 1}')
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        assert all([await _eof(r, 1.0) for r, _ in stalled[:12]])  # long before the head timeout
        writer.close()
        for _, w in stalled:
            w.close()
    finally:
        await runner.cleanup()


async def test_a_head_that_does_not_arrive_in_time_is_dropped() -> None:
    runner, port = await _serve(ServerLimits(max_body_bytes=1024, header_timeout_s=0.3))
    try:
        stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for _, w in stalled:
            w.write(b"POST / HTTP/1.1\r\nHost: x\r\n")
        assert all([await _eof(r, 3.0) for r, _ in stalled])
        for _, w in stalled:
            w.close()
    finally:
        await runner.cleanup()


async def test_a_body_that_does_not_arrive_is_a_408() -> None:
    runner, port = await _serve(ServerLimits(max_body_bytes=1024, body_timeout_s=0.3))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 408")
        writer.close()
    finally:
        await runner.cleanup()


def test_decoders_stop_at_the_limit_whatever_the_frame_declares() -> None:
    for raw, encoding in ((zstd_rle_frame(8 << 30), "zstd"), (gzip.compress(bytes(8 << 20)) * 4, "gzip")):
        with pytest.raises(BadInput) as info:
            decompress(raw, encoding, 1 << 20)
        assert info.value.status == 413 and info.value.field == "body"
    assert decompress(gzip.compress(b"a") + gzip.compress(b"b"), "gzip", 10) == b"ab"
    assert decompress(zstd_rle_frame(1 << 20), "zstd", 1 << 20) == bytes(1 << 20)
    with pytest.raises(BadInput, match="Content-Encoding"):
        decompress(b"x", "br", 10)
    with pytest.raises(BadInput, match="truncated"):
        decompress(gzip.compress(b"abc" * 100)[:-12], "gzip", 1000)


@pytest.mark.parametrize(
    ("raw", "field", "needle"),
    [
        (b'{"a": NaN}', "body", "NaN"),
        (b'{"a": -Infinity}', "body", "Infinity"),
        (b'{"a": 1e999}', "body", "out of range"),
        (b'{"a": ' + b"9" * 100 + b"}", "body", "digits"),
        (b"[" * 50_000 + b"]" * 50_000, "body", "nested"),
        (
            b'{"a": ' + b"[" * 70 + b"1" + b"]" * 70 + b"}",
            "a[0][0]",
            "nested",
        ),
        (b'{"x": {"y": ["ok", "\\ud83d"]}}', "x.y[1]", "surrogate"),
        (b'{"\\udfff": 1}', "body", "surrogate"),
        (b"\xff", "body", "not valid JSON"),
        (b"[]", "body", "JSON object"),
    ],
)
def test_strict_json(raw: bytes, field: str, needle: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_json_object(raw)
    assert info.value.status == 400 and info.value.field == field and needle in str(info.value)


def test_ascii_ints() -> None:
    assert ascii_int("12", "f") == 12 and ascii_int(-3, "f") == -3
    for bad in ("\u0661\u0662", "²", "1e3", "9" * 100, True, 2**80, 1.0):
        with pytest.raises(BadInput, match="f: must be an integer"):
            ascii_int(bad, "f")


def _key_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_key_arguments(parser, "key")
    return parser.parse_args(argv)


def test_keys_come_from_the_flag_an_env_var_or_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_key(_key_args()) is None
    assert resolve_key(_key_args("--api-key", "k1")) == "k1"
    monkeypatch.setenv("MY_KEY", "k2")
    assert resolve_key(_key_args("--api-key-env", "MY_KEY")) == "k2"
    assert "MY_KEY" not in os.environ  # nothing this process starts inherits it
    with pytest.raises(ConfigError, match="MY_KEY"):
        resolve_key(_key_args("--api-key-env", "MY_KEY"))
    path = tmp_path / "key"
    path.write_text("k3\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        resolve_key(_key_args("--api-key-file", str(path)))
    path.chmod(0o600)
    assert resolve_key(_key_args("--api-key-file", str(path))) == "k3"
    with pytest.raises(SystemExit):
        _key_args("--api-key", "a", "--api-key-env", "B")


def test_fair_order_round_robins_clients_fifo_within() -> None:
    assert fair_order([]) == []
    assert fair_order(["a", "a", "a", "b", "c", "b"]) == [0, 3, 4, 1, 5, 2]
    # One client that filled the queue, then another's single request: it goes second, not last.
    assert fair_order(["flood"] * 64 + ["other"])[:2] == [0, 64]
    # Turns carry over between admissions: whoever was admitted last waits for the others.
    assert fair_order(["flood"] * 63 + ["other"], {"flood": 7}) == [63, *range(63)]
    assert fair_order(["a", "b", "a", "b"], {"a": 2, "b": 1}) == [1, 0, 3, 2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("abcde"), max_size=60))
def test_fair_order_properties(owners: list[str]) -> None:
    order = fair_order(owners)
    assert sorted(order) == list(range(len(owners)))  # a permutation: nobody dropped or repeated
    for client in set(owners):
        mine = [i for i in order if owners[i] == client]
        assert mine == sorted(mine)  # FIFO within a client
    # After any prefix of the order, a client still waiting is at most one turn behind anyone.
    total = {c: owners.count(c) for c in owners}
    taken = dict.fromkeys(total, 0)
    for i in order:
        taken[owners[i]] += 1
        most = max(taken.values())
        assert all(taken[c] >= most - 1 for c in total if taken[c] < total[c])


def test_gap_description_does_not_enumerate() -> None:
    assert describe_missing(3, [5]) == "[3, 4]"
    assert describe_missing(1, [2**62]) == f"[1..{2**62 - 1}]"
    many = describe_missing(0, list(range(1, 100, 2)))  # 50 single gaps: the first ten, then a count
    assert many == "[0, 2, 4, 6, 8, 10, 12, 14, 16, 18, and 40 more ranges]"
