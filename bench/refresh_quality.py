"""Whether the hourly refresh makes today's shoppers' lists better, on the demo store.

Generates the demo store at ``--scale`` (1: 100,000 users, 2,465 items, 800,000 events over 70
days to ``--end-date`` E; reused when its ``_bench.json`` says it has that size), then, against a
DynamoDB Local it starts in memory:

1. ``recsys run --date D`` with D = E - 7, the source holding the store's days up to D only;
2. the events of D+1 before 12:00 copied into the source (no later event exists there) and
   ``recsys refresh --until (D+1)T12:00:00Z``, timed as a whole (Airflow's start-up, reads and
   writes included);
3. for the users with events in those 12 hours, the lists they had after the nightly (the
   ``__popular__`` list for users the night did not know) and the lists they have after the
   refresh, both read from the table as the storefront reads them, scored against the items
   each touched for the first time from (D+1)T12:00 to the end of D+7 = E
   (``recsys.core.metrics``: NDCG@20, MAP@20; users with no such item left out).

Prints a markdown table (stdout); the log goes to stderr.

    nice -n 5 python bench/refresh_quality.py --scale 1
    nice -n 5 python bench/refresh_quality.py --scale 10 --conf '{"tuning_grid": "", "model": "als", "factors": 64}'
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import K, log, start_dynamodb_local, start_run

BASE = {"users": 100_000, "items": 2_465, "events": 800_000}
DAYS = 70
HOURS = 12
LATER_DAYS = 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="1: the demo store; 10: ten times its users, "
                                                                 "items and events")
    parser.add_argument("--end-date", type=dt.date.fromisoformat, default=dt.date(2026, 10, 31),
                        help="E, the store's last day; the nightly runs for E - 7")
    parser.add_argument("--workdir", type=Path, default=Path("var/bench-refresh-quality"),
                        help="the store (kept between runs), the source and a fresh RECSYS_HOME")
    parser.add_argument("--conf", default=None, help="DAG Params of the nightly as JSON (recsys run --conf)")
    args = parser.parse_args()
    start_run()

    end = args.end_date
    night = end - dt.timedelta(days=LATER_DAYS)
    until = dt.datetime.combine(night + dt.timedelta(days=1), dt.time(HOURS), tzinfo=dt.UTC)
    horizon = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    workdir = args.workdir.resolve()
    store = workdir / f"store-{args.scale:g}"
    generated = ensure_store(store, args.scale, end)

    source = workdir / "source"
    home = workdir / "home"
    for folder in (source, home):
        shutil.rmtree(folder, ignore_errors=True)
    source.mkdir(parents=True)
    for path in sorted((store / "interactions").glob("events-*.parquet")):
        if dt.date.fromisoformat(path.stem.removeprefix("events-")) <= night:
            (source / path.name).symlink_to(path)

    server = start_dynamodb_local()
    try:
        env = {**os.environ, "RECSYS_HOME": str(home), "RECSYS_SOURCE": str(source),
               "RECSYS_CATALOG": str(store / "catalog.parquet"), "RECSYS_DYNAMODB_ENDPOINT": server.endpoint}
        os.environ.update(env)
        nightly = ["run", "--date", night.isoformat(), *(["--conf", args.conf] if args.conf else [])]
        nightly_seconds, _ = run_recsys(nightly, env)

        morning = write_morning(store, source, night + dt.timedelta(days=1), until)
        active = sorted(set(morning))
        before = read_lists(active)
        refresh_seconds, out = run_recsys(["refresh", "--until", until.isoformat().replace("+00:00", "Z")], env)
        after = read_lists(active)
    finally:
        server.stop()

    relevant = first_touches(store, source, active, until, horizon)
    report(args, generated, night, until, horizon, nightly_seconds, refresh_seconds, out, active, before, after,
           relevant)


def ensure_store(store: Path, scale: float, end: dt.date) -> dict[str, Any]:
    """The demo store at ``scale`` ending on ``end``, generated unless ``_bench.json`` says it is there."""
    from recsys.dev.datagen import generate_store

    sizes = {name: int(round(value * scale)) for name, value in BASE.items()}
    want = {**sizes, "days": DAYS, "end_date": end.isoformat()}
    marker = store / "_bench.json"
    if marker.exists() and json.loads(marker.read_text()).get("sizes") == want:
        log.info("store %s already has %s", store, want)
        return dict(json.loads(marker.read_text()))
    summary = generate_store(store, days=DAYS, end_date=end, **sizes)
    info = {"sizes": want, "generate_seconds": summary["seconds"], "users_with_events": summary["users"]}
    marker.write_text(json.dumps(info))
    return info


def run_recsys(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``recsys ARGV`` (the venv's entry point); returns its wall seconds and stdout. Exits
    when it fails."""
    command = [str(Path(sys.executable).with_name("recsys")), *argv]
    log.info("running %s", " ".join(command))
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    sys.stderr.write(done.stdout)
    if done.returncode != 0:
        raise SystemExit(f"recsys {' '.join(argv)} exited {done.returncode} after {seconds:.0f} s")
    return seconds, done.stdout


