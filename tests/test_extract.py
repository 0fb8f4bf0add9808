"""recsys.stages.extract: what extract stages, and its pure helpers (file homes, day chunks)."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.io import lake
from recsys.io.sources.files import SourceError
from recsys.stages.extract import EmptyDayError, _chunks, extract, file_homes
from recsys.stages.validate import validate
from tests.support import csv_bytes, day, events, history, settings_for


def test_chunks_split_on_gaps_and_length() -> None:
    d = [dt.date(2026, 1, i) for i in (1, 2, 3, 5, 6)]
    assert _chunks(d, max_days=2) == [[d[0], d[1]], [d[2]], [d[3], d[4]]]


def test_file_homes_give_a_daily_file_its_day_and_a_history_file_none() -> None:
    per_file = pa.table(
        {
            "source_file": ["daily", "daily", "daily", "history", "history", "history", "other"],
            "event_date": [day(2), day(1), None, day(1), day(2), day(3), day(5)],
            "events": [90, 5, 5, 40, 30, 30, 10],
        }
    )
    assert file_homes(per_file, [day(1), day(2)]) == {"daily": day(2), "history": None}
    assert file_homes(per_file, [day(1)]) == {"daily": None, "history": None}  # 5 of 100 is no home


def test_header_only_and_zero_byte_files_are_skipped_but_all_empty_is_an_error(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    d = day(10)
    pq.write_table(events(d, 100), Path(s.source) / f"events-{d}.parquet")
    (Path(s.source) / "quiet-hour.csv").write_text("user_id,item_id,event_type,event_ts\n")
    (Path(s.source) / "zero.jsonl").write_bytes(b"")
    pq.write_table(events(d, 0), Path(s.source) / "no-rows.parquet")
    assert sorted(Path(p).name for p in extract(s, d)["empty_files"]) == ["no-rows.parquet", "quiet-hour.csv", "zero.jsonl"]

    only_empty = settings_for(tmp_path / "empty")
    (Path(only_empty.source) / "a.csv").write_bytes(b"")
    with pytest.raises(SourceError, match=r"every file is empty \(1 file\(s\), e.g. .*a.csv\)"):
        extract(only_empty, d)


def test_an_empty_run_date_is_fatal_and_names_skipped_files(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    (Path(s.source) / f"events-{day(10)}.parquet").write_bytes(b"")
    with pytest.raises(EmptyDayError, match=rf"run date {day(10)} has no events .*1 empty file\(s\) were skipped"):
        extract(s, day(10))


def test_a_file_without_one_usable_timestamp_is_fatal_with_examples(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    d = day(10)
    pq.write_table(events(d, 100), Path(s.source) / f"events-{d}.parquet")
    (Path(s.source) / "eu.csv").write_text("user_id,item_id,event_type,event_ts\nu1,i1,View,31/03/2026 10:00\n")
    with pytest.raises(SourceError, match=r"eu.csv: none of its 1 rows has a usable event_ts \(column 'event_ts', e.g. \['31/03/2026 10:00'\]\)"):
        extract(s, d)


def test_a_quote_that_never_closes_deep_in_a_csv_is_fatal_naming_the_line(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    d = day(10)
    table = events(d, 30_000)
    lines = csv_bytes(table).split(b"\n")
    lines[25_000] = b'"' + lines[25_000]  # beyond what DuckDB's sniffer samples
    (Path(s.source) / f"events-{d}.csv").write_bytes(b"\n".join(lines))
    with pytest.raises(SourceError, match=rf"events-{d}.csv as CSV: line 25001 opens a quote that is never closed"):
        extract(s, d)


def test_a_truncated_gzip_csv_is_fatal_naming_the_file(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    d = day(10)
    pq.write_table(events(d, 100), Path(s.source) / f"events-{d}.parquet")
    data = gzip.compress(csv_bytes(events(d, 20_000, prefix="z")))
    (Path(s.source) / "late.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"late.csv.gz"):
        extract(s, d)


def test_a_replayed_file_is_deduplicated_with_and_without_event_ids(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    history(s)
    d = day(10)
    table = events(d, 300)
    with_ids, without_ids = table.slice(0, 150), table.slice(150).drop_columns(["event_id"])
    source = Path(s.source)
    for name in ("day.parquet", "day-replayed.parquet"):
        pq.write_table(with_ids, source / name)
    for name in ("day.csv", "day-replayed.csv"):
        (source / name).write_bytes(csv_bytes(without_ids))
    extracted = extract(s, d)
    assert extracted["duplicates_dropped"] == 300
    assert validate(s, d, extracted["days"])["quarantined"] == 0
    assert lake.read_partition(s.lake, "interactions", d).num_rows == 300

