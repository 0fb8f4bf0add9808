"""How fast and how big the nightly DAG runs at a given scale, against raw baselines.

    .venv/bin/python bench/pipeline.py --scale 1 [--publish local|skip] [--plain-publish] [--grid G]

``--scale 1`` is the demo store (100,000 users, 2,465 items, 800,000 events over 70 days);
``--scale 10`` is ten times each (1M users, 24,650 items, 8M events). The script

1. generates the store under ``--home`` (reused when it is already there at that size);
2. runs the nightly DAG for the store's last day the way ``recsys run`` does
   (``recsys.dev.cli.run_dag``: Airflow's ``dag.test()``, every task in one process), in a
   child process, on an empty lake, so extract copies the whole window as on a first run.
   Each stage is timed there, and its peak RSS is the process's high-water mark during the
   stage (reset with ``/proc/self/clear_refs`` when the stage starts; "RSS at start" says
   how much the process already held). ``--publish local`` publishes into a DynamoDB Local
   the script starts and times plan_publish, every publish_shard (summed) and finish_publish,
   and prints the shards' wall time; ``skip`` (the default) makes plan_publish return no
   shards without calling it, so Airflow skips publish_shard, finish_publish and verify
   (publishing is bound by DynamoDB Local's own speed, see ``bench/publish.py``);
3. runs the raw baselines on the same data, each in a fresh child process (its peak RSS
   from ``os.wait4``):
   * aggregate vs one DuckDB query (sum of event weights per user and item over the
     window's Parquet files, written to Parquet) with DuckDB's defaults;
   * train + recommend vs ``implicit`` called directly: the run's winner as train wrote it
     (``models/dt=D/params.json``: family, parameters, event weights, half-life), fit on the
     matrix train fits (``confidence_matrix`` of ``pair_events/dt=D/events.npz``, scaled for
     ALS, 0/1 for BPR), then ``model.recommend`` for every user (the seen matrix recommend
     uses and inactive items filtered), no wrapper of ours in between;
   * publish vs the plain writer of ``bench/publish.py`` (``--plain-publish``; needs
     ``--publish local``).

It prints one table (wall seconds, peak RSS, rows per second, baseline, ratio) and the
DAG's total without publish. It is a benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import positive_int, setup_logging, start_dynamodb_local, start_run  # noqa: E402  (after the path)

log = logging.getLogger("bench.pipeline")

BASE = {"users": 100_000, "items": 2_465, "events": 800_000}
DAYS = 70
END_DATE = dt.date(2026, 10, 31)
STAGES = (
    "extract",
    "validate",
    "aggregate",
    "index_events",
    "tune",
    "train",
    "recommend",
    "plan_publish",
    "publish_shard",
    "finish_publish",
    "verify",
)
PUBLISH_STAGES = ("plan_publish", "publish_shard", "finish_publish", "verify")


# --------------------------------------------------------------------------- memory


def rss_kib(field: str = "VmRSS") -> int:
    """This process's resident set (or high-water mark, field VmHWM) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is this stage's."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")


def run_child(
    args: list[str], env: dict[str, str] | None = None, log_path: Path | None = None
) -> tuple[int, float, int]:
    """Run ``python bench/pipeline.py <args>``; returns (exit status, wall seconds, ru_maxrss KiB).

    Linux keeps the parent's RSS at fork in a child's ru_maxrss, so children also report
    their own VmHWM (per address space, reset by exec), which is what the table shows.
    """
    started = time.perf_counter()
    out = open(log_path, "ab") if log_path else None
    try:
        process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], env=env,
                                   stdout=out, stderr=subprocess.STDOUT if out else None)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # Ctrl-C or SIGTERM of the bench: no child outlives it
            stop_child(process)
            raise
    finally:
        if out:
            out.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - started, int(usage.ru_maxrss)


