"""Extract and validate on small hand-made sources and lakes, without Airflow: the pure parts with
exact answers, then dirty files of every kind the source accepts, each with its outcome."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import ConfigError, Settings
from recsys.core.checks import (
    ValidationError,
)
from recsys.io import lake
from tests.support import (
    UTC,
    csv_bytes,
    day,
    events,
    extract_and_validate,
    history,
    quarantine,
    reasons,
    settings_for,
)

# --------------------------------------------------------------------------- pure parts


def test_settings_for_bad_input_have_defaults_variables_and_checks() -> None:
    s = Settings.from_env({})
    assert (s.max_bad_share, s.volume_min_ratio, s.volume_max_ratio, s.volume_history_days) == (0.01, 0.1, 5.0, 14)
    assert (s.max_unknown_item_share, s.bot_max_user_share, s.bot_min_day_rows) == (0.05, 0.5, 1000)
    assert s.validate_chunk_rows == 1_000_000
    s = Settings.from_env(
        {"RECSYS_MAX_BAD_SHARE": "0.05", "RECSYS_VOLUME_MIN_RATIO": "0.5", "RECSYS_BOT_MIN_DAY_ROWS": "10",
         "RECSYS_VALIDATE_CHUNK_ROWS": "5000"}
    )
    assert (s.max_bad_share, s.volume_min_ratio, s.bot_min_day_rows, s.validate_chunk_rows) == (0.05, 0.5, 10, 5000)
    with pytest.raises(ConfigError, match="validate_chunk_rows"):
        Settings.from_env({"RECSYS_VALIDATE_CHUNK_ROWS": "0"})
    with pytest.raises(ConfigError, match="volume_min_ratio"):
        Settings.from_env({"RECSYS_VOLUME_MIN_RATIO": "2"})
    with pytest.raises(ConfigError, match="bot_max_user_share"):
        Settings.from_env({"RECSYS_BOT_MAX_USER_SHARE": "0"})


# --------------------------------------------------------------------------- row checks


def test_every_row_reason_on_one_dirty_day(tmp_path: Path) -> None:
    s = settings_for(tmp_path, RECSYS_MAX_BAD_SHARE="0.5")
    history(s)
    d = day(10)
    good = events(d, 200).to_pylist()
    bad = [
        {"user_id": None},
        {"user_id": "  "},
        {"user_id": "é" * 1025},  # 1,025 characters, 2,050 bytes
        {"item_id": "\ufffd" + "FF00"},
        {"event_type": "Teleport"},
        {"event_type": None},
        {"event_ts": dt.datetime(2099, 1, 1, tzinfo=UTC)},
    ]
    rows = [dict(good[i], **change) for i, change in enumerate(bad)] + good[len(bad):]
    rows.append(dict(good[-1]))  # the same event twice: dropped as a duplicate, not quarantined
    rows.append({**good[-2], "user_id": "é" * 1024, "event_id": "fits"})  # 2,048 bytes: just fits
    table = pa.Table.from_pylist(rows, schema=events(d, 1).schema)
    pq.write_table(table, Path(s.source) / f"events-{d}.parquet")
    extract_and_validate(s, d)
    assert reasons(s, d) == {
        "missing_user_id": 1,
        "empty_user_id": 1,
        "user_id_too_long": 1,
        "invalid_utf8_item_id": 1,
        "unknown_event_type": 1,
        "missing_event_type": 1,
        "event_ts_in_future": 1,
    }
    kept = lake.read_partition(s.lake, "interactions", d)
    assert kept.schema.names == ["user_id", "item_id", "event_type", "event_ts", "event_id"]
    assert "é" * 1024 in kept["user_id"].to_pylist() and kept.num_rows == 194
    docs = lake.partition_dir(s.lake, "validation", d)
    assert (docs / "index.html").exists() and any((docs / "validations").rglob("*.html"))
    day_summary = json.loads((docs / "summary.json").read_text())["days"][-1]
    assert (day_summary["dt"], day_summary["rows_read"], day_summary["rows_kept"], day_summary["duplicates_dropped"]) == (
        d.isoformat(), 202, 194, 1
    )
    assert day_summary["quarantined"]["unknown_event_type"] == 1


def test_too_many_bad_rows_fail_naming_partition_column_count_and_expectation(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    d = day(10)
    table = events(d, 100).to_pylist()
    for row in table[:2]:
        row["event_type"] = "Teleport"
    pq.write_table(pa.Table.from_pylist(table), Path(s.source) / f"events-{d}.parquet")
    with pytest.raises(ValidationError) as err:
        extract_and_validate(s, d)
    message = str(err.value)
    assert f"staging/interactions/dt={d} (from events-{d}.parquet): 2 of 100 rows (2.00%)" in message
    assert "above the allowed 1.00% (RECSYS_MAX_BAD_SHARE)" in message
    assert "unknown_event_type: 2 (column 'event_type', expected one of the configured event weights" in message
    assert f"quarantine/interactions/dt={d}" in message and "index.html" in message
    assert reasons(s, d) == {"unknown_event_type": 2}  # the evidence is written ...
    assert not lake.partition_exists(s.lake, "interactions", d)  # ... the day is not
    # One bad row in a hundred is within the allowance: the same day passes at 2%.
    extract_and_validate(settings_for(tmp_path, RECSYS_MAX_BAD_SHARE="0.02"), d)
    assert lake.read_partition(s.lake, "interactions", d).num_rows == 98


def test_a_clean_rerun_removes_the_days_stale_quarantine(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    d = day(10)
    dirty = events(d, 200).to_pylist()
    dirty[0]["user_id"] = ""
    pq.write_table(pa.Table.from_pylist(dirty), Path(s.source) / f"events-{d}.parquet")
    extract_and_validate(s, d)
    assert reasons(s, d) == {"empty_user_id": 1}
    pq.write_table(events(d, 200), Path(s.source) / f"events-{d}.parquet")
    extract_and_validate(s, d)
    assert quarantine(s, d) == [] and lake.read_partition(s.lake, "interactions", d).num_rows == 200


def test_a_bot_is_quarantined_without_counting_as_bad_rows(tmp_path: Path) -> None:
    s = settings_for(tmp_path, RECSYS_BOT_MIN_DAY_ROWS="50")
    history(s)
    d = day(10)
    bot = events(d, 300, prefix="x").to_pylist()
    for row in bot:
        row["user_id"] = "bot"
    pq.write_table(pa.concat_tables([events(d, 100), pa.Table.from_pylist(bot)]), Path(s.source) / f"events-{d}.parquet")
    extract_and_validate(s, d)
    assert reasons(s, d) == {"bot_user": 300} and lake.read_partition(s.lake, "interactions", d).num_rows == 100


def test_an_event_id_is_unique_within_its_day_not_across_the_window(tmp_path: Path) -> None:
    s = settings_for(tmp_path, RECSYS_MAX_BAD_SHARE="0.5")
    for n in range(1, 11):
        rows = events(day(n), 100).to_pylist()
        if n == 3:  # the same event again without its timestamp: staged on day 3 beside it
            rows.append({**rows[10], "event_ts": None})
        if n in (4, 9):  # one id on two days that extract reads in different scans (a week each)
            rows[20]["event_id"] = "same-id-two-days"
        pq.write_table(pa.Table.from_pylist(rows, schema=events(day(n), 1).schema), Path(s.source) / f"events-{day(n)}.parquet")
    extract_and_validate(s, day(10))
    assert reasons(s, day(3)) == {"duplicate_event_id": 1, "missing_event_ts,duplicate_event_id": 1}
    for d in (day(4), day(9)):
        assert "same-id-two-days" in lake.read_partition(s.lake, "interactions", d)["event_id"].to_pylist()


# --------------------------------------------------------------------------- day checks


def test_first_run_judges_each_days_volume_against_the_days_before_it(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    for n in range(3, 10):  # the store starts on day 3: days 1-2 of the window are simply empty
        pq.write_table(events(day(n), 100), Path(s.source) / f"events-{day(n)}.parquet")
    pq.write_table(events(day(10), 100), Path(s.source) / f"events-{day(10)}.parquet")
    assert extract_and_validate(s, day(10))["partitions"] == 10
    assert lake.read_partition(s.lake, "interactions", day(1)).num_rows == 0

    s2 = settings_for(tmp_path / "again")
    for n in range(1, 11):
        pq.write_table(events(day(n), 3 if n == 7 else 100), Path(s2.source) / f"events-{day(n)}.parquet")
    with pytest.raises(ValidationError, match=rf"dt={day(7)} .*volume anomaly: 3 rows kept, 0.03x the mean of the previous 6 day"):
        extract_and_validate(s2, day(10))
    assert not any(lake.partition_exists(s2.lake, "interactions", day(n)) for n in range(1, 11))


def test_a_flood_fails_the_volume_band_from_above(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    pq.write_table(events(day(10), 600), Path(s.source) / f"events-{day(10)}.parquet")
    with pytest.raises(ValidationError, match=r"600 rows kept, 6.00x the mean .* expected between 0.1x and 5.0x"):
        extract_and_validate(s, day(10))


def test_unknown_items_fail_only_above_their_share_and_only_with_a_catalog(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("item_id,name,category,active\n" + "".join(f"i{i},n,c,true\n" for i in range(7)))
    s = settings_for(tmp_path, RECSYS_CATALOG=str(catalog))
    history(s)
    d = day(10)
    table = events(d, 100).to_pylist()
    for row in table[:6]:
        row["item_id"] = "brand-new"
    pq.write_table(pa.Table.from_pylist(table), Path(s.source) / f"events-{d}.parquet")
    with pytest.raises(ValidationError, match=r"column 'item_id': 6 of 100 kept rows \(6.00%\) name an item the catalog"):
        extract_and_validate(s, d)
    extract_and_validate(settings_for(tmp_path), d)  # no catalog: nothing to compare with
    assert lake.read_partition(s.lake, "interactions", d).num_rows == 100


# --------------------------------------------------------------------------- chunks of days


def dirty_window(source: Path) -> None:
    """Ten days of growing size, each with bad rows; a bot on day 6; on day 3 a copy of an event
    without its timestamp (the same event_id twice in the day); an event_id on days 4 and 9
    (different extract scans: both kept, uniqueness is per day); a file holding all ten days
    (no home day) with two rows without a timestamp (unplaced, judged against the file)."""
    for n in range(1, 11):
        rows = events(day(n), 60 + 20 * n).to_pylist()
        rows[0]["user_id"] = ""
        rows[n % 5 + 1]["event_type"] = "Teleport"
        if n == 3:
            rows.append({**rows[10], "event_ts": None})
        if n in (4, 9):
            rows[20]["event_id"] = "same-id-two-days"
        if n == 6:
            rows += [dict(r, user_id="bot") for r in events(day(n), 300, prefix="x").to_pylist()]
        pq.write_table(pa.Table.from_pylist(rows, schema=events(day(n), 1).schema), source / f"events-{day(n)}.parquet")
    spread = pa.concat_tables([events(day(n), 1, prefix=f"h{n}-") for n in range(1, 11)]).to_pylist()
    spread += [dict(r, event_ts=None) for r in events(day(10), 2, prefix="h-no-ts-").to_pylist()]
    pq.write_table(pa.Table.from_pylist(spread, schema=events(day(1), 1).schema), source / "spread.parquet")


def lake_tables(settings: Settings, dataset: str) -> dict[dt.date, pa.Table]:
    """Every partition of ``dataset`` for days 1..10 that exists."""
    days = [day(n) for n in range(1, 11) if lake.partition_exists(settings.lake, dataset, day(n))]
    return {d: lake.read_partition(settings.lake, dataset, d) for d in days}


def chunk_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("validate: chunk ")]


def test_small_chunks_give_the_same_results_as_one_chunk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="recsys.stages.validate")
    env = {"RECSYS_MAX_BAD_SHARE": "0.5", "RECSYS_BOT_MIN_DAY_ROWS": "50"}
    whole = settings_for(tmp_path, RECSYS_HOME=str(tmp_path / "whole"), **env)
    chunked = settings_for(tmp_path, RECSYS_HOME=str(tmp_path / "chunked"), RECSYS_VALIDATE_CHUNK_ROWS="400", **env)
    dirty_window(Path(whole.source))

    expected = extract_and_validate(whole, day(10))
    assert len(chunk_lines(caplog)) == 1
    caplog.clear()
    got = extract_and_validate(chunked, day(10))
    lines = chunk_lines(caplog)
    # Day 6 (180 rows and 300 of the bot) is above the budget: a chunk of its own.
    assert len(lines) == 7 and lines[2].startswith(f"validate: chunk 3/7 ({day(6)}): 481 rows, 302 quarantined")

    def comparable(summary: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in summary.items() if k not in ("seconds", "data_docs")}

    assert comparable(got) == comparable(expected)
    assert (expected["rows"], expected["rows_kept"], expected["quarantined"]) == (2013, 1689, 324)
    assert expected["reasons"] == {
        "empty_user_id": 10, "unknown_event_type": 10, "bot_user": 300, "duplicate_event_id": 2, "missing_event_ts": 3
    }
    for dataset in ("interactions", "quarantine/interactions"):
        assert lake_tables(chunked, dataset).keys() == lake_tables(whole, dataset).keys()
        for d, table in lake_tables(whole, dataset).items():
            assert lake_tables(chunked, dataset)[d].equals(table), (dataset, d)
    kept = lake_tables(chunked, "interactions")
    assert all("same-id-two-days" in kept[d]["event_id"].to_pylist() for d in (day(4), day(9)))
    docs = [lake.partition_dir(s.lake, "validation", day(10)) for s in (whole, chunked)]
    assert json.loads((docs[1] / "summary.json").read_text()) == json.loads((docs[0] / "summary.json").read_text())
    # One Data Docs page per chunk of the row suite.
    assert len(list((docs[1] / "validations" / "interactions_rows").rglob("*.html"))) == 7


def test_a_failure_in_a_later_chunk_writes_no_day_and_says_the_same(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="recsys.stages.validate")
    whole = settings_for(tmp_path, RECSYS_HOME=str(tmp_path / "whole"))
    chunked = settings_for(tmp_path, RECSYS_HOME=str(tmp_path / "chunked"), RECSYS_VALIDATE_CHUNK_ROWS="250")
    for n in range(1, 11):
        rows = events(day(n), 100).to_pylist()
        if n == 9:  # 3% bad rows, above the allowed 1%
            for row in rows[:3]:
                row["event_type"] = "Teleport"
        pq.write_table(pa.Table.from_pylist(rows), Path(whole.source) / f"events-{day(n)}.parquet")
    messages = []
    for s in (whole, chunked):
        with pytest.raises(ValidationError) as err:
            extract_and_validate(s, day(10))
        messages.append(str(err.value).replace(s.lake, "LAKE"))
        assert not any(lake.partition_exists(s.lake, "interactions", day(n)) for n in range(1, 11))
        assert reasons(s, day(9)) == {"unknown_event_type": 3}  # the evidence is written
    assert chunk_lines(caplog)[-1].startswith(f"validate: chunk 5/5 ({day(9)}..{day(10)}): 200 rows, 3 quarantined")
    assert "dt=2026-03-09 (from events-2026-03-09.parquet): 3 of 100 rows (3.00%)" in messages[1]
    assert "e.g. 'Teleport')" in messages[1]
    assert messages[1] == messages[0]


# --------------------------------------------------------------------------- dirty files


def test_csv_lines_that_do_not_parse_are_quarantined_with_the_raw_line(tmp_path: Path) -> None:
    s = settings_for(tmp_path, RECSYS_MAX_BAD_SHARE="0.05")
    history(s)
    d = day(10)
    lines = csv_bytes(events(d, 300)).split(b"\n")
    lines[5] = lines[5].replace(b"u4", b"M\xfcller")  # Latin-1, not UTF-8
    lines[6] = lines[6] + b",surplus"
    lines[7] = b"u6,i6"
    (Path(s.source) / f"events-{d}.csv").write_bytes(b"\n".join(lines))
    extract_and_validate(s, d)
    rows = quarantine(s, d)
    assert [(r["reason"], r["raw_line"].split(":")[0]) for r in rows] == [
        ("invalid_utf8", "line 6"), ("wrong_field_count", "line 7"), ("wrong_field_count", "line 8")
    ]
    assert rows[2]["raw_line"] == "line 8: u6,i6" and rows[0]["source_file"].endswith(f"events-{d}.csv")


def test_semicolon_and_tab_separated_files_and_gzip_are_read(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    d = day(10)
    (Path(s.source) / "a.csv").write_bytes(csv_bytes(events(d, 60, prefix="a"), sep=";"))
    (Path(s.source) / "b.tsv").write_bytes(csv_bytes(events(d, 30, prefix="b"), sep="\t"))
    (Path(s.source) / "c.csv.gz").write_bytes(gzip.compress(csv_bytes(events(d, 10, prefix="c"))))
    extract_and_validate(s, d)
    assert lake.read_partition(s.lake, "interactions", d).num_rows == 100


def test_a_malformed_json_line_and_non_utf8_bytes_in_parquet_ids_are_quarantined(tmp_path: Path) -> None:
    s = settings_for(tmp_path, RECSYS_MAX_BAD_SHARE="0.05")
    history(s)
    d = day(10)
    good = events(d, 100)
    lines = [json.dumps({**r, "event_ts": r["event_ts"].isoformat()}) for r in good.slice(0, 60).to_pylist()]
    lines[3] = '{"user_id": "u3", "item_id": '
    (Path(s.source) / "a.jsonl").write_text("\n".join(lines) + "\n")
    rest = good.slice(60).to_pylist()
    ids = [r["user_id"].encode() for r in rest]
    ids[0] = b"u\xff\xfe"
    blob = pa.table({**{k: good.slice(60)[k] for k in good.column_names}, "user_id": pa.array(ids, pa.binary())})
    pq.write_table(blob, Path(s.source) / "b.parquet")
    extract_and_validate(s, d)
    assert reasons(s, d) == {"unreadable_line": 1, "invalid_utf8_user_id": 1}
    assert {r["user_id"] for r in quarantine(s, d)} == {None, "\ufffd75FFFE"}


def test_strays_of_a_file_without_a_home_day_are_judged_against_their_file(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    d = day(10)
    # One file holding the whole history (no day holds half of it) with rows that have no timestamp.
    rows = pa.concat_tables([events(day(n), 100, prefix=f"d{n}-") for n in range(1, 11)]).to_pylist()
    for row in rows[:5]:
        row["event_ts"] = None
    pq.write_table(pa.Table.from_pylist(rows), Path(s.source) / "all.parquet")
    extract_and_validate(s, d)  # 5 of 1,000 rows of the file: 0.5%, within the allowance
    assert reasons(s, d) == {"missing_event_ts": 5}
    assert lake.read_partition(s.lake, "interactions", d).num_rows == 100
    for row in rows[5:20]:
        row["event_ts"] = None
    pq.write_table(pa.Table.from_pylist(rows), Path(s.source) / "all.parquet")
    with pytest.raises(ValidationError, match=r"all.parquet: 20 of its 1,000 rows \(2.00%\) have no usable event_ts"):
        extract_and_validate(s, d)


def test_late_rows_for_an_extracted_day_are_quarantined_but_replays_are_not(tmp_path: Path) -> None:
    s = settings_for(tmp_path, RECSYS_MAX_BAD_SHARE="0.05")
    history(s)
    extract_and_validate(s, day(9))
    d = day(10)
    replay = events(day(5), 100).slice(0, 3)  # already in the lake under day 5
    late = events(day(5), 2, prefix="late-")  # never seen: can no longer be added to day 5
    pq.write_table(pa.concat_tables([events(d, 100), replay, late]), Path(s.source) / f"events-{d}.parquet")
    extract_and_validate(s, d)
    assert reasons(s, d) == {"event_ts_outside_day": 2}
    assert lake.read_partition(s.lake, "interactions", day(5)).num_rows == 100
