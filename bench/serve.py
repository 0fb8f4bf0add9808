"""Latency and throughput of ``recsys serve`` under a bounded load on 127.0.0.1.

It starts its own DynamoDB Local (in memory, free port), publishes ``--users`` user lists,
``__popular__``, ``--items`` similar-item lists (``item#<id>``) and ``__meta__`` with the
project's own writer, starts ``recsys serve`` as a subprocess on a free port, and then, for
each endpoint and concurrency, runs ``--concurrency`` client threads in this process, each
with one keep-alive ``http.client`` connection, for ``--warmup`` + ``--duration`` seconds
(only the last ``--duration`` count). Every request goes to 127.0.0.1; every run ends by itself.

Endpoints: ``user`` (a known user: one GetItem), ``unknown`` (an unknown user: two GetItems,
the fallback), ``similar`` (``/items/{id}/similar``), ``health`` (one consistent GetItem of
``__meta__``), and ``direct`` — no HTTP at all, the same GetItem of a known user through boto3
from the client threads: the ceiling DynamoDB Local + botocore allow on this machine.

Auth is on unless ``--no-auth``: the server gets ``RECSYS_SERVE_API_KEYS`` and every request
sends its key as a bearer token, as a storefront would.

The default load is a storefront's steady traffic: 50 clients paced together to 100 requests/s
(``--rate R1,R2`` for other rates, one row per rate; an open loop: latency counts from the
planned send time, so a server that falls behind shows it) against 2 uvicorn workers.
``--rate closed`` is a closed loop instead: each client sends its next request as soon as the
last one is answered, which measures the most the machine serves, not latency (by Little's
law p50 is then about concurrency / throughput, so 50 clients on 2 cores queue by design).
The CPU columns are percent of one core used by the server (all workers), DynamoDB Local,
this load generator and everything else on the machine (``cpu oth``: a neighbour's work
there makes the latencies of that row unreliable) during the measured seconds.

    .venv/bin/python bench/serve.py [--users 10000] [--duration 30] [--concurrency 1,10,50]
        [--endpoints user,unknown,similar] [--workers 1,2] [--rate 100,200,400|closed]

Prints one table row per (workers, endpoint, concurrency, rate), then the worst p99 of the
paced rows against the 20 ms target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import itertools
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    int_list,
    make_lists,
    positive_int,
    start_dynamodb_local,
    start_run,
    stop_process,
)

from recsys.config import POPULAR_USER_ID, Settings
from recsys.dev.dynamodb_local import free_port
from recsys.io.dynamodb import (
    ensure_table,
    make_client,
    mark_served,
    publish_recommendations,
)

log = logging.getLogger("bench.serve")

TABLE = "bench_serve"
HOST = "127.0.0.1"
ENDPOINTS = ("user", "unknown", "similar", "health", "direct")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
P99_TARGET_MS = 20.0  # the storefront's budget for one read at the default load


# --------------------------------------------------------------------------- data


def user_ids(users: int) -> list[str]:
    return [f"u{n:08d}" for n in range(users)]


def item_ids(items: int) -> list[str]:
    return [f"i{n:06d}" for n in range(items)]


def fill_table(client: Any, users: int, items: int) -> None:
    """Users, ``__popular__``, ``item#`` lists and ``__meta__``, through the project's own writer."""
    ensure_table(client, TABLE)
    keys = user_ids(users) + [POPULAR_USER_ID] + [f"item#{i}" for i in item_ids(items)]
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    result = publish_recommendations(
        client, TABLE, make_lists(keys, seed=7), model_version="bench-serve", generated_at=now,
        expires_at=int(now.timestamp()) + 14 * 86_400,
    )
    mark_served(client, TABLE, run_date=now.date(), model_version="bench-serve")
    log.info("table %s: %d lists written (%d users, %d items) in %.1f s", TABLE, result["items"], users, items,
             result["seconds"])


# --------------------------------------------------------------------------- processes