def stop_child(process: subprocess.Popen, grace_seconds: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_seconds``: the DAG child runs Airflow's
    ``dag.test()``, whose task runner does not end on SIGTERM."""
    process.terminate()
    try:
        process.wait(grace_seconds)
    except subprocess.TimeoutExpired:
        log.warning("child %d still running %.0f s after SIGTERM: killing it", process.pid, grace_seconds)
        process.kill()
        process.wait()


# --------------------------------------------------------------------------- children


def child_dag(out: Path, publish: bool) -> int:
    """The DAG through ``recsys.dev.dagrun.run_dag``, with every stage timed and its peak RSS taken."""
    from recsys import runtime
    from recsys.config import Settings
    from recsys.core import holdout, lists, model
    from recsys.dev.dagrun import run_dag
    from recsys.stages import recommend, train

    records: list[dict[str, Any]] = []
    inner: dict[str, float] = {}
    current: list[str] = [""]
    run_stage = runtime.run_stage

    def timed_stage(stage: Any, *args: Any, **kwargs: Any) -> Any:
        name = stage.__name__
        if name == "plan_publish" and not publish:
            return []  # no shards: Airflow skips publish_shard, finish_publish and verify
        current[0] = name
        reset_peak()
        record: dict[str, Any] = {"stage": name, "rss_start_kib": rss_kib()}
        started = time.perf_counter()
        try:
            result = run_stage(stage, *args, **kwargs)
        finally:
            record["seconds"] = time.perf_counter() - started
            record["peak_kib"] = rss_kib("VmHWM")
            records.append(record)
            current[0] = ""
        summary = {"shards": len(result)} if isinstance(result, list) else result  # plan_publish: its shards
        record["result"] = json.loads(json.dumps(summary, default=str)) if isinstance(summary, dict) else None
        return result

    def timed(fn: Any, label: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = f"{current[0]}.{label}"
                inner[key] = inner.get(key, 0.0) + time.perf_counter() - started
        return wrapper

    runtime.run_stage = timed_stage
    # Patched where the stages look them up (each module imported the name at its top).
    for where in (holdout, train):
        where.confidence_matrix = timed(model.confidence_matrix, "confidence_matrix")  # type: ignore[attr-defined]
        where.train_model = timed(model.train_model, "fit")  # type: ignore[attr-defined]
    lists.recommend_users = timed(model.recommend_users, "recommend_users")
    recommend.similar_items = timed(model.similar_items, "similar_items")  # type: ignore[attr-defined]
    settings = Settings.from_env()
    started = time.perf_counter()
    dag_run = run_dag(settings, END_DATE)
    seconds = time.perf_counter() - started
    tasks = {}
    states: dict[str, str] = {}
    for ti in dag_run.get_task_instances():
        states[ti.task_id] = str(ti.state).rsplit(".", 1)[-1].lower()
        if ti.start_date and ti.end_date:
            tasks.setdefault(ti.task_id, 0.0)
            tasks[ti.task_id] += (ti.end_date - ti.start_date).total_seconds()
    out.write_text(
        json.dumps(
            {
                "state": str(dag_run.state),
                "seconds": seconds,
                "stages": records,
                "inner": inner,
                "tasks": tasks,
                "states": states,
                "peak_kib": max([rss_kib("VmHWM"), *(r["peak_kib"] for r in records)]),
            },
            indent=1,
        )
    )
    return 0 if str(dag_run.state).endswith("success") else 1


def child_raw_duckdb(out: Path, files: list[str], start: str, end: str, weights: dict[str, float],
                     interleave: bool = False, rounds: int = 2) -> int:
    """One DuckDB query with the defaults: weighted events per (user, item) over the window, to Parquet.

    Timed two ways: the statement alone, on a connection opened before the clock starts, and
    the whole of it from ``duckdb.connect`` to ``close`` (what the aggregate stage pays for
    its own connection; at scale 1 about a fifth of the statement: 33 of 161 ms).
    With ``interleave``, also the project's aggregate stage itself, then index_events (each
    rewrites its own partition with the same content: a rerun is idempotent):
    raw, then ``rounds`` times project/project/raw, best of each.
    """
    import duckdb

    target = out.with_suffix(".parquet")
    cases = " ".join(f"WHEN '{name}' THEN {float(w)}" for name, w in weights.items())

    def raw() -> tuple[float, float, int]:
        opened = time.perf_counter()
        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
        started = time.perf_counter()
        con.execute(
            f"""COPY (
                SELECT user_id, item_id, sum(CASE event_type {cases} END)::DOUBLE AS confidence
                FROM read_parquet($files)
                WHERE event_ts >= $start::TIMESTAMPTZ AND event_ts < $end::TIMESTAMPTZ
                GROUP BY user_id, item_id
            ) TO '{target}' (FORMAT parquet, COMPRESSION zstd)""",
            {"files": files, "start": start, "end": end},
        )
        seconds = time.perf_counter() - started
        con.close()
        whole = time.perf_counter() - opened
        rows = duckdb.sql(f"SELECT count(*) FROM '{target}'").fetchall()[0][0]
        target.unlink()
        return seconds, whole, int(rows)

    def project() -> tuple[float, float]:
        from recsys.config import Settings
        from recsys.stages.aggregate import aggregate
        from recsys.stages.index_events import index_events

        settings = Settings.from_env()
        started = time.perf_counter()
        aggregate(settings, END_DATE)
        middle = time.perf_counter()
        index_events(settings, END_DATE)
        return middle - started, time.perf_counter() - middle

    seconds, whole, rows = raw()
    runs: dict[str, list[Any]] = {"raw": [seconds], "raw_whole": [whole], "project": []}
    for _ in range(rounds if interleave else 0):
        runs["project"] += [project(), project()]
        again = raw()
        runs["raw"].append(again[0])
        runs["raw_whole"].append(again[1])
    best: dict[str, float] = {"raw": min(runs["raw"]), "raw_whole": min(runs["raw_whole"])}
    if runs["project"]:
        best["project"] = min(a for a, _ in runs["project"])
        best["index_events"] = min(i for _, i in runs["project"])
    out.write_text(json.dumps({"seconds": seconds, "whole_seconds": whole, "rows": rows, "interleaved": runs,
                               "best": best, "peak_kib": rss_kib("VmHWM")}))
    return 0


def child_raw_implicit(out: Path, models: str, events_dir: str, catalog: str, k: int,
                       batch: int = 50_000, interleave: bool = False) -> int:
    """``implicit`` on its own: the winner of the run (``models/dt=D/params.json``: family,
    parameters, event weights, half-life) fit on the matrix train built (``confidence_matrix``
    of ``pair_events/dt=D/events.npz`` with those weights and half-life, scaled as train_model
    scales it), then the top-k for every user with seen and inactive items filtered (implicit
    batches and threads)."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from threadpoolctl import threadpool_limits

    from recsys.config import Settings
    from recsys.core.lists import seen_matrix
    from recsys.core.model import (
        ModelParams,
        confidence_matrix,
        recommend_users,
        scale_confidence,
        train_model,
    )
    from recsys.io import lake
    from recsys.io.artifacts import load_pair_events

    winner = lake.read_json(Path(models) / "params.json")
    params = ModelParams(**winner["model"])
    events = load_pair_events(Path(events_dir), "")
    full = confidence_matrix(events, dict(winner["event_weights"]), float(winner["half_life_days"]))
    if params.model == "als":
        fit_on = scale_confidence(full.matrix, params.alpha, params.weighting)
    else:  # BPR and the item families see which pairs exist
        fit_on = full.matrix.copy()
        fit_on.data = np.ones_like(fit_on.data, dtype=np.float32)
    # What recommend leaves out: the same seen matrix it builds (exclude_seen), rows and columns as the model's.
    settings = Settings.from_env()
    seen = seen_matrix(settings, events)
    del events
    cat = pq.read_table(catalog, columns=["item_id", "active"])
    inactive = pc.filter(cat["item_id"], pc.invert(cat["active"]))
    index = pc.index_in(inactive, value_set=full.item_ids)
    exclude = np.asarray(pc.drop_null(index).to_numpy(), dtype=np.int32)

    def raw() -> tuple[float, float]:
        if params.model in ("ease", "rp3beta"):
            return raw_item_model(params, fit_on, seen, exclude, k, batch)
        with threadpool_limits(1, "blas"):
            started = time.perf_counter()
            if params.model == "itemknn":
                from implicit import nearest_neighbours

                kinds = {"cosine": nearest_neighbours.CosineRecommender, "bm25": nearest_neighbours.BM25Recommender,
                         "tfidf": nearest_neighbours.TFIDFRecommender}
                model: Any = kinds[params.similarity](K=params.neighbours)
            elif params.model == "als":
                from implicit.cpu.als import AlternatingLeastSquares

                model = AlternatingLeastSquares(
                    factors=params.factors, regularization=params.regularization, alpha=1.0,
                    iterations=params.iterations, random_state=params.random_state, calculate_training_loss=False,
                )
            else:
                from implicit.cpu.bpr import BayesianPersonalizedRanking

                model = BayesianPersonalizedRanking(
                    factors=params.factors, learning_rate=params.learning_rate, regularization=params.regularization,
                    iterations=params.iterations, random_state=params.random_state, num_threads=1,
                )
            model.fit(fit_on, show_progress=False)
            fitted = time.perf_counter()
            model.recommend(np.arange(full.shape[0]), seen, N=k, filter_already_liked_items=True, filter_items=exclude)
            return fitted - started, time.perf_counter() - fitted

    def project() -> tuple[float, float]:
        """The project's own calls on the same matrix: train_model, then recommend_users batch by batch."""
        started = time.perf_counter()
        fitted_model = train_model(full.matrix, params)
        fitted = time.perf_counter()
        for first in range(0, full.shape[0], batch):
            recommend_users(fitted_model, np.arange(first, min(first + batch, full.shape[0])), full.matrix,
                            seen[first:first + batch], k, exclude)
        return fitted - started, time.perf_counter() - fitted

    # raw, project, project, raw: the machine is shared, so each side is timed early and late
    # and keeps its best; the first raw pair is also the baseline beside the stages.
    first = raw()
    runs = {"raw": [first], "project": []}
    if interleave:
        runs["project"].append(project())
        runs["project"].append(project())
        runs["raw"].append(raw())
    best = {name: min(r, key=sum) for name, r in runs.items() if r}
    out.write_text(json.dumps({
        "fit_seconds": first[0], "recommend_seconds": first[1], "users": int(full.shape[0]),
        "items": int(full.shape[1]), "nnz": int(full.matrix.nnz), "model": params.model,
        "interleaved": runs, "best": best, "peak_kib": rss_kib("VmHWM"),
    }))
    return 0


