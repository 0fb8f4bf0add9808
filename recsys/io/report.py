"""The nightly model report: one self-contained HTML page per run date.

It shows how good the night's model was and why it won: hold-out metrics against the
popularity baseline, the quality gate's figures, every tuning candidate (a bar chart of
NDCG@k), and the metrics of past nights (a line chart). Charts are inline SVG, so the page
needs nothing but a browser; the Airflow UI links to it through ``plugins/recsys_reports.py``.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
from collections.abc import Sequence
from typing import Any

from recsys import datasets
from recsys.config import Settings
from recsys.io import lake

log = logging.getLogger(__name__)

METRICS = ("ndcg_at_k", "map_at_k", "precision_at_k", "recall_at_k", "catalog_coverage", "novelty_at_k",
           "intra_list_diversity_at_k")
LABELS = {"novelty_at_k": "novelty@{k} (bits)",
          "intra_list_diversity_at_k": "diversity@{k}"}


def report_uri(settings: Settings, day: dt.date) -> str:
    """``lake/reports/dt=D/report.html`` (a local path or an ``s3://`` URI)."""
    return f"{lake.partition_uri(settings.lake, datasets.REPORTS, day)}/{datasets.REPORT_FILE}"


def past_metrics(settings: Settings, until: dt.date, nights: int = 60) -> list[dict[str, Any]]:
    """metrics.json of the models of up to ``nights`` run dates before ``until``, oldest first."""
    found = []
    for day in [d for d in lake.list_days(settings.lake, datasets.MODELS) if d < until][-nights:]:
        try:
            found.append(lake.read_partition_json(settings.lake, datasets.MODELS, day, "metrics.json"))
        except FileNotFoundError:
            continue  # a model partition without metrics (not written by train)
    return found


def recent_refreshes(settings: Settings, runs: int = 24) -> list[dict[str, Any]]:
    """The records of up to ``runs`` of the newest hourly refresh runs that wrote lists
    (``refresh/runs/<end>.json``, written by publish_refresh), newest first."""
    names = lake.list_lake_json(settings.lake, datasets.REFRESH_RUNS)[-runs:]
    found = [lake.read_lake_json(settings.lake, f"{datasets.REFRESH_RUNS}/{name}") for name in reversed(names)]
    return [record for record in found if record]


def write_report(
    settings: Settings, day: dt.date, metrics: dict[str, Any], *, model_version: str | None, gate_error: str | None
) -> str:
    """Write the night's report (also when the gate failed: it shows why); returns its path."""
    history = past_metrics(settings, day) + [{"run_date": day.isoformat(), **metrics}]
    k = settings.k
    status = (
        f'<p class="bad">Quality gate FAILED: {html.escape(gate_error)}</p>'
        if gate_error
        else f'<p class="good">Quality gate passed; model <code>{html.escape(model_version or "")}</code> '
        "goes on to recommend and publish.</p>"
    )
    champion = metrics.get("champion") or {}
    rescored = bool(champion) and not champion.get("unavailable")
    rows = "".join(
        f"<tr><td>{_label(name, k)}</td>{_cell(metrics['model'], name)}{_cell(metrics['popularity'], name)}"
        f"<td>{_lift(metrics['model'].get(name), metrics['popularity'].get(name))}</td>"
        + (_cell(champion, name) if rescored else "") + "</tr>"
        for name in METRICS if name in metrics["model"]
    )
    grid = metrics.get("grid", [])
    grid_rows = "".join(
        f"<tr><td>{i + 1}</td><td><code>{html.escape(params_text(g['params'], settings.event_weights))}</code>"
        + (f"<br>skipped: {html.escape(g['skipped'])}" if g.get("skipped") else "")
        + (f"<br>cut early ({html.escape(g['cut'])})" if g.get("cut") else "")
        + ("; figures of the screening sample" if g.get("cut") and "ndcg_at_k" in g else "")
        + "</td>"
        + "".join(f"<td>{g[m]:.4f}</td>" if m in g else "<td>—</td>" for m in METRICS)
        + (f"<td>{g['seconds']:.1f}</td>" if g.get("seconds") is not None else "<td>—</td>") + "</tr>"
        for i, g in enumerate(grid)
    )
    gate = metrics.get("gate") or {}
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>recsys report {day}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 60rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }} td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} .good {{ color: #17703a; }} .bad {{ color: #b00020; font-weight: bold; }}
code {{ font-size: .85em; }}
</style></head><body>
<h1>recsys nightly report — {day}</h1>
{status}
<p>Hold-out: the newest {settings.holdout_days} day(s) of a {settings.window_days}-day window;
{metrics['model']['users_evaluated']:,} users known before the hold-out are scored on the items they touched there for the
first time ({metrics.get('holdout_users_cold', 0):,} hold-out users were new: they get the popular list).
Candidates were fit on the training part: {metrics.get('train_users', 0):,} users (at most RECSYS_TUNE_MAX_USERS)
× {metrics.get('train_items', 0):,} items, {metrics.get('train_nonzeros', 0):,} non-zeros. Lists are scored as they are served (seen and inactive items removed).</p>
<h2>Model against popularity</h2>
<table><tr><th>metric</th><th>model</th><th>popularity</th><th>lift</th>{"<th>champion, re-scored</th>" if rescored else ""}</tr>{rows}</table>
<p>Gate: NDCG@{k} needs ≥ {gate.get('required_over_popularity', 0):.4f} (popularity + {settings.gate_min_lift:.0%})
{_champion_text(champion, gate, settings)}.</p>
{_churn_text(metrics.get("churn"), k)}
<h2>Hourly refresh: the last runs</h2>
{_refresh_text(recent_refreshes(settings))}
<h2>Tuning candidates (best first)</h2>
{_tuning_text(metrics.get("tuning"), grid)}
{_bar_chart([g.get('ndcg_at_k', 0.0) for g in grid], [str(i + 1) for i in range(len(grid))], f"NDCG@{k} per candidate", metrics['popularity']['ndcg_at_k'])}
<table><tr><th>#</th><th>candidate</th><th>NDCG@{k}</th><th>MAP@{k}</th><th>precision@{k}</th><th>recall@{k}</th>
<th>coverage</th><th>novelty@{k}</th><th>diversity@{k}</th><th>seconds</th></tr>{grid_rows}</table>
<h2>Past nights</h2>
{_line_chart(history, k)}
</body></html>
"""
    with lake.replace_partition(settings.lake, datasets.REPORTS, day) as tmp:
        lake.write_text(tmp / datasets.REPORT_FILE, page)
    where = report_uri(settings, day)
    log.info("report: %s", where)
    return where


def _champion_text(champion: dict[str, Any], gate: dict[str, Any], settings: Settings) -> str:
    """The champion's part of the gate line: its re-scored figure, or why it was not compared."""
    if not champion:
        return "(no champion served yet)"
    name = html.escape(str(champion.get("model_version")))
    stored = champion.get("stored_ndcg_at_k")
    when_served = f"{stored:.4f} when it was served" if isinstance(stored, int | float) else "no figure stored"
    if champion.get("unavailable"):
        return (f'<span class="bad">(served champion {name} not compared: {html.escape(champion["unavailable"])}; '
                f"only the popularity rule applied)</span>")
    required = gate.get("required_over_champion") or 0.0
    basis = html.escape(str(gate.get("champion_basis") or "re-scored on tonight's hold-out"))
    return (f"and ≥ {required:.4f}: the served champion {name}, {basis}, − {settings.gate_max_drop:.0%} "
            f"(re-scored on tonight's hold-out: {champion['ndcg_at_k']:.4f}; {when_served}; its window held "
            f"{champion.get('holdout_days_trained_on', 0)} of tonight's hold-out days)")


def _refresh_text(runs: list[dict[str, Any]]) -> str:
    """The table of the newest refresh runs: when, with which night, users written, seconds."""
    if not runs:
        return "<p>No refresh run has written lists yet (DAG <code>recsys_refresh</code>).</p>"

    def secs(value: Any) -> str:
        return "—" if value is None else f"{float(value):.1f}"

    rows = "".join(
        f"<tr><td>{html.escape(str(r.get('until')))}</td><td>{html.escape(str(r.get('served_run_date')))}</td>"
        f"<td>{r.get('users', 0):,}</td><td>{r.get('new_users', 0):,}</td><td>{r.get('kept_newer', 0):,}</td>"
        f"<td>{r.get('quarantined', 0):,} of {r.get('new_rows', 0):,}</td>"
        + "".join(f"<td>{secs((r.get('seconds') or {}).get(task))}</td>"
                  for task in ("collect_events", "score_active", "publish_refresh"))
        + f"<td>{secs(sum(float(v) for v in (r.get('seconds') or {}).values() if v is not None))}</td></tr>"
        for r in runs
    )
    return ("<p>Newest first: the lists of the shoppers active since the served night, rewritten with its model "
            "(users written; new: unknown to that night; kept: left as a newer run wrote them).</p>"
            "<table><tr><th>events up to</th><th>night</th><th>users</th><th>new</th><th>kept</th>"
            "<th>rows quarantined</th><th>collect s</th><th>score s</th><th>publish s</th><th>total s</th></tr>"
            f"{rows}</table>")


def _tuning_text(tuning: dict[str, Any] | None, grid: list[dict[str, Any]]) -> str:
    """How the budget was spent: screening, promotion, and how many were cut early."""
    if not tuning or not tuning.get("budget_seconds"):
        return "<p>Every candidate had a full evaluation (no RECSYS_TUNE_BUDGET_SECONDS).</p>"
    cut = sum(1 for g in grid if g.get("cut"))
    unscreened = sum(1 for g in grid if g.get("cut") and "ndcg_at_k" not in g)
    before = (f" {unscreened} of them were not screened at all: the screening's estimated seconds did not fit "
              f"the half of the budget it may spend, so the costliest were cut first, each family keeping its "
              f"cheapest." if unscreened else "")
    return (f"<p>The candidates were screened on 1/{tuning['halving']} of the users "
            f"({tuning['screening_seconds']:.0f} s in all); the best went on to a full evaluation within the "
            f"{tuning['budget_seconds']} s budget (RECSYS_TUNE_BUDGET_SECONDS). {cut} were cut early: their figures "
            f"are the screening sample's, listed after the fully evaluated ones.{before}</p>")


def _churn_text(churn: dict[str, Any] | None, k: int) -> str:
    """The night-to-night line: the mean Jaccard of tonight's top-k against the previous night's."""
    if not churn:
        return "<p>Night-to-night churn: no earlier night's lists in the lake to compare with.</p>"
    return (f"<p>Night-to-night churn: mean Jaccard of a user's top-{k} against the lists of "
            f"{html.escape(str(churn['previous_run_date']))}: {churn['jaccard_at_k']:.4f} (1 = unchanged) over "
            f"{churn['users_compared']:,} users in both (of {churn['users_sampled']:,} sampled).</p>")


def _label(name: str, k: int) -> str:
    return LABELS.get(name, name.replace("_at_k", "@{k}")).format(k=k)


def _cell(values: dict[str, Any], name: str) -> str:
    return f"<td>{values[name]:.4f}</td>" if isinstance(values.get(name), int | float) else "<td>—</td>"


def _lift(model: float | None, baseline: float | None) -> str:
    return f"{model / baseline:.2f}×" if model is not None and baseline else "—"


def params_text(params: dict[str, Any], configured: dict[str, float] | None = None) -> str:
    """``model=als, factors=64, …, weights=configured, half_life=0``: a candidate in one line
    (a blend: ``blend 0.5 x (model=rp3beta, …) + 0.5 x (model=als, …), weights=…``).

    Event weights read ``configured`` (RECSYS_EVENT_WEIGHTS), ``uniform`` (every type 1), or
    ``View:1 Purchase:20 …``; random_state is left out.
    """
    if params.get("model") == "blend" and len(params.get("parts") or ()) == 2:
        weight, (first, second) = float(params["blend_weight"]), params["parts"]
        rest = {k: v for k, v in params.items() if k in ("event_weights", "half_life_days")}
        return (f"blend {weight:g} x ({params_text(first)}) + {1 - weight:g} x ({params_text(second)})"
                + (f", {params_text(rest, configured)}" if rest else ""))
    order = ("model", "factors", "regularization", "alpha", "weighting", "learning_rate", "iterations",
             "ease_lambda", "rp3_alpha", "rp3_beta", "similarity", "neighbours")
    parts = []
    for key, value in sorted(params.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)):
        if key == "random_state":
            continue
        if key == "event_weights":
            if configured is not None and value == {t: float(w) for t, w in configured.items()}:
                label = "configured"
            elif set(value.values()) == {1.0}:
                label = "uniform"
            else:
                label = " ".join(f"{t}:{w:g}" for t, w in value.items())
            parts.append(f"weights={label}")
        elif key == "half_life_days":
            parts.append(f"half_life={value:g}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def _bar_chart(values: Sequence[float], labels: Sequence[str], title: str, baseline: float) -> str:
    """Vertical bars with a dashed line at the baseline; inline SVG."""
    if not values:
        return ""
    width, height, pad = 40 * len(values) + 60, 220, 30
    top = max(max(values), baseline) * 1.1 or 1.0
    bar = 28
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="{pad}" y="14" font-size="12">{html.escape(title)} (dashed: popularity)</text>']
    for i, (value, label) in enumerate(zip(values, labels)):
        h = (height - 2 * pad) * value / top
        x = pad + 10 + i * 40
        parts.append(f'<rect x="{x}" y="{height - pad - h:.1f}" width="{bar}" height="{h:.1f}" fill="{"#17703a" if i == 0 else "#7a9cc6"}"/>')
        parts.append(f'<text x="{x + bar / 2}" y="{height - pad + 14}" font-size="11" text-anchor="middle">{html.escape(label)}</text>')
        parts.append(f'<text x="{x + bar / 2}" y="{height - pad - h - 3:.1f}" font-size="9" text-anchor="middle">{value:.3f}</text>')
    y = height - pad - (height - 2 * pad) * baseline / top
    parts.append(f'<line x1="{pad}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#b00020" stroke-dasharray="4"/>')
    parts.append("</svg>")
    return "".join(parts)


def _line_chart(history: list[dict[str, Any]], k: int) -> str:
    """Model and popularity NDCG@k per run date; inline SVG."""
    if len(history) < 2:
        return "<p>(the chart appears once there are two nights)</p>"
    width, height, pad = 720, 240, 40
    model = [h["model"]["ndcg_at_k"] for h in history]
    popular = [h["popularity"]["ndcg_at_k"] for h in history]
    top = max(model + popular) * 1.1 or 1.0
    step = (width - 2 * pad) / (len(history) - 1)

    def points(values: list[float]) -> str:
        return " ".join(f"{pad + i * step:.1f},{height - pad - (height - 2 * pad) * v / top:.1f}" for i, v in enumerate(values))

    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="NDCG over nights">'
        f'<text x="{pad}" y="16" font-size="12">NDCG@{k} per night: model (green), popularity (red)</text>'
        f'<polyline fill="none" stroke="#17703a" stroke-width="2" points="{points(model)}"/>'
        f'<polyline fill="none" stroke="#b00020" stroke-width="2" points="{points(popular)}"/>'
        f'<text x="{pad}" y="{height - 10}" font-size="11">{html.escape(history[0]["run_date"])}</text>'
        f'<text x="{width - pad}" y="{height - 10}" font-size="11" text-anchor="end">{html.escape(history[-1]["run_date"])}</text>'
        "</svg>"
    )
