"""Running the nightly DAG from a terminal or a test: Airflow pointed at the project, the
metadata DB migrated, the publish pool made, then ``dag.test()``; the per-stage times of a
finished run; and the quiet view of ``recsys run`` / ``recsys demo``: one line per task as it
starts and ends, with Airflow's own output in a log file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from recsys.config import Settings, dags_folder_from_env

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

DAGS_FOLDER = dags_folder_from_env()

DAG_ID = "recsys_nightly"
REFRESH_DAG_ID = "recsys_refresh"


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
    log.info(
        "Airflow metadata database ready in %.1f s (AIRFLOW_HOME=%s)",
        time.perf_counter() - started,
        env["AIRFLOW_HOME"],
    )


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
                # publish_refresh asks for RECSYS_PUBLISH_POOL_SLOTS slots, fixed when the DAG is parsed.
                effect = ("is never scheduled" if pool.slots < settings.publish_pool_slots
                          else "can run beside a publish shard")
                line += (f" (RECSYS_PUBLISH_POOL_SLOTS={settings.publish_pool_slots} only sizes a new pool, and "
                         f"recsys_refresh's publish_refresh, which asks for that many slots, {effect}: resize with "
                         f"'airflow pools set {settings.publish_pool} {settings.publish_pool_slots} \"...\"' or "
                         f"set RECSYS_PUBLISH_POOL_SLOTS={pool.slots})")
        else:
            Pool.create_or_update_pool(
                settings.publish_pool,
                settings.publish_pool_slots,
                "recsys: publish shards writing to DynamoDB at once (RECSYS_PUBLISH_POOL_SLOTS)",
                False,
                session=session,
            )
            line = f"Airflow pool {settings.publish_pool} created with {settings.publish_pool_slots} slot(s)"
    log.log(logging.WARNING if "only sizes a new pool" in line else logging.INFO, "%s", line)
    return line


def load_dag(dag_id: str = DAG_ID) -> Any:
    """Import the DAG file the scheduler would parse; raises when it has import errors."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS_FOLDER))
    if bag.import_errors:
        raise RuntimeError(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    if dag is None:
        raise RuntimeError(f"DAG {dag_id!r} not found in {DAGS_FOLDER}")
    return dag


def run_dag(
    settings: Settings, day: dt.date, conf: dict[str, Any] | None = None, *, view: QuietView | None = None
) -> Any:
    """Run the nightly DAG for ``day`` with Airflow's ``dag.test()``; returns the DagRun.

    With a ``view``, every task's start and end is reported to it (see :class:`QuietView`).
    """
    configure_airflow(settings)
    migrate_airflow_db(settings)
    ensure_publish_pool(settings)
    dag = load_dag()
    logical = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    check_start(dag, logical)
    log.info("running %s for %s (lake %s, table %s)", DAG_ID, day, settings.lake, settings.table)
    with _reporting_tasks(view) if view is not None else contextlib.nullcontext():
        return dag.test(logical_date=logical, run_conf=conf or {})


def run_refresh_dag(settings: Settings, until: dt.datetime, *, view: QuietView | None = None) -> Any:
    """Run ``recsys_refresh`` once with ``dag.test()`` for the events up to ``until`` (its
    ``until`` Param); returns the DagRun. With a ``view``, as :func:`run_dag`."""
    configure_airflow(settings)
    migrate_airflow_db(settings)
    ensure_publish_pool(settings)
    dag = load_dag(REFRESH_DAG_ID)
    check_start(dag, until)
    log.info("running %s up to %s (lake %s, table %s)", REFRESH_DAG_ID, until.isoformat(), settings.lake,
             settings.table)
    with _reporting_tasks(view) if view is not None else contextlib.nullcontext():
        return dag.test(logical_date=until, run_conf={"until": until.isoformat()})


def check_start(dag: Any, logical: dt.datetime) -> None:
    """Raise ValueError when ``logical`` is before the DAG's start_date: ``dag.test()`` would
    then run no task at all and call the run a success."""
    if dag.start_date is not None and logical < dag.start_date:
        raise ValueError(f"{dag.dag_id} starts on {dag.start_date.date()}: a run for {logical.date()} would run no "
                         f"task; its start_date in {dag.fileloc} must be on or before the first day you run")


def task_result(dag_run: Any, task_id: str) -> Any:
    """What ``task_id`` of a finished run returned (its XCom), or None."""
    for ti in dag_run.get_task_instances():
        if ti.task_id == task_id:
            return _task_result(ti)
    return None


# --------------------------------------------------------------------------- the quiet view


def summarize_result(result: Any) -> str:
    """A few words on what a task returned (its XCom dict): rows, users, items, NDCG; "" when none apply."""
    if not isinstance(result, dict):
        return ""
    words: list[str] = []
    rows = result.get("rows_kept", result.get("rows"))
    if isinstance(rows, dict):
        rows = rows.get("part-0", rows.get("events"))
    if isinstance(rows, int) and not isinstance(rows, bool):
        words.append(f"{rows:,} rows")
    if isinstance(result.get("quarantined"), int) and result["quarantined"]:
        words.append(f"{result['quarantined']:,} quarantined")
    for key in ("users", "items", "candidates", "checked"):
        value = result.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            words.append(f"{value:,} {key}")
        elif isinstance(value, list) and key == "candidates":
            words.append(f"{len(value)} candidates")
    metrics = result.get("metrics")
    if isinstance(metrics, dict) and isinstance(metrics.get("ndcg_at_k"), float):
        words.append(f"NDCG {metrics['ndcg_at_k']:.4f}")
    if result.get("published") is False or result.get("publish") is False:
        words.append("not published")
    return ", ".join(words)


def format_task_line(
    task_id: str, map_index: int, state: str, seconds: float | None = None, result: Any = None
) -> str:
    """One line of the quiet view: ``  extract             success    800,000 rows   3.0 s``.

    A mapped task's instance is shown as ``tune[3]``; a task that has only started has no seconds.
    """
    name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
    state = state.rsplit(".", 1)[-1].lower()
    if seconds is None:
        return f"  {name:<18} {state}"
    summary = summarize_result(result)
    return f"  {name:<18} {state:<9} {seconds:6.1f} s" + (f"  {summary}" if summary else "")


class QuietView:
    """Where the quiet view prints (``out``, the terminal) and what it remembers: the log file
    Airflow's output goes to, the offset each task's output starts at, and the failed tasks."""

    def __init__(self, out: IO[str], log_path: Path) -> None:
        self.out, self.log_path = out, log_path
        self.failed: list[tuple[str, int, int]] = []  # task id, map index, log offset of its start
        self._starts: dict[tuple[str, int], tuple[float, int]] = {}

    def _offset(self) -> int:
        with contextlib.suppress(OSError):
            return self.log_path.stat().st_size
        return 0

    def started(self, task_id: str, map_index: int) -> None:
        """Remember the start; print it for a plain task. A mapped task's instances (28
        screened candidates, the tune and publish shards) print their end line only: one line
        each, like a progress bar."""
        self._starts[(task_id, map_index)] = (time.perf_counter(), self._offset())
        if map_index < 0:
            print(format_task_line(task_id, map_index, "running"), file=self.out, flush=True)

    def ended(self, task_id: str, map_index: int, state: str, result: Any) -> None:
        started, offset = self._starts.pop((task_id, map_index), (time.perf_counter(), 0))
        line = format_task_line(task_id, map_index, state, time.perf_counter() - started, result)
        print(line, file=self.out, flush=True)
        if not state.lower().endswith("success"):
            self.failed.append((task_id, map_index, offset))

    def failure_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines the first failed task wrote to the log (its error is there)."""
        if not self.failed:
            return ""
        task_id, map_index, offset = self.failed[0]
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", errors="replace")
        name = task_id if map_index < 0 else f"{task_id}[{map_index}]"
        tail = "\n".join(f"    {line[:400]}" for line in text.splitlines()[-lines:])
        return f"  last lines of {name} (full log {self.log_path}):\n{tail}"


def _task_result(ti: Any) -> Any:
    """What a finished task returned (its ``return_value`` XCom), or None when it cannot be read."""
    try:
        return ti.xcom_pull(task_ids=ti.task_id, map_indexes=ti.map_index)
    except Exception:  # the view is best effort: a missing XCom only shortens its line
        return None


@contextlib.contextmanager
def _reporting_tasks(view: QuietView) -> Iterator[None]:
    """Wrap ``dag.test()``'s per-task runner so ``view`` hears of each task's start and end.

    ``airflow.sdk.definitions.dag._run_task`` is private to Airflow: when a release renames it,
    the run goes on without the per-task lines (the timing table still follows).
    """
    from airflow.sdk.definitions import dag as dag_module

    original: Callable[..., Any] | None = getattr(dag_module, "_run_task", None)
    if original is None:
        log.warning("this Airflow has no dag._run_task: no per-task lines")
        yield
        return
    run_task: Callable[..., Any] = original

    def reported(*, ti: Any, **kwargs: Any) -> Any:
        view.started(ti.task_id, ti.map_index)
        try:
            return run_task(ti=ti, **kwargs)
        finally:
            state = str(ti.state).rsplit(".", 1)[-1].lower()  # "success" or "TaskInstanceState.SUCCESS"
            view.ended(ti.task_id, ti.map_index, state, _task_result(ti) if state == "success" else None)

    dag_module._run_task = reported
    try:
        yield
    finally:
        dag_module._run_task = original


@contextlib.contextmanager
def output_to_log(log_path: Path) -> Iterator[IO[str]]:
    """Send everything written to file descriptors 1 and 2 (Airflow's structlog, logging, prints,
    child processes) to ``log_path``; yields a text stream on the terminal's stdout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = io.TextIOWrapper(os.fdopen(os.dup(saved_out), "wb", buffering=0), encoding="utf-8",
                                line_buffering=True)
    with open(log_path, "ab", buffering=0) as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved_out, 1)
            os.dup2(saved_err, 2)
            os.close(saved_out)
            os.close(saved_err)
            terminal.close()


def new_log_path(settings: Settings, day: dt.date) -> Path:
    """``$RECSYS_HOME/logs/run-<day>-<UTC time>.log``: the full output of one quiet run."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.home / "logs" / f"run-{day.isoformat()}-{stamp}.log"

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
    return [
        ti.task_id
        for ti in dag_run.get_task_instances()
        if str(ti.state) not in ("success", "TaskInstanceState.SUCCESS")
    ]
