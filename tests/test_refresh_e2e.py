"""The hourly refresh end to end: one good night (module-scoped), then ``recsys refresh``
through the real ``recsys_refresh`` DAG (``dag.test()``) against DynamoDB Local, with the
first hours of the next day added to the source folder."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.config import POPULAR_USER_ID, Settings
from recsys.dev.datagen import generate_store
from recsys.io import dynamodb, lake
from tests.support import SMALL, lists_of, scan
from tests.support import STORE_END as END

pytestmark = pytest.mark.slow  # whole-DAG runs: make test, not make test-fast

NEXT = END + dt.timedelta(days=1)
NOON = dt.datetime.combine(NEXT, dt.time(12), tzinfo=dt.UTC)
NEWCOMER = "u-newcomer-1"


@dataclass
class Night:
    store: Path
    source: Path
    settings: Settings
    version: str


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory, dynamodb_endpoint: str, airflow_env: Path) -> Iterator[Night]:
    """A store and one good night (END) published to a table of its own; the environment stays
    set for the module's tests. One model, no tuning: the refresh is what is under test."""
    from recsys.dev.dagrun import run_dag

    root = tmp_path_factory.mktemp("refresh")
    store = root / "store"
    generate_store(store, **SMALL)  # type: ignore[arg-type]
    source = root / "source"
    source.mkdir()
    for path in sorted((store / "interactions").iterdir()):
        os.symlink(path, source / path.name)
    env = {
        "RECSYS_HOME": str(root / "home"),
        "RECSYS_SOURCE": str(source),
        "RECSYS_CATALOG": str(store / "catalog.parquet"),
        "RECSYS_WINDOW_DAYS": "28",
        "RECSYS_TUNING_GRID": "",
        "RECSYS_FACTORS": "16",
        "RECSYS_ALPHA": "10",
        "RECSYS_GATE_MIN_LIFT": "0",
        "RECSYS_EXCLUDE_SEEN": "all",
        "RECSYS_DYNAMODB_ENDPOINT": dynamodb_endpoint,
        "RECSYS_TABLE": f"refresh_{uuid.uuid4().hex[:8]}",
        "RECSYS_VERIFY_SAMPLE": "100",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings = Settings.from_env()
        assert str(run_dag(settings, END).state).endswith("success"), "the night before did not run"
        version = lake.read_json(lake.partition_dir(settings.lake, "recommendations", END) / "_meta.json")
        yield Night(store=store, source=source, settings=settings, version=version["model_version"])


def morning_events(night: Night, served: dict[str, list[str]]) -> tuple[pa.Table, str, str]:
    """The last day's events of 00:00-12:00 moved to the next day with fresh ids, plus: a
    shopper of the night who views the top item of their list, and a newcomer. Returns the
    table, that shopper and that item."""
    day = pq.read_table(night.store / "interactions" / f"events-{END.isoformat()}.parquet")
    day = day.filter(pc.less(day["event_ts"], pa.scalar(dt.datetime.combine(END, dt.time(12), tzinfo=dt.UTC))))
    ts = pc.add(day["event_ts"], pa.scalar(dt.timedelta(days=1)))
    moved = day.set_column(day.schema.get_field_index("event_ts"), "event_ts", ts).set_column(
        day.schema.get_field_index("event_id"), "event_id", pa.array([f"m-{i}" for i in range(day.num_rows)]))
    shopper = sorted(u for u in served if not u.startswith(("__", "item#")))[0]
    item = served[shopper][0]
    at = dt.datetime.combine(NEXT, dt.time(9), tzinfo=dt.UTC)
    liked = served[f"item#{item}"][:3]
    extra = pa.table({
        "user_id": [shopper, NEWCOMER, NEWCOMER, NEWCOMER],
        "item_id": [item, *liked],
        "event_type": ["View", "View", "AddToCart", "View"],
        "event_ts": pa.array([at] * 4, pa.timestamp("us", tz="UTC")),
        "event_id": [f"x-{i}" for i in range(4)],
    }).cast(moved.schema)
    return pa.concat_tables([moved, extra]), shopper, item


def refresh(until: dt.datetime, capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from recsys.dev.cli import main

    code = main(["refresh", "--until", until.isoformat().replace("+00:00", "Z"), "--verbose"])
    out = capfd.readouterr()
    return code, out.out + out.err


def test_refresh_lists_the_active_users_only_and_a_newer_nightly_wins(
    night: Night, dynamodb_client: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    from recsys.serving.reader import get_recommendations

    settings = night.settings
    before = scan(dynamodb_client, settings.table, with_meta=True)
    events, shopper, item = morning_events(night, lists_of({u: i for u, i in before.items() if "items" in i}))
    bad = pa.table({"user_id": ["u-bad", "u-bad"], "item_id": [item, item], "event_type": ["Teleport", "View"],
                    "event_ts": pa.array([NOON - dt.timedelta(hours=1), None], pa.timestamp("us", tz="UTC")),
                    "event_id": ["bad-1", "bad-2"]}).cast(events.schema)
    pq.write_table(pa.concat_tables([events, bad]), night.source / f"morning-{NEXT.isoformat()}.parquet")

    code, out = refresh(NOON, capfd)
    assert code == 0, out
    after = scan(dynamodb_client, settings.table, with_meta=True)
    active = set(events["user_id"].to_pylist())
    refreshed = {u for u, i in after.items() if "refreshed_at" in i}
    assert refreshed == active  # every active user (the demo's items are all known to the model), no one else
    assert f"{len(active):,} users refreshed" in out and "1 new to the night" in out
    for user in set(before) - active:
        assert after[user] == before[user], f"{user} changed without new events"
    assert {u for u in after if u.startswith(("__", "item#"))} == {u for u in before if u.startswith(("__", "item#"))}
    assert all(after[u]["model_version"]["S"] == night.version for u in refreshed)
    touched: dict[str, set[str]] = {}
    for row in events.select(["user_id", "item_id"]).to_pylist():
        touched.setdefault(row["user_id"], set()).add(row["item_id"])
    lists = lists_of({u: i for u, i in after.items() if "items" in i})
    assert item in lists_of({shopper: before[shopper]})[shopper] and item not in lists[shopper]
    assert all(not (set(lists[u]) & touched[u]) for u in refreshed), "a refreshed list holds an item touched today"
    assert all(len(lists[u]) == settings.k for u in refreshed)
    quarantine = pq.read_table(lake.partition_file(settings.lake, "refresh/quarantine", NEXT))
    assert sorted(quarantine["reason"].to_pylist()) == ["missing_event_ts", "unknown_event_type"]
    assert "2 of " in out and " new rows quarantined" in out
    record = lake.read_lake_json(settings.lake, "refresh/runs/2026-06-01T120000Z.json")  # for the nightly report
    assert (record["users"], record["new_users"], record["quarantined"]) == (len(active), 1, 2)
    assert record["served_run_date"] == END.isoformat() and set(record["seconds"]) == {
        "collect_events", "score_active", "publish_refresh"}

    newcomer = get_recommendations(dynamodb_client, settings.table, NEWCOMER)
    assert newcomer["source"] == "user" and newcomer["refreshed_at"] and len(newcomer["items"]) == settings.k
    assert newcomer["model_version"] == night.version
    # The storefront's two read paths pass the stamp on, and only on a refreshed list.
    from fastapi.testclient import TestClient

    from recsys.dev.cli import main
    from recsys.serving.api import create_app

    stamp = after[NEWCOMER]["refreshed_at"]["S"]
    assert main(["lookup", NEWCOMER, "--json"]) == 0
    assert json.loads(capfd.readouterr().out)["refreshed_at"] == stamp
    quiet = sorted(u for u in set(before) - active if not u.startswith(("__", "item#")))[0]
    with TestClient(create_app(settings, timeout=2.0)) as client:
        assert client.get(f"/v1/users/{NEWCOMER}/recommendations").json()["refreshed_at"] == stamp
        assert client.get(f"/v1/users/{quiet}/recommendations").json().get("refreshed_at") is None

    # A newer nightly wrote the shopper's list meanwhile: the next refresh leaves it as it is.
    newer = {**after[shopper], "model_version": {"S": f"{NEXT.isoformat()}-newer000"}}
    newer.pop("refreshed_at")
    newer.pop("refreshed_until")
    dynamodb_client.put_item(TableName=settings.table, Item=newer)
    code, out = refresh(NOON + dt.timedelta(hours=1), capfd)
    assert code == 0, out
    again = scan(dynamodb_client, settings.table, with_meta=True)
    assert again[shopper] == newer
    assert "1 left as a newer run wrote them" in out
    assert again[NEWCOMER]["refreshed_until"]["S"] == "2026-06-01T13:00:00Z"
    assert again[POPULAR_USER_ID] == before[POPULAR_USER_ID] and again["__meta__"] == before["__meta__"]


def test_a_bad_new_file_fails_the_refresh_and_changes_nothing(
    night: Night, dynamodb_client: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = night.settings
    broken = night.source / f"broken-{NEXT.isoformat()}.csv"
    broken.write_text('user_id,item_id,event_type,event_ts\nu1,"i1,View,2026-06-01T10:00:00Z\nu2,i2,View,'
                      '2026-06-01T10:01:00Z\n')
    try:
        before = scan(dynamodb_client, settings.table, with_meta=True)
        code, out = refresh(NOON + dt.timedelta(hours=2), capfd)
        assert code == 1, out
        assert "collect_events failed" in out and f"cannot read {broken}" in out and "never closes" in out
        assert scan(dynamodb_client, settings.table, with_meta=True) == before
    finally:
        broken.unlink()


def test_the_refresh_skips_while_a_nightly_publish_finishes(night: Night, dynamodb_client: Any) -> None:
    """Between finish_publish (``__meta__``) and verify (``champion.json``) the two disagree: the
    run skips, and its later tasks write nothing (the stage itself: no DAG run needed)."""
    from recsys.stages.refresh import collect_events, publish_refresh, score_active

    settings = night.settings
    meta = scan(dynamodb_client, settings.table, with_meta=True)["__meta__"]
    dynamodb_client.put_item(TableName=settings.table, Item={**meta, "run_date": {"S": NEXT.isoformat()},
                                                             "model_version": {"S": f"{NEXT.isoformat()}-next0000"}})
    try:
        collected = collect_events(settings, NEXT, NOON + dt.timedelta(hours=3))
        assert "a nightly publish is finishing" in collected["skipped"]
        published = publish_refresh(settings, NEXT, score_active(settings, NEXT, collected))
        assert published == {"published": False, "reason": collected["skipped"]}
    finally:
        dynamodb_client.put_item(TableName=settings.table, Item=meta)


def test_a_nightly_that_lands_after_a_refresh_replaces_the_refreshed_lists(
    night: Night, dynamodb_client: Any, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Night D, a refresh through the real DAG, then the real nightly of D+1: every refreshed list
    is replaced by D+1's (its model, no refresh stamp), and the refresh's lists, written late,
    change none of them. Last in the module: it moves the served night to D+1."""
    from recsys.dev.dagrun import run_dag
    from recsys.stages.refresh import publish_refresh

    monkeypatch.setenv("RECSYS_WAIT_TIMEOUT", "60s")  # D+1 has landed: never wait the night's 6 hours
    settings = Settings.from_env()
    morning = night.source / f"morning-{NEXT.isoformat()}.parquet"
    if not morning.exists():  # run alone: the first test's morning file is not there
        before = scan(dynamodb_client, settings.table)
        pq.write_table(morning_events(night, lists_of({u: i for u, i in before.items() if "items" in i}))[0], morning)
    # The rest of D+1 (END's afternoon moved a day on): the day lands (an event after 23:00).
    day = pq.read_table(night.store / "interactions" / f"events-{END.isoformat()}.parquet")
    day = day.filter(pc.greater_equal(day["event_ts"], pa.scalar(dt.datetime.combine(END, dt.time(12), tzinfo=dt.UTC))))
    ts = pc.add(day["event_ts"], pa.scalar(dt.timedelta(days=1)))
    afternoon = day.set_column(day.schema.get_field_index("event_ts"), "event_ts", ts).set_column(
        day.schema.get_field_index("event_id"), "event_id", pa.array([f"a-{i}" for i in range(day.num_rows)]))
    pq.write_table(afternoon, night.source / f"afternoon-{NEXT.isoformat()}.parquet")

    until = NOON + dt.timedelta(hours=4)  # after every earlier refresh of the module: its writes all land
    code, out = refresh(until, capfd)
    assert code == 0, out
    refreshed = {u: i for u, i in scan(dynamodb_client, settings.table).items() if "refreshed_at" in i}
    assert NEWCOMER in refreshed and len(refreshed) > 100
    assert all(i["refreshed_until"]["S"] == "2026-06-01T16:00:00Z" and i["model_version"]["S"] == night.version
               for i in refreshed.values())

    assert str(run_dag(settings, NEXT).state).endswith("success"), "the nightly of D+1 did not run"
    meta = lake.read_json(lake.partition_dir(settings.lake, "recommendations", NEXT) / "_meta.json")
    newer = str(meta["model_version"])
    assert newer.startswith(NEXT.isoformat()) and newer != night.version
    after = scan(dynamodb_client, settings.table, with_meta=True)
    assert after["__meta__"]["model_version"]["S"] == newer
    recs = pq.read_table(lake.partition_file(settings.lake, "recommendations", NEXT))
    expected: dict[str, list[str]] = {}
    for row in recs.sort_by([("user_id", "ascending"), ("rank", "ascending")]).to_pylist():
        expected.setdefault(row["user_id"], []).append(row["item_id"])
    for user in refreshed:
        item = after[user]
        assert item["model_version"]["S"] == newer, f"{user} still holds {item['model_version']['S']}"
        assert "refreshed_at" not in item and "refreshed_until" not in item, f"{user} kept the refresh's stamp"
        assert lists_of({user: item})[user] == expected[user]
    assert not [u for u, i in after.items() if "refreshed_at" in i]
    # D+1's report lists the refresh runs that wrote lists, newest first: the one above leads.
    report = (lake.partition_dir(settings.lake, "reports", NEXT) / "report.html").read_text()
    runs = report.partition("Hourly refresh: the last runs")[2]
    assert runs.index("2026-06-01T16:00:00+00:00") < runs.index("2026-06-01T12:00:00+00:00")
    assert f"<td>2026-06-01T16:00:00+00:00</td><td>{END.isoformat()}</td><td>{len(refreshed):,}</td>" in runs

    # The refresh's lists of night D, written after D+1 is served: the stage stops, and the
    # conditional writes themselves leave every D+1 list alone.
    scored = lake.read_json(lake.partition_dir(settings.lake, "refresh/lists", NEXT) / "_refresh.json")
    assert scored["model_version"] == night.version and scored["until"] == until.isoformat()
    late = publish_refresh(settings, NEXT, scored)
    assert late["published"] is False and f"serves the newer night {NEXT.isoformat()}" in late["reason"]
    lists = pq.read_table(lake.partition_file(settings.lake, "refresh/lists", NEXT))
    stats = dynamodb.publish_refreshed(
        dynamodb_client, settings.table, lists, model_version=night.version, served_run_date=END,
        refreshed_at=until, until=until, expires_at=int(until.timestamp()) + 86_400)
    assert (stats["items"], stats["kept_newer"]) == (0, dynamodb.count_users(lists))
    assert scan(dynamodb_client, settings.table, with_meta=True) == after