@dataclass
class Processes:
    """The subprocesses this run started (stopped in reverse order)."""

    started: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def add(self, name: str, process: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.started.append((name, process))
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        stop_process(next(n for n, p in self.started if p is process), process)
        self.started = [(n, p) for n, p in self.started if p is not process]

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            self.stop(process)


def start_recsys_serve(
    processes: Processes, workdir: Path, endpoint: str, workers: int, timeout: float, api_key: str | None
) -> tuple[subprocess.Popen[bytes], int]:
    """``recsys serve`` on a free port (requiring ``api_key`` when given), once /health answers 200;
    returns the process and port."""
    port = free_port()
    env = {**os.environ, "RECSYS_DYNAMODB_ENDPOINT": endpoint, "RECSYS_TABLE": TABLE, "RECSYS_HOME": str(workdir),
           "RECSYS_SERVE_API_KEYS": api_key or ""}
    command = [str(Path(sys.executable).with_name("recsys")), "serve", "--host", HOST, "--port", str(port),
               "--workers", str(workers), "--timeout", str(timeout)]
    log_path = workdir / f"serve-{workers}w.log"
    with open(log_path, "wb") as out:
        process = processes.add(
            f"recsys serve ({workers} workers)",
            subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL),
        )
    deadline = time.monotonic() + 60
    while True:
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=2)
            connection.request("GET", "/health")
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"recsys serve did not come up (exit {process.poll()}); log {log_path}:\n"
                               f"{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    log.info("recsys serve pid %d on http://%s:%d, %d worker(s)", process.pid, HOST, port, workers)
    return process, port


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux /proc)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu_seconds(int(child))
    except (OSError, IndexError, ValueError):
        pass
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (Linux /proc/stat: everything but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


# --------------------------------------------------------------------------- load


@dataclass
class Result:
    workers: int
    endpoint: str
    concurrency: int
    target: float | None  # paced req/s in total, None = closed loop
    latencies: np.ndarray  # seconds
    errors: int
    seconds: float
    cpu: dict[str, float]  # percent of one core

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000.0) if len(self.latencies) else float("nan")


def path_chooser(endpoint: str, users: int, items: int) -> Callable[[random.Random], str]:
    known, catalog = user_ids(users), item_ids(items)
    if endpoint == "user":
        return lambda rng: f"/v1/users/{rng.choice(known)}/recommendations"
    if endpoint == "unknown":
        return lambda rng: f"/v1/users/new-{rng.randrange(10**9)}/recommendations"
    if endpoint == "similar":
        return lambda rng: f"/v1/items/{rng.choice(catalog)}/similar"
    if endpoint == "health":
        return lambda rng: "/health"
    raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")