def raw_item_model(params: Any, binary: Any, seen: Any, exclude: Any, k: int, batch: int) -> tuple[float, float]:
    """EASE or RP3beta the plain numpy/scipy way a notebook writes them (no library has them):
    the fit from its paper's formula on the binary matrix, then for each batch of users the
    dense scores ``X[batch] @ B``, seen and excluded items set to -inf, argpartition and a
    sort of the top k. Returns (fit seconds, recommend seconds)."""
    import numpy as np
    import scipy.sparse as sp

    started = time.perf_counter()
    x = sp.csr_matrix(binary, dtype=np.float32)
    if params.model == "ease":
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += params.ease_lambda
        inverse = np.linalg.inv(gram)
        weights: Any = (-inverse / np.diag(inverse)[None, :]).astype(np.float32)
        weights[np.diag_indices_from(weights)] = 0.0
    else:
        user_item = sp.diags(1.0 / np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1)) @ x
        item_user = sp.diags(1.0 / np.maximum(np.asarray(x.sum(axis=0)).ravel(), 1)) @ x.T.tocsr()
        walk = (item_user.power(params.rp3_alpha) @ user_item.power(params.rp3_alpha)).toarray()
        popularity = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
        walk /= np.power(np.maximum(popularity, 1), params.rp3_beta)[None, :]
        np.fill_diagonal(walk, 0.0)
        keep = np.argpartition(-walk, min(params.neighbours, walk.shape[1] - 1), axis=1)[:, :params.neighbours]
        rows = np.repeat(np.arange(walk.shape[0]), keep.shape[1])
        weights = sp.csr_matrix((walk[rows, keep.ravel()], (rows, keep.ravel())), shape=walk.shape, dtype=np.float32)
    fitted = time.perf_counter()
    for first in range(0, x.shape[0], batch):
        block = x[first:first + batch]
        scores = block @ weights
        scores = np.asarray(scores.toarray() if sp.issparse(scores) else scores, dtype=np.float32)
        mask = seen[first:first + batch].tocoo()
        scores[mask.row, mask.col] = -np.inf
        scores[:, exclude] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)
    return fitted - started, time.perf_counter() - fitted


