"""How fast recsys publishes recommendations to DynamoDB, against two baselines.

On one generated set of lists (``--users`` users x 20 items plus ``__popular__``) this
times, each into a fresh table that is dropped afterwards:

* plain    the usual code: boto3 resource ``Table.batch_writer()``, one thread, Decimal scores;
* raw      the best concurrent low-level ``batch_write_item`` writer built here (several
           thread counts; the best is the ceiling the project is held against);
* project  ``recsys.io.dynamodb.publish_recommendations`` with ``--threads``.

Every timing runs from the Arrow table to the last item acknowledged (building items is
part of the cost), and every table is counted afterwards (Scan, Select=COUNT): a run that
lost items aborts the benchmark with exit code 1. It starts its own DynamoDB Local
(in memory unless ``--db-path``) on a free port unless ``--endpoint`` is given.

    .venv/bin/python bench/publish.py [--users 100000] [--threads 8] [--endpoint URL] [--db-path DIR|--in-memory]

Prints a table, then ``project/best_raw=<x.xx>`` and, last, ``ratio=<project/plain>``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from _common import (
    DynamoDBLocal,
    K,
    int_list,
    make_lists,
    positive_int,
    start_dynamodb_local,
    start_run,
)

from recsys.config import POPULAR_USER_ID, Settings
from recsys.io.dynamodb import ensure_table, make_client, publish_recommendations

log = logging.getLogger("bench.publish")

MODEL_VERSION = "bench-als-64f"
# expires_at must lie in the future: the tables have TTL on it, and DynamoDB Local's TTL
# sweeper deletes expired items while the benchmark runs (the count check then fails).
GENERATED_AT = dt.datetime.now(dt.UTC).replace(microsecond=0)
EXPIRES_AT = int(GENERATED_AT.timestamp()) + 14 * 86_400
BATCH = 25
LOG_EVERY = 10.0


# --------------------------------------------------------------------------- data


def make_recommendations(users: int, k: int = K, seed: int = 7) -> pa.Table:
    """``users`` lists of ``k`` distinct items plus ``__popular__``, sorted by (user_id, rank).

    ``__popular__`` sorts before ``u...`` ids, so the table is already in the order recommend
    writes it.
    """
    keys = np.concatenate([[POPULAR_USER_ID], np.strings.add("u", np.strings.zfill(np.arange(users).astype(str), 8))])
    return make_lists(keys, seed=seed, k=k)


def user_bounds(recs: pa.Table) -> np.ndarray:
    """Row offsets where each user starts, plus the end (``recs`` is sorted by user)."""
    users = recs["user_id"].combine_chunks()
    changed = np.asarray(users[1:].to_numpy(zero_copy_only=False) != users[:-1].to_numpy(zero_copy_only=False))
    return np.concatenate([[0], np.flatnonzero(changed) + 1, [recs.num_rows]]).astype(np.int64)


# --------------------------------------------------------------------------- tables


def fresh_table(client: Any, prefix: str) -> str:
    name = f"bench_publish_{prefix}_{uuid.uuid4().hex[:8]}"
    ensure_table(client, name)
    return name


def drop_table(client: Any, table: str) -> None:
    try:
        client.delete_table(TableName=table)
        client.get_waiter("table_not_exists").wait(TableName=table, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    except Exception as exc:  # the measurement is done; a leftover table only costs memory
        log.warning("could not delete table %s: %s", table, exc)


def count_items(client: Any, table: str, expected: int) -> int:
    """Items in ``table`` by Scan with Select=COUNT, in segments of about 1,000 items.

    One unsegmented Scan gets slower with each page on DynamoDB Local (every page seems to
    walk the rest of the table: about 10 s for 20,000 items, minutes for 100,000), while
    segments of a page each take well under a second.
    """
    segments = min(1_000_000, max(1, expected // 1_000))
    total = 0
    for segment in range(segments):
        kwargs: dict[str, Any] = {"TableName": table, "Select": "COUNT", "Segment": segment, "TotalSegments": segments}
        while True:
            page = client.scan(**kwargs)
            total += page["Count"]
            if "LastEvaluatedKey" not in page:
                break
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return total


def clock() -> tuple[float, float]:
    """(wall, CPU of this process) now; CPU covers every thread of the writer, not the server."""
    return time.perf_counter(), time.process_time()


def since(started: tuple[float, float]) -> tuple[float, float]:
    return time.perf_counter() - started[0], time.process_time() - started[1]


class Progress:
    """Thread-safe written-items counter that logs a rate every LOG_EVERY seconds."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.written = 0
        self.lock = threading.Lock()
        self.started = self.last = time.perf_counter()

    def add(self, n: int) -> None:
        with self.lock:
            self.written += n
            now = time.perf_counter()
            if now - self.last >= LOG_EVERY:
                self.last = now
                log.info(
                    "%s: %d / %d items (%.0f%%), %.0f items/s",
                    self.label, self.written, self.total, 100.0 * self.written / self.total,
                    self.written / (now - self.started),
                )


