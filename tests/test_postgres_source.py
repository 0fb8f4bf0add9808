"""PostgreSQL as the event source: staging days as Parquet, errors, and the whole DAG from it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.config import Settings
from recsys.dev.dagrun import run_dag
from recsys.io import lake
from recsys.io.source import newest_complete_day
from recsys.io.sources import postgres as pgsource
from recsys.io.sources.files import SourceError
from tests.support import STORE_END as END
from tests.support import scan

# The store's own names, so RECSYS_SOURCE_COLUMNS is exercised as for files.
RENAMED = {"user_id": "visitor", "item_id": "sku_code", "event_type": "kind", "event_ts": "occurred_at", "event_id": "event_ref"}
MAPPING = ",".join(f"{k}={v}" for k, v in RENAMED.items())


def load_table(uri: str, table: pa.Table, name: str, schema: str | None = None) -> None:
    """Bulk-load an Arrow table into PostgreSQL (ADBC, binary COPY)."""
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(uri) as con:
        with con.cursor() as cur:
            if schema:
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            cur.adbc_ingest(name, table, mode="create", db_schema_name=schema)
        con.commit()


def settings_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, uri: str, **env: str) -> Settings:
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_SOURCE", uri)
    values = {"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_SOURCE": "postgres://recsys_source", **env}
    return Settings.from_env(values)


def test_days_stream_into_parquet_in_batches_with_epoch_milliseconds(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = dt.date(2026, 5, 2)
    base = int(dt.datetime(2026, 5, 1, tzinfo=dt.UTC).timestamp() * 1000)
    n = 30_000  # 10,000 a day over three days
    rows = pa.table({
        "u": pa.array([i % 97 for i in range(n)], pa.int64()),  # numbers: staged as text
        "i": pa.array([f"{i % 13:05d}" for i in range(n)]),  # leading zeros survive
        "what": pa.array(["View"] * n),
        "ms": pa.array([base + i * 8_640 for i in range(n)], pa.int64()),  # epoch milliseconds
    })
    load_table(postgres_database, rows, "raw_events")
    monkeypatch.setattr(pgsource, "BATCH_BYTES", 32 * 1024)
    settings = settings_for(
        monkeypatch, tmp_path, postgres_database,
        RECSYS_SOURCE_QUERY="select u, i, what, ms from raw_events where what <> 'Teleport';",
        RECSYS_SOURCE_COLUMNS="user_id=u,item_id=i,event_type=what,event_ts=ms",
    )
    out = pgsource.stage_days(settings, day, [day, day - dt.timedelta(days=1)])
    staged = pq.read_table(out)
    assert staged.num_rows == 20_000  # the first two days, nothing of the third
    assert staged.schema.field("u").type == pa.string() and staged["i"][0].as_py().startswith("0000")
    files = sorted(out.glob("*.parquet"))
    assert len(files) == 1 and pq.ParquetFile(files[0]).metadata.num_row_groups > 3  # written batch by batch
    assert newest_complete_day(settings) == dt.date(2026, 5, 3)  # newest event 23:59:51 UTC: complete


def test_latest_skips_a_cut_off_last_day_as_for_files(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    def at(day: int, hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime(2026, 5, day, hour, minute, tzinfo=dt.UTC)

    load_table(postgres_database, pa.table({
        "visitor": ["u1", "u2", "u3"], "sku_code": ["i1", "i2", "i3"], "kind": ["View"] * 3,
        "occurred_at": [at(1, 12), at(2, 9), at(3, 22, 59)],  # the export stops at 22:59 on May 3
    }), "events")
    settings = settings_for(monkeypatch, tmp_path, postgres_database, RECSYS_SOURCE_COLUMNS=MAPPING)
    assert newest_complete_day(settings) == dt.date(2026, 5, 2)
    with psycopg.connect(postgres_database, autocommit=True) as con:
        con.execute("INSERT INTO events VALUES ('u4', 'i4', 'View', %s)", (at(3, 23),))
    assert newest_complete_day(settings) == dt.date(2026, 5, 3)  # an event at 23:00: May 3 has landed
    with psycopg.connect(postgres_database, autocommit=True) as con:
        con.execute("INSERT INTO events VALUES ('u5', 'i5', 'View', %s)", (at(5, 4),))
    assert newest_complete_day(settings) == dt.date(2026, 5, 5)  # nothing on May 4: the partial day is all there is


def test_missing_connection_and_missing_column_name_the_fix(
    postgres_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = dt.date(2026, 5, 2)
    load_table(postgres_database, pa.table({"visitor": ["u1"], "sku_code": ["i1"], "occurred_at": [
        dt.datetime(2026, 5, 2, 10, tzinfo=dt.UTC)]}), "events")
    settings = settings_for(monkeypatch, tmp_path, postgres_database, RECSYS_SOURCE_COLUMNS=MAPPING)
    with pytest.raises(SourceError, match=r"required column 'event_type' is missing \(mapped from 'kind'.*"
                       r"columns found: \['visitor', 'sku_code', 'occurred_at'\]"):
        pgsource.stage_days(settings, day, [day])

    missing = Settings.from_env({"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_SOURCE": "postgres://shop_db"})
    with pytest.raises(SourceError, match="connection 'shop_db', which is not defined.*AIRFLOW_CONN_SHOP_DB=postgresql://"):
        pgsource.stage_days(missing, day, [day])

    no_table = settings_for(monkeypatch, tmp_path, postgres_database, RECSYS_SOURCE_TABLE="shop.nothing_here")
    with pytest.raises(SourceError, match=r"cannot read PostgreSQL table shop.nothing_here on connection 'recsys_source'"):
        pgsource.stage_days(no_table, day, [day])


@pytest.mark.slow  # a whole-DAG run
def test_the_dag_runs_from_postgres_and_publishes(
    store: Path, recsys_env: Settings, postgres_database: str, dynamodb_client: Any,
    airflow_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = pq.read_table(store / "interactions").rename_columns([RENAMED[c] for c in pq.read_schema(
        next((store / "interactions").glob("*.parquet"))).names])
    load_table(postgres_database, events, "events", schema="shop")
    for key, value in {
        "RECSYS_SOURCE": "postgres://recsys_source",
        "RECSYS_SOURCE_TABLE": "shop.events",
        "RECSYS_SOURCE_COLUMNS": MAPPING,
        "AIRFLOW_CONN_RECSYS_SOURCE": postgres_database,
        "RECSYS_TUNING_GRID": "",  # one model, no tuning: quick
        "RECSYS_MODEL": "rp3beta",  # untuned, an item model still beats popularity on a store with co-viewed items
        "RECSYS_GATE_MIN_LIFT": "0",  # the untuned model need only beat popularity here
    }.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    dag_run = run_dag(settings, END)
    assert str(dag_run.state).endswith("success")

    extracted = lake.read_partition(settings.lake, "interactions", END)
    day_rows = events.filter(pc.equal(pc.cast(events["occurred_at"], pa.date32()), pa.scalar(END, pa.date32())))
    assert extracted.num_rows == len(set(day_rows["event_ref"].to_pylist())) > 0
    assert set(extracted["user_id"].to_pylist()) == set(day_rows["visitor"].to_pylist())
    for back in range(28):
        assert lake.partition_exists(settings.lake, "interactions", END - dt.timedelta(days=back))

    served = scan(dynamodb_client, settings.table, with_meta=True)
    version = lake.read_json(lake.partition_dir(settings.lake, "recommendations", END) / "_meta.json")["model_version"]
    assert served["__meta__"]["run_date"]["S"] == END.isoformat()
    assert served["__meta__"]["model_version"]["S"] == version
    confidence = lake.read_partition(settings.lake, "confidence", END)
    assert set(pc.unique(confidence["user_id"]).to_pylist()) <= set(served)
