"""Publishing when things go wrong: the publisher killed mid-way, DynamoDB Local gone mid-way,
an older or backfill date after a newer publish, and throttling.

The first three run the real publish stages of recsys.pipeline (plan_publish, publish_shard,
finish_publish, verify: what the DAG's tasks call) against real DynamoDB Local servers; the
throttling tests write to DynamoDB Local too, through tests.support.ThrottlingDynamoDB, which
throttles underneath botocore's retry layer (DynamoDB Local itself never throttles).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from recsys.config import Settings
from recsys.dev import dynamodb_local
from recsys.io import dynamodb, lake
from recsys.io.dynamodb import META_KEY, PublicationError
from recsys.stages.publish import finish_publish, plan_publish, publish_shard
from recsys.stages.verify import verify
from tests.support import ThrottlingDynamoDB, every_other_user, make_recs, scan

DAY = dt.date(2026, 6, 2)
BEFORE = DAY - dt.timedelta(days=1)
REPO = Path(__file__).resolve().parents[1]
USERS = 1_500  # lists of 1-20 items (plus __popular__): a second or more of writing at one thread


def lake_with_lists(
    home: Path, endpoint: str, table: str, threads: int = 4, shards: int = 3, users: int = USERS
) -> Settings:
    """Settings on a fresh lake holding recommendations for BEFORE (v1) and DAY (v2)."""
    settings = Settings.from_env({
        "RECSYS_HOME": str(home),
        "RECSYS_DYNAMODB_ENDPOINT": endpoint,
        "RECSYS_TABLE": table,
        "RECSYS_PUBLISH_THREADS": str(threads),
        "RECSYS_PUBLISH_SHARDS": str(shards),
        "RECSYS_VERIFY_SAMPLE": "300",
    })
    for day, version, seed in ((BEFORE, "v1", 1), (DAY, "v2", 2)):
        lake.write_partition(settings.lake, "recommendations", day, make_recs(users, seed=seed),
                             extra_files={"_meta.json": {"model_version": version}})
        models = lake.partition_dir(settings.lake, "models", day)
        models.mkdir(parents=True, exist_ok=True)
        lake.write_json(models / "metrics.json", {"model": {"ndcg_at_k": 0.2, "map_at_k": 0.1}})
    return settings


def publish_all(settings: Settings, day: dt.date, **flags: Any) -> dict[str, Any]:
    """What the DAG does: plan, every shard, then __meta__ and verify."""
    shards = plan_publish(settings, day, **flags)
    assert shards, "nothing was planned"
    results = [publish_shard(settings, day, shard) for shard in shards]
    published = finish_publish(settings, day, shards, results, force=flags.get("force", False))
    verify(settings, day, published)
    return published


def versions(client: Any, table: str) -> dict[str, str]:
    return {user: item["model_version"]["S"] for user, item in scan(client, table, with_meta=True).items() if user != META_KEY}


def served(client: Any, table: str) -> tuple[str, str] | None:
    meta = dynamodb.read_served(client, table)
    return (meta["run_date"], meta["model_version"]) if meta else None


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def has_version(client: Any, table: str, user: str, version: str) -> bool:
    item = client.get_item(TableName=table, Key={"user_id": {"S": user}}, ConsistentRead=True).get("Item")
    return bool(item) and item["model_version"]["S"] == version


def first_user(recs: pa.Table) -> str:
    return min(u for u in recs["user_id"].to_pylist())


# --------------------------------------------------------------------------- the publisher killed


@pytest.fixture
def serving_v1(dynamodb_endpoint: str, dynamodb_client: Any, tmp_path: Path) -> Settings:
    """Settings on a fresh table that serves BEFORE's lists (v1), every user published."""
    settings = lake_with_lists(tmp_path / "home", dynamodb_endpoint, f"faults_{uuid.uuid4().hex[:8]}")
    publish_all(settings, BEFORE)
    assert len(versions(dynamodb_client, settings.table)) == USERS + 1
    assert served(dynamodb_client, settings.table) == (BEFORE.isoformat(), "v1")
    return settings


SHARD_RUNNER = """
import json, sys
from recsys.config import Settings
import datetime as dt
from recsys.stages.publish import publish_shard
shards = json.loads(sys.argv[1])
for shard in shards:
    publish_shard(Settings.from_env(), dt.date.fromisoformat(sys.argv[2]), shard)
"""


