"""Each sql/*.sql file against an in-memory DuckDB with hand-made rows and exact answers."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from recsys.io.sql import connect, run_sql
from tests.support import END

UTC = dt.UTC


def ts(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, tzinfo=UTC)


@pytest.fixture
def con():  # type: ignore[no-untyped-def]
    con = connect()
    rows = [
        # user, item, type, ts
        ("u1", "a", "View", ts(1)),
        ("u1", "a", "Purchase", ts(2)),
        ("u1", "b", "View", ts(3)),
        ("u2", "a", "View", ts(1)),
        ("u2", "c", "AddToCart", ts(4)),  # hold-out day, new for u2
        ("u2", "a", "View", ts(4)),  # hold-out day, but u2 saw a before
        ("u3", "c", "View", ts(4)),
        ("u3", "d", "Unknown", ts(4)),  # not a weighted event type: ignored
        ("u1", "z", "View", ts(5)),  # after the window end
    ]
    con.register(
        "interaction_files",
        pa.table(
            {
                "user_id": [r[0] for r in rows],
                "item_id": [r[1] for r in rows],
                "event_type": [r[2] for r in rows],
                "event_ts": pa.array([r[3] for r in rows], pa.timestamp("us", tz="UTC")),
            }
        ),
    )
    con.register(
        "event_weights", pa.table({"event_type": ["View", "AddToCart", "Purchase"], "weight": [1.0, 4.0, 10.0]})
    )
    con.register(
        "catalog",
        pa.table({"item_id": ["a", "b", "c", "d"], "name": ["A", "B", "C", "D"], "category": ["x"] * 4,
                  "active": [True, True, False, True]}),
    )
    con.register("confidence", run_sql(con, "confidence", PARAMS))  # what aggregate reads the other outputs from
    return con


PARAMS = {"start": ts(1, 0), "split": ts(4, 0), "end": ts(5, 0), "half_life_days": 0.0}


def test_confidence_counts_the_training_events(con) -> None:  # type: ignore[no-untyped-def]
    out = con.sql("select user_id, item_id, events, training_events from confidence").fetchall()
    assert sorted(out) == [
        ("u1", "a", 2, 2),
        ("u1", "b", 1, 1),
        ("u2", "a", 2, 1),
        ("u2", "c", 1, 0),
        ("u3", "c", 1, 0),
    ]


def test_confidence_sums_weights_per_user_item(con) -> None:  # type: ignore[no-untyped-def]
    out = run_sql(con, "confidence", PARAMS).to_pylist()
    got = {(r["user_id"], r["item_id"]): (r["confidence"], r["events"]) for r in out}
    assert got == {
        ("u1", "a"): (11.0, 2),
        ("u1", "b"): (1.0, 1),
        ("u2", "a"): (2.0, 2),
        ("u2", "c"): (4.0, 1),
        ("u3", "c"): (1.0, 1),
    }
    schema = run_sql(con, "confidence", PARAMS).schema
    assert schema.field("confidence").type == pa.float64()
    assert schema.field("events").type == pa.int32()


def test_confidence_of_a_window_ending_at_the_split(con) -> None:  # type: ignore[no-untyped-def]
    out = run_sql(con, "confidence", {**PARAMS, "end": PARAMS["split"]}).to_pylist()
    assert {(r["user_id"], r["item_id"]): r["confidence"] for r in out} == {
        ("u1", "a"): 11.0,
        ("u1", "b"): 1.0,
        ("u2", "a"): 1.0,
    }


def test_confidence_recency_decay_halves_per_half_life(con) -> None:  # type: ignore[no-untyped-def]
    # end is 2026-03-05 00:00; with a 1-day half-life an event at 03-04 12:00 is 0.5 days old.
    out = run_sql(con, "confidence", {**PARAMS, "half_life_days": 1.0}).to_pylist()
    got = {(r["user_id"], r["item_id"]): r["confidence"] for r in out}
    assert got[("u3", "c")] == pytest.approx(0.5**0.5)
    # u1/a: View at 03-01 12:00 (3.5 days) + Purchase at 03-02 12:00 (2.5 days)
    assert got[("u1", "a")] == pytest.approx(1.0 * 0.5**3.5 + 10.0 * 0.5**2.5)


def test_holdout_relevant_is_new_items_of_the_holdout(con) -> None:  # type: ignore[no-untyped-def]
    out = run_sql(con, "holdout_relevant").to_pylist()
    assert sorted((r["user_id"], r["item_id"]) for r in out) == [("u2", "c"), ("u3", "c")]


def test_popular_items_ranks_active_items_by_distinct_users(con) -> None:  # type: ignore[no-untyped-def]
    con.register("item_counts", run_sql(con, "item_counts"))
    out = run_sql(con, "popular_items", {"training": False}).to_pylist()
    # a: u1,u2 (2 users, 4 events); b: u1; c is inactive; d's only event type is unweighted.
    assert [(r["item_id"], r["users"], r["events"], r["popularity_rank"]) for r in out] == [
        ("a", 2, 4, 1),
        ("b", 1, 1, 2),
    ]


def test_an_inactive_catalog_row_without_an_item_id_hides_no_item(con) -> None:  # type: ignore[no-untyped-def]
    # With `item_id not in (inactive ids)` a NULL among those ids made every comparison NULL,
    # which emptied the popular list; the anti join only drops the inactive items themselves.
    con.register(
        "catalog",
        pa.table({"item_id": ["a", "b", "c", None], "name": ["A", "B", "C", "?"], "category": ["x"] * 4,
                  "active": [True, True, False, False]}),
    )
    con.register("item_counts", run_sql(con, "item_counts"))
    out = run_sql(con, "popular_items", {"training": False}).to_pylist()
    assert [r["item_id"] for r in out] == ["a", "b"]


def test_popular_items_of_the_training_days_counts_only_their_events(con) -> None:  # type: ignore[no-untyped-def]
    con.register("catalog", pa.table({"item_id": ["a"], "name": ["A"], "category": ["x"], "active": [True]}))
    con.register("item_counts", run_sql(con, "item_counts"))
    out = run_sql(con, "popular_items", {"training": True}).to_pylist()
    # a: u1 (2 events before the split) and u2 (1 of its 2); b: u1; c: only hold-out events.
    assert [(r["item_id"], r["users"], r["events"], r["popularity_rank"]) for r in out] == [
        ("a", 2, 3, 1),
        ("b", 1, 1, 2),
    ]


def test_popular_by_category_ranks_inside_each_category(con) -> None:  # type: ignore[no-untyped-def]
    con.register(
        "catalog",
        pa.table({"item_id": ["a", "b", "c", "d"], "name": ["A", "B", "C", "D"], "category": ["x", "y", "x", "x"],
                  "active": [True, True, False, True]}),
    )
    con.register("item_counts", run_sql(con, "item_counts"))
    con.register("popular_items", run_sql(con, "popular_items", {"training": False}))  # what aggregate registers
    out = run_sql(con, "popular_by_category").to_pylist()
    # x: a (u1,u2) first; c is inactive; d has only an unweighted event. y: b (u1).
    assert [(r["category"], r["item_id"], r["users"], r["category_rank"]) for r in out] == [
        ("x", "a", 2, 1),
        ("y", "b", 1, 1),
    ]


def test_interactions_marks_repeated_event_ids(con) -> None:  # type: ignore[no-untyped-def]
    con.register(
        "source_events",
        pa.table(
            {
                "user_id": ["u1", "u1", "u2", "u3"],
                "item_id": ["a", "a", "b", "c"],
                "event_type": ["View"] * 4,
                "event_ts": pa.array([ts(1), ts(1), ts(1, 13), ts(2)], pa.timestamp("us", tz="UTC")),
                "event_id": ["e1", "e1", None, "e3"],
            }
        ),
    )
    out = run_sql(con, "interactions", {"start": ts(1, 0), "end": ts(2, 0)}).to_pylist()
    assert [(r["user_id"], r["event_id"], r["occurrence"]) for r in out] == [
        ("u1", "e1", 1),
        ("u1", "e1", 2),
        ("u2", None, 1),
    ]
    assert {r["event_date"] for r in out} == {dt.date(2026, 3, 1)}


def test_only_parameters_the_statement_uses_are_bound() -> None:
    from recsys.io.sql import used_params

    text = "-- rows of [$start, $end)\nselect $end_day as d, $end as e -- not $split\nfrom t"
    params = {"start": 1, "end": 2, "end_day": 3, "split": 4}
    assert used_params(text, params) == {"end": 2, "end_day": 3}
    assert used_params(text, None) == {}


def test_copy_to_parquet_writes_the_query_to_a_file_named_with_a_quote(con, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pyarrow.parquet as pq

    from recsys.io.sql import copy_to_parquet

    path = tmp_path / "it's" / "part-0.parquet"
    path.parent.mkdir()
    assert copy_to_parquet(con, "confidence", path, PARAMS) == 5
    written = pq.read_table(path).sort_by([("user_id", "ascending"), ("item_id", "ascending")])
    assert written.to_pylist() == run_sql(con, "confidence", PARAMS).sort_by(
        [("user_id", "ascending"), ("item_id", "ascending")]).to_pylist()


def test_weighted_events_sql_keeps_configured_types_in_the_window_with_their_time() -> None:
    """sql/weighted_events.sql on hand-made events: one row per weighted event of [$start, $end)."""
    from recsys.io.sql import connect, run_sql

    con = connect()
    stamps = [END - dt.timedelta(days=d) for d in (7, 14, 0.5, 3.25, 1, 40)]
    con.register("interaction_files", pa.table({
        "user_id": ["u1", "u1", "u1", "u2", "u2", "u2"],
        "item_id": ["a", "a", "a", "b", "b", "b"],
        "event_type": ["view", "view", "buy", "buy", "Teleport", "view"],
        "event_ts": pa.array(stamps, pa.timestamp("us", tz="UTC")),
    }))
    con.register("event_weights", pa.table({"event_type": ["view", "buy"], "weight": [1.0, 10.0]}))
    out = run_sql(con, "weighted_events", {"start": END - dt.timedelta(days=30), "end": END})
    got = sorted((r["user_id"], r["item_id"], r["event_type"], r["event_us"]) for r in out.to_pylist())
    expected = [("u1", "a", "buy", stamps[2]), ("u1", "a", "view", stamps[0]), ("u1", "a", "view", stamps[1]),
                ("u2", "b", "buy", stamps[3])]
    assert got == sorted((u, i, t, int(s.timestamp() * 1_000_000)) for u, i, t, s in expected)


def test_duckdb_settings_reach_the_connection(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from recsys.config import ConfigError, Settings
    from recsys.io.sql import connect

    monkeypatch.setenv("RECSYS_DUCKDB_MEMORY_LIMIT", "512MiB")
    monkeypatch.setenv("RECSYS_DUCKDB_THREADS", "1")
    con = connect(temp_dir=tmp_path / "spill")
    [(limit, threads, temp)] = con.sql(
        "SELECT current_setting('memory_limit'), current_setting('threads'), current_setting('temp_directory')"
    ).fetchall()
    assert (limit, threads, temp) == ("512.0 MiB", 1, str(tmp_path / "spill"))
    with pytest.raises(ConfigError, match="RECSYS_DUCKDB_MEMORY_LIMIT"):
        Settings.from_env({"RECSYS_DUCKDB_MEMORY_LIMIT": "lots"})
