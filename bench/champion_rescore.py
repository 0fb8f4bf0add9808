"""How the served champion's NDCG@k, re-scored on tonight's hold-out, compares with the same
parameters fit on tonight's training days, by how many of tonight's hold-out days the
champion's own window held (a small generated store; prints a table).

    python bench/champion_rescore.py
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from pathlib import Path

from recsys.config import Settings
from recsys.core.grid import make_candidate
from recsys.core.holdout import score_candidate, score_champion
from recsys.dev.datagen import generate_store
from recsys.io.artifacts import load_champion, load_holdout
from recsys.stages.aggregate import aggregate
from recsys.stages.extract import extract
from recsys.stages.index_events import index_events
from recsys.stages.train import train
from recsys.stages.validate import validate

END = dt.date(2026, 5, 31)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    home = Path(tempfile.mkdtemp(prefix="champion-rescore-"))
    generate_store(home / "demo", users=1_500, items=150, events=30_000, days=30, seed=7, end_date=END, categories=6)
    settings = Settings.from_env({
        "RECSYS_HOME": str(home), "RECSYS_SOURCE": str(home / "demo" / "interactions"),
        "RECSYS_CATALOG": str(home / "demo" / "catalog.parquet"), "RECSYS_WINDOW_DAYS": "21",
        "RECSYS_HOLDOUT_DAYS": "4", "RECSYS_TUNING_GRID": "", "RECSYS_FACTORS": "16"})
    days = [END - dt.timedelta(days=n) for n in (6, 3, 2, 1, 0)]
    for day in days:
        validate(settings, day, extract(settings, day)["days"])
        aggregate(settings, day)
        index_events(settings, day)
    served = END - dt.timedelta(days=1)
    out = train(settings, served)
    print(f"champion of {served}: ALS, 16 factors; NDCG@{settings.k} stored when served {out['ndcg_at_k']:.4f}")
    print("| tonight | hold-out days its window held | champion re-scored | same parameters fit on tonight's "
          "training days |\n|---|---|---|---|")
    champion = load_champion(settings, {"model_version": out["model_version"], "run_date": served.isoformat()})
    for day in days:
        data = load_holdout(settings, day)
        rescored = score_champion(settings, data, champion)  # train does not compare one of tonight's date or later
        fresh = score_candidate(settings, data, make_candidate(settings))
        held = (min(served, day) - (day - dt.timedelta(days=settings.holdout_days - 1))).days + 1
        print(f"| {day} | {held} | {rescored['ndcg_at_k']:.4f} | {fresh['ndcg_at_k']:.4f} |")

if __name__ == "__main__":
    main()
