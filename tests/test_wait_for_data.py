"""wait_for_data: the rule of a complete day, the trigger that waits for one, and the sensor
through Airflow's dag.test() (which runs a deferred task's trigger in line, as the triggerer would)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from recsys.config import Settings
from recsys.io.source import check_day
from recsys.io.sources.files import day_is_complete
from recsys.io.wait import COMPLETE, TIMED_OUT, UNREADABLE, DayLandedTrigger
from tests.support import SENSOR_DAG

UTC = dt.UTC
DAY = dt.date(2026, 6, 1)
HEADER = "user_id,item_id,event_type,event_ts\n"


def at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=UTC)


def write_events(folder: Path, name: str, *times: dt.datetime) -> None:
    rows = "".join(f"u{i},i{i},View,{ts.isoformat()}\n" for i, ts in enumerate(times))
    (folder / name).write_text(HEADER + rows)


def source_settings(folder: Path, **env: str) -> Settings:
    return Settings.from_env({"RECSYS_HOME": str(folder.parent / "home"), "RECSYS_SOURCE": str(folder), **env})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A landing folder: the day before DAY in full, DAY cut off at 21:14 (its export still running)."""
    folder = tmp_path / "landing"
    folder.mkdir()
    previous = DAY - dt.timedelta(days=1)
    write_events(folder, f"events-{previous}.csv", at(previous, 8), at(previous, 23, 40))
    write_events(folder, f"events-{DAY}.csv", at(DAY, 0, 5), at(DAY, 21, 14))
    return folder


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    ("newest", "complete_after", "expected"),
    [
        (at(DAY, 22, 59), dt.time(23), False),  # the export stopped before 23:00: not landed
        (at(DAY, 23, 0), dt.time(23), True),  # an event at 23:00 exactly: landed
        (at(DAY + dt.timedelta(days=1), 0, 1), dt.time(23), True),  # an event of a later day
        (at(DAY - dt.timedelta(days=1), 23, 59), dt.time(23), False),  # nothing of the day yet
        (at(DAY, 22, 30), dt.time(22), True),  # RECSYS_COMPLETE_AFTER=22:00
        (dt.datetime(2026, 6, 1, 19, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))), dt.time(23), True),  # 00:30 UTC
        (dt.datetime(2026, 6, 1, 23, 0), dt.time(23), True),  # naive: UTC
    ],
)
def test_a_day_is_complete_from_its_complete_after_time_or_a_later_day(
    newest: dt.datetime, complete_after: dt.time, expected: bool
) -> None:
    assert day_is_complete(DAY, newest, complete_after) is expected


def test_check_day_reads_the_newest_event_of_the_files(source: Path) -> None:
    status = check_day(source_settings(source), DAY)
    assert not status.complete and status.newest == at(DAY, 21, 14) and status.marker is None
    assert check_day(source_settings(source), DAY - dt.timedelta(days=1)).complete  # later events exist
    assert check_day(source_settings(source, RECSYS_COMPLETE_AFTER="21:00"), DAY).complete
    write_events(source, "late.csv", at(DAY, 23, 2))
    assert check_day(source_settings(source), DAY).complete


def test_a_dated_done_marker_completes_its_day_only(source: Path) -> None:
    settings = source_settings(source, RECSYS_DONE_MARKER="dt={date}.done")
    assert not check_day(settings, DAY).complete
    (source / f"dt={DAY}.done").touch()
    status = check_day(settings, DAY)
    assert status.complete and status.marker == source / f"dt={DAY}.done" and status.newest is None
    assert "done marker" in status.describe()
    (source / f"dt={DAY + dt.timedelta(days=1)}.done").touch()  # tomorrow's marker says nothing of DAY + 2
    assert not check_day(settings, DAY + dt.timedelta(days=2)).complete


