"""Tonight's tuning, family by family, with and without the time budget, on the demo store.

Runs the nightly's model stages in this process, without Airflow and without publishing, for
``--date`` on the lake of ``RECSYS_HOME``: ``aggregate`` and ``index_events``, then tuning
twice on the same hold-out —

* **budgeted**, as the DAG runs it: ``screen`` every candidate on 1/RECSYS_TUNE_HALVING of
  the users, ``promote`` the best that fit RECSYS_TUNE_BUDGET_SECONDS, ``tune`` those;
* **full grid** (the baseline, unless ``--no-baseline``): ``tune`` every candidate —

then ``train`` (on the budgeted results) and ``recommend``. It prints the stage seconds, one
row per model family (candidates, fully evaluated, cut early; the best fully evaluated
candidate's NDCG@20, MAP@20 and seconds; the family's seconds), every candidate best first,
and the budget's ratio against the full grid (seconds, winner's NDCG@20).

``--scale S`` makes the demo store at S × its size (100,000 users, 2,465 items, 800,000 events
over 70 days, ending 2026-10-31) in ``$RECSYS_HOME/demo`` when it is not there with that size,
and ingests it (extract, validate); ``--ingest`` ingests the store RECSYS_SOURCE names.

    RECSYS_HOME=/tmp/t1 .venv/bin/python bench/tuning.py --scale 1 [--grid G] [--budget S] [--no-baseline]
    RECSYS_HOME=/tmp/home .venv/bin/python bench/tuning.py --date 2026-10-31 [--ingest]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import setup_logging

from recsys import datasets
from recsys.config import Settings
from recsys.core.grid import tuning_candidates
from recsys.io import lake
from recsys.io.report import params_text
from recsys.stages.aggregate import aggregate
from recsys.stages.extract import extract
from recsys.stages.index_events import index_events
from recsys.stages.recommend import recommend
from recsys.stages.train import train
from recsys.stages.tune import candidates as estimate_and_cut
from recsys.stages.tune import promote, screen, tune
from recsys.stages.validate import validate

DEMO = {"users": 100_000, "items": 2_465, "events": 800_000}
DAYS = 70
END_DATE = dt.date(2026, 10, 31)


def ensure_demo(home: Path, scale: float) -> dict[str, str]:
    """The demo store at ``scale`` in ``home/demo`` (made when missing or of another size);
    returns the RECSYS_SOURCE and RECSYS_CATALOG that read it."""
    from recsys.dev.datagen import generate_store

    store = home / "demo"
    want = {**{k: int(round(v * scale)) for k, v in DEMO.items()}, "days": DAYS, "end_date": END_DATE.isoformat()}
    marker = store / "_bench.json"
    if not (marker.exists() and json.loads(marker.read_text()) == want):
        generate_store(store, days=DAYS, end_date=END_DATE, **{k: want[k] for k in DEMO})
        marker.write_text(json.dumps(want))
    return {"RECSYS_SOURCE": str(store / "interactions"), "RECSYS_CATALOG": str(store / "catalog.parquet")}


def family_rows(grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per family: counts, the best fully evaluated candidate, the family's seconds."""
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in grid:
        by_family[row["params"]["model"]].append(row)
    rows = []
    for family, entries in by_family.items():
        full = [e for e in entries if not e.get("cut") and not e.get("skipped")]
        best = max(full, key=lambda e: e["ndcg_at_k"]) if full else None
        rows.append({"family": family, "candidates": len(entries), "full": len(full),
                     "cut": sum(1 for e in entries if e.get("cut")),
                     "skipped": sum(1 for e in entries if e.get("skipped")),
                     "best": best, "seconds": sum(float(e.get("seconds") or 0.0) for e in entries)})
    return sorted(rows, key=lambda r: -(r["best"]["ndcg_at_k"] if r["best"] else -1.0))