def child_plain_publish(out: Path, endpoint: str, recommendations: str) -> int:
    """bench/publish.py's plain writer (boto3 batch_writer, one thread) over the run's lists."""
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO / "bench"))
    from publish import count_items, drop_table, fresh_table, raw_client, write_plain  # type: ignore[import-not-found]

    recs = pq.read_table(recommendations).sort_by([("user_id", "ascending"), ("rank", "ascending")])
    admin = raw_client(endpoint, 4)
    table = fresh_table(admin, "plain")
    try:
        items, seconds, _ = write_plain(endpoint, table, recs)
        found = count_items(admin, table, items)
    finally:
        drop_table(admin, table)
    out.write_text(json.dumps({"seconds": seconds, "items": items, "counted": found, "peak_kib": rss_kib("VmHWM")}))
    return 0 if found == items else 1


# --------------------------------------------------------------------------- the run


def sizes(scale: float) -> dict[str, int]:
    return {name: int(round(value * scale)) for name, value in BASE.items()}


def ensure_store(store: Path, scale: float) -> dict[str, Any]:
    """The generated store for ``scale`` (reused when ``_bench.json`` says it has that size),
    generated in a child process so this one stays small."""
    want = {**sizes(scale), "days": DAYS, "end_date": END_DATE.isoformat()}
    marker = store / "_bench.json"
    if marker.exists() and json.loads(marker.read_text()).get("sizes") == want:
        log.info("store %s already has %s", store, want)
        return dict(json.loads(marker.read_text()))
    store.parent.mkdir(parents=True, exist_ok=True)
    out = store.parent / "datagen.json"
    status, _, _ = run_child(["_child", "datagen", str(out), json.dumps({"store": str(store), "scale": scale})])
    if status != 0:
        raise RuntimeError(f"generating the store {store} failed (exit {status})")
    summary = json.loads(out.read_text())
    info = {"sizes": want, "generate_seconds": summary["seconds"], "users_with_events": summary["users"],
            "generate_peak_kib": summary["peak_kib"]}
    marker.write_text(json.dumps(info))
    return info


