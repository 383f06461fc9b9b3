"""The run report (engine.report): written when a run ends, refreshable on a live run, rendered by
headless Chromium with its plots, its numbers those of metrics.jsonl; failed, resumed and overlaid runs.

Runs are real orchestrator runs on the fake backends of tests/support/fakes.py (real states, real journal)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from headless import CHROMIUM, chromium, png_pixels_vary
from observe_support import check_numbers, plot, rows, table_rows
from support.fakes import planes, run_config

from engine.cli import main as hotloop
from engine.lifecycle.runner import RunFailed
from engine.report.timeline import read_timeline, time_per_state
from engine.run.orchestrator import run


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (installed by .ci/run)")
async def test_the_report_of_a_finished_run_renders_in_headless_chromium(tmp_path: Path) -> None:
    summary = await run(run_config(tmp_path), planes=planes())
    assert summary.status == "done"
    report = tmp_path / "run" / "report.html"  # written by the run itself, at its end
    html = report.read_text()
    assert "<script" not in html and "<link" not in html and " src=" not in html  # self-contained

    profile = tmp_path / "profile"
    dom = chromium(["--dump-dom", report.as_uri()], profile).stdout
    names = set(re.findall(r'<svg class="plot[^"]*" data-plot="([^"]+)"', dom))
    expected = {"reward", "eval", "objective", "window", "staleness", "timeline", "sync-seconds",
                "step-seconds", "snapshot-sizes"}  # fmt: skip
    assert expected <= names, expected - names
    for section in ("summary", "learning", "time", "events", "steps-0", "config", "environment"):
        assert f'id="{section}"' in dom, section
    check_numbers(dom, tmp_path / "run")

    # Eval points name the snapshot they scored and the prompt set.
    metrics = rows(tmp_path / "run")
    eval_svg = plot(dom, "eval")
    for row in (m for m in metrics if m["kind"] == "eval"):
        assert (
            f"{row['snapshot_identity'] or 'base weights'} · prompts {row['prompts_sha256'][:12]}" in eval_svg
        )
    # The timeline has one bar per state visit, the time table one row per state.
    journal = rows(tmp_path / "run", "journal.jsonl")
    timeline = plot(dom, "timeline")
    for state in ("training", "syncing", "evaluating"):
        visits = sum(1 for r in journal if r.get("event") == "enter" and r["state"] == state)
        assert timeline.count(f'data-lane="{state}"') == visits > 0
    assert re.search(r'<tr data-state="training"><td class="txt">training</td><td>5</td>', dom)
    # Steps link to their checkpoints, and the ledger back to the steps.
    ledger = rows(tmp_path / "run", "checkpoints.jsonl")
    for i, entry in enumerate(ledger):
        assert f'id="r0-ckpt-{i}"' in dom and f'href="#r0-ckpt-{i}"' in dom
        assert f'href="#r0-step-{entry["step"]}"' in dom
    assert "learning_rate: 0.001" in dom  # the config
    assert re.search(r"<td[^>]*>torch</td><td[^>]*>\d", dom)  # the environment

    shot = tmp_path / "report.png"
    chromium([f"--screenshot={shot}", "--window-size=1400,2400", report.as_uri()], profile)
    width, height, top_share = png_pixels_vary(shot.read_bytes())
    assert (width, height) == (1400, 2400)
    assert top_share < 0.99  # a blank page is > 0.999 the same byte; this one has charts and text


def _cut(src: Path, dst: Path, journal_lines: int) -> None:
    """A copy of a run directory as it was mid-run: the first lines of its journal plus a torn one,
    and the derived files as far as that journal had committed."""
    dst.mkdir()
    for name in ("config.yaml", "eval_prompts.jsonl"):
        (dst / name).write_bytes((src / name).read_bytes())
    lines = (src / "journal.jsonl").read_text().splitlines(keepends=True)
    kept = lines[:journal_lines]
    (dst / "journal.jsonl").write_text("".join(kept) + lines[journal_lines][:25])  # torn, no newline
    committed = [json.loads(line) for line in kept]
    facts = [f for r in committed if r.get("event") == "exit" for f in r.get("records", [])]
    metrics = [json.dumps(f["row"]) + "\n" for f in facts if f["kind"] in ("step", "eval")]
    ledger = [json.dumps(f) + "\n" for f in facts if f["kind"] in ("state", "snapshot", "sync")]
    (dst / "metrics.jsonl").write_text("".join(metrics) + '{"kind": "st')  # a torn append too
    (dst / "checkpoints.jsonl").write_text("".join(ledger))


async def test_a_report_of_a_run_in_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await run(run_config(tmp_path), planes=planes())
    journal = (tmp_path / "run" / "journal.jsonl").read_text().splitlines()
    # Stop right after TRAINING of step 3 was entered: steps 1 and 2 are committed, 3 is under way.
    third = next(i for i, line in enumerate(journal) if '"event":"enter","state":"training","step":2' in line)
    live = tmp_path / "live"
    _cut(tmp_path / "run", live, third + 1)

    assert hotloop(["report", str(live)]) == 0
    assert "report.html" in capsys.readouterr().out
    html = (live / "report.html").read_text()
    assert '<span class="badge running">running</span>' in html
    assert 'data-lane="training" data-kind="open"' in plot(html, "timeline")
    steps = table_rows(html, "steps")
    assert sorted(k for k in steps if k.startswith("r0-step-")) == ["r0-step-1", "r0-step-2"]
    check_numbers(html, live)
    assert "line" not in " ".join(re.findall(r"class='err'>([^<]*)", html))  # torn tails are not errors


async def test_a_failed_run_then_its_resumed_generation(tmp_path: Path) -> None:
    p = planes()
    p.deployment.deployment.fail_next_load = True  # the first hot-load fails: SYNCING fails the run
    with pytest.raises(RunFailed):  # recovery off: the run stops where it failed
        await run(run_config(tmp_path, recovery={"enabled": False}), planes=p)
    html = (tmp_path / "run" / "report.html").read_text()  # written even though the run failed
    assert '<span class="badge failed">failed</span>' in html
    timeline = plot(html, "timeline")
    assert 'data-lane="syncing" data-kind="failed"' in timeline and 'data-mark="failed"' in timeline
    assert "injected failure loading" in html and "class='err'" in html
    assert '<tr data-mark="failed"><td class="txt">failed</td><td>1</td><td class="txt">syncing</td>' in html

    summary = await run(None, run_dir=tmp_path / "run", planes=p)  # resume: generation 2 finishes
    assert summary.status == "done" and summary.generation == 2
    html = (tmp_path / "run" / "report.html").read_text()
    assert '<span class="badge done">done</span>' in html
    gens = re.findall(r'<tr data-generation="(\d)"><td>\d</td><td class="txt">[^<]*</td><td>([^<]*)</td>'
                      r'<td class="txt">(\w+)</td>', html)  # fmt: skip
    assert gens == [("1", "–", "failed"), ("2", "0", "done")]
    timeline = plot(html, "timeline")
    assert 'data-mark="generation"' in timeline and 'data-mark="failed"' in timeline
    steps = table_rows(html, "steps")
    assert {steps[f"r0-step-{n}"]["generation"] for n in range(1, 6)} == {"2"}  # all redone by gen 2
    assert "reward (generation" not in plot(html, "reward")  # one generation committed every step
    check_numbers(html, tmp_path / "run")


async def test_a_cancelled_run_resumed_shows_both_generations_in_the_curves(tmp_path: Path) -> None:
    import asyncio

    from engine.lifecycle import State
    from engine.lifecycle.events import LifecycleEvent
    from engine.run.orchestrator import RunHandle, start

    p = planes()
    handles: list[RunHandle] = []

    def watch(e: LifecycleEvent) -> None:
        if e.kind == "enter" and e.state is State.SAMPLING and e.step == 3:
            handles[0].cancel()  # lands inside SAMPLING: the Runner journals the cancellation

    handle = start(run_config(tmp_path, max_steps=6), planes=p, on_event=watch)
    handles.append(handle)
    with pytest.raises(asyncio.CancelledError):
        await handle.wait()
    await run(None, run_dir=tmp_path / "run", planes=p)
    html = (tmp_path / "run" / "report.html").read_text()
    steps = table_rows(html, "steps")
    by_gen = {n: steps[f"r0-step-{n}"]["generation"] for n in range(1, 7)}
    assert by_gen[1] == by_gen[2] == "1" and by_gen[6] == "2"  # steps kept from gen 1, the rest gen 2
    reward = plot(html, "reward")
    assert "reward (generation 1)" in reward and "reward (generation 2)" in reward
    assert 'data-mark="cancelled"' in plot(html, "timeline")
    check_numbers(html, tmp_path / "run")


async def test_two_runs_overlay(tmp_path: Path) -> None:
    await run(run_config(tmp_path, "a", run_id="lr-small"), planes=planes())
    await run(run_config(tmp_path, "b", run_id="lr-large", learning_rate=0.01, max_steps=3), planes=planes())
    assert hotloop(["report", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    html = (tmp_path / "a" / "report.html").read_text()
    assert "hotloop run report: lr-small vs lr-large" in html
    for label in ("lr-small", "lr-large"):
        assert f'data-plot="timeline:{label}"' in html
        assert f"{label}: reward" in plot(html, "reward")
    diff = re.search(r'<table class="config-diff">.*?</table>', html, re.S)
    assert diff and "learning_rate" in diff.group(0) and "max_steps" in diff.group(0)
    assert 'id="r1-step-3"' in html and 'id="r1-step-4"' not in html  # the second run's own steps
    check_numbers(html, tmp_path / "a", 0, "lr-small")
    check_numbers(html, tmp_path / "b", 1, "lr-large")


async def test_a_report_that_cannot_be_written_never_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.report

    def broken(*_: Any) -> Path:
        raise OSError("disk full")

    monkeypatch.setattr(engine.report, "write_report", broken)
    summary = await run(run_config(tmp_path), planes=planes())
    assert summary.status == "done" and summary.steps == 5
    assert not (tmp_path / "run" / "report.html").exists()


def test_the_timeline_reads_interruptions_recoveries_and_unknown_kinds() -> None:
    t = 1000.0
    records: list[dict[str, Any]] = [
        {"t": t, "event": "start", "generation": 1},
        {"t": t + 1, "event": "enter", "state": "training", "step": 0},
        {"t": t + 2, "event": "exit", "state": "training", "next": "checkpointing", "step": 0, "seconds": 1.0,
         "records": [{"kind": "step", "row": {"kind": "step", "step": 1}}, {"kind": "future", "x": 1}]},
        {"t": t + 2, "event": "enter", "state": "checkpointing", "step": 1},  # killed in here
        {"t": t + 50, "event": "start", "generation": 2, "resume_from": 0},
        {"t": t + 51, "event": "enter", "state": "waiting", "step": 0},
        {"t": t + 52, "event": "exit", "state": "waiting", "next": "training", "step": 0, "seconds": 1.0,
         "records": [{"kind": "recovery", "step": 0, "reason": "trainer restarted"}]},
        {"t": t + 53, "event": "telemetry", "what": "a record kind from a newer hotloop"},
        {"t": t + 53, "event": "enter", "state": "training", "step": 0},
    ]  # fmt: skip
    tl = read_timeline(records, now=t + 60, open_limit_s=5.0)
    assert [g.outcome for g in tl.generations] == ["interrupted", "open"] and tl.status == "running"
    assert [(v.state, v.outcome) for v in tl.visits] == [
        ("training", "ok"), ("checkpointing", "interrupted"), ("waiting", "ok"), ("training", "open")
    ]  # fmt: skip
    assert tl.visits[-1].end == t + 58  # a live state's bar stops at its hard limit, not at "now"
    kinds = [m.kind for m in tl.marks]
    assert kinds == ["interrupted", "resumed", "recovery", "open"]
    assert "trainer restarted" in tl.marks[2].detail
    assert [o[2].get("kind") or o[2].get("event") for o in tl.other] == ["future", "telemetry"]
    by_state = {s.lane: s for s in time_per_state(tl)}
    assert by_state["training"].visits == 2 and by_state["setup"].visits == 2


def test_a_run_that_has_only_begun_or_lacks_its_start_record_still_reports(tmp_path: Path) -> None:
    from engine.report import write_report

    (tmp_path / "config.yaml").write_text("max_steps: 2\n")
    html = write_report(tmp_path).read_text()
    assert '<span class="badge empty">empty</span>' in html and "No step committed yet." in html
    (tmp_path / "journal.jsonl").write_text(
        '{"t": 5.0, "event": "enter", "state": "requesting", "step": 0}\n'
    )
    tl = read_timeline([{"t": 5.0, "event": "enter", "state": "requesting", "step": 0}])
    assert tl.generations[0].start == 5.0 and tl.visits[0].outcome == "open"
    assert 'data-lane="requesting" data-kind="open"' in write_report(tmp_path).read_text()