def test_publisher_killed_mid_publish_then_retried_serves_every_user_the_new_version(
    serving_v1: Settings, dynamodb_endpoint: str, dynamodb_client: Any
) -> None:
    settings, table = serving_v1, serving_v1.table
    users = set(versions(dynamodb_client, table))
    shards = plan_publish(settings, DAY)
    assert [s["shard"] for s in shards] == [0, 1, 2] and sum(s["users"] for s in shards) == USERS + 1
    # The shard tasks run in a process of their own (as a task does), one thread: slow enough to kill.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RECSYS_HOME": str(settings.home),
           "RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint, "RECSYS_TABLE": table, "RECSYS_PUBLISH_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", SHARD_RUNNER, json.dumps(shards), DAY.isoformat()], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        first = first_user(lake.read_partition(settings.lake, "recommendations", DAY))
        wait_for(lambda: has_version(dynamodb_client, table, first, "v2") or child.poll() is not None, 60,
                 "the first user written")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:] if child.stderr else ""
    child.stderr and child.stderr.close()

    mid = versions(dynamodb_client, table)
    assert set(mid) == users, "a user was lost or added by the killed publisher"
    written = sum(v == "v2" for v in mid.values())
    assert 0 < written < len(users), f"the kill should land mid-publish; {written} of {len(users)} were new"
    assert served(dynamodb_client, table) == (BEFORE.isoformat(), "v1"), "__meta__ moved before every shard ran"
    # finish_publish refuses to mark a publication whose shards did not all report.
    with pytest.raises(PublicationError, match=r"shards \[0, 1, 2\] were planned but results came from \[\]"):
        finish_publish(settings, DAY, shards, [])
    assert served(dynamodb_client, table) == (BEFORE.isoformat(), "v1")

    # The retry: every shard task again, with the plan's own ranges and timestamps.
    results = [publish_shard(settings, DAY, shard) for shard in shards]
    assert [r["items"] for r in results] == [s["users"] for s in shards]
    published = finish_publish(settings, DAY, shards, results)
    assert verify(settings, DAY, published)["verified"] is True
    after = versions(dynamodb_client, table)
    assert set(after) == users and set(after.values()) == {"v2"}
    assert served(dynamodb_client, table) == (DAY.isoformat(), "v2")
    generated = {item["generated_at"]["S"] for u, item in scan(dynamodb_client, table, with_meta=True).items() if u != META_KEY}
    assert len(generated) == 1, "a retried shard must write the plan's timestamps, not new ones"


def test_a_retried_shard_rewrites_exactly_its_own_users(serving_v1: Settings, dynamodb_client: Any) -> None:
    settings = serving_v1
    shards = plan_publish(settings, DAY)
    publish_shard(settings, DAY, shards[1])
    now = versions(dynamodb_client, settings.table)
    middle = {u for u, v in now.items() if v == "v2"}
    assert len(middle) == shards[1]["users"]
    assert all(shards[1]["first"] <= u < shards[1]["end"] for u in middle)
    publish_shard(settings, DAY, shards[1])  # the retry
    assert versions(dynamodb_client, settings.table) == now


# --------------------------------------------------------------------------- DynamoDB Local stopped