# --------------------------------------------------------------------------- writers


def write_plain(endpoint: str, table: str, recs: pa.Table) -> tuple[int, float, float]:
    """The usual code: resource Table.batch_writer(), one thread, Decimal scores."""
    import boto3

    resource = boto3.session.Session().resource(
        "dynamodb", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
    )
    target = resource.Table(table)
    generated_at = GENERATED_AT.isoformat().replace("+00:00", "Z")
    started = clock()
    bounds = user_bounds(recs).tolist()
    users = recs["user_id"].to_pylist()
    item_ids = recs["item_id"].to_pylist()
    scores = recs["score"].to_pylist()
    progress = Progress("plain", len(bounds) - 1)
    with target.batch_writer() as writer:
        for start, stop in zip(bounds[:-1], bounds[1:]):
            writer.put_item(
                Item={
                    "user_id": users[start],
                    "items": [
                        {"item_id": item_ids[i], "score": Decimal(f"{scores[i]:.7g}")} for i in range(start, stop)
                    ],
                    "model_version": MODEL_VERSION,
                    "generated_at": generated_at,
                    "expires_at": EXPIRES_AT,
                }
            )
            progress.add(1)
    return len(bounds) - 1, *since(started)


def raw_client(endpoint: str, pool: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="local",
        aws_secret_access_key="local",
        config=Config(
            parameter_validation=False, max_pool_connections=pool, retries={"mode": "standard", "max_attempts": 3}
        ),
    )


def write_raw(endpoint: str, table: str, recs: pa.Table, threads: int) -> tuple[int, float, float]:
    """The ceiling: ``threads`` threads, each with its own client and contiguous slice of users,
    building AttributeValue dicts 25 users at a time and retrying UnprocessedItems."""
    clients = [raw_client(endpoint, 2) for _ in range(threads)]  # made before the clock starts
    common = {
        "model_version": {"S": MODEL_VERSION},
        "generated_at": {"S": GENERATED_AT.isoformat().replace("+00:00", "Z")},
        "expires_at": {"N": str(EXPIRES_AT)},
    }
    started = clock()
    bounds = user_bounds(recs).tolist()
    users = recs["user_id"].to_pylist()
    item_ids = recs["item_id"].to_pylist()
    scores = recs["score"].to_numpy().astype(np.float64).tolist()
    n_users = len(bounds) - 1
    progress = Progress(f"raw x{threads}", n_users)
    errors: list[BaseException] = []
    edges = np.linspace(0, n_users, threads + 1).astype(int).tolist()

    def run(client: Any, first: int, last: int) -> None:
        try:
            for b in range(first, last, BATCH):
                requests = []
                for u in range(b, min(b + BATCH, last)):
                    start, stop = bounds[u], bounds[u + 1]
                    requests.append({"PutRequest": {"Item": {
                        "user_id": {"S": users[start]},
                        "items": {"L": [
                            {"M": {"item_id": {"S": item_ids[i]}, "score": {"N": f"{scores[i]:.7g}"}}}
                            for i in range(start, stop)
                        ]},
                        **common,
                    }}})
                sent = len(requests)
                for attempt in range(10):
                    response = client.batch_write_item(RequestItems={table: requests})
                    requests = response.get("UnprocessedItems", {}).get(table, [])
                    if not requests:
                        break
                    time.sleep(min(2.0, 0.05 * 2**attempt))
                else:
                    raise RuntimeError(f"{len(requests)} items still unprocessed after 10 attempts")
                progress.add(sent)
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=run, args=(clients[t], edges[t], edges[t + 1]), name=f"raw-{t}", daemon=True)
        for t in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return n_users, *since(started)


def write_project(
    endpoint: str, table: str, recs: pa.Table, threads: int, settings: Settings
) -> tuple[int, float, float]:
    client = make_client(settings.with_overrides({"dynamodb_endpoint": endpoint, "publish_threads": threads}))
    started = clock()
    result = publish_recommendations(
        client, table, recs,
        model_version=MODEL_VERSION, generated_at=GENERATED_AT, expires_at=EXPIRES_AT, threads=threads,
    )
    return int(result["items"]), *since(started)


# --------------------------------------------------------------------------- the run


@dataclass
class Row:
    writer: str
    threads: int
    items: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds


