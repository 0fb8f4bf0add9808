"""Stage times and the tuning grid of one nightly run, without Airflow and without publishing.

Runs ``aggregate``, one ``tune`` per candidate of the settings' grid, ``train`` and
``recommend`` of :mod:`recsys.pipeline` in this process for ``--date`` on the lake of
``RECSYS_HOME`` (extract and validate must have run: ``recsys run`` or ``--ingest``), and
prints the seconds of each stage and every candidate's hold-out metrics, best first, with
the popularity baseline. The quality gate compares against no champion here.

    RECSYS_HOME=/tmp/home .venv/bin/python bench/tuning.py --date 2026-10-31 [--ingest] [--grid 'factors=16,64']
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import logging
import time
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
from recsys.stages.tune import tune
from recsys.stages.validate import validate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--date", required=True)
    parser.add_argument("--grid", help="tuning grid for this run (default: RECSYS_TUNING_GRID or the built-in one)")
    parser.add_argument("--ingest", action="store_true", help="run extract and validate first")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    settings = Settings.from_env()
    if args.grid is not None:
        settings = settings.with_overrides({"tuning_grid": args.grid})
    day = dt.date.fromisoformat(args.date)
    times: list[tuple[str, float]] = []

    def timed(name: str, fn: Any, *a: Any) -> Any:
        started = time.perf_counter()
        out = fn(settings, day, *a)
        times.append((name, time.perf_counter() - started))
        return out

    if args.ingest:

        extracted = timed("extract", extract)
        timed("validate", validate, extracted["days"])
    if not lake.is_s3(settings.lake):  # a benchmark is not gated by what an earlier run served
        (Path(settings.lake) / datasets.CHAMPION).unlink(missing_ok=True)
    timed("aggregate", aggregate)
    timed("index_events", index_events)
    candidates = tuning_candidates(settings)
    started = time.perf_counter()
    results = [tune(settings, day, c) for c in candidates]
    times.append((f"tune x{len(results)}", time.perf_counter() - started))
    timed("train", train, results)
    timed("recommend", recommend)

    metrics = lake.read_partition_json(settings.lake, "models", day, "metrics.json")
    k = settings.k
    print(f"{'stage':<12} {'seconds':>8}")
    for name, seconds in times:
        print(f"{name:<12} {seconds:>8.1f}")
    print(f"\n{'NDCG@' + str(k):>8} {'MAP@' + str(k):>8} {'seconds':>8}  candidate")
    for row in metrics["grid"]:
        print(
            f"{row['ndcg_at_k']:>8.4f} {row['map_at_k']:>8.4f} {row.get('seconds', 0):>8.1f}  "
            f"{params_text(row['params'], settings.event_weights)}" + (" (skipped)" if row.get("skipped") else "")
        )
    pop = metrics["popularity"]
    print(f"{pop['ndcg_at_k']:>8.4f} {pop['map_at_k']:>8.4f} {'':>8}  popularity")
    print(json.dumps({"winner": metrics["grid"][0]["params"], "warm_users": metrics["model"]["users_evaluated"]}))


if __name__ == "__main__":
    main()
