"""The refresh's scoring against the number of active users, beside scoring the same users with
the library's own call on the same model (ALS: implicit's ``recommend`` with
``recalculate_user=True``; item models: their history rows times the item matrix, no filters).

Needs a lake after a nightly run that was served (``models/champion.json``): the active users
are a seeded sample of the night's users, each given ``--events`` new views of random items
the model knows, 12 hours after the night. Prints a table (stdout); the whole refresh run,
reading and writing included, is what ``recsys refresh`` prints.

    RECSYS_HOME=var python bench/refresh.py --users 1000,10000
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np
import pyarrow as pa
from _common import start_run

from recsys.config import Settings
from recsys.core.families import ItemModel
from recsys.core.holdout import Champion, champion_history, champion_params
from recsys.core.lists import ItemFilters
from recsys.core.model import PairEvents, SortedEvents, scale_confidence, take_users
from recsys.core.refresh import refresh_lists, shift_ages
from recsys.core.window import Window
from recsys.io.artifacts import load_champion, load_window_events, read_champion
from recsys.io.sources.files import read_catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", default="1000,10000", help="active users per row, comma-separated")
    parser.add_argument("--events", type=int, default=3, help="new events per active user")
    args = parser.parse_args()
    start_run()
    settings = Settings.from_env()
    record = read_champion(settings)
    if record is None:
        raise SystemExit(f"no served nightly in {settings.lake}: run `recsys run --date latest` first")
    champion = load_champion(settings, record)
    night = dt.date.fromisoformat(record["run_date"])
    until = Window.of(settings, night).end + dt.timedelta(hours=12)
    window = shift_ages(load_window_events(settings, night), 0.5)
    filters = ItemFilters.from_catalog(read_catalog(settings.catalog), champion.item_ids)
    rng = np.random.default_rng(settings.random_state)
    print(f"model {record['model_version']} ({champion.model.model}), {len(window.user_ids):,} users in the night's "
          f"window, {args.events} new views per active user\n")
    print("| active users | refresh_lists s | users/s | library call s | users/s |\n|---|---|---|---|---|")
    for n in (int(x) for x in args.users.split(",")):
        users = rng.choice(len(window.user_ids), size=min(n, len(window.user_ids)), replace=False)
        items = rng.integers(0, len(champion.item_ids), size=len(users) * args.events)
        at = int((until - dt.timedelta(hours=1)).timestamp() * 1_000_000)
        table = pa.table({"user_id": window.user_ids.take(pa.array(np.repeat(users, args.events))),
                          "item_id": champion.item_ids.take(pa.array(items)),
                          "event_type": pa.array(["View"] * len(items), pa.string()),
                          "event_us": pa.array(np.full(len(items), at), pa.int64())})
        new = SortedEvents.of(table).before(until)
        started = time.perf_counter()
        result = refresh_lists(settings, champion, window, new, filters)
        ours = time.perf_counter() - started
        scored = result.active_users - result.unscored_users
        library = _library_call(settings, champion, window, new, np.sort(users))
        print(f"| {scored:,} | {ours:.2f} | {scored / ours:,.0f} | {library:.2f} | {scored / library:,.0f} |")


def _library_call(settings: Settings, champion: Champion, window: PairEvents, new: PairEvents,
                  rows: np.ndarray) -> float:
    """Seconds the library's own call takes for the same users' histories (night + new)."""
    old = champion_history(champion, take_users(window, rows), np.arange(len(rows)))
    fresh = champion_history(champion, new, np.arange(len(new.user_ids)))
    history = (old.own + fresh.own).tocsr()  # both in user-id order: the same users, sorted
    started = time.perf_counter()
    if isinstance(champion.model, ItemModel):
        champion.model.score(history)
    else:
        from implicit.cpu.als import AlternatingLeastSquares

        params = champion_params(champion)
        als = AlternatingLeastSquares(factors=champion.model.item_factors.shape[1],
                                      regularization=params.regularization, random_state=params.random_state)
        als.item_factors = np.ascontiguousarray(champion.model.item_factors, dtype=np.float32)
        scaled = scale_confidence(history, params.alpha, params.weighting)
        als.recommend(np.arange(history.shape[0]), scaled, N=settings.k, filter_already_liked_items=True,
                      recalculate_user=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
