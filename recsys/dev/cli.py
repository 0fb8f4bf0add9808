"""The ``recsys`` command line: datagen, run, lookup, demo, dynamodb-local, serve, airflow.

This is the edge where settings meet the user: it prints results and turns errors into
one clear line and a non-zero exit status.
"""

from __future__ import annotations

import os

# Before numpy loads anywhere: implicit brings its own threads, BLAS threads under them thrash.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import datetime as dt
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from recsys import lake
from recsys.config import ConfigError, Settings

log = logging.getLogger("recsys")
REPO_ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = Path(os.environ.get("RECSYS_DAGS_FOLDER") or REPO_ROOT / "dags")
DAG_ID = "recsys_nightly"


def configure_airflow(settings: Settings) -> dict[str, str]:
    """Point Airflow at the project's DAGs and a metadata DB under RECSYS_HOME (unless set)."""
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    values = {
        "AIRFLOW_HOME": str(settings.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in values}


def migrate_airflow_db(settings: Settings) -> None:
    """Create or upgrade the Airflow metadata database (idempotent)."""
    env = {**os.environ, **configure_airflow(settings)}
    airflow = Path(sys.executable).with_name("airflow")
    started = time.perf_counter()
    done = subprocess.run(
        [str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"'airflow db migrate' failed ({done.returncode}):\n{done.stderr[-2000:]}")
    log.info("Airflow metadata database ready in %.1f s (AIRFLOW_HOME=%s)", time.perf_counter() - started, env["AIRFLOW_HOME"])


def ensure_publish_pool(settings: Settings) -> str:
    """Create the Airflow pool the publish shards run in, with ``publish_pool_slots`` slots,
    unless it exists (its slots are then left as an operator set them). Returns what was done.

    A scheduler never starts a task whose pool is missing (it only logs a warning), so every
    Airflow metadata database recsys runs against needs the pool: ``recsys run`` and
    ``recsys demo`` call this; a deployment runs ``recsys pool`` once (docker-compose's
    airflow-init does). ``dag.test()`` itself ignores pools.
    """
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    with create_session() as session:
        pool = Pool.get_pool(settings.publish_pool, session=session)
        if pool is not None:
            line = f"Airflow pool {settings.publish_pool} exists with {pool.slots} slot(s)"
            if pool.slots != settings.publish_pool_slots:
                line += (f" (RECSYS_PUBLISH_POOL_SLOTS={settings.publish_pool_slots} only sizes a new pool; "
                         f"resize with 'airflow pools set {settings.publish_pool} N \"...\"')")
        else:
            Pool.create_or_update_pool(
                settings.publish_pool,
                settings.publish_pool_slots,
                "recsys: publish shards writing to DynamoDB at once (RECSYS_PUBLISH_POOL_SLOTS)",
                False,
                session=session,
            )
            line = f"Airflow pool {settings.publish_pool} created with {settings.publish_pool_slots} slot(s)"
    log.info("%s", line)
    return line


def cmd_pool(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.migrate:
        migrate_airflow_db(settings)
    else:
        configure_airflow(settings)
    print(ensure_publish_pool(settings))
    return 0


def load_dag() -> Any:
    """Import the DAG file the scheduler would parse; raises when it has import errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(DAG_ID)
    if dag is None:
        raise RuntimeError(f"DAG {DAG_ID!r} not found in {DAGS_FOLDER}")
    return dag


def latest_source_date(settings: Settings) -> dt.date:
    """The newest UTC day of the source that has fully landed; raises SourceError when it is empty.

    The source (files or PostgreSQL) reports its newest event; :func:`recsys.source.latest_complete_day`
    applies the one rule for both: that event's day when it is at 23:00 UTC or later, else the
    day before (if it has events).
    """
    from recsys.source import latest_complete_day

    if settings.source_conn_id:
        from recsys.pgsource import newest_event

        newest = newest_event(settings)
    else:
        from recsys.source import newest_event as newest_file_event
        from recsys.source import register_source
        from recsys.sqlrun import connect

        with connect() as con:
            register_source(con, settings.source, settings.source_columns, list(settings.event_weights))
            newest = newest_file_event(con, settings.source)
    day = latest_complete_day(newest.ts, newest.day_before_has_events)
    if day != newest.ts.date():
        log.warning(
            "the source's newest event is at %02d:%02d UTC on %s, so that day has not fully landed: "
            "'latest' is %s (pass --date %s to run the partial day anyway)",
            newest.ts.hour, newest.ts.minute, newest.ts.date(), day, newest.ts.date(),
        )
    return day


def run_dag(settings: Settings, day: dt.date, conf: dict[str, Any] | None = None) -> Any:
    """Run the nightly DAG for ``day`` with Airflow's ``dag.test()``; returns the DagRun."""
    configure_airflow(settings)
    migrate_airflow_db(settings)
    ensure_publish_pool(settings)
    dag = load_dag()
    logical = dt.datetime.combine(day, dt.time(), tzinfo=dt.timezone.utc)
    log.info("running %s for %s (lake %s, table %s)", DAG_ID, day, settings.lake, settings.table)
    return dag.test(logical_date=logical, run_conf=conf or {})


PUBLISH_TASKS = ("plan_publish", "publish_shard", "finish_publish")


def stage_times(dag_run: Any) -> str:
    """A table of the run's tasks: state, seconds of work and wall seconds.

    Mapped tasks are one row with their count: ``seconds`` sums the instances, ``wall`` runs
    from the first start to the last end (under a scheduler shards overlap, so wall < seconds;
    ``dag.test()`` runs them one after another). A last row ``publish (all)`` spans the three
    publish tasks, so the table still shows what publishing cost in all.
    """
    rows: dict[str, dict[str, Any]] = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda t: (t.start_date or dag_run.start_date, t.map_index)):
        row = rows.setdefault(ti.task_id, {"seconds": 0.0, "count": 0, "starts": [], "ends": [], "states": set()})
        if ti.start_date and ti.end_date:
            row["seconds"] += (ti.end_date - ti.start_date).total_seconds()
            row["starts"].append(ti.start_date)
            row["ends"].append(ti.end_date)
        row["count"] += 1
        row["states"].add(str(ti.state).rsplit(".", 1)[-1].lower())
    publish = [rows[t] for t in PUBLISH_TASKS if t in rows]
    if publish:
        rows["publish (all)"] = {
            "seconds": sum(r["seconds"] for r in publish),
            "count": 1,
            "starts": [s for r in publish for s in r["starts"]],
            "ends": [e for r in publish for e in r["ends"]],
            "states": {s for r in publish for s in r["states"]},
        }
    lines = [f"    {'task':<20} {'state':<15} {'seconds':>8} {'wall':>8}"]
    for task_id, row in rows.items():
        name = f"{task_id} x{row['count']}" if row["count"] > 1 else task_id
        wall = (max(row["ends"]) - min(row["starts"])).total_seconds() if row["starts"] else 0.0
        state = "/".join(sorted(row["states"]))
        lines.append(f"    {name:<20} {state:<15} {row['seconds']:>8.1f} {wall:>8.1f}")
    return "\n".join(lines)


def failed_tasks(dag_run: Any) -> list[str]:
    """Task ids of the run that did not succeed (for the exit message)."""
    return [ti.task_id for ti in dag_run.get_task_instances() if str(ti.state) not in ("success", "TaskInstanceState.SUCCESS")]


def cmd_run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    day = latest_source_date(settings) if args.date == "latest" else dt.date.fromisoformat(args.date)
    conf = json.loads(args.conf) if args.conf else {}
    started = time.perf_counter()
    dag_run = run_dag(settings, day, conf)
    seconds = time.perf_counter() - started
    state = str(getattr(dag_run, "state", "unknown"))
    print(stage_times(dag_run))
    if not state.endswith("success"):
        print(f"recsys run {day}: FAILED after {seconds:.0f} s ({state}); tasks not done: {failed_tasks(dag_run)}. "
              f"See the task errors above.", file=sys.stderr)
        return 1
    served = served_now(settings)
    built = lake.read_partition_json(settings.lake, "recommendations", day, "_meta.json")["model_version"]
    if not served or served["model_version"] != built:
        print(f"recsys run {day}: lists built (model {built}) but NOT published: the table {settings.table} serves "
              f"{served}. Publishing an older date needs --conf '{{\"force_publish\": true}}'.", file=sys.stderr)
        return 3
    print(f"recsys run {day}: published and verified in {seconds:.0f} s (model {built})")
    return 0


def served_now(settings: Settings) -> dict[str, str] | None:
    """What the serving table says it serves (its ``__meta__`` record)."""
    from recsys import dynamodb

    return dynamodb.read_served(dynamodb.make_client(settings), settings.table)


def cmd_lookup(args: argparse.Namespace) -> int:
    from recsys import dynamodb

    settings = Settings.from_env()
    client = dynamodb.make_client(settings, timeout=args.timeout)
    result = dynamodb.get_recommendations(client, settings.table, args.user_id, limit=args.limit)
    if args.json:
        print(json.dumps(result))
    else:
        print(_format_lookup(result))
    return 0


def _format_lookup(result: dict[str, Any]) -> str:
    source = "their own list" if result["source"] == "user" else "the popular list (unknown user)"
    lines = [f"user {result['user_id']}: {len(result['items'])} items from {source}, "
             f"model {result['model_version']}, generated {result['generated_at']}"]
    lines += [f"  {i:>2}. {item['item_id']}  {item['score']:.4f}" for i, item in enumerate(result["items"], 1)]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    """The front door: DynamoDB Local, demo data, one nightly run, two lookups."""
    from recsys import dynamodb, dynamodb_local
    from recsys.datagen import generate_store

    settings = Settings.from_env()
    print(f"==> [1/4] DynamoDB Local at {settings.dynamodb_endpoint}")
    # In memory unless asked: publishing to -dbPath (SQLite on disk) is about half as fast,
    # and the demo's tables only have to outlive the run (the server keeps running after it).
    print(dynamodb_local.start(settings, in_memory=not args.on_disk))
    marker = settings.demo_dir / "interactions"
    if marker.exists() and any(marker.iterdir()) and not args.regenerate:
        print(f"==> [2/4] demo store already in {settings.demo_dir} (make clean or --regenerate to rebuild)")
    else:
        print(f"==> [2/4] generating the demo store in {settings.demo_dir}")
        summary = generate_store(settings.demo_dir)
        print(f"    {summary}")
    day = latest_source_date(settings)
    print(f"==> [3/4] nightly DAG {DAG_ID} for {day} (the latest day of the data)")
    started = time.perf_counter()
    dag_run = run_dag(settings, day)
    seconds = time.perf_counter() - started
    print(stage_times(dag_run))
    if not str(dag_run.state).endswith("success"):
        print(f"DAG run FAILED after {seconds:.0f} s; tasks not done: {failed_tasks(dag_run)}", file=sys.stderr)
        return 1
    print(f"    DAG run succeeded in {seconds:.0f} s")
    recs = lake.read_partition(settings.lake, "recommendations", day)
    known = next(u for u in recs["user_id"].to_pylist() if not u.startswith("__"))
    print("==> [4/4] what the storefront gets")
    client = dynamodb.make_client(settings)
    for user in (known, "someone-new-" + day.isoformat()):
        print(_format_lookup(dynamodb.get_recommendations(client, settings.table, user, limit=args.limit)))
    metrics = lake.read_partition_json(settings.lake, "models", day, "metrics.json")
    k = metrics["k"]
    print(f"hold-out NDCG@{k}: model {metrics['model']['ndcg_at_k']:.4f} vs popularity "
          f"{metrics['popularity']['ndcg_at_k']:.4f}; MAP@{k}: {metrics['model']['map_at_k']:.4f} vs "
          f"{metrics['popularity']['map_at_k']:.4f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from recsys.airflow_stack import add_airflow_parser
    from recsys.datagen import add_datagen_parser
    from recsys.dynamodb_local import add_dynamodb_local_parser
    from recsys.serve import add_serve_parser

    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_datagen_parser(sub)
    add_dynamodb_local_parser(sub)
    add_serve_parser(sub)
    add_airflow_parser(sub)

    run = sub.add_parser("run", help="one nightly run for a date, through Airflow's dag.test()")
    run.add_argument("--date", required=True, help="YYYY-MM-DD, or 'latest' for the newest complete day in the source")
    run.add_argument("--conf", help="JSON of DAG Params for this run, e.g. '{\"factors\": 128}'")
    run.set_defaults(func=cmd_run)

    pool = sub.add_parser("pool", help="create the Airflow pool of the publish shards unless it exists")
    pool.add_argument("--migrate", action="store_true", help="create or upgrade the Airflow metadata DB first")
    pool.set_defaults(func=cmd_pool)

    lookup = sub.add_parser("lookup", help="what the storefront gets for a user (GetItem, falls back to __popular__)")
    lookup.add_argument("user_id")
    lookup.add_argument("--json", action="store_true", help="print JSON")
    lookup.add_argument("--limit", type=int, default=20)
    lookup.add_argument("--timeout", type=float, default=2.0, help="seconds for connect and read")
    lookup.set_defaults(func=cmd_lookup)

    demo = sub.add_parser("demo", help="start DynamoDB Local, make demo data, run the DAG, show lookups")
    demo.add_argument("--regenerate", action="store_true", help="rebuild the demo store even if present")
    demo.add_argument("--limit", type=int, default=5, help="items to show per lookup")
    demo.add_argument("--on-disk", action="store_true",
                      help="start DynamoDB Local with its data under RECSYS_HOME (survives a restart; publish ~2x slower)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except (ConfigError, ValueError, LookupError, RuntimeError, FileNotFoundError) as exc:
        print(f"recsys {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
