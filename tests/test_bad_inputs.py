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
| the day's only file is empty  | fails in extract              | -                                       |
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
from tests.fixtures_store import END, SMALL
from tests.test_pipeline_e2e import scan

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


def test_missing_column_fails_in_extract_naming_file_and_column(history: History, night: Any) -> None:
    out = night({DAY_FILE: next_day_events(history).drop_columns(["item_id"])})
    assert_stopped_cleanly(out, "extract")
    assert DAY_FILE in out.log and "required column 'item_id' is missing" in out.log
    assert "columns found: ['user_id', 'event_type', 'event_ts', 'event_id']" in out.log


def test_renamed_column_without_mapping_fails_and_names_the_fix(history: History, night: Any) -> None:
    events = next_day_events(history).rename_columns(["user_id", "product", "event_type", "event_ts", "event_id"])
    out = night({DAY_CSV: to_csv(events)})
    assert_stopped_cleanly(out, "extract")
    assert DAY_CSV in out.log and "'item_id' is missing" in out.log and "'product'" in out.log
    assert "RECSYS_SOURCE_COLUMNS" in out.log


def test_truncated_parquet_fails_in_extract_naming_the_file(history: History, night: Any) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(next_day_events(history), sink)
    data = sink.getvalue().to_pybytes()
    out = night({DAY_FILE: data[: len(data) // 2]})
    assert_stopped_cleanly(out, "extract")
    assert f"cannot read {out.settings.source}/{DAY_FILE} as PARQUET" in out.log and "truncated" in out.log


def test_csv_with_a_broken_quote_fails_in_extract_naming_the_file(history: History, night: Any) -> None:
    lines = to_csv(next_day_events(history)).decode().splitlines()
    lines[700] = '"' + lines[700]  # a quote that never closes swallows every line after it
    out = night({DAY_CSV: ("\n".join(lines) + "\n").encode()})
    assert_stopped_cleanly(out, "extract")
    assert f"cannot read {out.settings.source}/{DAY_CSV} as CSV" in out.log and "quote" in out.log


def test_the_days_only_file_empty_fails_as_an_empty_day(history: History, night: Any) -> None:
    out = night({DAY_CSV: b""})
    assert_stopped_cleanly(out, "extract")
    assert f"the run date {NEXT} has no events" in out.log
    assert f"1 empty file(s) were skipped, e.g. {out.settings.source}/{DAY_CSV}" in out.log


# --------------------------------------------------------------------------- fatal in validate


def test_unknown_event_types_above_the_threshold_fail_in_validate(history: History, night: Any) -> None:
    events = next_day_events(history)
    teleports = {i: {"event_type": "Teleport"} for i in range(0, 150 * 14, 14)}
    out = night({DAY_FILE: with_rows(events, teleports)})
    assert_stopped_cleanly(out, "validate")
    assert out.quarantine() == {"unknown_event_type": 150}
    assert f"staging/interactions/dt={NEXT} (from {DAY_FILE}): 150 of {events.num_rows:,} rows" in out.log
    assert "above the allowed 1.00% (RECSYS_MAX_BAD_SHARE)" in out.log
    assert "column 'event_type', expected one of the configured event weights" in out.log and "'Teleport'" in out.log
    assert f"validation/dt={NEXT}/index.html" in out.log
    assert (lake.partition_dir(out.settings.lake, "validation", NEXT) / "index.html").exists()


def test_a_day_with_5_percent_of_its_volume_fails_in_validate(history: History, night: Any) -> None:
    events = next_day_events(history)
    out = night({DAY_FILE: events.slice(0, events.num_rows // 20)})
    assert_stopped_cleanly(out, "validate")
    assert out.quarantine() == {}
    assert (
        f"dt={NEXT} (from {DAY_FILE}): volume anomaly: {events.num_rows // 20:,} rows kept, 0.06x the mean" in out.log
    )
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
    assert (f"{events.num_rows:,} rows read in 1 day(s), {events.num_rows - 11:,} kept, 11 quarantined "
            "(empty_user_id: 6, missing_user_id: 5), 0 duplicate(s) dropped") in out.log


def test_a_3kb_user_id_is_quarantined(history: History, night: Any) -> None:
    long_id = "é" * 1_500  # 1,500 characters, 3,000 bytes of UTF-8: over DynamoDB's 2,048-byte key limit
    fits = "x" * 2_048
    out = night({DAY_FILE: with_rows(next_day_events(history), {0: {"user_id": long_id}, 1: {"user_id": fits}})})
    assert_published_without(out, {long_id})
    assert out.quarantine() == {"user_id_too_long": 1}
    assert fits in set(lake.read_partition(out.settings.lake, "interactions", NEXT)["user_id"].to_pylist())


def test_non_utf8_bytes_in_an_id_quarantine_that_line(history: History, night: Any) -> None:
    lines = to_csv(next_day_events(history)).split(b"\n")
    lines[40] = b"\xff\xfe" + lines[40]  # e.g. a Latin-1 export: not UTF-8
    out = night({DAY_CSV: b"\n".join(lines)})
    assert out.succeeded, out.states
    assert out.quarantine() == {"invalid_utf8": 1}
    raw = pq.read_table(lake.partition_file(out.settings.lake, "quarantine/interactions", NEXT))
    assert raw["raw_line"][0].as_py().startswith("line 41: ") and raw["source_file"][0].as_py().endswith(DAY_CSV)
    assert not any("\ufffd" in user or "\\x" in user for user in out.after)  # nothing undecodable is served


def test_timestamps_from_another_day_and_the_future_are_quarantined(history: History, night: Any) -> None:
    events = next_day_events(history)
    five_days_ago = dt.datetime.combine(END - dt.timedelta(days=4), dt.time(10), tzinfo=UTC)
    changes = {
        0: {"event_ts": dt.datetime(2099, 1, 1, tzinfo=UTC)},
        1: {"event_ts": five_days_ago},
        2: {"event_ts": five_days_ago + dt.timedelta(minutes=1)},
    }
    out = night({DAY_FILE: with_rows(events, changes)})
    assert out.succeeded, out.states
    assert out.quarantine() == {"event_ts_in_future": 1, "event_ts_outside_day": 2}
    earlier = lake.read_partition(out.settings.lake, "interactions", END - dt.timedelta(days=4))
    assert "next-1" not in set(earlier["event_id"].to_pylist())  # an earlier day is never appended to


def test_duplicate_event_ids_are_dropped_and_counted(history: History, night: Any) -> None:
    events = next_day_events(history)
    repeats = {100 + i: {"event_id": f"next-{i}"} for i in range(10)}
    out = night({DAY_FILE: with_rows(events, repeats)})
    assert out.succeeded, out.states
    assert out.quarantine() == {}
    assert "10 duplicate(s) dropped" in out.log
    assert lake.read_partition(out.settings.lake, "interactions", NEXT).num_rows == events.num_rows - 10


def test_a_replayed_file_is_deduplicated_with_and_without_event_ids(history: History, night: Any) -> None:
    events = next_day_events(history)
    with_ids, without_ids = events.slice(0, 1500), events.slice(1500).drop_columns(["event_id"])
    out = night({
        DAY_FILE: with_ids,
        f"replayed-{DAY_FILE}": with_ids,
        DAY_CSV: to_csv(without_ids),
        f"replayed-{DAY_CSV}": to_csv(without_ids),
    })
    assert out.succeeded, out.states
    assert out.quarantine() == {}
    assert f"{2 * events.num_rows:,} rows read in 1 day(s), {events.num_rows:,} kept" in out.log
    assert f"{events.num_rows:,} duplicate(s) dropped" in out.log
    assert lake.read_partition(out.settings.lake, "interactions", NEXT).num_rows == events.num_rows


def test_an_empty_file_beside_a_good_one_is_skipped_with_a_warning(history: History, night: Any) -> None:
    events = next_day_events(history)
    out = night({DAY_FILE: events, "late-batch.csv": b"user_id,item_id,event_type,event_ts\n", "hour-23.parquet": b""})
    assert out.succeeded, out.states
    assert "skipped 2 empty file(s)" in out.log and "late-batch.csv" in out.log
    assert lake.read_partition(out.settings.lake, "interactions", NEXT).num_rows == events.num_rows


def test_a_bot_making_95_percent_of_the_day_is_quarantined_and_the_rest_publishes(history: History, night: Any) -> None:
    events = next_day_events(history)
    n = events.num_rows * 19
    start = dt.datetime.combine(NEXT, dt.time(), tzinfo=UTC)
    bot = pa.table(
        {
            "user_id": pa.array(["scraper-1"] * n, pa.string()),
            "item_id": pc.take(events["item_id"], pa.array([i % events.num_rows for i in range(n)])),
            "event_type": pa.array(["View"] * n, pa.string()),
            "event_ts": pa.array(
                [start + dt.timedelta(seconds=2 * i % 86_400) for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
            "event_id": pa.array([f"bot-{i}" for i in range(n)], pa.string()),
        }
    )
    out = night({DAY_FILE: events, "bot.parquet": bot})
    assert_published_without(out, {"scraper-1"})
    assert out.quarantine() == {"bot_user": n}
    assert "user 'scraper-1' made" in out.log and "(95%, above RECSYS_BOT_MAX_USER_SHARE=50%)" in out.log
    assert lake.read_partition(out.settings.lake, "interactions", NEXT).num_rows == events.num_rows
