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
import sys
import time
from collections.abc import Sequence
from typing import Any

from recsys import datasets
from recsys.config import ConfigError, Settings
from recsys.dev import dynamodb_local
from recsys.dev.airflow_stack import add_airflow_parser
from recsys.dev.dagrun import (
    DAG_ID,
    QuietView,
    configure_airflow,
    ensure_publish_pool,
    failed_tasks,
    migrate_airflow_db,
    new_log_path,
    output_to_log,
    run_dag,
    run_refresh_dag,
    stage_times,
    task_result,
)
from recsys.dev.datagen import add_datagen_parser, generate_store
from recsys.dev.dynamodb_local import add_dynamodb_local_parser
from recsys.io import dynamodb, lake
from recsys.io.source import newest_complete_day
from recsys.runtime import utc_instant
from recsys.serving.reader import get_recommendations

log = logging.getLogger("recsys")


def cmd_pool(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if args.migrate:
        migrate_airflow_db(settings)
    else:
        configure_airflow(settings)
    print(ensure_publish_pool(settings))
    return 0


def run_with_view(
    settings: Settings, day: dt.date, conf: dict[str, Any] | None, *, full_output: bool
) -> tuple[Any, float, QuietView | None]:
    """The DAG run for ``day``: with ``full_output`` Airflow writes to the terminal as it always did;
    otherwise one line per task start and end, Airflow's output in a log file under RECSYS_HOME.
    Returns the DagRun, the seconds it took and the view (None with ``full_output``)."""
    started = time.perf_counter()
    if full_output:
        return run_dag(settings, day, conf), time.perf_counter() - started, None
    log_path = new_log_path(settings, day)
    print(f"    one line per task; Airflow's own output goes to {log_path}", flush=True)
    with output_to_log(log_path) as terminal:
        view = QuietView(terminal, log_path)
        dag_run = run_dag(settings, day, conf, view=view)
    return dag_run, time.perf_counter() - started, view


def _failure_lines(view: QuietView | None) -> str:
    if view is None:
        return "See the task errors above."
    return view.failure_tail() or f"See the full log {view.log_path}."


def cmd_run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    day = newest_complete_day(settings) if args.date == "latest" else dt.date.fromisoformat(args.date)
    conf = json.loads(args.conf) if args.conf else {}
    dag_run, seconds, view = run_with_view(settings, day, conf, full_output=args.full_output or args.verbose)
    state = str(getattr(dag_run, "state", "unknown"))
    print(stage_times(dag_run))
    if not state.endswith("success"):
        print(f"recsys run {day}: FAILED after {seconds:.0f} s ({state}); tasks not done: {failed_tasks(dag_run)}.\n"
              f"{_failure_lines(view)}", file=sys.stderr)
        return 1
    served = served_now(settings)
    built = lake.read_partition_json(settings.lake, datasets.RECOMMENDATIONS, day, "_meta.json")["model_version"]
    if not served or served["model_version"] != built:
        print(f"recsys run {day}: lists built (model {built}) but NOT published: the table {settings.table} serves "
              f"{served}. Publishing an older date needs --conf '{{\"force_publish\": true}}'.", file=sys.stderr)
        return 3
    print(f"recsys run {day}: published and verified in {seconds:.0f} s (model {built})")
    print(_where_to_look(settings, day, view))
    return 0


def parse_until(text: str | None, now: dt.datetime | None = None) -> dt.datetime:
    """``--until``: an ISO-8601 instant (``Z`` or an offset; none means UTC), or now; UTC, whole seconds.
    Raises ValueError naming the expected form."""
    try:
        return utc_instant(text or now or dt.datetime.now(dt.UTC))
    except ValueError as exc:
        raise ValueError(f"--until {exc}") from None


def cmd_refresh(args: argparse.Namespace) -> int:
    """One ``recsys_refresh`` run through dag.test(): exit 0 when the active users' lists were
    written and a sample read back matches; 3 when nothing was written (a nightly publish is
    finishing, or a newer night is served); 1 when the run failed."""
    settings = Settings.from_env()
    until = parse_until(args.until)
    started = time.perf_counter()
    view = None
    if args.full_output:
        dag_run = run_refresh_dag(settings, until)
    else:
        log_path = new_log_path(settings, until.date())
        print(f"    one line per task; Airflow's own output goes to {log_path}", flush=True)
        with output_to_log(log_path) as terminal:
            view = QuietView(terminal, log_path)
            dag_run = run_refresh_dag(settings, until, view=view)
    seconds = time.perf_counter() - started
    state = str(getattr(dag_run, "state", "unknown"))
    print(stage_times(dag_run))
    if not state.endswith("success"):
        print(f"recsys refresh --until {until.isoformat()}: FAILED after {seconds:.0f} s ({state}); tasks not done: "
              f"{failed_tasks(dag_run)}; nothing served changed for the users not yet written.\n"
              f"{_failure_lines(view)}", file=sys.stderr)
        return 1
    collected = task_result(dag_run, "collect_events") or {}
    published = task_result(dag_run, "publish_refresh") or {}
    if not published.get("published"):
        print(f"recsys refresh --until {until.isoformat()}: nothing written: {published.get('reason', published)}",
              file=sys.stderr)
        return 3
    line = (f"recsys refresh --until {until.isoformat()}: {published['items']:,} users refreshed "
            f"({published['new_users']:,} new to the night {collected.get('served_run_date')}, "
            f"{published['kept_newer']:,} left as a newer run wrote them), {collected.get('quarantined', 0):,} of "
            f"{collected.get('rows', 0):,} new rows quarantined, {published['checked']:,} read back and matching; "
            f"{seconds:.1f} s ({published['items'] / max(seconds, 1e-9):.0f} users/s), model "
            f"{published['model_version']}")
    log.info("%s", line)
    print(line)
    if view is not None:
        print(f"full log:  {view.log_path}")
    return 0


def _where_to_look(settings: Settings, day: dt.date, view: QuietView | None) -> str:
    lines = [f"report:    {lake.partition_uri(settings.lake, datasets.REPORTS, day)}/report.html",
             f"Data Docs: {lake.partition_uri(settings.lake, datasets.VALIDATION, day)}/index.html"]
    if view is not None:
        lines.append(f"full log:  {view.log_path}")
    return "\n".join(lines)


def served_now(settings: Settings) -> dict[str, str] | None:
    """What the serving table says it serves (its ``__meta__`` record)."""

    return dynamodb.read_served(dynamodb.make_client(settings), settings.table)


def cmd_lookup(args: argparse.Namespace) -> int:

    settings = Settings.from_env()
    client = dynamodb.make_client(settings, timeout=args.timeout, through_airflow=False)  # as the storefront reads
    result = get_recommendations(client, settings.table, args.user_id, limit=args.limit)
    if args.json:
        print(json.dumps(result))
    else:
        print(_format_lookup(result))
    return 0


def _format_lookup(result: dict[str, Any]) -> str:
    source = "their own list" if result["source"] == "user" else "the popular list (unknown user)"
    lines = [(f"user {result['user_id']}: {len(result['items'])} items from {source}, "
              f"model {result['model_version']}, generated {result['generated_at']}"
              + (f", refreshed {result['refreshed_at']}" if result.get("refreshed_at") else ""))]
    lines += [f"  {i:>2}. {item['item_id']}  {item['score']:.4f}" for i, item in enumerate(result["items"], 1)]
    return "\n".join(lines)


def cmd_demo(args: argparse.Namespace) -> int:
    """The front door: DynamoDB Local, demo data, one nightly run, two lookups."""

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
    day = newest_complete_day(settings)
    print(f"==> [3/4] nightly DAG {DAG_ID} for {day} (the latest day of the data)")
    dag_run, seconds, view = run_with_view(settings, day, None, full_output=args.full_output or args.verbose)
    print(stage_times(dag_run))
    if not str(dag_run.state).endswith("success"):
        print(f"DAG run FAILED after {seconds:.0f} s; tasks not done: {failed_tasks(dag_run)}\n{_failure_lines(view)}",
              file=sys.stderr)
        return 1
    print(f"    DAG run succeeded in {seconds:.0f} s")
    recs = lake.read_partition(settings.lake, datasets.RECOMMENDATIONS, day)
    known = next(u for u in recs["user_id"].to_pylist() if not u.startswith("__"))
    print("==> [4/4] what the storefront gets")
    client = dynamodb.make_client(settings, through_airflow=False)
    for user in (known, "someone-new-" + day.isoformat()):
        print(_format_lookup(get_recommendations(client, settings.table, user, limit=args.limit)))
    metrics = lake.read_partition_json(settings.lake, datasets.MODELS, day, "metrics.json")
    k = metrics["k"]
    print(f"hold-out NDCG@{k}: model {metrics['model']['ndcg_at_k']:.4f} vs popularity "
          f"{metrics['popularity']['ndcg_at_k']:.4f}; MAP@{k}: {metrics['model']['map_at_k']:.4f} vs "
          f"{metrics['popularity']['map_at_k']:.4f}")
    print(_where_to_look(settings, day, view))
    return 0


def build_parser() -> argparse.ArgumentParser:

    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    add_datagen_parser(sub)
    add_dynamodb_local_parser(sub)
    from recsys.serving.api import (
        add_serve_parser,  # FastAPI: only when the command line is built
    )

    add_serve_parser(sub)
    add_airflow_parser(sub)

    run = sub.add_parser("run", help="one nightly run for a date, through Airflow's dag.test()")
    run.add_argument("--date", required=True, help="YYYY-MM-DD, or 'latest' for the newest complete day in the source")
    run.add_argument("--conf", help="JSON of DAG Params for this run, e.g. '{\"factors\": 128}'")
    run.add_argument("--verbose", dest="full_output", action="store_true",
                     help="Airflow's full task-runner output on the terminal instead of one line per task")
    run.set_defaults(func=cmd_run)

    refresh = sub.add_parser("refresh", help="one hourly refresh through dag.test(): the lists of the users "
                             "active since the served night, with its model")
    refresh.add_argument("--until", help="read the events up to this ISO-8601 instant (default: now), "
                         "e.g. 2026-06-01T12:00:00Z")
    refresh.add_argument("--verbose", dest="full_output", action="store_true",
                         help="Airflow's full task-runner output on the terminal instead of one line per task")
    refresh.set_defaults(func=cmd_refresh)

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
    demo.add_argument(
        "--on-disk",
        action="store_true",
        help="start DynamoDB Local with its data under RECSYS_HOME (survives a restart; publish ~2x slower)",
    )
    demo.add_argument("--verbose", dest="full_output", action="store_true",
                      help="Airflow's full task-runner output on the terminal instead of one line per task")
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
