"""The bad-input corpus, end to end: each case is the night after a known-good history, run
through the real DAG (``dag.test()``) against DynamoDB Local.

The history (a small generated store, one good nightly run that publishes) is built once per
module; each case copies its lake, adds the next day's files to a source folder that also
holds the history's files, and runs the next day. A failing case must stop at extract or
validate, name what was wrong, and leave the served table exactly as it was (a full scan
before and after); a slightly dirty case must publish without the bad rows.

| case                          | outcome                       | quarantined / dropped                   |
|-------------------------------|-------------------------------|-----------------------------------------|
| missing column                | fails in extract              | -                                       |
| renamed column, no mapping    | fails in extract              | -                                       |
| null and empty user ids       | publishes                     | missing_user_id 5, empty_user_id 6      |
| a 3 KB user id                | publishes                     | user_id_too_long 1                      |
| non-UTF-8 bytes in an id      | publishes                     | invalid_utf8 1 (the CSV line)           |
| unknown event types (7%)      | fails in validate             | unknown_event_type 150                  |
| another day's / future times  | publishes                     | event_ts_outside_day 2, _in_future 1    |
| duplicate event ids           | publishes                     | 10 duplicates dropped                   |
| replayed file (twice)         | publishes                     | every repeat dropped, with or w/o ids   |
| truncated Parquet file        | fails in extract              | -                                       |
| CSV with a broken quote       | fails in extract              | -                                       |
| empty file beside a good one  | publishes                     | the empty file skipped with a warning   |
| the day's only file is empty  | wait_for_data waits, fails    | - (the day has not landed)              |
| 5% of the usual volume        | fails in validate             | -                                       |
| 95% of the day is one user    | publishes                     | bot_user: all of that user's rows       |
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.config import Settings
from recsys.dev.datagen import generate_store
from recsys.io import lake
from tests.support import SMALL, scan
from tests.support import STORE_END as END

pytestmark = pytest.mark.slow  # whole-DAG runs: make test, not make test-fast

NEXT = END + dt.timedelta(days=1)
UTC = dt.UTC


@dataclass
class History:
    store: Path
    home: Path
    env: dict[str, str]


@dataclass
class Outcome:
    """What one run of the next day did."""

    succeeded: bool
    states: dict[str, str]
    log: str
    before: dict[str, dict]
    after: dict[str, dict]
    settings: Settings

    def failed_at(self, task: str) -> bool:
        """The run failed in ``task`` and no later task that changes anything ran."""
        later = ("aggregate", "index_events", "train", "recommend", "publish", "verify")
        return (
            not self.succeeded
            and self.states.get(task, "").endswith("failed")
            and not any(self.states.get(t, "").endswith("success") for t in later)
        )

    def quarantine(self) -> dict[str, int]:
        path = lake.partition_file(self.settings.lake, "quarantine/interactions", NEXT)
        if not path.exists():
            return {}
        counts: dict[str, int] = {}
        for reason in pq.read_table(path)["reason"].to_pylist():
            counts[reason] = counts.get(reason, 0) + 1
        return counts

    def summary(self) -> dict[str, Any]:
        return json.loads((lake.partition_dir(self.settings.lake, "validation", NEXT) / "summary.json").read_text())


@pytest.fixture(scope="module")
def history(
    tmp_path_factory: pytest.TempPathFactory, dynamodb_endpoint: str, airflow_env: Path
) -> Iterator[History]:
    """A store, and a lake and table after one good night (END); tuning off to keep it short."""
    from recsys.dev.dagrun import run_dag

    root = tmp_path_factory.mktemp("bad-inputs")
    store = root / "store"
    generate_store(store, **SMALL)  # type: ignore[arg-type]
    source = root / "source"
    _link_history(store, source)
    env = {
        "RECSYS_HOME": str(root / "home"),
        "RECSYS_SOURCE": str(source),
        "RECSYS_CATALOG": str(store / "catalog.parquet"),
        "RECSYS_WINDOW_DAYS": "28",
        "RECSYS_TUNING_GRID": "",
        "RECSYS_FACTORS": "16",
        "RECSYS_ALPHA": "10",
        "RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint,
        "RECSYS_TABLE": f"bad_{uuid.uuid4().hex[:8]}",
        "RECSYS_VERIFY_SAMPLE": "100",
        # Every case's day has landed (an event after 23:00); should one not, fail fast instead of waiting 6 h.
        "RECSYS_WAIT_TIMEOUT": "10s",
        "RECSYS_WAIT_POKE_SECONDS": "2",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        dag_run = run_dag(Settings.from_env(), END)
    assert str(dag_run.state).endswith("success"), "the known-good history did not run"
    yield History(store=store, home=root / "home", env=env)


def _link_history(store: Path, source: Path) -> None:
    """A source folder holding (links to) the store's daily files, as a landing folder would."""
    source.mkdir(parents=True, exist_ok=True)
    for path in sorted((store / "interactions").iterdir()):
        os.symlink(path, source / path.name)


def next_day_events(history: History) -> pa.Table:
    """The last day's events moved one day later with fresh event ids: a normal next day."""
    day = pq.read_table(history.store / "interactions" / f"events-{END.isoformat()}.parquet")
    ts = pc.add(day["event_ts"], pa.scalar(dt.timedelta(days=1)))
    ids = pa.array([f"next-{i}" for i in range(day.num_rows)], pa.string())
    return day.set_column(day.schema.get_field_index("event_ts"), "event_ts", ts).set_column(
        day.schema.get_field_index("event_id"), "event_id", ids
    )