def child_datagen(out: Path, store: str, scale: float) -> int:
    from recsys.dev.datagen import generate_store

    summary = generate_store(Path(store), days=DAYS, end_date=END_DATE, **sizes(scale))
    out.write_text(json.dumps({**summary, "peak_kib": rss_kib("VmHWM")}))
    return 0


def mib(kib: int | float) -> str:
    return f"{kib / 1024:,.0f}"


def rate(count: float | None, seconds: float) -> str:
    if not count or seconds <= 0:
        return ""
    return f"{count / seconds:,.0f}" if count / seconds >= 10 else f"{count / seconds:.3f}"


def print_table(dag: dict[str, Any], base: dict[str, Any], scale: float, window_events: int) -> None:
    by_stage: dict[str, dict[str, Any]] = {}
    for record in dag["stages"]:
        entry = by_stage.setdefault(
            record["stage"],
            {
                "seconds": 0.0,
                "peak_kib": 0,
                "rss_start_kib": record["rss_start_kib"],
                "runs": 0,
                "result": record["result"],
                "items": 0,
            },
        )
        entry["seconds"] += record["seconds"]
        entry["items"] += (record["result"] or {}).get("items") or 0
        entry["peak_kib"] = max(entry["peak_kib"], record["peak_kib"])
        entry["runs"] += 1
    results = {name: entry["result"] or {} for name, entry in by_stage.items()}
    counts: dict[str, tuple[float | None, str]] = {
        "extract": (results.get("extract", {}).get("rows"), "rows"),
        "validate": (results.get("validate", {}).get("rows") or window_events, "rows"),
        "aggregate": (window_events, "events"),
        "index_events": (window_events, "events"),
        "tune": (by_stage.get("tune", {}).get("runs"), "candidates"),
        "train": (base.get("implicit", {}).get("users"), "users"),
        "recommend": (results.get("recommend", {}).get("rows"), "rows"),
        "plan_publish": (results.get("plan_publish", {}).get("shards"), "shards"),
        "publish_shard": (by_stage.get("publish_shard", {}).get("items"), "items"),
        "finish_publish": (None, ""),  # its items are the shards'; the publish line below gives their rate
        "verify": (results.get("verify", {}).get("checked"), "items"),
    }
    header = (f"{'stage':<16} {'wall s':>8} {'RSS at start':>12} {'peak RSS MiB':>12} {'count':>11} {'per s':>10}   "
              f"{'baseline (same data, same run)':<34} {'base s':>7} {'base MiB':>9} {'ratio':>6}")
    print(f"\nscale {scale:g}: {sizes(scale)} over {DAYS} days; DAG state {dag['state']}")
    print(header)
    print("-" * len(header))
    implicit = base.get("implicit")
    for name in STAGES:
        if name not in by_stage:
            continue
        e = by_stage[name]
        count, unit = counts[name]
        label = f"{name} x{e['runs']}" if e["runs"] > 1 else name
        line = (f"{label:<16} {e['seconds']:>8.1f} {mib(e['rss_start_kib']):>12} {mib(e['peak_kib']):>12} "
                f"{(f'{count:,.0f} {unit}' if count else ''):>11} {rate(count, e['seconds']):>10}   ")
        baseline = ""
        if name == "aggregate" and "duckdb" in base:
            b = base["duckdb"]
            baseline = (f"{'one raw DuckDB query':<34} {b['seconds']:>7.1f} {mib(b['peak_kib']):>9} "
                        f"{e['seconds'] / b['seconds']:>5.2f}x")
        elif name == "train" and implicit:
            baseline = (f"{'implicit fit':<34} {implicit['fit_seconds']:>7.1f} {mib(implicit['peak_kib']):>9} "
                        f"{e['seconds'] / implicit['fit_seconds']:>5.2f}x")
        elif name == "recommend" and implicit:
            baseline = (f"{'implicit recommend (all users)':<34} {implicit['recommend_seconds']:>7.1f} {'':>9} "
                        f"{e['seconds'] / implicit['recommend_seconds']:>5.2f}x")
        elif name == "publish_shard" and "plain" in base:
            b = base["plain"]
            baseline = (f"{'plain writer (bench/publish.py)':<34} {b['seconds']:>7.1f} {mib(b['peak_kib']):>9} "
                        f"{e['seconds'] / b['seconds']:>5.2f}x")
        print(line + baseline)
    print("-" * len(header))
    if implicit:
        project = by_stage.get("train", {}).get("seconds", 0.0) + by_stage.get("recommend", {}).get("seconds", 0.0)
        raw = implicit["fit_seconds"] + implicit["recommend_seconds"]
        inner = dag["inner"]
        core = inner.get("train.fit", 0.0) + inner.get("recommend.recommend_users", 0.0)
        family = implicit.get("model", "als").upper()
        print(f"{family} fit + recommend (the winner): the stages train + recommend {project:.1f} s vs raw implicit "
              f"{raw:.1f} s = {project / raw:.2f}x; inside them train_model + recommend_users {core:.1f} s = "
              f"{core / raw:.2f}x "
              f"({implicit['users']:,} users x {implicit['items']:,} items, {implicit['nnz']:,} non-zeros)")
        if base.get("duckdb", {}).get("best", {}).get("project"):
            b = base["duckdb"]["best"]
            rounds = len(base["duckdb"]["interleaved"]["project"]) // 2
            both = b["project"] + b["index_events"]
            print(f"same process, raw then {rounds} x project/project/raw, best of each: aggregate stage "
                  f"{b['project']:.3f} s vs one raw DuckDB query {b['raw']:.3f} s = {b['project'] / b['raw']:.2f}x "
                  f"(the statement alone), {b['raw_whole']:.3f} s = {b['project'] / b['raw_whole']:.2f}x (from connect "
                  f"to close, as the stage counts itself); index_events {b['index_events']:.3f} s more (aggregate + "
                  f"index_events = {both / b['raw']:.2f}x, {both / b['raw_whole']:.2f}x)")
        if implicit.get("best", {}).get("project"):
            b = implicit["best"]
            print(
                "same process, interleaved raw/project/project/raw, best of each: "
                f"project fit {b['project'][0]:.1f} s + "
                f"recommend {b['project'][1]:.1f} s vs raw fit {b['raw'][0]:.1f} s + recommend {b['raw'][1]:.1f} s "
                f"= {sum(b['project']) / sum(b['raw']):.2f}x"
            )
    finished = results.get("finish_publish", {})
    if finished.get("published"):
        shard_sum = by_stage.get("publish_shard", {}).get("seconds", 0.0)
        publish_all = sum(by_stage.get(n, {}).get("seconds", 0.0) for n in PUBLISH_STAGES if n != "verify")
        print(
            f"publish: {finished['items']:,} items in {by_stage['publish_shard']['runs']} shard(s), "
            f"shards {shard_sum:.1f} s "
            f"summed, {finished['seconds']:.1f} s wall first start to last end (finish_publish's figure, "
            f"{finished['items_per_second']:,.0f} items/s); plan + shards + finish {publish_all:.1f} s"
        )
    total = sum(e["seconds"] for n, e in by_stage.items() if n not in PUBLISH_STAGES)
    tasks = dag["tasks"]
    task_total = sum(s for t, s in tasks.items() if t not in PUBLISH_STAGES)
    not_run = sorted(t for t, state in dag.get("states", {}).items() if state != "success")
    if not_run:
        print("tasks not succeeded: " + ", ".join(f"{t} {dag['states'][t]}" for t in not_run))
    print(f"DAG without publish/verify: stages {total:.1f} s, Airflow task instances {task_total:.1f} s; "
          f"dag.test() wall {dag['seconds']:.1f} s in all; DAG process peak RSS {mib(dag['peak_kib'])} MiB")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="1 = 100k users, 800k events; 10 = 1M, 8M")
    parser.add_argument("--home", type=Path, help="RECSYS_HOME of the run (default var/bench/scale<N>)")
    parser.add_argument("--publish", choices=("skip", "local"), default="skip",
                        help="skip publish + verify (default) or publish into a DynamoDB Local started here")
    parser.add_argument("--plain-publish", action="store_true", help="also time bench/publish.py's plain writer")
    parser.add_argument("--grid", help="RECSYS_TUNING_GRID for the run (default: the settings' grid)")
    parser.add_argument("--no-baselines", action="store_true", help="only the DAG")
    parser.add_argument("--interleave", action="store_true",
                        help="also time the project's train_als + recommend_als against raw implicit in one process, "
                             "raw/project/project/raw, best of each (3 more fits), and the aggregate stage against "
                             "the raw DuckDB query in --rounds rounds")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="with --interleave: raw, then this many project/project/raw rounds of aggregate + "
                             "index_events against the raw DuckDB query (default 3)")
    args = parser.parse_args(argv)
    if args.plain_publish and args.publish != "local":
        parser.error("--plain-publish needs --publish local")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_child":
        kind, out, rest = argv[1], Path(argv[2]), json.loads(argv[3])
        setup_logging()
        return {"dag": child_dag, "duckdb": child_raw_duckdb, "implicit": child_raw_implicit,
                "plain": child_plain_publish, "datagen": child_datagen}[kind](out, **rest)
    args = parse_args(argv)
    start_run()  # SIGTERM ends the run like Ctrl-C: the finally below stops DynamoDB Local
    home = (args.home or REPO / "var" / "bench" / f"scale{args.scale:g}").resolve()
    store = home / "store"
    info = ensure_store(store, args.scale)
    log.info("store: %s", info)
    for stale in ("lake", "duckdb-tmp"):
        shutil.rmtree(home / stale, ignore_errors=True)  # a first run: extract copies the whole window
    work = home / "bench-out"
    work.mkdir(parents=True, exist_ok=True)
    run_log = work / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECSYS_HOME": str(home),
           "RECSYS_SOURCE": str(store / "interactions"), "RECSYS_CATALOG": str(store / "catalog.parquet"),
           "RECSYS_TABLE": f"bench_pipeline_{uuid.uuid4().hex[:8]}"}
    if args.grid is not None:
        env["RECSYS_TUNING_GRID"] = args.grid
    server = start_dynamodb_local() if args.publish == "local" else None
    try:
        if server:
            env["RECSYS_DYNAMODB_ENDPOINT"] = server.endpoint
        log.info("DAG run for %s (log: %s)", END_DATE, run_log)
        status, wall, peak = run_child(
            ["_child", "dag", str(work / "dag.json"), json.dumps({"publish": server is not None})], env, run_log
        )
        if status != 0 or not (work / "dag.json").exists():
            log.error("the DAG run failed (exit %d); see %s", status, run_log)
            return 1
        dag = json.loads((work / "dag.json").read_text())
        dag["child_peak_kib"] = peak
        base: dict[str, Any] = {}
        if not args.no_baselines:
            base = run_baselines(args, home, store, env, server, work, run_log)
    finally:
        if server:
            server.stop()
    from recsys.config import Settings
    from recsys.core.window import Window
    from recsys.io import lake

    settings = Settings.from_env({"RECSYS_HOME": str(home), "RECSYS_SOURCE": str(store / "interactions"),
                                  "RECSYS_CATALOG": str(store / "catalog.parquet")})
    import pyarrow.parquet as pq

    window_events = sum(pq.ParquetFile(lake.partition_file(settings.lake, "interactions", d)).metadata.num_rows
                        for d in Window.of(settings, END_DATE).days
                        if lake.partition_exists(settings.lake, "interactions", d))
    print_table(dag, base, args.scale, window_events)
    print(f"store generated in {info.get('generate_seconds', 0):.1f} s (not part of the DAG); "
          f"DAG child process wall {wall:.1f} s; log {run_log}")
    (work / "summary.json").write_text(
        json.dumps({"dag": dag, "baselines": base, "window_events": window_events}, indent=1)
    )
    return 0


