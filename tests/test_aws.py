"""AWS through Airflow connections (recsys/io/aws.py): the publisher, verify and the S3 lake reach
DynamoDB Local and moto's S3 server only through a connection defined in the environment
(``AIRFLOW_CONN_<ID>`` as JSON), while the RECSYS_* endpoints point where nothing answers."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from recsys import datasets
from recsys.config import POPULAR_USER_ID, Settings
from recsys.dev import dynamodb_local
from recsys.io import aws, dynamodb, lake
from recsys.stages.publish import finish_publish, plan_publish, publish_shard
from recsys.stages.verify import verify
from tests.support import lists_of, make_recs, scan

DAY = dt.date(2026, 3, 1)
REGION = "eu-west-1"  # the connection's; RECSYS_AWS_REGION stays us-east-1


def nowhere() -> str:
    """An endpoint where nothing listens: reaching it would fail the test."""
    return f"http://127.0.0.1:{dynamodb_local.free_port()}"


def define_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, extra: dict[str, Any],
                      keys: bool = True) -> None:
    """The Airflow connection ``conn_id`` (type aws) as an environment variable, as on a worker."""
    body: dict[str, Any] = {"conn_type": "aws", "extra": extra}
    if keys:
        body |= {"login": "testing", "password": "testing-secret"}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(body))


@pytest.fixture
def no_aws_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AIRFLOW_CONN_AWS_DEFAULT",
                 "RECSYS_AWS_CONN_ID", "RECSYS_AWS_REGION", "RECSYS_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def test_a_named_connection_that_is_not_defined_fails_naming_it_and_how_to_define_it(
    no_aws_in_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_AWS_CONN_ID", "recsys_aws_prod")
    settings = Settings.from_env({"RECSYS_AWS_CONN_ID": "recsys_aws_prod"})
    expected = r"RECSYS_AWS_CONN_ID='recsys_aws_prod' .* not defined.*Admin > Connections.*AIRFLOW_CONN_RECSYS_AWS_PROD="
    with pytest.raises(aws.AwsConnectionError, match=expected):
        dynamodb.make_client(settings)
    with pytest.raises(aws.AwsConnectionError, match=expected):
        lake.s3_client()
    # A configuration error: run_stage fails the task at once instead of spending retries.
    assert issubclass(aws.AwsConnectionError, ValueError)


def test_a_connection_of_another_type_is_refused(no_aws_in_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_RECSYS_SOURCE_DB", json.dumps({"conn_type": "postgres", "host": "db"}))
    with pytest.raises(aws.AwsConnectionError, match="'recsys_source_db' has type 'postgres'.*type 'aws'"):
        dynamodb.make_client(Settings.from_env({"RECSYS_AWS_CONN_ID": "recsys_source_db"}))


def test_without_aws_default_clients_use_the_recsys_endpoint_and_region(no_aws_in_env: None) -> None:
    endpoint = nowhere()
    client = dynamodb.make_client(Settings.from_env({"RECSYS_DYNAMODB_ENDPOINT": endpoint,
                                                     "RECSYS_AWS_REGION": "ap-south-1"}))
    assert (client.meta.endpoint_url, client.meta.region_name) == (endpoint, "ap-south-1")
    assert client._request_signer._credentials.access_key == "local"  # DynamoDB Local's dummy keys


def test_aws_default_is_used_when_defined_and_the_storefront_never_uses_it(
    no_aws_in_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    through = nowhere()
    define_connection(monkeypatch, "aws_default", {"endpoint_url": through, "region_name": REGION})
    settings = Settings.from_env({"RECSYS_DYNAMODB_ENDPOINT": "http://127.0.0.1:8000"})
    worker = dynamodb.make_client(settings)
    assert (worker.meta.endpoint_url, worker.meta.region_name) == (through, REGION)
    assert worker._request_signer._credentials.access_key == "testing"
    storefront = dynamodb.make_client(settings, through_airflow=False)
    assert (storefront.meta.endpoint_url, storefront.meta.region_name) == ("http://127.0.0.1:8000", "us-east-1")


def test_a_service_endpoint_of_the_connection_wins_over_its_global_one(
    no_aws_in_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    define_connection(monkeypatch, "recsys_aws", {
        "endpoint_url": "http://127.0.0.1:1", "service_config": {"s3": {"endpoint_url": "http://127.0.0.1:2"}},
    })
    monkeypatch.setenv("RECSYS_AWS_CONN_ID", "recsys_aws")
    assert lake.s3_client().meta.endpoint_url == "http://127.0.0.1:2"
    assert dynamodb.make_client(Settings.from_env()).meta.endpoint_url == "http://127.0.0.1:1"


def test_publish_and_verify_reach_a_table_and_an_s3_lake_only_through_the_connection(
    no_aws_in_env: None, dynamodb_endpoint: str, s3_endpoint: str, dynamodb_client: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stages of publishing, as the DAG calls them, on a lake in moto's S3 and a table in
    DynamoDB Local, both reachable only through the connection's per-service endpoints."""
    define_connection(monkeypatch, "recsys_aws", {
        "region_name": REGION,
        "service_config": {"dynamodb": {"endpoint_url": dynamodb_endpoint}, "s3": {"endpoint_url": s3_endpoint}},
    })
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    root = f"s3://{bucket}/recsys"
    for name, value in {"RECSYS_AWS_CONN_ID": "recsys_aws", "RECSYS_DYNAMODB_ENDPOINT": nowhere(),
                        "RECSYS_S3_ENDPOINT": nowhere(), "RECSYS_HOME": str(tmp_path / "home"),
                        "RECSYS_LAKE": root, "RECSYS_TABLE": f"recs_{uuid.uuid4().hex[:8]}",
                        "RECSYS_PUBLISH_SHARDS": "2", "RECSYS_VERIFY_SAMPLE": "20"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    s3 = lake.s3_client()
    assert (s3.meta.endpoint_url, s3.meta.region_name) == (s3_endpoint, REGION)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    recs = make_recs(60)
    lake.write_partition(root, datasets.RECOMMENDATIONS, DAY, recs, extra_files={"_meta.json": {"model_version": "v1"}})
    lake.write_partition(root, datasets.MODELS, DAY, recs.slice(0, 1),
                         extra_files={"metrics.json": {"model": {"ndcg_at_k": 0.3, "map_at_k": 0.2}}})

    shards = plan_publish(settings, DAY)
    results = [publish_shard(settings, DAY, shard) for shard in shards]
    published = finish_publish(settings, DAY, shards, results)
    checked = verify(settings, DAY, published)

    assert checked["verified"] and checked["served"]["model_version"] == "v1"
    served = scan(dynamodb_client, settings.table)
    assert len(served) == 61 and POPULAR_USER_ID in served
    expected = recs.sort_by([("user_id", "ascending"), ("rank", "ascending")])
    by_user: dict[str, list[str]] = {}
    for row in expected.select(["user_id", "item_id"]).to_pylist():
        by_user.setdefault(row["user_id"], []).append(row["item_id"])
    assert lists_of(served) == by_user
    champion = lake.read_lake_json(root, datasets.CHAMPION)
    assert champion and champion["model_version"] == "v1"  # written to the lake through the connection
    assert not (tmp_path / "home" / "lake").exists()


@pytest.mark.slow  # a whole-DAG run
def test_whole_dag_through_the_aws_default_connection(
    one_model_env: Settings, dynamodb_endpoint: str, s3_endpoint: str, dynamodb_client: Any, airflow_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``recsys run``'s dag.test() with no RECSYS_AWS_CONN_ID: aws_default (no keys in it: DynamoDB
    Local and moto take the dummy ones) carries the region and both endpoints."""
    from recsys.dev.dagrun import run_dag
    from tests.support import STORE_END

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "RECSYS_AWS_CONN_ID", "RECSYS_S3_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    define_connection(monkeypatch, "aws_default", {
        "region_name": REGION,
        "service_config": {"dynamodb": {"endpoint_url": dynamodb_endpoint}, "s3": {"endpoint_url": s3_endpoint}},
    }, keys=False)
    bucket = f"lake-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("RECSYS_LAKE", f"s3://{bucket}/prod")
    monkeypatch.setenv("RECSYS_DYNAMODB_ENDPOINT", nowhere())
    settings = Settings.from_env()
    lake.s3_client().create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})

    dag_run = run_dag(settings, STORE_END)

    assert str(dag_run.state).endswith("success"), {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    recs = lake.read_partition(settings.lake, datasets.RECOMMENDATIONS, STORE_END)
    assert set(scan(dynamodb_client, settings.table)) == set(recs["user_id"].to_pylist())
    assert lake.read_lake_json(settings.lake, datasets.CHAMPION) is not None
    assert not (Path(settings.home) / "lake").exists()