def write_morning(store: Path, source: Path, day: dt.date, until: dt.datetime) -> list[str]:
    """Copy ``day``'s events before ``until`` into the source; returns their user ids."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    events = pq.read_table(store / "interactions" / f"events-{day.isoformat()}.parquet")
    events = events.filter(pc.less(events["event_ts"], pa.scalar(until)))
    pq.write_table(events, source / f"events-{day.isoformat()}-morning.parquet")
    log.info("%s events of %s before %s copied into the source", f"{events.num_rows:,}", day, until.isoformat())
    return list(events["user_id"].to_pylist())


def read_lists(users: list[str]) -> dict[str, dict[str, Any]]:
    """Each user's list as the storefront gets it: {"items", "source" (user | popular), "refreshed"}."""
    from recsys.config import POPULAR_USER_ID, Settings
    from recsys.io import dynamodb

    settings = Settings.from_env()
    client = dynamodb.make_client(settings, through_airflow=False)
    attributes = (dynamodb.KEY, "items", "model_version", "refreshed_at")
    found = dynamodb.batch_get(client, settings.table, [*users, POPULAR_USER_ID], attributes=attributes)
    popular = [x["M"]["item_id"]["S"] for x in found[POPULAR_USER_ID]["items"]["L"]]
    lists = {}
    for user in users:
        item = found.get(user)
        if item is None:
            lists[user] = {"items": popular, "source": "popular", "refreshed": False}
        else:
            lists[user] = {"items": [x["M"]["item_id"]["S"] for x in item["items"]["L"]], "source": "user",
                           "refreshed": "refreshed_at" in item}
    return lists


def first_touches(store: Path, source: Path, users: list[str], until: dt.datetime,
                  horizon: dt.datetime) -> dict[str, set[str]]:
    """For each of ``users``: the items touched in [until, horizon) and never before ``until``."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("active", pa.table({"user_id": users}))
        rows = con.execute(
            """
            with events as (
                select user_id, item_id, event_ts from read_parquet($store)
                where user_id in (select user_id from active)
            ),
            earlier as (select distinct user_id, item_id from events where event_ts < $until),
            later as (select distinct user_id, item_id from events where event_ts >= $until and event_ts < $horizon),
            final as (select later.* from later anti join earlier using (user_id, item_id))
            select * from final
            """,
            {"store": str(store / "interactions" / "events-*.parquet"), "until": until, "horizon": horizon},
        ).fetchall()
    finally:
        con.close()
    truth: dict[str, set[str]] = {}
    for user, item in rows:
        truth.setdefault(user, set()).add(item)
    return truth


def score(users: list[str], lists: dict[str, dict[str, Any]], relevant: dict[str, set[str]]) -> tuple[float, float]:
    """(NDCG@20, MAP@20) of ``lists`` for ``users`` against ``relevant`` (recsys.core.metrics)."""
    import numpy as np
    import scipy.sparse as sp

    from recsys.core.metrics import map_at_k, ndcg_at_k

    index: dict[str, int] = {}
    recommended = np.full((len(users), K), -1, dtype=np.int64)
    rows, cols = [], []
    for i, user in enumerate(users):
        for j, item in enumerate(lists[user]["items"][:K]):
            recommended[i, j] = index.setdefault(item, len(index))
        for item in relevant.get(user, ()):
            rows.append(i)
            cols.append(index.setdefault(item, len(index)))
    truth = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(users), max(len(index), 1)))
    return ndcg_at_k(recommended, truth, K), map_at_k(recommended, truth, K)


def report(args: argparse.Namespace, generated: dict[str, Any], night: dt.date, until: dt.datetime,
           horizon: dt.datetime, nightly_seconds: float, refresh_seconds: float, out: str, active: list[str],
           before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]],
           relevant: dict[str, set[str]]) -> None:
    new = [u for u in active if before[u]["source"] == "popular"]
    known = [u for u in active if before[u]["source"] == "user"]
    refreshed = sum(after[u]["refreshed"] for u in active)
    summary = next((line for line in out.splitlines() if line.startswith("recsys refresh --until")), "")
    print(f"scale {args.scale:g}: {generated['sizes']}; nightly {night} ({nightly_seconds:.0f} s"
          f"{', conf ' + args.conf if args.conf else ''}); events of {night + dt.timedelta(days=1)} before "
          f"{until.strftime('%H:%M')} UTC in the source; truth: items first touched in [{until.isoformat()}, "
          f"{horizon.isoformat()})\n")
    print(f"`recsys refresh`: {refresh_seconds:.1f} s wall; {refreshed:,} of {len(active):,} active users hold a "
          f"refreshed list\n{summary}\n")
    print("| users | active | scored (a first touch later) | NDCG@20 night | NDCG@20 refreshed | ratio "
          "| MAP@20 night | MAP@20 refreshed | ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, users in (("all active", active), ("known to the night", known), ("new (popular before)", new)):
        scored = sum(1 for u in users if relevant.get(u))
        ndcg_before, map_before = score(users, before, relevant)
        ndcg_after, map_after = score(users, after, relevant)
        print(f"| {name} | {len(users):,} | {scored:,} | {ndcg_before:.4f} | {ndcg_after:.4f} | "
              f"{ndcg_after / max(ndcg_before, 1e-12):.2f}× | {map_before:.4f} | {map_after:.4f} | "
              f"{map_after / max(map_before, 1e-12):.2f}× |")
    print(f"\nrefresh: {refresh_seconds:.1f} s for {len(active):,} active users ({len(new):,} new), "
          f"{len(active) / refresh_seconds:,.0f} users/s")


if __name__ == "__main__":
    main()
