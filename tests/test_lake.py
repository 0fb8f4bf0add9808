"""The S3 lake (``RECSYS_LAKE=s3://bucket/prefix``) against a local S3-compatible server.

The server is moto's (``s3_endpoint`` in conftest.py), started once for the session on a free port: the
real HTTP protocol of S3, so boto3 talks to it exactly as it would to AWS or MinIO.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys import datasets
from recsys.config import Settings
from recsys.io import lake
from tests.support import STORE_END as END
from tests.support import scan

DAY = dt.date(2026, 3, 1)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3_lake(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the module's server; returns ``s3://bucket/prefix`` with RECSYS_S3_ENDPOINT set."""
    for key, value in {**CREDENTIALS, "RECSYS_S3_ENDPOINT": s3_endpoint, "RECSYS_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(key, value)
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    lake.s3_client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/recsys/prod"


def keys(root: str) -> set[str]:
    """Every object key of the lake, relative to its root."""
    bucket, _, prefix = root[len("s3://"):].partition("/")
    listed = lake.s3_client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])
    return {o["Key"][len(prefix) + 1:] for o in listed}


def table(n: int) -> pa.Table:
    return pa.table({"user_id": [f"u{i}" for i in range(n)], "n": list(range(n))})


def test_write_read_exists_and_json_side_files(s3_lake: str) -> None:
    assert not lake.partition_exists(s3_lake, "confidence", DAY)
    with pytest.raises(FileNotFoundError, match=f"{s3_lake}/confidence/dt=2026-03-01 is missing"):
        lake.read_partition(s3_lake, "confidence", DAY)

    where = lake.write_partition(s3_lake, "confidence", DAY, table(5), extra_files={"_meta.json": {"model_version": "v1"}})
    assert where == f"{s3_lake}/confidence/dt=2026-03-01"
    assert lake.partition_exists(s3_lake, "confidence", DAY)
    assert lake.read_partition(s3_lake, "confidence", DAY).equals(table(5))
    assert lake.read_partition(s3_lake, "confidence", DAY, columns=["n"], filters=pc.field("n") >= 3)["n"].to_pylist() == [3, 4]
    assert lake.read_partition_json(s3_lake, "confidence", DAY, "_meta.json") == {"model_version": "v1"}
    assert lake.partition_rows(s3_lake, "confidence", DAY) == 5

    manifest = lake.read_manifest(s3_lake, "confidence", DAY)
    assert manifest is not None and set(manifest["files"]) == {"part-0.parquet", "_meta.json"}
    version = manifest["version"]
    assert keys(s3_lake) == {"confidence/dt=2026-03-01/_manifest.json",
                             f"confidence/dt=2026-03-01/v={version}/part-0.parquet",
                             f"confidence/dt=2026-03-01/v={version}/_meta.json"}
    assert lake.list_days(s3_lake, "confidence") == [DAY]

    # Files written by the stage itself (folders too, like the GX Data Docs) go up as one partition.
    with lake.replace_partition(s3_lake, "validation", DAY) as tmp:
        (tmp / "static" / "css").mkdir(parents=True)
        (tmp / "static" / "css" / "style.css").write_text("body {}")
        lake.write_text(tmp / "index.html", "<html></html>")
    docs = lake.fetch_partition(s3_lake, "validation", DAY)
    assert (docs / "static" / "css" / "style.css").read_text() == "body {}"

    # Single objects outside partitions (champion.json).
    assert lake.read_lake_json(s3_lake, "models/champion.json") is None
    lake.write_lake_json(s3_lake, "models/champion.json", {"model_version": "v1"})
    assert lake.read_lake_json(s3_lake, "models/champion.json") == {"model_version": "v1"}
    assert lake.list_lake_json(s3_lake, "refresh/runs") == []
    for name in ("2026-03-01T130000Z.json", "2026-03-01T120000Z.json"):
        lake.write_lake_json(s3_lake, f"refresh/runs/{name}", {"users": 1})
    lake.write_lake_json(s3_lake, "refresh/runs/deeper/x.json", {})
    assert lake.list_lake_json(s3_lake, "refresh/runs") == ["2026-03-01T120000Z.json", "2026-03-01T130000Z.json"]

    with pytest.raises(lake.LakeError, match="fetch_partition"):
        lake.partition_dir(s3_lake, "confidence", DAY)

    lake.delete_partition(s3_lake, "confidence", DAY)
    assert not lake.partition_exists(s3_lake, "confidence", DAY)
    assert not any(k.startswith("confidence/") for k in keys(s3_lake))


