"""The run report's page (pure): run views in, one self-contained HTML string out.

Inline SVG (engine.report.charts) and inline CSS; no scripts, no external resources. Table cells show
metrics exactly as metrics.jsonl holds them (numbers in their JSON form), so what a reader copies is
what the run recorded. Steps, evaluations and the checkpoint ledger link to each other by anchors.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any

from engine.plots.page import CSS
from engine.report.charts import gantt, generation_of, learning_charts, time_charts
from engine.report.data import RunView
from engine.report.timeline import display_clock, time_per_state

EXTRA_CSS = """
.badge{display:inline-block;padding:2px 8px;border-radius:4px;font-weight:600;color:#fff}
.done{background:#2ca02c}.failed{background:#d62728}.cancelled{background:#ff7f0e}
.running,.interrupted,.empty{background:#1f77b4}
pre{background:#f7f7f7;border:1px solid #ddd;padding:8px;font-size:12px;overflow:auto;max-height:480px}
td.txt{text-align:left;font-family:ui-monospace,monospace;font-size:12px}
tr:target{background:#fff6cc}
"""
STEP_KEYS = ("reward_mean", "objective", "loss", "window", "staleness", "policy_version", "samples",
             "tokens", "sample_s", "train_s", "optimizer_steps")  # fmt: skip
EVAL_KEYS = ("score", "samples", "eval_s")


def value(v: Any) -> str:
    """A metric exactly as recorded: numbers in their JSON form, lists joined, text escaped."""
    if v is None:
        return "–"
    if isinstance(v, bool | int | float):
        return json.dumps(v)
    if isinstance(v, list):
        return escape(", ".join(str(x) for x in v))
    return escape(str(v))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _table(head: Sequence[str], rows: Iterable[str], cls: str = "") -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><tr>{th}</tr>{''.join(rows)}</table>"


def _td(v: Any, key: str = "", txt: bool = False) -> str:
    attrs = (f' data-key="{escape(key)}"' if key else "") + (' class="txt"' if txt else "")
    return f"<td{attrs}>{value(v)}</td>"


def _tr(attrs: str, *cells: str) -> str:
    return f"<tr {attrs}>{''.join(cells)}</tr>" if attrs else f"<tr>{''.join(cells)}</tr>"


def _link(href: str, text: str) -> str:
    return f'<a href="#{escape(href)}">{escape(text)}</a>'


def _summary_table(runs: list[RunView]) -> str:
    rows = []
    for run in runs:
        steps = run.steps
        evals = run.evals
        _, active = display_clock(run.timeline)
        rows.append(
            "<tr>"
            + _td(run.label, txt=True)
            + f'<td><span class="badge {run.timeline.status}">{escape(run.timeline.status)}</span></td>'
            + _td(len(run.timeline.generations))
            + _td(max((int(r["step"]) for r in steps), default=0), "steps")
            + _td(steps[-1].get("reward_mean") if steps else None, "reward_last")
            + _td(evals[0].get("score") if evals else None, "eval_first")
            + _td(evals[-1].get("score") if evals else None, "eval_last")
            + _td(round(active, 3), "active_s")
            + _td(str(run.path), txt=True)
            + "</tr>"
        )
    head = (
        "run",
        "status",
        "generations",
        "steps",
        "last reward",
        "first eval",
        "last eval",
        "active s",
        "dir",
    )
    return _table(head, rows, "summary")


def _state_table(run: RunView) -> str:
    times = time_per_state(run.timeline)
    total = sum(t.total_s for t in times) or 1.0
    rows = [
        _tr(f'data-state="{escape(t.lane)}"', _td(t.lane, txt=True), _td(t.visits), _td(round(t.total_s, 4)),
            _td(round(t.total_s / t.visits, 4)), _td(round(t.max_s, 4)),
            _td(round(100 * t.total_s / total, 1)), _td(t.failed))
        for t in times
    ]  # fmt: skip
    head = ("state", "visits", "total s", "mean s", "max s", "% of state time", "failed")
    return _table(head, rows, "state-times")


def _marks_table(run: RunView) -> str:
    marks = [m for m in run.timeline.marks if m.kind != "open" or run.timeline.status == "running"]
    if not marks:
        return "<p class='note'>No failures, cancellations, interruptions or recoveries.</p>"
    t0 = run.timeline.start
    rows = [
        _tr(f'data-mark="{escape(m.kind)}"', _td(m.kind, txt=True), _td(m.generation), _td(m.state, txt=True),
            _td(m.step), _td(round(m.t - t0, 3)), _td(m.detail, txt=True))
        for m in marks
    ]  # fmt: skip
    return _table(("event", "generation", "state", "step", "at s", "detail"), rows, "marks")


def _generations_table(run: RunView) -> str:
    rows = []
    for g in run.timeline.generations:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(g.start))
        rows.append(
            f'<tr data-generation="{g.number}">' + _td(g.number) + _td(when, txt=True) + _td(g.resume_from)
            + _td(g.outcome, txt=True) + _td(round(g.end - g.start, 3)) + _td(g.error, txt=True) + "</tr>"
        )  # fmt: skip
    return _table(
        ("generation", "started", "resumed from step", "ended", "wall s", "error"), rows, "generations"
    )


def _ledger_index(run: RunView, r: int) -> tuple[dict[int, list[str]], dict[str, str]]:
    """Links to the ledger: step -> its entries' links; snapshot identity -> its row id."""
    by_step: dict[int, list[str]] = {}
    snap_ids: dict[str, str] = {}
    for i, entry in enumerate(run.ledger):
        rid = f"r{r}-ckpt-{i}"
        kind = str(entry.get("kind"))
        text = kind if kind != "snapshot" else f"{entry.get('checkpoint_type', '')} snapshot"
        if "step" in entry:
            by_step.setdefault(int(entry["step"]), []).append(_link(rid, text))
        if kind == "snapshot" and entry.get("identity"):
            snap_ids[str(entry["identity"])] = rid
    return by_step, snap_ids


def _identity(v: Any, snap_ids: Mapping[str, str]) -> str:
    if isinstance(v, str) and v in snap_ids:
        return f'<td class="txt" data-key="snapshot_identity">{_link(snap_ids[v], v)}</td>'
    return _td(v if v is not None else "base weights", "snapshot_identity", txt=True)


def _steps_table(run: RunView, r: int) -> str:
    gens = generation_of(run)
    by_step, snap_ids = _ledger_index(run, r)
    keys = [k for k in STEP_KEYS if any(k in row for row in run.steps)]
    rows = []
    for row in run.steps:
        step = int(row["step"])
        rows.append(
            f'<tr id="r{r}-step-{step}" data-step="{step}">' + _td(step, "step")
            + _td(gens.get(("step", step)), "generation") + "".join(_td(row.get(k), k) for k in keys)
            + _identity(row.get("snapshot_identity"), snap_ids)
            + f'<td class="txt">{" · ".join(by_step.get(step, [])) or "–"}</td></tr>'
        )  # fmt: skip
    head = ("step", "generation", *keys, "sampled from", "checkpoints")
    return _table(head, rows, "steps") if rows else "<p class='note'>No step committed yet.</p>"


def _evals_table(run: RunView, r: int) -> str:
    gens = generation_of(run)
    _, snap_ids = _ledger_index(run, r)
    rows = []
    for row in run.evals:
        step = int(row["step"])
        step_cell = _link(f"r{r}-step-{step}", str(step)) if step else "0"
        rows.append(
            f'<tr id="r{r}-eval-{step}" data-step="{step}"><td data-key="step">{step_cell}</td>'
            + _td(gens.get(("eval", step)), "generation") + "".join(_td(row.get(k), k) for k in EVAL_KEYS)
            + _identity(row.get("snapshot_identity"), snap_ids)
            + _td(row.get("prompts_sha256"), "prompts_sha256", txt=True) + "</tr>"
        )  # fmt: skip
    head = ("step", "generation", *EVAL_KEYS, "snapshot", "prompt set sha256")
    return _table(head, rows, "evals") if rows else "<p class='note'>No evaluation committed yet.</p>"


def _ledger_table(run: RunView, r: int) -> str:
    _, snap_ids = _ledger_index(run, r)
    steps = {int(row["step"]) for row in run.steps}
    rows = []
    for i, e in enumerate(run.ledger):
        step = e.get("step")
        step_cell = _link(f"r{r}-step-{step}", str(step)) if step in steps else value(step)
        parent = e.get("parent")
        parent_cell = (
            _link(snap_ids[parent], parent)
            if isinstance(parent, str) and parent in snap_ids
            else value(parent)
        )
        what = e.get("identity") or e.get("path")
        rows.append(
            f'<tr id="r{r}-ckpt-{i}" data-kind="{escape(str(e.get("kind")))}">' + _td(e.get("kind"), txt=True)
            + f"<td>{step_cell}</td>" + _td(what, txt=True) + _td(e.get("checkpoint_type"), txt=True)
            + f'<td class="txt">{parent_cell}</td>' + _td(e.get("size_bytes"), "size_bytes")
            + _td(e.get("seconds"), "seconds") + _td(e.get("optimizer_steps"), "optimizer_steps") + "</tr>"
        )  # fmt: skip
    head = ("kind", "step", "identity / path", "type", "parent", "bytes", "hot-load s", "optimizer steps")
    return _table(head, rows, "ledger") if rows else "<p class='note'>No checkpoint committed yet.</p>"


def _other_facts(run: RunView) -> str:
    if not run.timeline.other:
        return ""
    rows = [_td(g) + _td(round(t - run.timeline.start, 3)) + _td(json.dumps(dict(f), default=str), txt=True)
            for g, t, f in run.timeline.other]  # fmt: skip
    return (
        "<h3>Other journal records</h3>"
        "<p class='note'>Kinds this report does not know, shown as recorded.</p>"
        + _table(("generation", "at s", "record"), (f"<tr>{r}</tr>" for r in rows), "other")
    )


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_diff(runs: list[RunView]) -> str:
    flats = [_flat(run.config) for run in runs]
    keys = sorted({k for f in flats for k in f} - {"run_dir", "run_id"})
    differ = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
    if not differ:
        return "<p class='note'>The configs are the same (apart from run_id and run_dir).</p>"
    rows = [
        "<tr>" + _td(k, txt=True) + "".join(_td(f.get(k), txt=True) for f in flats) + "</tr>" for k in differ
    ]
    return _table(("setting", *(r.label for r in runs)), rows, "config-diff")


def build_report(runs: list[RunView], environment: Sequence[tuple[str, str]], *, generated: float) -> str:
    names = " vs ".join(run.label for run in runs)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>hotloop run report — {escape(names)}</title>",
        f"<style>{CSS}{EXTRA_CSS}</style></head><body>",
        f"<h1>hotloop run report: {escape(names)}</h1>",
        f"<p class='note'>written {escape(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(generated)))}"
        " · refresh with <code>hotloop report RUN_DIR</code> while the run goes</p>",
        '<h2 id="summary">Summary</h2>',
        _summary_table(runs),
    ]
    for run in runs:
        failed = [g for g in run.timeline.generations if g.outcome == "failed" and g.error]
        for g in failed:
            why = escape(g.error or "")
            parts.append(f"<p class='err'><b>{escape(run.label)}</b> generation {g.number} failed: {why}</p>")
        for note in run.problems:
            parts.append(f"<p class='err'>{escape(run.label)}: {escape(note)}</p>")
    parts += ['<h2 id="learning">Learning</h2><div class="grid">', *learning_charts(runs), "</div>"]
    parts.append('<h2 id="time">Where the time goes</h2>')
    for run in runs:
        parts.append(gantt(run, "timeline" if len(runs) == 1 else f"timeline:{run.label}"))
        parts.append(f"<h3>Time per state — {escape(run.label)}</h3>" + _state_table(run))
    parts += ['<div class="grid">', *time_charts(runs), "</div>"]
    parts.append('<h2 id="events">Failures, interruptions and recoveries</h2>')
    for run in runs:
        parts.append(f"<h3>{escape(run.label)}</h3>" + _marks_table(run) + _generations_table(run))
    for r, run in enumerate(runs):
        parts.append(f'<h2 id="steps-{r}">Steps, evaluations and checkpoints — {escape(run.label)}</h2>')
        parts.append("<details open><summary>steps</summary>" + _steps_table(run, r) + "</details>")
        parts.append("<details open><summary>evaluations</summary>" + _evals_table(run, r) + "</details>")
        parts.append(
            "<details open><summary>checkpoint ledger</summary>" + _ledger_table(run, r) + "</details>"
        )
        parts.append(_other_facts(run))
    parts.append('<h2 id="config">Config</h2>')
    if len(runs) > 1:
        parts.append("<h3>Differences</h3>" + _config_diff(runs))
    for run in runs:
        where = escape(f"{run.label}: {run.path / 'config.yaml'}")
        opened = " open" if len(runs) == 1 else ""
        parts.append(
            f"<details{opened}><summary>{where}</summary><pre>{escape(run.config_text)}</pre></details>"
        )
    parts.append('<h2 id="environment">Environment</h2><p class="note">of the process that wrote this report'
                 " (at the end of a run: the run's own)</p>")  # fmt: skip
    parts.append(_table(("package", "version"), ("<tr>" + _td(k, txt=True) + _td(v, txt=True) + "</tr>"
                                                  for k, v in environment), "environment"))  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)