def print_families(title: str, grid: list[dict[str, Any]], k: int, event_weights: dict[str, float]) -> None:
    print(f"\n{title}")
    print(f"{'family':<9} {'cands':>5} {'full':>4} {'cut':>4} {'skip':>4} {'NDCG@' + str(k):>8} {'MAP@' + str(k):>8} "
          f"{'best s':>7} {'family s':>8}  best candidate")
    for r in family_rows(grid):
        best = r["best"]
        figures = (f"{best['ndcg_at_k']:>8.4f} {best['map_at_k']:>8.4f} {float(best.get('seconds') or 0):>7.1f}"
                   if best else f"{'—':>8} {'—':>8} {'—':>7}")
        print(f"{r['family']:<9} {r['candidates']:>5} {r['full']:>4} {r['cut']:>4} {r['skipped']:>4} {figures} "
              f"{r['seconds']:>8.1f}  {params_text(best['params'], event_weights) if best else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--date", default=END_DATE.isoformat(), help=f"run date (default {END_DATE})")
    parser.add_argument("--scale", type=float, help="make and ingest the demo store at this scale in $RECSYS_HOME/demo")
    parser.add_argument("--grid", help="tuning grid for this run (default: RECSYS_TUNING_GRID or the built-in one)")
    parser.add_argument("--budget", type=int, help="RECSYS_TUNE_BUDGET_SECONDS for the budgeted tuning")
    parser.add_argument("--ingest", action="store_true", help="run extract and validate first")
    parser.add_argument("--no-baseline", action="store_true", help="skip the full-grid baseline")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    overrides: dict[str, str] = {}
    if args.scale:
        overrides = ensure_demo(Path(Settings.from_env().home), args.scale)
    settings = Settings.from_env({**os.environ, **overrides})
    if args.grid is not None:
        settings = settings.with_overrides({"tuning_grid": args.grid})
    if args.budget is not None:
        settings = settings.with_overrides({"tune_budget_seconds": args.budget})
    day = dt.date.fromisoformat(args.date)
    times: list[tuple[str, float]] = []

    def timed(name: str, fn: Any, *a: Any) -> Any:
        started = time.perf_counter()
        out = fn(settings, day, *a)
        times.append((name, time.perf_counter() - started))
        return out

    if args.ingest or args.scale:
        extracted = timed("extract", extract)
        timed("validate", validate, extracted["days"])
    if not lake.is_s3(settings.lake):  # a benchmark is not gated by what an earlier run served
        (Path(settings.lake) / datasets.CHAMPION).unlink(missing_ok=True)
    timed("aggregate", aggregate)
    timed("index_events", index_events)
    candidates = tuning_candidates(settings)
    baseline: list[dict[str, Any]] = []
    if not args.no_baseline:
        started = time.perf_counter()
        baseline = [tune(settings, day, c) for c in candidates]
        times.append((f"full grid: tune x{len(baseline)}", time.perf_counter() - started))
    kept = timed("candidates (estimates)", estimate_and_cut)
    started = time.perf_counter()
    screened = [screen(settings, day, c) for c in kept]
    times.append((f"screen x{len(screened)}", time.perf_counter() - started))
    promoted = timed("promote", promote, screened)
    started = time.perf_counter()
    results = [tune(settings, day, c) for c in promoted]
    times.append((f"tune x{len(results)}", time.perf_counter() - started))
    budgeted_seconds = sum(s for name, s in times if name.startswith(("candidates", "screen", "promote", "tune")))
    timed("train", train, results)
    timed("recommend", recommend)

    metrics = lake.read_partition_json(settings.lake, "models", day, "metrics.json")
    k, weights = settings.k, settings.event_weights
    print(f"window {settings.window_days} days, hold-out {settings.holdout_days} days, "
          f"{metrics['model']['users_evaluated']:,} hold-out users, {metrics['train_users']:,} users x "
          f"{metrics['train_items']:,} items; budget {settings.tune_budget_seconds} s, 1/{settings.tune_halving}")
    print(f"\n{'stage':<22} {'seconds':>8}")
    for name, seconds in times:
        print(f"{name:<22} {seconds:>8.1f}")
    print_families("budgeted (what the nightly does): per family", metrics["grid"], k, weights)
    if baseline:
        full_grid = [{"params": r["params"], **r["metrics"], "seconds": r["seconds"],
                      **({"skipped": r["metrics"]["skipped"]} if r["metrics"].get("skipped") else {})}
                     for r in baseline]
        print_families("full grid (every candidate fully evaluated): per family", full_grid, k, weights)
    print(f"\n{'NDCG@' + str(k):>8} {'MAP@' + str(k):>8} {'seconds':>8}  candidate (budgeted run)")
    for row in metrics["grid"]:
        if row.get("cut") and "ndcg_at_k" not in row:
            print(f"{'—':>8} {'—':>8} {'—':>8}  {params_text(row['params'], weights)} (not screened)")
            continue
        note = " (skipped)" if row.get("skipped") else " (cut early: screening figures)" if row.get("cut") else ""
        print(f"{row['ndcg_at_k']:>8.4f} {row['map_at_k']:>8.4f} {row.get('seconds') or 0:>8.1f}  "
              f"{params_text(row['params'], weights)}{note}")
    pop = metrics["popularity"]
    print(f"{pop['ndcg_at_k']:>8.4f} {pop['map_at_k']:>8.4f} {'':>8}  popularity")
    summary: dict[str, Any] = {"winner": metrics["grid"][0]["params"], "ndcg_at_k": metrics["grid"][0]["ndcg_at_k"],
                               "budgeted_seconds": round(budgeted_seconds, 1)}
    if baseline:
        best = max((r for r in baseline if not r["metrics"].get("skipped")), key=lambda r: r["metrics"]["ndcg_at_k"])
        full_seconds = next(s for name, s in times if name.startswith("full grid"))
        summary.update(full_grid_seconds=round(full_seconds, 1), full_grid_winner=best["params"],
                       full_grid_ndcg_at_k=best["metrics"]["ndcg_at_k"],
                       seconds_ratio=round(budgeted_seconds / max(full_seconds, 1e-9), 2),
                       ndcg_ratio=round(metrics["grid"][0]["ndcg_at_k"] / max(best["metrics"]["ndcg_at_k"], 1e-9), 4))
        print(f"\nbudgeted / full grid: seconds {summary['seconds_ratio']:.2f}x, winner's NDCG@{k} "
              f"{summary['ndcg_ratio']:.4f}x")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