def test_a_half_written_partition_is_invisible(s3_lake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lake.write_partition(s3_lake, "recommendations", DAY, table(3))

    # The stage fails while writing its files: nothing reaches S3.
    with pytest.raises(RuntimeError, match="stage crashed"):
        with lake.replace_partition(s3_lake, "recommendations", DAY) as tmp:
            lake.write_text(tmp / "part-0.parquet", "half a file")
            raise RuntimeError("stage crashed")
    before = keys(s3_lake)

    # The upload dies after the data files, before the manifest: they are under a version
    # no manifest names, so every reader still sees the old partition whole.
    put = lake._put_bytes

    def no_manifest(root: str, relpath: str, body: bytes) -> None:
        if relpath.endswith(datasets.MANIFEST):
            raise lake.LakeError("connection reset")
        put(root, relpath, body)

    monkeypatch.setattr(lake, "_put_bytes", no_manifest)
    with pytest.raises(lake.LakeError, match="connection reset"):
        lake.write_partition(s3_lake, "recommendations", DAY, table(7))
    monkeypatch.setattr(lake, "_put_bytes", put)
    orphans = keys(s3_lake) - before
    assert len(orphans) == 1 and next(iter(orphans)).endswith("/part-0.parquet")
    assert lake.read_partition(s3_lake, "recommendations", DAY).equals(table(3))
    assert lake.partition_rows(s3_lake, "recommendations", DAY) == 3

    # A partition whose first write died is not there at all.
    monkeypatch.setattr(lake, "_put_bytes", no_manifest)
    with pytest.raises(lake.LakeError):
        lake.write_partition(s3_lake, "interactions", DAY, table(2))
    monkeypatch.setattr(lake, "_put_bytes", put)
    assert not lake.partition_exists(s3_lake, "interactions", DAY)
    assert lake.list_days(s3_lake, "interactions") == []


def test_a_rerun_replaces_the_partition_on_every_machine(
    s3_lake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    lake.write_partition(s3_lake, "confidence", DAY, table(3), extra_files={"_meta.json": {"run": 1}})
    first = lake.read_manifest(s3_lake, "confidence", DAY)

    # Another worker (its own RECSYS_HOME, nothing shared but the bucket) reads it.
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "other-worker"))
    assert lake.read_partition(s3_lake, "confidence", DAY).equals(table(3))
    copy = lake.fetch_partition(s3_lake, "confidence", DAY)
    assert copy.is_relative_to(tmp_path / "other-worker")

    # The first worker reruns the date; the other worker's copy is now stale.
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "home"))
    lake.write_partition(s3_lake, "confidence", DAY, table(6), extra_files={"_meta.json": {"run": 2}})
    second = lake.read_manifest(s3_lake, "confidence", DAY)
    assert first and second and second["version"] != first["version"]
    assert not any(f"v={first['version']}" in k for k in keys(s3_lake)), "the replaced version's files are deleted"

    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "other-worker"))
    assert lake.read_partition(s3_lake, "confidence", DAY).equals(table(6))
    assert lake.read_partition_json(s3_lake, "confidence", DAY, "_meta.json") == {"run": 2}
    assert not copy.exists(), "the stale working copy is dropped"

    # A reader that read the manifest just before a rerun finds the old files gone: it reads
    # the new manifest and downloads the new version instead of failing.
    stale = lake.read_manifest(s3_lake, "confidence", DAY)
    lake.write_partition(s3_lake, "confidence", DAY, table(4))
    real = lake.read_manifest
    answers = iter([stale])
    monkeypatch.setattr(lake, "read_manifest", lambda *args: next(answers, None) or real(*args))
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path / "third-worker"))
    with caplog.at_level(logging.INFO, logger="recsys.io.lake"):
        assert lake.read_partition(s3_lake, "confidence", DAY).equals(table(4))
    assert "changed while it was downloaded" in caplog.text


def test_s3_errors_name_the_fix(s3_lake: str) -> None:
    missing = "s3://no-such-bucket-" + uuid.uuid4().hex[:8] + "/lake"
    with pytest.raises(lake.LakeError, match="no-such-bucket-.*Check the bucket exists, RECSYS_S3_ENDPOINT"):
        lake.write_partition(missing, "interactions", DAY, table(1))
    with pytest.raises(lake.LakeError, match="s3:GetObject, s3:PutObject, s3:ListBucket and s3:DeleteObject"):
        lake.partition_exists(missing, "interactions", DAY)
    with pytest.raises(lake.LakeError, match="bucket name is missing"):
        lake.partition_exists("s3:///lake", "interactions", DAY)