def run_baselines(args: argparse.Namespace, home: Path, store: Path, env: dict[str, str], server: Any,
                  work: Path, run_log: Path) -> dict[str, Any]:
    """Each baseline in a fresh child process over the data the DAG just used."""
    from recsys.config import Settings
    from recsys.core.window import Window
    from recsys.io import lake

    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("RECSYS_")})
    window = Window.of(settings, END_DATE)
    files = [str(lake.partition_file(settings.lake, "interactions", d)) for d in window.days
             if lake.partition_exists(settings.lake, "interactions", d)]
    base: dict[str, Any] = {}

    def child(kind: str, **kwargs: Any) -> dict[str, Any] | None:
        out = work / f"{kind}.json"
        out.unlink(missing_ok=True)
        status, _, peak = run_child(["_child", kind, str(out), json.dumps(kwargs)], env, run_log)
        if status != 0 or not out.exists():
            log.error("baseline %s failed (exit %d); see %s", kind, status, run_log)
            return None
        return {"wait4_peak_kib": peak, **json.loads(out.read_text())}

    result = child("duckdb", files=files, start=window.start.isoformat(), end=window.end.isoformat(),
                   weights=settings.event_weights, interleave=args.interleave, rounds=args.rounds)
    if result:
        base["duckdb"] = result
    result = child("implicit", models=str(lake.partition_dir(settings.lake, "models", END_DATE)),
                   events_dir=str(lake.partition_dir(settings.lake, "pair_events", END_DATE)),
                   catalog=str(store / "catalog.parquet"), k=settings.k,
                   batch=settings.recommend_batch_users, interleave=args.interleave)
    if result:
        base["implicit"] = result
    if args.plain_publish and server:
        result = child("plain", endpoint=server.endpoint,
                       recommendations=str(lake.partition_file(settings.lake, "recommendations", END_DATE)))
        if result:
            base["plain"] = result
    return base


if __name__ == "__main__":
    sys.exit(main())
