"""Reading store files of any supported format and naming into canonical rows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import Settings, parse_mapping
from recsys.io.sources.files import SourceError, register_catalog, register_source
from recsys.io.sql import connect

UTC = dt.UTC


def canonical_rows(source: Path, mapping: dict[str, str] | None = None) -> list[dict]:
    con = connect()
    register_source(con, source, mapping or {})
    return con.sql("select * from source_events order by event_ts, user_id").to_arrow_table().to_pylist()


def test_csv_with_other_names_epoch_seconds_and_leading_zero_ids(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text(
        "USER_ID,ITEM_ID,EVENT_TYPE,TIMESTAMP,DISCOUNT\n"
        "007,i1,View,1591803788,No\n"
        "42,i2,Purchase,1591803789,Yes\n"
    )
    rows = canonical_rows(
        tmp_path, parse_mapping("user_id=USER_ID,item_id=ITEM_ID,event_type=EVENT_TYPE,event_ts=TIMESTAMP", "x")
    )
    assert [r["user_id"] for r in rows] == ["007", "42"]  # text ids keep their leading zeros
    assert rows[0]["event_ts"] == dt.datetime(2020, 6, 10, 15, 43, 8, tzinfo=UTC)
    assert rows[1]["event_type"] == "Purchase"
    assert rows[0]["event_id"] is None


def test_jsonl_iso_timestamps_with_offsets_become_utc_and_case_is_ignored(tmp_path: Path) -> None:
    lines = [
        {"User_Id": 5, "item_id": "x", "EVENT_TYPE": "View", "event_ts": "2026-03-01T01:30:00+02:00", "extra": 1},
        {"User_Id": 6, "item_id": "y", "EVENT_TYPE": "View", "event_ts": "2026-03-01T00:30:00Z", "extra": 2},
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows = canonical_rows(tmp_path)
    assert [(r["user_id"], r["event_ts"]) for r in rows] == [
        ("5", dt.datetime(2026, 2, 28, 23, 30, tzinfo=UTC)),
        ("6", dt.datetime(2026, 3, 1, 0, 30, tzinfo=UTC)),
    ]


def test_parquet_and_csv_in_one_folder_with_epoch_milliseconds(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"user_id": ["u1"], "item_id": ["i1"], "event_type": ["View"],
                  "event_ts": pa.array([dt.datetime(2026, 3, 2, 10, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
                  "event_id": ["e1"]}),
        tmp_path / "a.parquet",
    )
    (tmp_path / "b.csv").write_text("user_id,item_id,event_type,event_ts\nu2,i2,View,1772445600000\n")
    rows = canonical_rows(tmp_path)
    assert [(r["user_id"], r["event_ts"], r["event_id"]) for r in rows] == [
        ("u1", dt.datetime(2026, 3, 2, 10, tzinfo=UTC), "e1"),
        ("u2", dt.datetime(2026, 3, 2, 10, tzinfo=UTC), None),
    ]


def test_missing_column_names_file_column_and_fix(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text("user_id,product,event_type,event_ts\nu1,i1,View,1\n")
    with pytest.raises(SourceError) as err:
        canonical_rows(tmp_path)
    message = str(err.value)
    assert "events.csv" in message and "'item_id'" in message and "RECSYS_SOURCE_COLUMNS" in message
    assert "product" in message  # the columns that were found


def test_mapping_to_absent_column_says_so(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text("user_id,item_id,event_type,event_ts\nu1,i1,View,1\n")
    with pytest.raises(SourceError, match="mapped from 'WHEN'"):
        canonical_rows(tmp_path, {"event_ts": "WHEN"})


def test_empty_or_unknown_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        canonical_rows(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="holds no .parquet"):
        canonical_rows(tmp_path)


def test_catalog_active_defaults_true_and_columns_are_case_insensitive(tmp_path: Path) -> None:
    (tmp_path / "items.csv").write_text("ITEM_ID,CATEGORY,ACTIVE\ni1,shoes,false\ni2,hats,\n")
    con = connect()
    assert register_catalog(con, tmp_path / "items.csv") == 2
    rows = con.sql("select * from catalog order by item_id").fetchall()
    assert rows == [("i1", None, "shoes", False), ("i2", None, "hats", True)]


def test_event_type_spellings_map_to_the_configured_names(tmp_path: Path) -> None:
    # RetailRocket-style names and other spellings of the canonical types.
    (tmp_path / "events.csv").write_text(
        "visitorid,itemid,event,timestamp\n"
        "u1,i1,view,1433221332117\n"
        "u1,i1,addtocart,1433221332118\n"
        "u1,i1,transaction,1433221332119\n"
        "u1,i2,add_to_cart,1433221332120\n"
        "u1,i2,START-CHECKOUT,1433221332121\n"
        "u1,i3,Teleport,1433221332122\n"
    )
    con = connect()
    register_source(con, tmp_path, {}, ["View", "AddToCart", "ViewCart", "StartCheckout", "Purchase"])
    types = [r[0] for r in con.sql("select event_type from source_events order by event_ts").fetchall()]
    assert types == ["View", "AddToCart", "Purchase", "AddToCart", "StartCheckout", "Teleport"]
    # Without configured types nothing is renamed; an alias never takes a configured type's own name.
    assert [r["event_type"] for r in canonical_rows(tmp_path)][:3] == ["view", "addtocart", "transaction"]
    from recsys.io.sources.files import event_type_spellings

    assert event_type_spellings(["cart", "AddToCart"]) == {
        "cart": "cart",
        "addtocart": "AddToCart",
        "addtobasket": "AddToCart",
        "basketadd": "AddToCart",
    }


@pytest.mark.parametrize(
    ("newest_ts", "day_before_has_events", "expected"),
    [
        (dt.datetime(2015, 9, 18, 22, 59, 59, tzinfo=UTC), True, dt.date(2015, 9, 17)),  # not landed yet
        (dt.datetime(2015, 9, 18, 23, 0, tzinfo=UTC), True, dt.date(2015, 9, 18)),  # 23:00 is complete
        (dt.datetime(2015, 9, 18, 23, 59, 59, 999999, tzinfo=UTC), True, dt.date(2015, 9, 18)),
        (dt.datetime(2015, 9, 18, 0, 0, tzinfo=UTC), True, dt.date(2015, 9, 17)),
        (dt.datetime(2015, 9, 18, 22, 59, tzinfo=UTC), False, dt.date(2015, 9, 18)),  # nothing the day before
        (dt.datetime(2015, 9, 18, 22, 59), True, dt.date(2015, 9, 17)),  # naive: UTC
        (dt.datetime(2015, 9, 18, 23, 0), True, dt.date(2015, 9, 18)),
        # 18:30 at UTC-5 is 23:30 UTC: complete; 19:30 at UTC-5 is 00:30 UTC on the 19th: not.
        (dt.datetime(2015, 9, 18, 18, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))), True, dt.date(2015, 9, 18)),
        (dt.datetime(2015, 9, 18, 19, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))), True, dt.date(2015, 9, 18)),
        (dt.datetime(2015, 9, 18, 19, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5))), False, dt.date(2015, 9, 19)),
    ],
)
def test_latest_complete_day_rule(newest_ts: dt.datetime, day_before_has_events: bool, expected: dt.date) -> None:
    from recsys.io.sources.files import latest_complete_day

    assert latest_complete_day(newest_ts, day_before_has_events, dt.time(23)) == expected


@pytest.mark.parametrize(
    ("last_event", "expected"),
    [
        (dt.datetime(2015, 9, 18, 3, 13, tzinfo=UTC), dt.date(2015, 9, 17)),  # an export cut off mid-day
        (dt.datetime(2015, 9, 18, 23, 5, tzinfo=UTC), dt.date(2015, 9, 18)),  # the day has landed
        (dt.datetime(2015, 9, 18, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))), dt.date(2015, 9, 17)),  # 06:00 UTC
    ],
)
def test_latest_is_the_newest_complete_day(tmp_path: Path, last_event: dt.datetime, expected: dt.date) -> None:
    from recsys.io.source import newest_complete_day

    first = dt.datetime(2015, 9, 17, 12, tzinfo=UTC)
    rows = [f"u1,i1,View,{first.isoformat()}", f"u2,i2,View,{last_event.isoformat()}"]
    (tmp_path / "events.csv").write_text("user_id,item_id,event_type,event_ts\n" + "\n".join(rows) + "\n")
    assert newest_complete_day(Settings.from_env({"RECSYS_SOURCE": str(tmp_path)})) == expected


def test_latest_of_a_single_partial_day_is_that_day(tmp_path: Path) -> None:
    from recsys.io.source import newest_complete_day

    (tmp_path / "events.csv").write_text("user_id,item_id,event_type,event_ts\nu1,i1,View,2015-09-18T03:13:00Z\n")
    assert newest_complete_day(Settings.from_env({"RECSYS_SOURCE": str(tmp_path)})) == dt.date(2015, 9, 18)
