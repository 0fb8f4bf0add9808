"""The lake: one folder per dataset and date, ``<lake>/<dataset>/dt=YYYY-MM-DD/``.

Every stage writes its partition through :func:`write_partition` (or
:func:`replace_partition` for files it writes itself): the new content is written under a
temporary name and renamed into place, so a rerun of a date replaces that date whole and a
crash leaves either the old partition or the new one, never half of one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

DATA_FILE = "part-0.parquet"


def partition_dir(lake: str | Path, dataset: str, day: dt.date) -> Path:
    """The folder of one dataset's partition for one date."""
    return Path(lake) / dataset / f"dt={day.isoformat()}"


def partition_file(lake: str | Path, dataset: str, day: dt.date, name: str = DATA_FILE) -> Path:
    """A file inside a partition (the Parquet data file unless ``name`` says otherwise)."""
    return partition_dir(lake, dataset, day) / name


def partition_exists(lake: str | Path, dataset: str, day: dt.date) -> bool:
    """True when the partition has been written completely (it has its data file)."""
    return partition_file(lake, dataset, day).exists()


@contextmanager
def replace_partition(lake: str | Path, dataset: str, day: dt.date) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it atomically becomes the partition.

    On an exception the temporary folder is removed and the old partition is untouched.
    """
    with replace_dir(partition_dir(lake, dataset, day)) as tmp:
        yield tmp


@contextmanager
def replace_dir(final: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``final``; on success it replaces ``final`` whole.

    On an exception the temporary folder is removed and ``final`` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_partition(
    lake: str | Path,
    dataset: str,
    day: dt.date,
    table: pa.Table,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write ``table`` (and small JSON side files) as the whole partition; returns its data file."""
    with replace_partition(lake, dataset, day) as tmp:
        pq.write_table(table, tmp / DATA_FILE, compression="zstd")
        for name, content in (extra_files or {}).items():
            write_json(tmp / name, content)
    path = partition_file(lake, dataset, day)
    log.info("wrote %s: %d rows", path, table.num_rows)
    return path


def read_partition(
    lake: str | Path, dataset: str, day: dt.date, *, columns: list[str] | None = None, filters: Any = None
) -> pa.Table:
    """Read a partition's data file (only ``columns``, only rows matching the Arrow expression
    ``filters`` when given); raises FileNotFoundError naming the partition."""
    path = partition_file(lake, dataset, day)
    if not path.exists():
        raise FileNotFoundError(f"partition {partition_dir(lake, dataset, day)} is missing (no {DATA_FILE})")
    return pq.read_table(path, columns=columns, filters=filters)


def write_json(path: Path, content: Any) -> None:
    """Write JSON to ``path`` atomically (temporary file, then rename)."""
    write_text(path, json.dumps(content, indent=2, sort_keys=True, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write text to ``path`` atomically (temporary file, then rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every date from ``start`` to ``end``, both included."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