def http_sender(
    port: int, path: Callable[[random.Random], str], api_key: str | None
) -> Callable[[random.Random], Callable[[], bool]]:
    """Per client: one keep-alive connection; each call sends one GET (with ``api_key`` as a
    bearer token when given) and says whether it got a 200."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def client(rng: random.Random) -> Callable[[], bool]:
        connection = http.client.HTTPConnection(HOST, port, timeout=10)

        def send() -> bool:
            nonlocal connection
            try:
                connection.request("GET", path(rng), headers=headers)
                response = connection.getresponse()
                body = response.read()
                return response.status == 200 and body.startswith(b"{")
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPConnection(HOST, port, timeout=10)
                return False

        return send

    return client


def direct_sender(endpoint: str, users: int) -> Callable[[random.Random], Callable[[], bool]]:
    """Per client: the same GetItem the server does for a known user, straight through boto3."""
    settings = Settings.from_env({"RECSYS_DYNAMODB_ENDPOINT": endpoint, "RECSYS_TABLE": TABLE})
    boto = make_client(settings, timeout=2.0, through_airflow=False)  # the storefront's client
    known = user_ids(users)

    def client(rng: random.Random) -> Callable[[], bool]:
        def send() -> bool:
            try:
                item = boto.get_item(TableName=TABLE, Key={"user_id": {"S": rng.choice(known)}}).get("Item")
                return item is not None
            except Exception:
                return False

        return send

    return client


def run_load(
    make_sender: Callable[[random.Random], Callable[[], bool]],
    concurrency: int,
    warmup: float,
    duration: float,
    rate: float | None,
    pids: dict[str, int],
) -> tuple[np.ndarray, int, float, dict[str, float]]:
    """``concurrency`` client threads for ``warmup + duration`` seconds; what the last ``duration`` saw.

    Returns (latencies in seconds, errors, measured seconds, CPU percent by process).
    """
    begin = time.perf_counter() + 0.2  # all threads start together
    measure_from = begin + warmup
    end = measure_from + duration
    interval = concurrency / rate if rate else 0.0
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def client(index: int) -> None:
        rng = random.Random(index)
        send = make_sender(rng)
        planned = begin + rng.random() * interval  # paced clients start spread over one interval
        mine, failed = latencies[index], 0
        while True:
            if interval:
                pause = planned - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                started = planned
                planned += interval
            else:
                started = time.perf_counter()
            if started >= end:
                break
            ok = send()
            finished = time.perf_counter()
            if started >= measure_from:
                mine.append(finished - started)
                failed += not ok
        errors[index] = failed

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu_before = {name: tree_cpu_seconds(pid) for name, pid in pids.items()}
    own_before, busy_before = time.process_time(), machine_busy_seconds()
    time.sleep(max(0.0, end - time.perf_counter()))
    cpu = {name: 100.0 * (tree_cpu_seconds(pid) - cpu_before[name]) / duration for name, pid in pids.items()}
    cpu["loadgen"] = 100.0 * (time.process_time() - own_before) / duration
    # Whatever else ran on the machine meanwhile: a busy neighbour shows here, and in the tail.
    cpu["other"] = max(0.0, 100.0 * (machine_busy_seconds() - busy_before) / duration - sum(cpu.values()))
    for thread in threads:
        thread.join(timeout=30)
    return np.array([x for per in latencies for x in per]), sum(errors), duration, cpu


# --------------------------------------------------------------------------- report


def print_table(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\nrecsys serve on {HOST}, {os.cpu_count()} cores, {args.users} users, {args.duration:g} s per row "
          f"after {args.warmup:g} s warm-up; target = paced req/s in total (closed = closed loop); "
          f"CPU in % of one core")
    header = (f"{'endpoint':<9} {'workers':>7} {'conc':>5} {'target':>6} {'requests':>9} {'req/s':>8} {'p50 ms':>7} "
              f"{'p99 ms':>7} "
              f"{'max ms':>7} {'errors':>6} {'cpu srv':>7} {'cpu ddb':>7} {'cpu gen':>7} {'cpu oth':>7}")
    print(header)
    print("-" * len(header))
    for r in results:
        workers = "-" if r.endpoint == "direct" else str(r.workers)
        target = "closed" if r.target is None else f"{r.target:g}"
        print(f"{r.endpoint:<9} {workers:>7} {r.concurrency:>5} {target:>6} {len(r.latencies):>9} {r.rate:>8.0f} "
              f"{r.ms(50):>7.1f} {r.ms(99):>7.1f} {r.ms(100):>7.1f} {r.errors:>6} "
              f"{r.cpu.get('server', 0.0):>7.0f} {r.cpu.get('dynamodb', 0.0):>7.0f} {r.cpu.get('loadgen', 0.0):>7.0f} "
              f"{r.cpu.get('other', 0.0):>7.0f}")
    paced = [r for r in results if r.target is not None and r.endpoint != "direct" and len(r.latencies) > 0]
    if paced:
        worst = max(paced, key=lambda r: r.ms(99))
        verdict = "under" if worst.ms(99) < P99_TARGET_MS else "OVER"
        print(f"\nworst paced p99: {worst.ms(99):.1f} ms ({worst.endpoint}, {worst.target:g} req/s, "
              f"auth {'off' if args.no_auth else 'on'}): {verdict} the {P99_TARGET_MS:g} ms target")


def rate_list(text: str) -> list[float | None]:
    """``100,200`` → paced rates; ``closed`` (alone or in the list) → one closed-loop row (None)."""
    values: list[float | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == "closed":
            values.append(None)
            continue
        try:
            rate = float(part)
        except ValueError:
            rate = 0.0
        if rate <= 0:
            raise argparse.ArgumentTypeError(f"expected positive req/s or 'closed', like 100,200,closed; got {text!r}")
        values.append(rate)
    if not values:
        raise argparse.ArgumentTypeError(f"expected positive req/s or 'closed', like 100,200,closed; got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=positive_int, default=10_000, help="user lists in the table (default 10000)")
    parser.add_argument(
        "--items", type=positive_int, default=2_000, help="similar-item lists in the table (default 2000)"
    )
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per row (default 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each row (default 3)")
    parser.add_argument("--concurrency", type=int_list, default=[50], help="client threads, e.g. 1,10,50 (default 50)")
    parser.add_argument("--endpoints", default="user,unknown,similar",
                        help=f"comma-separated among {','.join(ENDPOINTS)} (default user,unknown,similar)")
    parser.add_argument("--workers", type=int_list, default=[2], help="uvicorn workers, e.g. 1,2 (default 2)")
    parser.add_argument("--timeout", type=float, default=0.5, help="the server's DynamoDB timeout (default 0.5)")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve without RECSYS_SERVE_API_KEYS (default: a key is set and every request sends it)")
    parser.add_argument("--rate", type=rate_list, default=[100.0],
                        help="pace all clients together to these req/s, e.g. 100,200,400, or 'closed' for a "
                             "closed loop (default 100)")
    args = parser.parse_args(argv)
    args.endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    unknown = sorted(set(args.endpoints) - set(ENDPOINTS))
    if unknown:
        parser.error(f"--endpoints: {unknown} not among {ENDPOINTS}")
    if args.duration <= 0 or args.duration > 600 or args.warmup < 0:
        parser.error("--duration must be in (0, 600] seconds and --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start_run()  # SIGTERM ends the run like Ctrl-C: the finally below stops the servers
    processes = Processes()
    results: list[Result] = []
    dynamodb = None
    api_key = None if args.no_auth else "bench-" + os.urandom(8).hex()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        try:
            dynamodb = start_dynamodb_local()
            assert dynamodb.process is not None
            endpoint, ddb_pid = dynamodb.endpoint, dynamodb.process.pid
            fill_table(make_client(Settings.from_env({"RECSYS_DYNAMODB_ENDPOINT": endpoint})), args.users, args.items)
            if "direct" in args.endpoints:
                for rate, concurrency in itertools.product(args.rate, args.concurrency):
                    log.info("direct GetItem, %d threads, %g s", concurrency, args.warmup + args.duration)
                    load = run_load(direct_sender(endpoint, args.users), concurrency, args.warmup, args.duration,
                                    rate, {"dynamodb": ddb_pid})
                    results.append(Result(0, "direct", concurrency, rate, *load))
            for workers in args.workers:
                server, port = start_recsys_serve(processes, workdir, endpoint, workers, args.timeout, api_key)
                for name in (e for e in args.endpoints if e != "direct"):
                    sender = http_sender(port, path_chooser(name, args.users, args.items), api_key)
                    for rate, concurrency in itertools.product(args.rate, args.concurrency):
                        log.info("%s, %d worker(s), %d clients, %s, %g s", name, workers, concurrency,
                                 f"{rate:g} req/s" if rate else "closed loop", args.warmup + args.duration)
                        load = run_load(sender, concurrency, args.warmup, args.duration, rate,
                                        {"server": server.pid, "dynamodb": ddb_pid})
                        results.append(Result(workers, name, concurrency, rate, *load))
                processes.stop(server)
        except KeyboardInterrupt:
            log.error("interrupted")
            return 130
        finally:
            processes.stop_all()
            if dynamodb is not None:
                dynamodb.stop()
    print_table(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