def test_an_undated_marker_counts_when_written_after_the_day_ended(source: Path) -> None:
    settings = source_settings(source, RECSYS_DONE_MARKER="_SUCCESS")
    marker = source / "_SUCCESS"
    marker.touch()
    written_during_the_day = at(DAY, 12).timestamp()
    os.utime(marker, (written_during_the_day, written_during_the_day))
    assert not check_day(settings, DAY).complete  # yesterday's export wrote it
    written_after = at(DAY + dt.timedelta(days=1), 0, 40).timestamp()
    os.utime(marker, (written_after, written_after))
    assert check_day(settings, DAY).complete


# --------------------------------------------------------------------------- the trigger


def first_event(trigger: DayLandedTrigger) -> dict[str, Any]:
    """What the triggerer gets: the first event of run(), after a serialize/rebuild round trip."""
    from airflow.sdk._shared.module_loading import import_string

    classpath, kwargs = trigger.serialize()
    rebuilt = import_string(classpath)(**kwargs)

    async def first() -> Any:
        return await anext(rebuilt.run())

    return asyncio.run(first()).payload


def test_the_trigger_fails_past_the_deadline_naming_source_day_newest_event_and_rule(source: Path) -> None:
    settings = source_settings(source, RECSYS_WAIT_POKE_SECONDS="1", RECSYS_WAIT_TIMEOUT="2s")
    started = time.perf_counter()
    event = first_event(DayLandedTrigger.for_day(settings, DAY, dt.datetime.now(UTC)))
    assert event["status"] == TIMED_OUT and 2 <= time.perf_counter() - started < 10
    message = event["message"]
    for part in (f"event source {source}", f"run date {DAY} has not fully landed", "2026-06-01T21:14:00+00:00",
                 "23:00 UTC", "RECSYS_COMPLETE_AFTER", "RECSYS_WAIT_TIMEOUT=2s"):
        assert part in message, (part, message)


def landing_later(path: Path, text: str, delay: float) -> threading.Thread:
    """Write ``path`` after ``delay`` seconds from a thread: the export landing while the trigger waits."""
    def land() -> None:
        time.sleep(delay)
        tmp = path.with_name("." + path.name)  # written then renamed, as exporters do
        tmp.write_text(text)
        tmp.rename(path)

    thread = threading.Thread(target=land, daemon=True)
    thread.start()
    return thread


def test_the_trigger_fires_when_the_day_lands_while_it_waits(source: Path) -> None:
    settings = source_settings(source, RECSYS_WAIT_POKE_SECONDS="1", RECSYS_WAIT_TIMEOUT="60s")
    landing_later(source / "late.csv", HEADER + f"u9,i9,View,{at(DAY, 23, 58).isoformat()}\n", delay=1.5)
    event = first_event(DayLandedTrigger.for_day(settings, DAY, dt.datetime.now(UTC)))
    assert event["status"] == COMPLETE and 1.5 <= event["waited_seconds"] < 10
    assert "2026-06-01T23:58:00+00:00" in event["message"]


def test_the_trigger_hands_an_unreadable_source_to_extract(source: Path) -> None:
    settings = source_settings(source, RECSYS_WAIT_POKE_SECONDS="1", RECSYS_WAIT_TIMEOUT="60s")
    landing_later(source / "broken.parquet", "not parquet", delay=0.5)
    event = first_event(DayLandedTrigger.for_day(settings, DAY, dt.datetime.now(UTC)))
    assert event["status"] == UNREADABLE and "broken.parquet" in event["message"]