def to_csv(table: pa.Table) -> bytes:
    """Plain CSV text of an events table (ISO-8601 timestamps with Z)."""
    names = table.column_names
    lines = [",".join(names)]
    for row in table.to_pylist():
        values = []
        for name in names:
            value = row[name]
            if isinstance(value, dt.datetime):
                value = value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            values.append("" if value is None else str(value))
        lines.append(",".join(values))
    return ("\n".join(lines) + "\n").encode("utf-8")


def run_next_day(
    history: History,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    dynamodb_client: Any,
    files: dict[str, bytes | pa.Table],
) -> Outcome:
    """Copy the history's lake, add ``files`` to the source folder and run the next day."""
    from recsys.dev.dagrun import run_dag

    home = tmp_path / "case"
    shutil.copytree(history.home / "lake", home / "lake")
    source = tmp_path / "source"
    _link_history(history.store, source)
    for name, content in files.items():
        if isinstance(content, pa.Table):
            pq.write_table(content, source / name)
        else:
            (source / name).write_bytes(content)
    for key, value in {**history.env, "RECSYS_HOME": str(home), "RECSYS_SOURCE": str(source)}.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    before = scan(dynamodb_client, settings.table, with_meta=True)
    caplog.set_level(logging.INFO)
    capfd.readouterr()
    dag_run = run_dag(settings, NEXT)
    printed = capfd.readouterr()  # the task runner prints a failed task's exception, not to logging
    return Outcome(
        succeeded=str(dag_run.state).endswith("success"),
        states={ti.task_id: str(ti.state).rsplit(".", 1)[-1].lower() for ti in dag_run.get_task_instances()},
        log=caplog.text + printed.out + printed.err,
        before=before,
        after=scan(dynamodb_client, settings.table, with_meta=True),
        settings=settings,
    )


@pytest.fixture
def night(
    history: History,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    dynamodb_client: Any,
) -> Any:
    """Run the next day with the given extra source files; returns its Outcome."""

    def run(files: dict[str, bytes | pa.Table]) -> Outcome:
        return run_next_day(history, tmp_path, monkeypatch, caplog, capfd, dynamodb_client, files)

    return run


def assert_stopped_cleanly(out: Outcome, task: str) -> None:
    """Failed in ``task``; nothing downstream ran; the lake has no new interactions or lists;
    the served table is byte-for-byte what it was."""
    assert out.failed_at(task), out.states
    assert not lake.partition_exists(out.settings.lake, "interactions", NEXT)
    assert not lake.partition_exists(out.settings.lake, "recommendations", NEXT)
    assert out.after == out.before


def assert_published_without(out: Outcome, users: set[str | None]) -> None:
    """The run published the next day, and none of ``users`` is served or in the lake."""
    assert out.succeeded, out.states
    assert out.after["__meta__"]["run_date"]["S"] == NEXT.isoformat()
    kept = set(lake.read_partition(out.settings.lake, "interactions", NEXT)["user_id"].to_pylist())
    assert not (users & kept)
    assert not (users & set(out.after))


def with_rows(table: pa.Table, changes: dict[int, dict[str, Any]]) -> pa.Table:
    rows = table.to_pylist()
    for i, change in changes.items():
        rows[i].update(change)
    return pa.Table.from_pylist(rows, schema=table.schema)


DAY_FILE = f"events-{NEXT.isoformat()}.parquet"
DAY_CSV = f"events-{NEXT.isoformat()}.csv"


# --------------------------------------------------------------------------- fatal in extract


def test_truncated_parquet_fails_in_extract_naming_the_file(history: History, night: Any) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(next_day_events(history), sink)
    data = sink.getvalue().to_pybytes()
    out = night({DAY_FILE: data[: len(data) // 2]})
    assert_stopped_cleanly(out, "extract")
    assert f"cannot read {out.settings.source}/{DAY_FILE} as PARQUET" in out.log and "truncated" in out.log


# --------------------------------------------------------------------------- fatal in validate


def test_a_day_with_5_percent_of_its_volume_fails_in_validate(history: History, night: Any) -> None:
    events = next_day_events(history)
    # The day's last 5% of events: it has landed (they run to 23:59), with a twentieth of its volume.
    out = night({DAY_FILE: events.slice(events.num_rows - events.num_rows // 20)})
    assert_stopped_cleanly(out, "validate")
    assert out.quarantine() == {}
    # Against the mean of the 14 days before it (the store's last 14), as validate counts them.
    before = [pq.read_metadata(history.store / "interactions" / f"events-{END - dt.timedelta(days=d)}.parquet")
              .num_rows for d in range(14)]
    ratio = (events.num_rows // 20) / (sum(before) / 14)
    assert (f"dt={NEXT} (from {DAY_FILE}): volume anomaly: {events.num_rows // 20:,} rows kept, {ratio:.2f}x the mean"
            in out.log)
    assert "expected between 0.1x and 5.0x" in out.log
    assert out.summary()["days"][0]["history_days"] == 14


# --------------------------------------------------------------------------- quarantined, published


def test_null_and_empty_user_ids_are_quarantined_and_the_night_publishes(history: History, night: Any) -> None:
    events = next_day_events(history)
    changes: dict[int, dict[str, Any]] = {i: {"user_id": None} for i in range(5)}
    changes.update({i: {"user_id": ""} for i in range(5, 10)})
    changes[10] = {"user_id": "   "}
    out = night({DAY_FILE: with_rows(events, changes)})
    assert_published_without(out, {None, "", "   "})
    assert out.quarantine() == {"missing_user_id": 5, "empty_user_id": 6}
    assert (
        f"{events.num_rows:,} rows read in 1 day(s), {events.num_rows - 11:,} kept, 11 quarantined "
        "(empty_user_id: 6, missing_user_id: 5), 0 duplicate(s) dropped"
    ) in out.log