def measure(
    admin: Any, writer: str, threads: int, expected: int, write: Callable[[str], tuple[int, float, float]]
) -> Row:
    """Run ``write`` into a fresh table, check the table's count, drop the table."""
    table = fresh_table(admin, writer)
    log.info("%s x%d: writing %d items into %s", writer, threads, expected, table)
    try:
        items, seconds, cpu_seconds = write(table)
        counted = time.perf_counter()
        found = count_items(admin, table, expected)
        log.info("%s x%d: counted %d items in %.1f s", writer, threads, found, time.perf_counter() - counted)
    finally:
        drop_table(admin, table)
    if items != expected or found != expected:
        log.error(
            "%s x%d: expected %d items; the writer reported %d and the table holds %d. The benchmark is void",
            writer, threads, expected, items, found,
        )
        raise SystemExit(1)
    row = Row(writer, threads, items, seconds, cpu_seconds)
    log.info(
        "%s x%d: %d items in %.1f s, %.0f items/s, client CPU %.2f ms/item (count checked)",
        writer, threads, items, seconds, row.rate, 1000 * cpu_seconds / items,
    )
    return row


def print_table(rows: list[Row], plain: Row, best_raw: Row, project: Row) -> None:
    header = (
        f"{'writer':<8} {'threads':>7} {'items':>9} {'seconds':>8} {'items/s':>8} {'vs plain':>8} "
        f"{'cpu ms/item':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        mark = "  <- best raw" if row is best_raw else ""
        print(
            f"{row.writer:<8} {row.threads:>7} {row.items:>9,} {row.seconds:>8.1f} {row.rate:>8.0f} "
            f"{row.rate / plain.rate:>7.2f}x {1000 * row.cpu_seconds / row.items:>11.2f}{mark}"
        )
    print(f"project/best_raw={project.rate / best_raw.rate:.2f}")
    print(f"ratio={project.rate / plain.rate:.2f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=positive_int, default=100_000, help="users (plus __popular__), 20 items each")
    parser.add_argument("--threads", type=positive_int, default=8, help="threads of the project's publisher")
    parser.add_argument("--raw-threads", type=int_list, default=[2, 4, 8, 16],
                        help="thread counts tried for the raw writer (default 2,4,8,16)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--endpoint", help="use this DynamoDB instead of starting DynamoDB Local")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db-path", type=Path, help="DynamoDB Local keeps its data in this folder")
    where.add_argument("--in-memory", action="store_true", help="DynamoDB Local in memory (the default)")
    parser.add_argument("--warmup", type=int, default=5_000, help="items written before measuring (JIT warm-up)")
    parser.add_argument(
        "--rounds", type=positive_int, default=1,
        help="run every writer this many times (every other round in reverse order) and keep each one's best",
    )
    args = parser.parse_args(argv)
    args.raw_thread_counts = sorted(set(args.raw_threads))
    if args.endpoint and args.db_path:
        parser.error("--db-path only applies to the DynamoDB Local this script starts, not to --endpoint")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start_run()  # SIGTERM ends the run like Ctrl-C: the finally below stops DynamoDB Local
    settings = Settings.from_env()

    started = time.perf_counter()
    recs = make_recommendations(args.users, seed=args.seed)
    expected = args.users + 1
    log.info("generated %d rows for %d users in %.2f s", recs.num_rows, expected, time.perf_counter() - started)

    server = DynamoDBLocal(args.endpoint) if args.endpoint else start_dynamodb_local(args.db_path)
    try:
        admin = raw_client(server.endpoint, 4)
        if args.warmup:
            warm = recs.slice(0, min(args.warmup, expected) * K)
            measure(admin, "warmup", 4, warm.num_rows // K, lambda t: write_raw(server.endpoint, t, warm, 4))

        runs: list[tuple[str, int, Callable[[str], tuple[int, float, float]]]] = [
            ("plain", 1, lambda t: write_plain(server.endpoint, t, recs))
        ]
        runs += [
            ("raw", n, lambda t, n=n: write_raw(server.endpoint, t, recs, n)) for n in args.raw_thread_counts
        ]
        runs.append(
            ("project", args.threads, lambda t: write_project(server.endpoint, t, recs, args.threads, settings))
        )
        best: dict[tuple[str, int], Row] = {}
        for round_ in range(args.rounds):
            for writer, threads, write in runs if round_ % 2 == 0 else runs[::-1]:
                row = measure(admin, writer, threads, expected, write)
                key = (writer, threads)
                if key not in best or row.rate > best[key].rate:
                    best[key] = row
        rows = [best[(writer, threads)] for writer, threads, _ in runs]
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    finally:
        server.stop()

    plain, project = rows[0], rows[-1]
    best_raw = max((r for r in rows if r.writer == "raw"), key=lambda r: r.rate)
    print_table(rows, plain, best_raw, project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