@pytest.mark.slow  # whole-DAG runs
def test_whole_dag_and_a_refresh_on_an_s3_lake(
    recsys_env: Settings, s3_lake: str, store: Path, dynamodb_client: Any, airflow_env: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.dev.dagrun import run_dag, run_refresh_dag

    # A source folder of its own (the store's files linked), so the refresh's new file stays out of the store.
    source = tmp_path / "source"
    source.mkdir()
    for path in sorted((store / "interactions").iterdir()):
        (source / path.name).symlink_to(path)
    # One untuned model, as in test_postgres_source: quick, and it need only beat popularity here.
    for key, value in {"RECSYS_LAKE": s3_lake, "RECSYS_SOURCE": str(source), "RECSYS_TUNING_GRID": "",
                       "RECSYS_FACTORS": "16", "RECSYS_ALPHA": "10", "RECSYS_GATE_MIN_LIFT": "0"}.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env()
    assert settings.lake == s3_lake
    dag_run = run_dag(settings, END)
    assert str(dag_run.state).endswith("success"), {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}

    stored = keys(s3_lake)
    day = f"dt={END.isoformat()}"
    for dataset in ("staging/interactions", "interactions", "confidence", "models", "recommendations", "validation",
                    "reports"):
        assert f"{dataset}/{day}/_manifest.json" in stored, f"{dataset} partition not committed to S3"
    models = lake.read_manifest(s3_lake, "models", END)
    assert models and {"model.npz", "metrics.json", "params.json", "users.parquet", "items.parquet"} <= set(models["files"])
    assert "index.html" in (lake.read_manifest(s3_lake, "validation", END) or {})["files"]
    assert any(k.startswith(f"tuning/{day}/candidate-") for k in stored)
    assert not any(k.endswith(".parquet") and "/v=" not in k for k in stored), "a data file outside a version"

    metrics = lake.read_partition_json(s3_lake, "models", END, "metrics.json")
    champion = lake.read_lake_json(s3_lake, "models/champion.json")
    assert champion and champion["model_version"] == metrics["model_version"]
    report = lake.fetch_partition(s3_lake, "reports", END, ["report.html"]) / "report.html"
    assert "Quality gate passed" in report.read_text()

    recs = lake.read_partition(s3_lake, "recommendations", END)
    served = scan(dynamodb_client, settings.table)
    assert set(served) == set(recs["user_id"].to_pylist())
    meta = scan(dynamodb_client, settings.table, with_meta=True)["__meta__"]
    assert meta["model_version"]["S"] == metrics["model_version"]
    assert not (Path(settings.home) / "lake").exists(), "nothing was written to a local lake"

    # The hourly refresh on the same lake: it reads the night's champion, model and window events
    # from S3, and commits its partitions there (the new events, the quarantined row, the lists).
    next_day = END + dt.timedelta(days=1)
    until = dt.datetime.combine(next_day, dt.time(12), tzinfo=dt.UTC)
    last = pq.read_table(store / "interactions" / f"events-{END.isoformat()}.parquet")
    last = last.filter(pc.less(last["event_ts"], pa.scalar(until - dt.timedelta(days=1)))).slice(0, 300)
    moved = last.set_column(last.schema.get_field_index("event_ts"), "event_ts",
                            pc.add(last["event_ts"], pa.scalar(dt.timedelta(days=1))))
    moved = moved.set_column(moved.schema.get_field_index("event_id"), "event_id",
                             pa.array([f"m-{i}" for i in range(moved.num_rows)]))
    bad = moved.slice(0, 1).set_column(moved.schema.get_field_index("event_type"), "event_type", pa.array(["Teleport"]))
    bad = bad.set_column(bad.schema.get_field_index("event_id"), "event_id", pa.array(["bad-1"]))
    pq.write_table(pa.concat_tables([moved, bad.cast(moved.schema)]), source / f"morning-{next_day.isoformat()}.parquet")
    refresh_run = run_refresh_dag(settings, until)
    assert str(refresh_run.state).endswith("success"), {ti.task_id: str(ti.state)
                                                        for ti in refresh_run.get_task_instances()}
    stored = keys(s3_lake)
    for dataset in (datasets.REFRESH_EVENTS, datasets.REFRESH_QUARANTINE, datasets.REFRESH_LISTS):
        assert f"{dataset}/dt={next_day.isoformat()}/_manifest.json" in stored, f"{dataset} not committed to S3"
    record = lake.read_lake_json(s3_lake, f"{datasets.REFRESH_RUNS}/{next_day.isoformat()}T120000Z.json")
    assert record and record["users"] == len(set(moved["user_id"].to_pylist()))  # the report's run list, on S3
    assert lake.read_partition(s3_lake, datasets.REFRESH_QUARANTINE, next_day)["reason"].to_pylist() == [
        "unknown_event_type"]
    assert lake.read_partition(s3_lake, datasets.REFRESH_EVENTS, next_day).num_rows == moved.num_rows
    summary = lake.read_partition_json(s3_lake, datasets.REFRESH_LISTS, next_day, datasets.REFRESH_META)
    assert summary["model_version"] == metrics["model_version"] and summary["until"] == until.isoformat()
    lists = lake.read_partition(s3_lake, datasets.REFRESH_LISTS, next_day)
    active = set(moved["user_id"].to_pylist())
    assert set(lists["user_id"].to_pylist()) == active
    after = scan(dynamodb_client, settings.table)
    assert {u for u, i in after.items() if "refreshed_at" in i} == active
    assert all(after[u]["model_version"]["S"] == metrics["model_version"] for u in active)
    for user in set(served) - active:
        assert after[user] == served[user], f"{user} changed without new events"
    assert not (Path(settings.home) / "lake").exists(), "the refresh wrote to a local lake"