def test_postgres_completeness_is_its_newest_event_ts(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adbc_driver_postgresql.dbapi as pg
    import psycopg

    with pg.connect(postgres_database) as con:
        with con.cursor() as cur:
            cur.adbc_ingest("events", pa.table({
                "user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "event_type": ["View", "View"],
                "event_ts": pa.array([at(DAY, 9), at(DAY, 22, 10)], pa.timestamp("us", tz="UTC")),
            }), mode="create")
        con.commit()
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_SOURCE", postgres_database)
    settings = Settings.from_env({"RECSYS_HOME": str(tmp_path), "RECSYS_SOURCE": "postgres://recsys_source",
                                  "RECSYS_DONE_MARKER": "_SUCCESS"})  # no marker for a table: ignored
    status = check_day(settings, DAY)
    assert not status.complete and status.newest == at(DAY, 22, 10)
    with psycopg.connect(postgres_database, autocommit=True) as con:
        con.execute("INSERT INTO events VALUES ('u3', 'i3', 'View', %s)", (at(DAY, 23, 1),))
    assert check_day(settings, DAY).complete


# --------------------------------------------------------------------------- the sensor through dag.test()


@pytest.fixture
def sensor_dag(airflow_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A DAG of the sensor alone, as the nightly wires it before extract, in a DAGs folder of its own
    (dag.test() runs the DAGs of the configured folder)."""
    import airflow.settings
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "wait_for_data_test.py").write_text(SENSOR_DAG)
    monkeypatch.setattr(airflow.settings, "DAGS_FOLDER", str(folder))
    bag = DagBag(dag_folder=str(folder))
    assert not bag.import_errors
    yield bag.get_dag("wait_for_data_test")


def run_sensor(dag: Any, monkeypatch: pytest.MonkeyPatch, source: Path, day: dt.date, **env: str) -> tuple[str, Any]:
    """dag.test() for ``day``; returns the sensor's state and what it returned."""
    values = {"RECSYS_HOME": str(source.parent / "home"), "RECSYS_SOURCE": str(source),
              "RECSYS_WAIT_POKE_SECONDS": "1", **env}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    dag_run = dag.test(logical_date=dt.datetime.combine(day, dt.time(), tzinfo=UTC))
    (ti,) = dag_run.get_task_instances()
    result = ti.xcom_pull(task_ids="wait_for_data") if str(ti.state).endswith("success") else None
    return str(ti.state).rsplit(".", 1)[-1].lower(), result


def triggers_made() -> int:
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return int(session.scalar(select(func.count()).select_from(Trigger).where(
            Trigger.classpath == "recsys.io.wait.DayLandedTrigger")) or 0)


def landing_once_deferred(path: Path, text: str) -> threading.Thread:
    """Write ``path`` from a thread once the sensor has deferred (its trigger row exists) and a poke
    later: the export landing while the sensor waits, however long dag.test() takes to start the task."""
    before = triggers_made()

    def land() -> None:
        give_up = time.monotonic() + 300
        while triggers_made() == before and time.monotonic() < give_up:
            time.sleep(0.2)
        time.sleep(1.5)
        path.write_text(text)

    thread = threading.Thread(target=land, daemon=True)
    thread.start()
    return thread


def test_the_sensor_waits_for_a_day_that_lands_and_goes_on(
    sensor_dag: Any, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    landing_once_deferred(source / "late.csv", HEADER + f"u9,i9,View,{at(DAY, 23, 30).isoformat()}\n")
    state, result = run_sensor(sensor_dag, monkeypatch, source, DAY, RECSYS_WAIT_TIMEOUT="60s")
    assert state == "success" and result["deferred"] is True and result["waited_seconds"] >= 1


def test_the_sensor_fails_after_the_timeout_with_the_reason(
    sensor_dag: Any, source: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level("INFO")
    state, _ = run_sensor(sensor_dag, monkeypatch, source, DAY, RECSYS_WAIT_TIMEOUT="2s")
    printed = capfd.readouterr()
    assert state == "failed"
    text = caplog.text + printed.out + printed.err
    assert "AirflowSensorTimeout" in text and f"the run date {DAY} has not fully landed" in text


def test_the_sensor_does_not_defer_for_a_complete_day(
    sensor_dag: Any, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a backfill of past days, or recsys run of a day that has landed: one check, no trigger."""
    state, result = run_sensor(sensor_dag, monkeypatch, source, DAY - dt.timedelta(days=1), RECSYS_WAIT_TIMEOUT="60s")
    assert state == "success" and result["deferred"] is False and result["waited_seconds"] == 0