@pytest.fixture
def own_dynamodb(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A DynamoDB Local of this test only, data on disk (-dbPath), so it can be stopped and restarted."""
    jar_dir = dynamodb_local.ensure_jar(Settings.from_env().cache_dir)
    server: dict[str, Any] = {"port": dynamodb_local.free_port(), "db": tmp_path / "ddb", "log": tmp_path / "ddb.log"}
    server["endpoint"] = f"http://127.0.0.1:{server['port']}"

    def start() -> None:
        server["process"] = dynamodb_local.start_process(jar_dir, server["port"], server["db"], server["log"])
        dynamodb_local.wait_until_ready(server["endpoint"], 60, process=server["process"], log_path=server["log"])

    def stop() -> None:
        process = server["process"]
        process.kill()
        process.wait(timeout=10)

    server.update(start=start, stop=stop)
    start()
    try:
        yield server
    finally:
        if server["process"].poll() is None:
            stop()


def test_dynamodb_stopped_mid_publish_fails_naming_the_endpoint_and_a_retry_completes(
    own_dynamodb: dict[str, Any], tmp_path: Path
) -> None:
    endpoint = own_dynamodb["endpoint"]
    users = 300  # a freshly started DynamoDB Local on disk writes far slower than the session's in-memory one
    settings = lake_with_lists(tmp_path / "home", endpoint, "recs", threads=1, shards=1, users=users)
    client = dynamodb.make_client(settings)
    shards = plan_publish(settings, DAY)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            publish_shard(settings, DAY, shards[0])
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    first = first_user(lake.read_partition(settings.lake, "recommendations", DAY))
    wait_for(lambda: has_version(client, "recs", first, "v2") or not worker.is_alive(), 30, "the first user written")
    assert worker.is_alive(), "the shard finished before DynamoDB Local could be stopped"
    own_dynamodb["stop"]()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], PublicationError), failure
    message = str(failure[0])
    assert f"DynamoDB endpoint {endpoint} cannot be reached" in message and "dynamodb-local status" in message
    # A PublicationError is a RuntimeError: run_stage leaves it to Airflow's retries.
    assert not isinstance(failure[0], (ValueError, LookupError, FileNotFoundError))

    own_dynamodb["start"]()  # the same data folder: what was written survives
    assert dynamodb.read_served(client, "recs") is None
    retry = settings.with_overrides({"publish_threads": 4})
    published = finish_publish(
        retry, DAY, shards, [publish_shard(retry, DAY, shard) for shard in shards]
    )
    assert published["items"] == users + 1
    assert verify(settings, DAY, published)["verified"] is True
    assert set(versions(client, "recs").values()) == {"v2"} and len(versions(client, "recs")) == users + 1


# --------------------------------------------------------------------------- older dates and backfills


def test_backfill_or_older_date_after_a_newer_publish_leaves_the_table_unchanged(
    dynamodb_endpoint: str, dynamodb_client: Any, tmp_path: Path
) -> None:
    # The DAG-level run of an older date is in test_pipeline_e2e; a backfill run is checked here.
    table = f"faults_{uuid.uuid4().hex[:8]}"
    # No process is killed here, so a few hundred users (three shards) show it as well as USERS would.
    settings = lake_with_lists(tmp_path / "home", dynamodb_endpoint, table, users=300)
    publish_all(settings, DAY)
    before = scan(dynamodb_client, table, with_meta=True)
    assert plan_publish(settings, BEFORE, is_backfill=True) == []
    assert plan_publish(settings, BEFORE) == []
    assert plan_publish(settings, BEFORE, is_backfill=True, force=True) == []  # a backfill never publishes
    assert scan(dynamodb_client, table, with_meta=True) == before
    assert plan_publish(settings, BEFORE, force=True)  # only force_publish makes the older date go out


# --------------------------------------------------------------------------- throttling (underneath botocore's retries)


@pytest.fixture
def table(dynamodb_client: Any) -> str:
    name = f"throttled_{uuid.uuid4().hex[:8]}"
    dynamodb.ensure_table(dynamodb_client, name)
    return name


def puts(count: int) -> list[dict[str, Any]]:
    return [{"user_id": {"S": f"u{i}"}, "n": {"N": str(i)}} for i in range(count)]


def test_brief_throttling_is_retried_by_botocore_alone(dynamodb_endpoint: str, dynamodb_client: Any, table: str) -> None:
    double = ThrottlingDynamoDB(dynamodb_endpoint, throttles=3)
    delays: list[float] = []
    assert dynamodb.write_batch(double.client, table, puts(25), sleep=delays.append) == 0 and delays == []
    assert double.calls == 1 and double.attempts == 4 and len(double.botocore_delays) == 3  # make_client: 4 attempts a call
    assert scan(dynamodb_client, table, with_meta=True) == {item["user_id"]["S"]: item for item in puts(25)}


@pytest.mark.parametrize("code", ["ProvisionedThroughputExceededException", "ThrottlingException"])
def test_write_batch_backs_off_with_jitter_on_throttling_and_unprocessed_items(
    code: str, dynamodb_endpoint: str, dynamodb_client: Any, table: str
) -> None:
    # 12 throttles in a row: botocore's 4 attempts of each of recsys's first 3 calls.
    double = ThrottlingDynamoDB(dynamodb_endpoint, throttles=12, code=code, unprocessed_rounds=1)
    delays: list[float] = []
    retries = dynamodb.write_batch(
        double.client, table, puts(25), backoff_base=0.1, backoff_cap=0.25, sleep=delays.append
    )
    assert scan(dynamodb_client, table, with_meta=True) == {item["user_id"]["S"]: item for item in puts(25)}
    assert retries == len(delays) == 4 and double.calls == 5  # 3 throttled, 1 with items back, 1 clean
    assert double.failed_calls == 3 and len(double.botocore_delays) == 9 and double.attempts == 12 + 2
    assert double.handed_back == Counter({f"u{i}": 1 for i in range(25) if every_other_user(f"u{i}")})
    assert len(double.written) == 25 and set(double.written.values()) == {1}
    ceilings = [0.1, 0.2, 0.25, 0.25]  # base * 2^(attempt-1), capped
    assert all(0.0 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_backoff_delay_never_exceeds_its_capped_exponential_ceiling() -> None:
    random.seed(11)
    for attempt in range(1, 31):
        ceiling = min(5.0, 0.05 * 2 ** (attempt - 1))
        assert all(0.0 <= dynamodb.backoff_delay(attempt, 0.05, 5.0) <= ceiling for _ in range(200)), attempt


def test_publish_gives_up_on_endless_throttling_with_the_fix_in_the_message(
    dynamodb_endpoint: str, dynamodb_client: Any, table: str
) -> None:
    double = ThrottlingDynamoDB(dynamodb_endpoint, throttles=10**9, code="ProvisionedThroughputExceededException")
    recs = make_recs(40, seed=3)  # 41 users: 2 batches
    with pytest.raises(PublicationError) as raised:
        dynamodb.publish_recommendations(
            double.client, table, recs, model_version="v", generated_at=dt.datetime(2026, 6, 1, tzinfo=dt.UTC),
            expires_at=1, threads=2, backoff_base=1e-4, backoff_cap=1e-3, max_attempts=4,
        )
    message = str(raised.value)
    assert f"DynamoDB table {table}: " in message
    assert "after 4 attempts (last: ProvisionedThroughputExceededException)" in message
    assert "RECSYS_PUBLISH_THREADS" in message and "Rerun the publish task" in message
    assert double.calls == 2 * 4 and double.attempts == 2 * 4 * 4  # each of recsys's attempts is 4 of botocore's
    assert scan(dynamodb_client, table, with_meta=True) == {}
